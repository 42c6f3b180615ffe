"""``creativity-fast sample``: draw samples from a machine and write ``samples.png`` + ``samples.npz``.

Launched by ``torchrun`` with several ranks, the training set is sharded: each rank
loads only its part, the machines merge their softmax partials exactly over the
ranks (``creativity_fast.distributed``), every rank runs the same seeds, and rank 0
alone prints and writes the same files as one process would.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import distributed, io
from ..viz import save_image_grid
from . import common


PEER_GRACE_S = 2.0  # a rank failing because a peer failed exits this much later than the peer


def register(sub) -> None:
    p = sub.add_parser("sample", help="sample from a score machine (default: ELS on embedded Fashion-MNIST)")
    common.add_data_options(p)
    common.add_machine_options(p)
    common.add_sampling_options(p)
    common.add_device_option(p)
    p.add_argument("--out", default="out/sample", help="output directory (default: %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    world = distributed.init_from_env()  # None unless launched by torchrun with several ranks
    if world is None:
        return _run(args)
    try:
        return _run(args, world)
    except distributed.DistributedError as exc:  # a peer failed or hung: one line, exit status 1
        print(f"creativity-fast: error: {exc}", file=sys.stderr, flush=True)
        time.sleep(PEER_GRACE_S)  # so that torchrun reports the rank that failed first as the root cause
        raise SystemExit(1) from None
    except Exception as exc:
        distributed.tag_rank(exc, world)  # the one-line error says which rank failed
        raise
    finally:
        distributed.shutdown()  # also releases the other ranks at once when this one failed


def _run(args, world=None) -> int:
    start = time.perf_counter()
    lead = world is None or world.rank == 0  # the rank that prints and writes
    seeds = common.parse_seeds(args.seeds)
    device = common.resolve_device(args.device, local_rank=None if world is None else world.local_rank)
    out = common.ensure_out_dir(args.out) if lead else Path(args.out)
    sharded = world is not None and distributed.is_shardable(args.machine)
    data = common.load_training_set(args, shard=(world.rank, world.size) if sharded else None)
    shard = distributed.locate_shard(len(data)) if sharded else None
    if world is not None and device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives run on the current device
    data = common.images_to(data, device)
    if world is not None and not sharded and lead:
        print(f"note: --machine {args.machine} has no sharded form; each of the {world.size} ranks computes it "
              "on the whole training set")
    sigmas = common.noise_sigmas(args)
    denoiser, schedule = common.build_machine(args, data, sigmas, shard=shard)
    settings = common.settings_json(args, data_name=data.name, n_train=len(data) if shard is None else shard.total,
                                    device=device.type)
    if lead:
        common.report_device(device, args.device, show=not args.no_progress)
    partial = common.partial_results_path(out, "samples")
    done = common.load_partial(partial, settings) if lead else {}
    if world is not None:  # every rank must run the same remaining seeds (its collectives pair up)
        done_seeds = distributed.broadcast_ints(sorted(done))
        done = done if lead else {s: None for s in done_seeds}
    if done and lead:
        print(f"resuming: {len(done)} of {len(seeds)} samples already finished")
    results = common.sample_images(
        denoiser, seeds, data.image_shape, sigmas, sampler=args.sampler, eta=args.eta,
        batch_size=args.batch_size, progress=lead and not args.no_progress, done=done,
        checkpoint=(lambda r: common.save_partial(partial, r, settings)) if lead else None, device=device)
    if not lead:
        return 0
    samples, provenance = common.stack_results(results, seeds)
    arrays = dict(samples=samples.numpy(), seeds=np.array(seeds), settings=np.array(settings),
                  sigmas=sigmas.numpy(), patch_sizes=np.array(schedule.sizes))
    if provenance is not None:
        arrays["provenance"] = provenance.numpy()
    npz = io.save_npz(out / "samples.npz", **arrays)
    png = save_image_grid(samples, out / "samples.png")
    common.remove_quietly(partial)
    ranks = "" if world is None else f", {world.size} ranks"
    print(f"wrote {png} and {npz} ({len(seeds)} samples, {args.machine}, {args.steps} steps{ranks}, {device}, "
          f"{time.perf_counter() - start:.1f} s)")
    return 0
