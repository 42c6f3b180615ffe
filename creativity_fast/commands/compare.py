"""``creativity-fast compare``: does the ELS machine predict what a trained network generates?

Samples the network (default: the shipped Fashion-MNIST ResNet; ``--net-steps`` steps) and
each machine (default ``els,local,ideal``; ``--steps`` steps) from the same initial noise per
seed (one class per seed for a class-conditional network), then writes ``OUT/compare.json``
(per machine the per-seed r and R^2, medians with bootstrap intervals, the fraction of seeds
beating IS, settings), ``OUT/compare_per_seed.csv``, ``OUT/compare.png`` (rows network | ELS |
LS | IS over the first 16 seeds, ``--figure-seeds``), ``OUT/compare_scatter.png`` and
``OUT/compare_samples.npz``.
Finished samples are kept in ``OUT/per_seed_<entry>.npz``; rerunning with the same settings
skips them (docs/calibration.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from typing import Optional

import numpy as np

from .. import io
from ..calibration import calibration_seeds, compare, compare_figures, resolve_patch_schedule
from ..dictionary import count_pairs
from ..registry import get_machine, machine_names
from ..adapters import DEFAULT_SCHEDULER, load_denoiser
from ..classes import class_indices, seed_classes
from ..nets import default_network_path
from . import common

DEFAULT_MACHINES = "els,local,ideal"


def default_patch_schedule() -> str:
    """The paper's published Fashion-MNIST ResNet schedule (zero padding). The shipped calibrated
    schedule (``calibrated``) was fitted on seeds 0 and 1 by the earlier rule, so it overlaps the
    default evaluation seeds; select it explicitly (docs/calibration.md)."""
    return "fashion_mnist_resnet_zeros"


def _action(p: argparse.ArgumentParser, dest: str) -> argparse.Action:
    return next(a for a in p._actions if a.dest == dest)


def add_network_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("network")
    g.add_argument("--net", metavar="PATH", default=None,
                   help=f"network: a checkpoint from `creativity-fast train` (OUT/model.pt), or a local diffusers "
                        "folder (needs diffusers): a pipeline saved by save_pretrained (model_index.json, unet/, "
                        "scheduler/) or a bare UNet2DModel folder, which gets diffusers' DDPMScheduler defaults "
                        f"(linear betas {DEFAULT_SCHEDULER['beta_start']:g}..{DEFAULT_SCHEDULER['beta_end']:g}, "
                        f"{DEFAULT_SCHEDULER['num_train_timesteps']} steps, eps prediction); default: the shipped "
                        f"{default_network_path().name}. Without --data/--limit the machines use the data set "
                        "a project checkpoint was trained on")
    g.add_argument("--net-batch-size", type=int, default=256, help="network batch size (default: %(default)s)")
    g.add_argument("--clip", action=argparse.BooleanOptionalAction, default=False,
                   help="clip the network's x0 estimate z - sigma*eps_hat to [-1, 1] at every step, as DDPM "
                        "samplers' clip_denoised does (default: no clipping, as in the paper's protocol; "
                        "docs/calibration.md)")
    g.add_argument("--conditional", default="auto", choices=("auto", "on", "off"),
                   help="class-conditional comparison: every seed gets a class (docs/calibration.md: "
                        "splitmix64(seed) mod the number of classes, or --class for all), the network gets it as "
                        "class_labels and each machine uses that class's training images only. auto: on when the "
                        "network is class-conditional or --class is given (default: %(default)s)")
    # The machine must see the network's boundary: zero padding -> boundary "zeros", circular -> "circular".
    p.set_defaults(boundary=None)
    _action(p, "boundary").help = "default: the network's padding (zeros or circular)"


def load_net_and_data(args):
    """``(network denoiser, checkpoint info, training set)`` for ``calibrate`` and ``compare``.

    ``--net`` is a project checkpoint or a local diffusers folder (``adapters.load_denoiser``).
    ``--boundary`` defaults to the network's padding. Without ``--data`` and ``--limit`` the
    machines use the data set the network was trained on (as recorded in its checkpoint);
    a different data set gets a warning (the comparison is only fair on the same set).
    """
    try:
        den, info = load_denoiser(args.net, batch_size=args.net_batch_size,
                                  clip=(-1.0, 1.0) if args.clip else None)
    except ImportError as exc:  # a diffusers folder without diffusers installed: one line, not a traceback
        raise ValueError(str(exc)) from None
    padding = info["config"].get("padding", "zeros")
    if args.boundary is None:
        args.boundary = padding
    elif args.boundary != padding:
        print(f"note: the network uses {padding} padding but --boundary is {args.boundary}", file=sys.stderr)
    trained = info.get("data") or {}
    if args.data is None and args.limit is None and args.resize is None:
        args.data, args.limit, args.resize = trained.get("path"), trained.get("limit"), trained.get("resize")
    data = common.load_training_set(args)
    n_train = info.get("n_train")
    if (trained.get("name") and trained["name"] != data.name) or (n_train is not None and n_train != len(data)):
        print(f"warning: the network was trained on {trained.get('name', '?')} ({n_train} images) but the machines "
              f"use {data.name} ({len(data)} images); pass the same --data/--limit as `train` for a fair test",
              file=sys.stderr)
    channels = info["config"].get("channels")
    if channels is not None and channels != data.image_shape[0]:
        raise ValueError(f"the network takes {channels}-channel images but {data.name} has {data.image_shape[0]} "
                         "channels; pass a matching --data")
    size = (info["config"].get("unet") or {}).get("sample_size")
    if isinstance(size, int) and tuple(data.image_shape[1:]) != (size, size):
        print(f"note: the network was built for {size}x{size} images; the data are "
              f"{data.image_shape[1]}x{data.image_shape[2]}", file=sys.stderr)
    return den, info, data


def network_num_classes(den, info: dict) -> Optional[int]:
    """The number of classes a network is conditioned on, or None for an unconditional network.

    Read from the checkpoint's config (``num_classes``; diffusers: ``unet.num_class_embeds``) or the
    denoiser / its module (attribute ``num_classes``).
    """
    config = info.get("config") or {}
    candidates = [config.get("num_classes"), (config.get("unet") or {}).get("num_class_embeds"),
                  getattr(den, "num_classes", None), getattr(getattr(den, "net", None), "num_classes", None)]
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def resolve_seed_classes(args, den, info: dict, data, seeds) -> Optional[list[int]]:
    """One class per seed for a class-conditional run, or None (unconditional); see ``--conditional``.

    ``--class`` gives every seed that class; otherwise ``classes.seed_classes`` draws it from the seed
    among the classes present in the training set (and known to the network).
    """
    n_classes = network_num_classes(den, info)
    mode = args.conditional
    if mode == "auto":
        mode = "on" if (n_classes is not None or args.class_label is not None) else "off"
    if mode == "off":
        if args.class_label is not None:
            raise ValueError("--class needs a class-conditional run; drop --conditional off")
        return None
    if n_classes is None and args.conditional == "auto":
        raise ValueError("--class: the network is unconditional (its checkpoint names no classes); "
                         "pass --conditional on to give it class labels anyway")
    if data.labels is None:
        raise ValueError(f"--conditional: the training set {data.name} has no labels")
    if args.class_label is not None:
        label = common.class_label_of(args, data)
        class_indices(data.labels, label, argument="--class")
        return [label] * len(seeds)
    present = sorted(set(int(c) for c in data.labels.tolist()))
    if n_classes is not None:
        present = [c for c in present if 0 <= c < n_classes]
    return seed_classes(seeds, present)


def parse_machines(text: str, *, allow_none: bool = False) -> list[str]:
    if allow_none and str(text).strip().lower() == "none":
        return []
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    known = machine_names()
    bad = [n for n in names if n not in known]
    if not names or bad:
        raise ValueError(f"--machine must be a comma list of registered machines ({', '.join(known)}); got {text!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"--machine lists a machine twice: {text!r}")
    return names


def parse_schedule_overrides(items) -> dict:
    """``["local=cal_ls/calibration.json"]`` -> ``{"local": "cal_ls/calibration.json"}`` (``--schedule-for``)."""
    out = {}
    for item in items or ():
        name, sep, spec = str(item).partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise ValueError(f"--schedule-for must look like MACHINE=SCHEDULE (e.g. local=cal_ls/calibration.json); "
                             f"got {item!r}")
        out[name.strip()] = spec.strip()
    return out


def check_seed_overlap(spec, seeds, *, allow: bool, what: str = "--patch-schedule") -> list[int]:
    """Evaluation seeds that the schedule ``spec`` was calibrated on: an error unless ``allow`` (then a
    warning). Returns the overlapping seeds."""
    calibrated = calibration_seeds(spec)
    overlap = sorted(set(calibrated or ()) & set(seeds))
    if overlap:
        msg = (f"{what} {spec} was calibrated on seeds {overlap[:8]}{' ...' if len(overlap) > 8 else ''} that are "
               "also evaluation seeds (--seeds); the paper keeps them disjoint")
        if not allow:
            raise ValueError(msg + "; pass other --seeds or --allow-seed-overlap")
        print(f"warning: {msg}", file=sys.stderr)
    return overlap


def count_machine_pairs(name: str, sizes, classes, data, n_seeds: int, *, boundary: str,
                        keys: str) -> Optional[int]:
    """(query pixel, key) pairs a machine evaluates over a run: the sum over seeds and steps of
    ``count_pairs`` with that seed's dictionary (its class's images); None for other machines."""
    if name not in ("els", "local", "ideal"):
        return None
    H, W = data.image_shape[1:]
    if classes is None:
        counts = [len(data)] * n_seeds
    else:
        per_class = {c: int((data.labels == c).sum()) for c in set(classes)}
        counts = [per_class[c] for c in classes]
    total = 0
    for n in counts:
        total += sum(count_pairs(1, n, H, W, P, name, boundary, keys) for P in sizes)
    return int(total)


def register(sub) -> None:
    p = sub.add_parser("compare", help="sample a trained network and machines from the same noise; r, r^2, R^2")
    common.add_data_options(p)
    common.add_machine_options(p)
    machine = _action(p, "machine")
    machine.choices = None
    machine.help = (f"comma list of machines to compare with the network, any of {', '.join(machine_names())}, or "
                    "'none' with --net-ceiling (default: %(default)s)")
    p.set_defaults(machine=DEFAULT_MACHINES, patch_schedule=default_patch_schedule())
    _action(p, "patch_schedule").help = (
        "P per step for the patch machines: an odd int, a comma list, a published schedule name "
        "(e.g. fashion_mnist_resnet_zeros), a calibration JSON from `creativity-fast calibrate`, or 'calibrated' "
        "(the shipped one); default: %(default)s")
    p.add_argument("--schedule-for", dest="schedule_for", action="append", default=[], metavar="MACHINE=SCHEDULE",
                   help="a patch schedule for one machine only, repeatable, e.g. local=out/cal_ls/calibration.json "
                        "(the paper calibrates LS separately from ELS)")
    add_network_options(p)
    p.add_argument("--net-steps", type=int, default=None, metavar="N",
                   help="the network's sampler steps (default: --steps); the machines keep --steps. The paper's "
                        "Table 1 uses --net-steps 150 --steps 20, its Table 2 20 and 20")
    p.add_argument("--net-ceiling", metavar="PATH", default=None,
                   help="a second network (same recipe, other training seed) compared with --net like a machine, "
                        "sampled with --net-steps: the ceiling of the statistic (reported as 'ceiling')")
    p.add_argument("--allow-seed-overlap", action="store_true",
                   help="allow evaluation seeds that the calibration file was fitted on (a warning, recorded)")
    common.add_sampling_options(p, default_seeds="0-31")
    common.add_device_option(p)
    p.add_argument("--columns", type=int, default=16, help="seeds per figure row block (default: %(default)s)")
    p.add_argument("--figure-seeds", type=int, default=16,
                   help="seeds drawn in compare.png, the first ones; 0: all (default: %(default)s)")
    p.add_argument("--out", default="out/compare", help="output directory (default: %(default)s)")
    p.set_defaults(func=run)


def _print_table(stats: dict, names: list[str], n_seeds: int, steps: int, net_steps: int) -> None:
    print(f"{'':<8} {'median r [95% CI]':>24} {'median r^2':>10} {'median R^2 [95% CI]':>25} {'beats IS':>18}"
          f"   ({n_seeds} seeds; machines {steps} steps, network {net_steps})")
    for name in names:
        m = stats["machines"][name]
        r, rr, R2 = m["r"], m["r_squared"], m["R2"]
        vs = stats["versus"].get(name)
        beats = (f"{vs['beats']['wins']}/{vs['beats']['n']} [{vs['beats']['ci'][0]:.2f},{vs['beats']['ci'][1]:.2f}]"
                 if vs else "")
        print(f"{name:<8} {r['median']:>8.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] {rr['median']:>10.3f} "
              f"{R2['median']:>9.3f} [{R2['ci'][0]:.3f}, {R2['ci'][1]:.3f}] {beats:>18}")


def run(args) -> int:
    start = time.perf_counter()
    seeds = common.parse_seeds(args.seeds)
    names = parse_machines(args.machine, allow_none=args.net_ceiling is not None)
    overrides = parse_schedule_overrides(args.schedule_for)
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"--schedule-for {unknown[0]}=...: {unknown[0]} is not among --machine ({args.machine})")
    if args.columns <= 0:
        raise ValueError(f"--columns must be a positive int; got {args.columns}")
    if args.figure_seeds < 0:
        raise ValueError(f"--figure-seeds must be 0 (all) or a positive int; got {args.figure_seeds}")
    net_steps = args.steps if args.net_steps is None else args.net_steps
    if net_steps <= 0:
        raise ValueError(f"--net-steps must be a positive int; got {net_steps}")
    device = common.resolve_device(args.device)
    out = common.ensure_out_dir(args.out)
    net, info, data = load_net_and_data(args)
    classes = resolve_seed_classes(args, net, info, data, seeds)
    class_of = None if classes is None else dict(zip(seeds, classes))
    networks = {}
    if args.net_ceiling is not None:
        networks["ceiling"], ceiling_info = load_denoiser(args.net_ceiling, batch_size=args.net_batch_size,
                                                          clip=(-1.0, 1.0) if args.clip else None)
        if (network_num_classes(networks["ceiling"], ceiling_info) is None) != (network_num_classes(net, info) is None):
            raise ValueError("--net-ceiling must be conditioned like --net (both class-conditional or neither)")
        common.network_to(networks["ceiling"], device)
    common.network_to(net, device)  # the network and the training images move to the device once
    data = common.images_to(data, device)
    sigmas = common.noise_sigmas(args)
    net_args = copy.copy(args)
    net_args.steps = net_steps
    net_sigmas = common.noise_sigmas(net_args)

    overlaps, specs, machines, patch_sizes = {}, {}, {}, {}
    for name in names:
        spec = overrides.get(name, args.patch_schedule)
        specs[name] = spec
        what = f"--schedule-for {name}=" if name in overrides else "--patch-schedule"
        if name in overrides or get_machine(name).takes("P"):
            overlaps[name] = check_seed_overlap(spec, seeds, allow=args.allow_seed_overlap, what=what)
        margs = copy.copy(args)
        margs.machine, margs.class_label = name, None  # per-seed classes reach the machine at call time
        margs.patch_schedule = resolve_patch_schedule(spec, args.steps)
        machines[name], schedule = common.build_machine(margs, data, sigmas)
        patch_sizes[name] = schedule.sizes
    common.report_device(device, args.device, show=not args.no_progress)
    net_path = info["path"]
    base_settings = dict(conditional=classes is not None, class_label=args.class_label, data=data.name,
                         n_train=len(data), resize=args.resize, limit=args.limit, sampler=args.sampler, eta=args.eta,
                         noise_schedule=args.noise_schedule, device=device.type)

    def entry_settings(name: str, schedule) -> str:
        """What one entry's samples depend on: a rerun with the same string reuses its finished seeds
        (a machine's samples do not depend on the network, its steps or its clipping)."""
        steps = int(schedule.numel() - 1)
        if name == "network":
            extra = dict(entry=name, steps=steps, net=net_path, net_clip=bool(args.clip))
        elif name in networks:
            extra = dict(entry=name, steps=steps, ceiling=args.net_ceiling, net_clip=bool(args.clip))
        else:
            extra = dict(entry=name, steps=steps, patch_sizes=patch_sizes[name], boundary=args.boundary,
                         keys=args.keys, machine_opts=args.machine_opts, backend=args.backend)
        return json.dumps({**base_settings, **extra}, sort_keys=True)

    sampling_seconds = {}  # per entry: seconds over every run that sampled its seeds (see TimedCheckpoint)

    def sample_fn(name, denoiser, schedule):
        settings = entry_settings(name, schedule)
        path = out / f"per_seed_{name}.npz"
        done = {s: v for s, v in common.load_partial(path, settings).items() if s in set(seeds)}
        done_all = common.load_partial(path, settings)
        if done:
            print(f"{name}: resuming, {len(done)} of {len(seeds)} seeds already finished")
        elif not args.no_progress:
            print(f"sampling {name} ...")

        # keeps seeds of earlier runs with the same settings too, and times every new batch
        checkpoint = common.TimedCheckpoint(path, settings, keep=done_all, done=done)
        results = common.sample_images(denoiser, seeds, data.image_shape, schedule, sampler=args.sampler,
                                       eta=args.eta, batch_size=args.batch_size, progress=not args.no_progress,
                                       done=done, checkpoint=checkpoint, device=device, class_of=class_of)
        timed = [checkpoint.seconds[s] for s in seeds if s in checkpoint.seconds]
        sampling_seconds[name] = dict(seconds=round(sum(timed), 3), timed_seeds=len(timed), seeds=len(seeds))
        return common.stack_results(results, seeds)[0]

    result = compare(net, machines, seeds, sigmas, data.image_shape, sampler=args.sampler, eta=args.eta,
                     sample_fn=sample_fn, net_sigmas=net_sigmas, networks=networks, class_labels=classes)
    seconds = time.perf_counter() - start
    from .. import has_kernel
    pairs = {name: count_machine_pairs(name, patch_sizes[name], classes, data, len(seeds), boundary=args.boundary,
                                       keys=args.keys) for name in names}
    result.settings.update(
        net=net_path, net_config=info["config"],
        net_meta={k: v for k, v in info.items() if k not in ("config", "path")},
        net_ceiling=args.net_ceiling, net_clip=bool(args.clip), net_steps=net_steps,
        conditional=classes is not None, class_label=args.class_label,
        class_rule=None if classes is None else ("--class" if args.class_label is not None
                                                 else "sorted(classes)[splitmix64(seed) % K]"),
        machines=names, patch_schedule=args.patch_schedule, patch_schedules=specs, patch_sizes=patch_sizes,
        seed_overlap={k: v for k, v in overlaps.items() if v}, boundary=args.boundary,
        keys=args.keys, backend=args.backend, kernel=bool(has_kernel(device)), noise_schedule=args.noise_schedule,
        steps=args.steps, data=data.name, data_source=data.source, n_train=len(data), limit=args.limit,
        resize=args.resize, device=device.type, pairs=pairs, network_evaluations=len(seeds) * net_steps
        * (1 + len(networks)), seconds=round(seconds, 1), sampling_seconds=sampling_seconds)
    obj = result.to_json()
    js = io.save_json(out / "compare.json", obj)
    rows = result.per_seed_rows()
    csv = out / "compare_per_seed.csv"
    with io.atomic_open(csv, "w") as handle:
        keys = list(rows[0])
        handle.write(",".join(keys) + "\n")
        for row in rows:
            handle.write(",".join(f"{row[k]:.6f}" if isinstance(row[k], float) else str(row[k]) for k in keys) + "\n")
    arrays = {f"samples_{k}": v.numpy() for k, v in result.samples.items()}
    extra = {} if classes is None else {"class_labels": np.array(classes)}
    io.save_npz(out / "compare_samples.npz", seeds=np.array(seeds), **extra, **arrays)
    pngs = compare_figures(result, out / "compare.png", out / "compare_scatter.png", columns=args.columns,
                           max_seeds=args.figure_seeds or None)
    written = [str(js), str(csv), str(out / "compare_samples.npz"), *map(str, pngs)]
    _print_table(obj["statistics"], result.machines, len(seeds), args.steps, net_steps)
    total_pairs = sum(v for v in pairs.values() if v)
    print(f"{total_pairs:.3g} machine (query pixel, key) pairs, {result.settings['network_evaluations']} network "
          f"evaluations; wrote {', '.join(written)} ({seconds:.1f} s on {device})")
    return 0
