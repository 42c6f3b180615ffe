"""``creativity-fast calibrate``: fit a patch-size schedule to a trained network.

Along the network's own sampling trajectory, every step tries each candidate ``P`` for
the machine (default ELS) and scores its agreement with the network per seed (cosine
similarity of scores, or MSE); per step it keeps the median over seeds of each seed's best
``P`` (``--selection per_seed``, the paper's rule) or the ``P`` with the best median score
(``--selection median_score``). Calibrate LS separately (``--machine local``). The default
seeds (1000-1015) are disjoint from ``compare``'s evaluation seeds, which ``compare`` checks.
Class-conditional networks give every seed a class as ``compare`` does. Writes ``OUT/calibration.json``
(``patch_sizes`` in sampling order plus the whole score table; pass it to
``compare --patch-schedule OUT/calibration.json`` or ``sample --patch-schedule``
after ``creativity_fast.calibration.load_patch_schedule``) and ``OUT/calibration.png``.
Finished steps are saved as they complete (``calibration_tables.npz``, kept); rerunning the
same command resumes, and once finished reruns only the network's trajectories.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from .. import io
from ..calibration import METRICS, SELECTIONS, calibrate, calibration_figure, save_calibration
from ..registry import make_denoiser
from . import common
from .compare import _action, add_network_options, load_net_and_data, resolve_seed_classes


def parse_candidates(text: str) -> list[int]:
    """``"3-27"`` (every odd P in the range), ``"3,5,9"`` or a mix -> sorted odd patch sizes."""
    sizes: set[int] = set()
    try:
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo or lo % 2 == 0 or hi % 2 == 0:
                    raise ValueError
                sizes.update(range(lo, hi + 1, 2))
            else:
                sizes.add(int(part))
    except ValueError:
        raise ValueError(f"--candidates must look like '3-27' (odd bounds) or '3,5,7'; got {text!r}") from None
    if not sizes or any(p <= 0 or p % 2 == 0 for p in sizes):
        raise ValueError(f"--candidates must be odd positive patch sizes; got {text!r}")
    return sorted(sizes)


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="fit the machine's patch size per step to a trained network")
    common.add_data_options(p)
    common.add_machine_options(p)
    _action(p, "patch_schedule").help = argparse.SUPPRESS  # calibration chooses P itself
    add_network_options(p)
    common.add_sampling_options(p, default_seeds="1000-1015")
    common.add_device_option(p)
    p.add_argument("--candidates", default="3-27",
                   help="patch sizes to try: '3-27' (odd) or '3,5,7' (default: %(default)s)")
    p.add_argument("--metric", default="cosine", choices=METRICS,
                   help="cosine similarity of scores (higher is better) or MSE of x0_hat (default: %(default)s)")
    p.add_argument("--selection", default="per_seed", choices=SELECTIONS,
                   help="per step: the median over seeds of each seed's best P (per_seed, the paper's rule) or "
                        "the P with the best median score (median_score) (default: %(default)s)")
    p.add_argument("--out", default="out/calibrate", help="output directory (default: %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    start = time.perf_counter()
    seeds = common.parse_seeds(args.seeds)
    candidates = parse_candidates(args.candidates)
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be a positive int; got {args.batch_size}")
    device = common.resolve_device(args.device)
    out = common.ensure_out_dir(args.out)
    net, info, data = load_net_and_data(args)
    classes = resolve_seed_classes(args, net, info, data, seeds)
    common.network_to(net, device)  # the network and the training images move to the device once
    data = common.images_to(data, device)
    sigmas = common.noise_sigmas(args)

    opts = common.parse_machine_opts(getattr(args, "machine_opts", []))

    def factory(images, P):
        return make_denoiser(args.machine, images, **common.machine_kwargs(
            args.machine, opts, P=P, boundary=args.boundary, keys=args.keys, backend=args.backend,
            labels=None if classes is None else data.labels))

    settings = json.dumps(dict(net=info["path"], net_clip=bool(args.clip), machine=args.machine, machine_opts=opts,
                               boundary=args.boundary, keys=args.keys,
                               steps=args.steps, noise_schedule=args.noise_schedule, sampler=args.sampler,
                               eta=args.eta, seeds=seeds, candidates=candidates, metric=args.metric,
                               data=data.name, n_train=len(data), resize=args.resize, limit=args.limit,
                               class_labels=classes,
                               device=device.type), sort_keys=True)
    # The per-step score tables [candidates, seeds], saved as each step finishes and kept: an
    # interrupted run resumes from them, and a finished one reruns without a machine call.
    tables_path = out / "calibration_tables.npz"
    done = {}
    for path in (tables_path, common.partial_results_path(out, "calibrate")):  # the second: older versions
        arrays = common.matching_partial(path, settings)
        if arrays is not None and "tables" in arrays and "steps" in arrays:
            done = {int(i): arrays["tables"][k] for k, i in enumerate(arrays["steps"])}
            break
    if done:
        print(f"resuming: {len(done)} of {args.steps} steps already calibrated")

    def checkpoint(tables):
        steps = sorted(tables)
        io.save_npz(tables_path, steps=np.array(steps), tables=np.stack([tables[i] for i in steps]),
                    settings=np.array(settings))

    common.report_device(device, args.device, show=not args.no_progress)
    result = calibrate(net, factory, data.images, sigmas, candidates, seeds, metric=args.metric,
                       sampler=args.sampler, eta=args.eta, batch_size=args.batch_size,
                       progress=not args.no_progress, done=done, checkpoint=checkpoint, selection=args.selection,
                       class_labels=classes)
    seconds = time.perf_counter() - start
    js = save_calibration(out / "calibration.json", result, net=info["path"], net_config=info["config"],
                          net_clip=bool(args.clip), machine=args.machine, machine_opts=opts, boundary=args.boundary,
                          keys=args.keys,
                          noise_schedule=args.noise_schedule, sampler=args.sampler, data=data.name,
                          n_train=len(data), limit=args.limit, resize=args.resize, conditional=classes is not None,
                          class_label=args.class_label, device=device.type, seconds=round(seconds, 1))
    png = calibration_figure(result, out / "calibration.png")
    checkpoint({i: result.per_seed[i] for i in range(len(result.per_seed))})  # also when every step was resumed
    common.remove_quietly(common.partial_results_path(out, "calibrate"))
    print(f"patch sizes (highest noise first; {args.selection} selection over {len(seeds)} seeds):",
          " ".join(map(str, result.patch_sizes)))
    print("best median", args.metric, "per step:", " ".join(f"{v:.3f}" for v in result.best_scores))
    print(f"wrote {js} and {png} ({seconds:.1f} s on {device}); use it with --patch-schedule {js}")
    return 0
