"""``creativity-fast train``: train a reference eps-prediction network (ResNet or UNet) on the cosine VP schedule.

Writes ``OUT/last.pt`` (resumable), ``OUT/model.pt`` (EMA weights, what ``compare --net`` and
``calibrate --net`` read) and ``OUT/training_log.jsonl``. Rerunning the same command resumes
from ``OUT/last.pt``; raise ``--steps`` to train longer.
"""

from __future__ import annotations

import torch

from ..nets import ARCHITECTURES, NORMS, PADDINGS
from ..training import LAST_CHECKPOINT, TrainConfig, train
from . import common


def register(sub) -> None:
    p = sub.add_parser("train", help="train a reference convolutional diffusion network (eps-prediction, cosine VP)")
    common.add_data_options(p)
    d = TrainConfig()
    g = p.add_argument_group("network")
    g.add_argument("--arch", default=d.arch, choices=ARCHITECTURES, help="default: %(default)s")
    g.add_argument("--width", type=int, default=d.width,
                   help="channels (UNet: of the first level); default: %(default)s")
    g.add_argument("--depth", type=int, default=d.depth,
                   help="ResNet: number of 3x3 convs, receptive field 2*depth+1 (default: %(default)s, 17x17)")
    g.add_argument("--padding", default=d.padding, choices=PADDINGS, help="default: %(default)s")
    g.add_argument("--norm", default=d.norm, choices=NORMS,
                   help="GroupNorm (couples pixels through group statistics) or none (strictly local); "
                        "default: %(default)s")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=d.steps, help="total optimisation steps (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="default: %(default)s")
    g.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate (default: %(default)s)")
    g.add_argument("--warmup", type=int, default=d.warmup, help="warm-up steps (default: %(default)s)")
    g.add_argument("--ema-decay", type=float, default=d.ema_decay, help="default: %(default)s")
    g.add_argument("--seed", type=int, default=d.seed, help="initial weights and data order (default: %(default)s)")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="default: %(default)s")
    g.add_argument("--log-every", type=int, default=d.log_every, help="default: %(default)s")
    g.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop after MINUTES of this run (with a checkpoint; rerun to continue)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    common.add_device_option(g)
    g.add_argument("--fresh", action="store_true", help=f"do not resume from OUT/{LAST_CHECKPOINT}")
    p.add_argument("--out", default="out/train", help="output directory (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.threads is not None:
        if args.threads <= 0:
            raise ValueError(f"--threads must be a positive int; got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.class_label is not None:
        raise ValueError("train makes unconditional networks: --class is not supported")
    cfg = TrainConfig(arch=args.arch, width=args.width, depth=args.depth, padding=args.padding, norm=args.norm,
                      steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, ema_decay=args.ema_decay,
                      seed=args.seed, checkpoint_every=args.checkpoint_every, log_every=args.log_every).check()
    device = common.resolve_device(args.device)
    data = common.load_training_set(args)
    out = common.ensure_out_dir(args.out)
    if not args.fresh and (out / LAST_CHECKPOINT).exists():
        print(f"resuming from {out / LAST_CHECKPOINT}")
    common.report_device(device, args.device, show=not args.no_progress)
    info = dict(name=data.name, source=data.source, path=args.data, limit=args.limit, resize=args.resize)
    result = train(data.images, out, cfg, resume=not args.fresh, progress=not args.no_progress,
                   time_limit=None if args.time_limit is None else 60.0 * args.time_limit,
                   data_info=info, device=device)
    state = "finished" if result.step >= cfg.steps else "stopped (rerun to continue)"
    print(f"{state} at step {result.step}/{cfg.steps}, loss {result.last_loss:.4f}, "
          f"{result.seconds:.0f} s this run on {device}, {result.total_seconds:.0f} s in all; "
          f"wrote {out / 'model.pt'}")
    return 0
