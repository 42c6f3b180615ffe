"""``creativity-fast sample``: draw samples from a machine and write ``samples.png`` + ``samples.npz``."""

from __future__ import annotations

import time

import numpy as np

from .. import io
from ..viz import save_image_grid
from . import common


def register(sub) -> None:
    p = sub.add_parser("sample", help="sample from a score machine (default: ELS on embedded Fashion-MNIST)")
    common.add_data_options(p)
    common.add_machine_options(p)
    common.add_sampling_options(p)
    p.add_argument("--out", default="out/sample", help="output directory (default: %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    start = time.perf_counter()
    seeds = common.parse_seeds(args.seeds)
    out = common.ensure_out_dir(args.out)
    data = common.load_training_set(args)
    sigmas = common.noise_sigmas(args)
    denoiser, schedule = common.build_machine(args, data, sigmas)
    settings = common.settings_json(args, data_name=data.name, n_train=len(data))
    partial = common.partial_results_path(out, "samples")
    done = common.load_partial(partial, settings)
    if done:
        print(f"resuming: {len(done)} of {len(seeds)} samples already finished")
    results = common.sample_images(
        denoiser, seeds, data.image_shape, sigmas, sampler=args.sampler, eta=args.eta,
        batch_size=args.batch_size, progress=not args.no_progress, done=done,
        checkpoint=lambda r: common.save_partial(partial, r, settings))
    samples, provenance = common.stack_results(results, seeds)
    arrays = dict(samples=samples.numpy(), seeds=np.array(seeds), settings=np.array(settings),
                  sigmas=sigmas.numpy(), patch_sizes=np.array(schedule.sizes))
    if provenance is not None:
        arrays["provenance"] = provenance.numpy()
    npz = io.save_npz(out / "samples.npz", **arrays)
    png = save_image_grid(samples, out / "samples.png")
    common.remove_quietly(partial)
    print(f"wrote {png} and {npz} ({len(seeds)} samples, {args.machine}, {args.steps} steps, "
          f"{time.perf_counter() - start:.1f} s)")
    return 0
