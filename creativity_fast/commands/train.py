"""``creativity-fast train``: train a reference eps-prediction network (ResNet or UNet) on the cosine VP schedule.

Writes ``OUT/last.pt`` (resumable), ``OUT/model.pt`` (EMA weights, or the trained weights without EMA; what
``compare --net`` and ``calibrate --net`` read) and ``OUT/training_log.jsonl``. Rerunning the same command
resumes from ``OUT/last.pt``; raise ``--steps`` to train longer.

``--preset paper`` selects the paper's network and optimiser recipe (docs/calibration.md, "Networks as the
paper"); every option given explicitly overrides the preset (e.g. ``--width 64`` for a CPU-sized ResNet).
``--class-conditional`` trains on the data set's labels (the network gets a class embedding).
"""

from __future__ import annotations

import torch

from ..nets import ACTIVATIONS, ARCHITECTURES, ATTENTIONS, DOWNSAMPLES, EMBEDDINGS, NORMS, PADDINGS, UPSAMPLES
from ..training import LAST_CHECKPOINT, LR_SCHEDULES, OPTIMIZERS, PRESETS, TrainConfig, preset_config, train
from . import common

# (option dest, TrainConfig field) of every option a preset may set; their argparse default is None
# so that "not given" (take the preset's value) differs from "given" (override it).
_CONFIG_OPTIONS = ("arch", "width", "depth", "padding", "norm", "activation", "embedding", "mults", "down", "up",
                   "attention", "attention_exclude",
                   "steps", "batch_size", "optimizer", "lr", "lr_schedule", "lr_decay", "warmup", "ema_decay",
                   "grad_clip", "seed", "checkpoint_every", "log_every")


def _mults(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--mults must look like 1,2,4; got {text!r}") from None
    return values


def register(sub) -> None:
    p = sub.add_parser("train", help="train a reference convolutional diffusion network (eps-prediction, cosine VP)")
    common.add_data_options(p)
    d = TrainConfig()
    p.add_argument("--preset", default="default", choices=tuple(PRESETS),
                   help="default: AdamW, warm-up + cosine lr, EMA, GroupNorm/SiLU/FiLM networks; paper: the "
                        "paper's networks (no norm, ReLU, additive embeddings, 256-channel ResNet / 64-128-256 "
                        "UNet) and recipe (Adam, lr 1e-4, batch 128, lr x 0.999965 per step, no EMA). "
                        "Options given explicitly override it. default: %(default)s")
    p.add_argument("--class-conditional", action="store_true",
                   help="class-conditional network trained on the data set's labels (a class embedding added "
                        "to the time embedding)")
    g = p.add_argument_group("network (defaults shown are the 'default' preset's)")
    g.add_argument("--arch", default=None, choices=ARCHITECTURES, help=f"default: {d.arch}")
    g.add_argument("--width", type=int, default=None,
                   help=f"channels (UNet: of the first level); default: {d.width} (paper: 256 ResNet, 64 UNet)")
    g.add_argument("--depth", type=int, default=None,
                   help=f"ResNet: number of 3x3 convs, receptive field 2*depth+1 (default: {d.depth}, 17x17)")
    g.add_argument("--padding", default=None, choices=PADDINGS, help=f"default: {d.padding}")
    g.add_argument("--norm", default=None, choices=NORMS,
                   help=f"GroupNorm (couples pixels through group statistics) or none (strictly local); "
                        f"default: {d.norm}")
    g.add_argument("--activation", default=None, choices=ACTIVATIONS, help=f"default: {d.activation}")
    g.add_argument("--embedding", default=None, choices=EMBEDDINGS,
                   help=f"time/class vector as per-channel scale+shift (film) or added bias (add); "
                        f"default: {d.embedding}")
    g.add_argument("--mults", type=_mults, default=None, metavar="A,B,C",
                   help="UNet level widths as multiples of --width; default: 1,2,2 (paper: 1,2,4)")
    g.add_argument("--down", default=None, choices=DOWNSAMPLES, help=f"UNet pooling; default: {d.down}")
    g.add_argument("--up", default=None, choices=UPSAMPLES, help=f"UNet up-sampling; default: {d.up}")
    g.add_argument("--attention", default=None, choices=ATTENTIONS,
                   help="ResNet: add one self-attention layer over all positions after the last block: soft "
                        "(softmax) or top1 (one key per query, straight-through gradients); docs/attention.md. "
                        "default: none (the CNN)")
    g.add_argument("--attention-exclude", type=int, default=None, metavar="R",
                   help="with --attention: keys within Chebyshev distance < R of the query are not attended to "
                        f"(default: {d.attention_exclude}, every key)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=None, help=f"total optimisation steps (default: {d.steps})")
    g.add_argument("--batch-size", type=int, default=None, help=f"default: {d.batch_size}")
    g.add_argument("--optimizer", default=None, choices=OPTIMIZERS, help=f"default: {d.optimizer}")
    g.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default: {d.lr})")
    g.add_argument("--lr-schedule", default=None, choices=LR_SCHEDULES,
                   help=f"cosine: warm-up then cosine decay; exponential: lr x LR_DECAY per step "
                        f"(default: {d.lr_schedule})")
    g.add_argument("--lr-decay", type=float, default=None, help=f"exponential schedule factor (default: {d.lr_decay})")
    g.add_argument("--warmup", type=int, default=None, help=f"warm-up steps (default: {d.warmup})")
    g.add_argument("--ema-decay", type=float, default=None, help=f"0: no EMA (default: {d.ema_decay})")
    g.add_argument("--grad-clip", type=float, default=None, help=f"0: no clipping (default: {d.grad_clip})")
    g.add_argument("--seed", type=int, default=None, help=f"initial weights and data order (default: {d.seed})")
    g.add_argument("--checkpoint-every", type=int, default=None, help=f"steps (default: {d.checkpoint_every})")
    g.add_argument("--log-every", type=int, default=None, help=f"default: {d.log_every}")
    g.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop after MINUTES of this run (with a checkpoint; rerun to continue)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    common.add_device_option(g)
    g.add_argument("--fresh", action="store_true", help=f"do not resume from OUT/{LAST_CHECKPOINT}")
    p.add_argument("--out", default="out/train", help="output directory (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true",
                   help="hide the progress bar (a line is printed at every checkpoint instead)")
    p.set_defaults(func=run)


def _num_classes(data) -> int:
    """Class count of a labelled data set: its class names, else the largest label + 1."""
    if data.labels is None:
        raise ValueError("--class-conditional needs a labelled data set; this one has no labels")
    if data.class_names:
        return len(data.class_names)
    return int(data.labels.max()) + 1


def run(args) -> int:
    if args.threads is not None:
        if args.threads <= 0:
            raise ValueError(f"--threads must be a positive int; got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.class_label is not None:
        raise ValueError("train does not take --class: use --class-conditional to train on every class's labels")
    overrides = {name: getattr(args, name) for name in _CONFIG_OPTIONS if getattr(args, name) is not None}
    arch = overrides.pop("arch", TrainConfig.arch)
    preset_config(args.preset, arch, **overrides)  # bad options fail before the data is read
    device = common.resolve_device(args.device)
    data = common.load_training_set(args)
    num_classes = _num_classes(data) if args.class_conditional else None
    cfg = preset_config(args.preset, arch, num_classes=num_classes, **overrides)
    out = common.ensure_out_dir(args.out)
    if not args.fresh and (out / LAST_CHECKPOINT).exists():
        print(f"resuming from {out / LAST_CHECKPOINT}", flush=True)
    common.report_device(device, args.device, show=not args.no_progress)
    info = dict(name=data.name, source=data.source, path=args.data, limit=args.limit, resize=args.resize,
                preset=args.preset, class_conditional=bool(args.class_conditional),
                class_names=list(data.class_names) if args.class_conditional and data.class_names else None)
    result = train(data.images, out, cfg, labels=data.labels if num_classes is not None else None,
                   resume=not args.fresh, progress=not args.no_progress,
                   time_limit=None if args.time_limit is None else 60.0 * args.time_limit,
                   data_info=info, device=device)
    state = "finished" if result.step >= cfg.steps else "stopped (rerun to continue)"
    print(f"{state} at step {result.step}/{cfg.steps}, loss {result.last_loss:.4f}, "
          f"{result.seconds:.0f} s this run on {device}, {result.total_seconds:.0f} s in all; "
          f"wrote {out / 'model.pt'}")
    return 0
