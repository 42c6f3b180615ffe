"""``creativity-fast compare``: does the ELS machine predict what a trained network generates?

Samples the network (default: the shipped Fashion-MNIST ResNet) and each machine
(default ``els,local,ideal``) from the same initial noise per seed, then writes
``OUT/compare.json`` (``median_r`` and ``median_r2`` per machine, per-seed values, settings),
``OUT/compare.png`` (rows network | ELS | LS | IS over the same seeds) and
``OUT/compare_samples.npz``. Finished batches are saved as they complete; rerunning the
same command resumes.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import numpy as np

from .. import io
from ..calibration import agreement_figure, compare, default_schedule_path, resolve_patch_schedule
from ..registry import machine_names
from ..adapters import DEFAULT_SCHEDULER, load_denoiser
from ..nets import default_network_path
from . import common

DEFAULT_MACHINES = "els,local,ideal"


def default_patch_schedule() -> str:
    """The shipped calibrated schedule when present, else the paper's Fashion-MNIST schedule."""
    return "calibrated" if default_schedule_path().is_file() else "fashion_mnist"


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
    g.add_argument("--no-clip", action="store_true",
                   help="use the network's raw x0 estimate z - sigma*eps_hat (default: clipped to [-1, 1], "
                        "as DDPM samplers do)")
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
                                  clip=None if args.no_clip else (-1.0, 1.0))
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


def parse_machines(text: str) -> list[str]:
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    known = machine_names()
    bad = [n for n in names if n not in known]
    if not names or bad:
        raise ValueError(f"--machine must be a comma list of registered machines ({', '.join(known)}); got {text!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"--machine lists a machine twice: {text!r}")
    return names


def register(sub) -> None:
    p = sub.add_parser("compare", help="sample a trained network and machines from the same noise; r and R^2")
    common.add_data_options(p)
    common.add_machine_options(p)
    machine = _action(p, "machine")
    machine.choices = None
    machine.help = (f"comma list of machines to compare with the network, any of {', '.join(machine_names())} "
                    "(default: %(default)s)")
    p.set_defaults(machine=DEFAULT_MACHINES, patch_schedule=default_patch_schedule())
    _action(p, "patch_schedule").help = (
        "P per step for the patch machines: an odd int, a comma list, a published schedule name, a calibration "
        "JSON from `creativity-fast calibrate`, or 'calibrated' (the shipped one); default: %(default)s")
    add_network_options(p)
    common.add_sampling_options(p, default_seeds="0-31")
    common.add_device_option(p)
    p.add_argument("--columns", type=int, default=16, help="seeds per figure row block (default: %(default)s)")
    p.add_argument("--out", default="out/compare", help="output directory (default: %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    start = time.perf_counter()
    seeds = common.parse_seeds(args.seeds)
    names = parse_machines(args.machine)
    if args.class_label is not None:
        raise ValueError("compare uses an unconditional network: --class is not supported")
    if args.columns <= 0:
        raise ValueError(f"--columns must be a positive int; got {args.columns}")
    device = common.resolve_device(args.device)
    out = common.ensure_out_dir(args.out)
    net, info, data = load_net_and_data(args)
    common.network_to(net, device)  # the network and the training images move to the device once
    data = common.images_to(data, device)
    sigmas = common.noise_sigmas(args)
    schedule_spec = args.patch_schedule
    args.patch_schedule = resolve_patch_schedule(schedule_spec, args.steps)

    machines, patch_sizes = {}, {}
    for name in names:
        margs = copy.copy(args)
        margs.machine = name
        machines[name], schedule = common.build_machine(margs, data, sigmas)
        patch_sizes[name] = schedule.sizes
    common.report_device(device, args.device, show=not args.no_progress)
    net_path = info["path"]
    partials = []

    def sample_fn(name, denoiser):
        margs = copy.copy(args)
        margs.machine = name
        settings = common.settings_json(margs, data_name=data.name, n_train=len(data), net=net_path,
                                        net_clip=not args.no_clip, seeds_all=seeds, device=device.type)
        partial = common.partial_results_path(out, f"compare_{name}")
        partials.append(partial)
        done = common.load_partial(partial, settings)
        if done:
            print(f"{name}: resuming, {len(done)} of {len(seeds)} samples already finished")
        elif not args.no_progress:
            print(f"sampling {name} ...")
        results = common.sample_images(denoiser, seeds, data.image_shape, sigmas, sampler=args.sampler, eta=args.eta,
                                       batch_size=args.batch_size, progress=not args.no_progress, done=done,
                                       checkpoint=lambda r: common.save_partial(partial, r, settings), device=device)
        return common.stack_results(results, seeds)[0]

    result = compare(net, machines, seeds, sigmas, data.image_shape, sampler=args.sampler, eta=args.eta,
                     sample_fn=sample_fn)
    seconds = time.perf_counter() - start
    from .. import has_kernel
    result.settings.update(
        net=net_path, net_config=info["config"],
        net_meta={k: v for k, v in info.items() if k not in ("config", "path")},
        net_clip=not args.no_clip, machines=names, patch_schedule=schedule_spec, patch_sizes=patch_sizes,
        boundary=args.boundary,
        keys=args.keys, backend=args.backend, kernel=bool(has_kernel(device)), noise_schedule=args.noise_schedule,
        steps=args.steps, data=data.name, data_source=data.source, n_train=len(data), resize=args.resize,
        device=device.type,
        seconds=round(seconds, 1))
    js = io.save_json(out / "compare.json", result.to_json())
    arrays = {f"samples_{k}": v.numpy() for k, v in result.samples.items()}
    io.save_npz(out / "compare_samples.npz", seeds=np.array(seeds), **arrays)
    png = agreement_figure(result, out / "compare.png", columns=args.columns)
    for partial in partials:
        common.remove_quietly(partial)
    print(f"{'machine':<10} {'median r':>9} {'median R2':>10}   ({len(seeds)} seeds, {args.steps} steps)")
    for name in names:
        print(f"{name:<10} {result.median_r[name]:>9.3f} {result.median_r2[name]:>10.3f}")
    print(f"wrote {js}, {png} and {out / 'compare_samples.npz'} ({seconds:.1f} s on {device})")
    return 0
