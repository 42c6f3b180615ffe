"""Training of the reference networks (docs/theory.md §6): eps-prediction on the cosine VP schedule.

Loss: ``E_{x0, y, t ~ U(t_min, 1), eps} || eps_theta(x_t, t, y) - eps ||^2`` with
``x_t = sqrt(abar(t)) x0 + sqrt(1 - abar(t)) eps``, ``abar(t) = cos^2(pi t / 2.016)``; ``y`` is
the image's class label for a class-conditional network (``num_classes`` set) and absent otherwise.

Two recipes (``PRESETS``; any field can still be set by hand):

- ``"default"``: AdamW with a linear warm-up and a cosine decay of the learning rate,
  gradient clipping, and an exponential moving average (EMA) of the weights, which is
  what is sampled; the architecture defaults of ``nets`` (GroupNorm, SiLU, FiLM).
- ``"paper"``: the recipe of Kamb & Ganguli (2025): Adam, lr 1e-4, batch 128, the learning
  rate multiplied by 0.999965 after every step, no EMA (the trained weights are sampled),
  no clipping; the paper's architecture (``nets.PAPER_ARCHITECTURES``: no normalisation,
  ReLU, additive embeddings). See docs/calibration.md, "Networks as the paper".

Long runs never lose finished work:

- ``OUT/last.pt`` (model, EMA, optimizer, RNG state, step) is written atomically every
  ``checkpoint_every`` steps, at the end, and when the run is interrupted
  (``KeyboardInterrupt``, which is then re-raised);
- calling :func:`train` again with the same ``out_dir`` resumes from ``last.pt``: the
  data order and noise continue from the saved generator state, so an interrupted and
  resumed run gives the same weights as an uninterrupted one;
- ``OUT/model.pt`` holds the EMA weights only (the raw weights when ``ema_decay = 0``;
  the inference checkpoint that ``nets.load_network`` reads), rewritten with every checkpoint;
- ``OUT/training_log.jsonl`` has one JSON object per logged step
  (``step, loss, lr, seconds, samples_per_s``); on resume, lines past the checkpoint are dropped.

Randomness: ``seed`` fixes the initial weights (``torch.manual_seed``) and one
``torch.Generator`` that draws every batch index, time and noise (a batch's labels are
those of its images, so class conditioning draws nothing more).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from .io import atomic_open
from .nets import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, PAPER_ARCHITECTURES, build_network, check_class_labels, \
    load_checkpoint, network_config, vp_noise, save_network

__all__ = ["TrainConfig", "TrainResult", "train", "preset_config", "PRESETS", "OPTIMIZERS", "LR_SCHEDULES",
           "LAST_CHECKPOINT", "MODEL_FILE", "LOG_FILE"]

OPTIMIZERS = ("adamw", "adam")
LR_SCHEDULES = ("cosine", "exponential")

LAST_CHECKPOINT = "last.pt"
MODEL_FILE = "model.pt"
LOG_FILE = "training_log.jsonl"


@dataclass
class TrainConfig:
    """Network and optimisation settings (all stored in the checkpoint)."""

    arch: str = "resnet"          # "resnet" | "unet"
    width: int = 32
    depth: int = 8                # resnet: number of 3x3 convs; receptive field 2*depth+1
    padding: str = "zeros"        # "zeros" | "circular"
    norm: str = "group"           # "group" | "none"
    activation: str = "silu"      # "silu" | "relu"
    embedding: str = "film"       # "film" | "add" (how the time/class vector enters each block)
    num_classes: Optional[int] = None  # None: unconditional; K: class-conditional on labels 0..K-1
    mults: tuple = (1, 2, 2)      # unet: level widths / width
    down: str = "avg"             # unet: "avg" | "max" pooling
    up: str = "nearest"           # unet: "nearest" | "transpose"
    attention: Optional[str] = None  # resnet: None (the CNN) | "soft" | "top1" (one final self-attention layer)
    attention_exclude: int = 0    # resnet with attention: keys closer than this (Chebyshev) are not attended to
    steps: int = 1000             # total optimisation steps
    batch_size: int = 128
    optimizer: str = "adamw"      # "adamw" | "adam"
    lr: float = 2e-3
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"   # "cosine" (warm-up, cosine decay) | "exponential" (lr * lr_decay^step)
    warmup: int = 100             # linear warm-up steps
    min_lr_ratio: float = 0.1     # cosine decay from lr to lr * min_lr_ratio at `steps`
    lr_decay: float = 0.999965    # exponential: factor per step
    ema_decay: float = 0.995      # 0: no EMA (model.pt holds the trained weights)
    grad_clip: float = 1.0        # 0: no clipping
    t_min: float = 1e-3           # t ~ U(t_min, 1)
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10

    def network_config(self, channels: int) -> dict:
        cfg = dict(arch=self.arch, channels=channels, width=self.width, padding=self.padding, norm=self.norm,
                   activation=self.activation, embedding=self.embedding, num_classes=self.num_classes)
        if self.arch == "resnet":
            cfg["depth"] = self.depth
            if self.attention is not None:
                cfg.update(attention=self.attention, attention_exclude=self.attention_exclude)
        else:
            cfg.update(mults=list(self.mults), down=self.down, up=self.up)
        return cfg

    def check(self) -> "TrainConfig":
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        for name in ("warmup", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int; got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be > 0; got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1); got {self.ema_decay}")
        if not 0.0 <= self.t_min < 1.0:
            raise ValueError(f"t_min must be in [0, 1); got {self.t_min}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1]; got {self.min_lr_ratio}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"lr_decay must be in (0, 1]; got {self.lr_decay}")
        if not (self.grad_clip >= 0 and math.isfinite(self.grad_clip)):
            raise ValueError(f"grad_clip must be >= 0 (0: no clipping); got {self.grad_clip}")
        for name, choices in (("optimizer", OPTIMIZERS), ("lr_schedule", LR_SCHEDULES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}")
        if self.attention is None and self.attention_exclude != 0:
            raise ValueError(f"attention_exclude={self.attention_exclude} needs an attention layer (attention='soft' "
                             "or 'top1')")
        if self.attention is not None and self.arch != "resnet":
            raise ValueError(f"attention is an option of the resnet (a CNN plus one attention layer); arch is "
                             f"{self.arch!r}")
        build_network(self.network_config(1))  # architecture options checked before any data is read
        return self


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    resumed_from: int
    seconds: float                # wall time of this call
    total_seconds: float          # over all resumed calls
    last_loss: float
    losses: list = field(default_factory=list)   # (step, loss) logged in this call


#: Optimiser recipes; ``"paper"`` also selects the paper's architecture (see ``preset_config``).
PRESETS = {
    "default": {},
    "paper": dict(optimizer="adam", lr=1e-4, batch_size=128, lr_schedule="exponential", lr_decay=0.999965,
                  warmup=0, weight_decay=0.0, ema_decay=0.0, grad_clip=0.0),
}


def preset_config(name: str = "default", arch: str = "resnet", **overrides) -> TrainConfig:
    """The :class:`TrainConfig` of preset ``name`` for ``arch``, with ``overrides`` (fields) applied last.

    ``"paper"`` = the paper's optimiser recipe (``PRESETS["paper"]``) and its network
    (``nets.PAPER_ARCHITECTURES[arch]``: 256-channel ResNet or 64/128/256 UNet, no normalisation,
    ReLU, additive embeddings). ``num_classes`` is not part of a preset: pass it.
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {name!r}")
    fields = {"arch": arch}
    if name == "paper":
        if arch not in PAPER_ARCHITECTURES:
            raise ValueError(f"arch must be one of {', '.join(PAPER_ARCHITECTURES)}; got {arch!r}")
        fields.update({k: (tuple(v) if k == "mults" else v) for k, v in PAPER_ARCHITECTURES[arch].items()})
        fields.update(PRESETS[name])
    unknown = sorted(set(overrides) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown TrainConfig fields: {', '.join(unknown)}")
    fields.update(overrides)
    return TrainConfig(**fields).check()


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of optimisation step ``step`` (0-based).

    ``"cosine"``: linear warm-up over ``warmup`` steps, then cosine decay to ``lr * min_lr_ratio`` at ``steps``.
    ``"exponential"``: ``lr * lr_decay ** step`` (after the warm-up, if any): the paper's per-step decay.
    """
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_schedule == "exponential":
        return cfg.lr * cfg.lr_decay ** (step - cfg.warmup)
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float, step: int) -> None:
    d = min(decay, (1 + step) / (10 + step))  # warm-up of the average
    with torch.no_grad():
        for pe, p in zip(ema.state_dict().values(), net.state_dict().values()):
            if pe.dtype.is_floating_point:
                pe.mul_(d).add_(p.detach(), alpha=1 - d)
            else:
                pe.copy_(p)


def _plain_config(cfg: TrainConfig) -> dict:
    """``asdict(cfg)`` with lists for tuples (what a checkpoint stores and a resume compares)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


def _save_training_checkpoint(path: Path, *, net, ema, opt, gen: torch.Generator, step: int, cfg: TrainConfig,
                              meta: dict) -> None:
    ckpt = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": network_config(net),
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "optimizer": opt.state_dict(), "generator": gen.get_state(), "step": int(step),
        "train_config": _plain_config(cfg), "meta": dict(meta),
    }
    if ema is not None:
        ckpt["ema_state_dict"] = {k: v.detach().cpu().clone() for k, v in ema.state_dict().items()}
    with atomic_open(path, "wb") as handle:
        torch.save(ckpt, handle)


def _read_log(path: Path, upto: int) -> list[str]:
    """Log lines with ``step <= upto`` (a resumed run drops what came after its checkpoint)."""
    if not path.exists():
        return []
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= upto:
                keep.append(line)
        except (json.JSONDecodeError, AttributeError):
            continue  # a line cut by a crash
    return keep


# Settings a resumed run must share with the checkpoint (others, e.g. steps or checkpoint_every, may change).
# The optimiser recipe is included: a resumed run must continue the same learning-rate curve and EMA.
_RESUME_KEYS = ("arch", "width", "depth", "padding", "norm", "activation", "embedding", "num_classes", "mults",
                "down", "up", "attention", "attention_exclude", "batch_size", "seed", "optimizer", "lr", "lr_schedule", "lr_decay", "warmup",
                "weight_decay", "ema_decay", "grad_clip", "t_min")


def train(data: torch.Tensor, out_dir: Union[str, os.PathLike], config: Optional[TrainConfig] = None, *,
          labels: Optional[torch.Tensor] = None, resume: bool = True, progress: bool = True,
          time_limit: Optional[float] = None, data_info: Optional[dict] = None, device=None,
          callback: Optional[Callable[[int, float], None]] = None) -> TrainResult:
    """Train (or resume training) an eps-prediction network on ``data [N, C, H, W]`` in ``[-1, 1]``.

    Args:
        data: training images.
        out_dir: checkpoints and log go here; an existing ``last.pt`` is resumed when ``resume``.
        config: :class:`TrainConfig` (defaults if None). On resume the architecture, the optimiser
            recipe, batch size and seed must match the checkpoint; ``steps`` may be raised to train longer.
        labels: int ``[N]`` class of each image, required when ``config.num_classes`` is set
            (class-conditional training) and refused otherwise.
        progress: tqdm bar.
        time_limit: stop (with a checkpoint) after this many seconds of this call.
        data_info: recorded in the checkpoint meta (e.g. data set name and size).
        device: torch device (default CPU).
        callback: ``callback(step, loss)`` after every optimisation step (e.g. to stop a run).
    Returns:
        :class:`TrainResult`. ``KeyboardInterrupt`` saves a checkpoint and propagates.
    """
    cfg = (config or TrainConfig()).check()
    if not isinstance(data, torch.Tensor) or data.dim() != 4 or data.shape[0] == 0:
        raise ValueError(f"data must be a non-empty [N, C, H, W] tensor; got {getattr(data, 'shape', type(data))}")
    if not bool(torch.isfinite(data).all()):
        raise ValueError("data contains NaN or infinite values")
    if cfg.num_classes is None and labels is not None:
        raise ValueError("labels are only used by class-conditional training: set num_classes (--class-conditional)")
    if cfg.num_classes is not None:
        if labels is None:
            raise ValueError(f"class-conditional training (num_classes={cfg.num_classes}) needs labels [N]")
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != data.shape[0]:
            raise ValueError(f"labels must be a [N] tensor with N = {data.shape[0]}; "
                             f"got {getattr(labels, 'shape', type(labels).__name__)}")
        labels = check_class_labels(labels, cfg.num_classes, data.shape[0])
    device = torch.device(device or "cpu")
    data = data.to(device=device, dtype=torch.float32)
    if labels is not None:
        labels = labels.to(device)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    last_path, model_path, log_path = out / LAST_CHECKPOINT, out / MODEL_FILE, out / LOG_FILE

    torch.manual_seed(cfg.seed)
    net = build_network(cfg.network_config(int(data.shape[1]))).to(device)
    ema = copy.deepcopy(net).eval() if cfg.ema_decay > 0 else None
    optimizer = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    opt = optimizer(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    step, total_before = 0, 0.0
    meta = {"data": dict(data_info or {}), "n_train": int(data.shape[0]), "image_shape": list(data.shape[1:]),
            "train_device": device.type}

    if resume and last_path.exists():
        ckpt = load_checkpoint(last_path)
        # a checkpoint written before a field existed used that field's default
        saved = dict(_plain_config(TrainConfig()), **(ckpt.get("train_config") or {}))
        now = _plain_config(cfg)
        diff = {k: (saved.get(k), now[k]) for k in _RESUME_KEYS if saved.get(k) != now[k]}
        if diff:
            raise ValueError(f"cannot resume {last_path}: settings differ from the checkpoint "
                             f"(checkpoint, now): {diff}; use another --out or the same settings")
        if ckpt.get("meta", {}).get("n_train") not in (None, int(data.shape[0])):
            raise ValueError(f"cannot resume {last_path}: it was trained on {ckpt['meta']['n_train']} images, "
                             f"this data set has {data.shape[0]}")
        try:
            net.load_state_dict(ckpt["state_dict"])
            if ema is not None:
                ema.load_state_dict(ckpt["ema_state_dict"])
            opt.load_state_dict(ckpt["optimizer"])
            gen.set_state(ckpt["generator"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise ValueError(f"cannot resume {last_path}: incomplete or mismatched training checkpoint ({exc})") \
                from None
        step = int(ckpt["step"])
        total_before = float(ckpt.get("meta", {}).get("train_seconds", 0.0))
    resumed_from = step
    log_lines = _read_log(log_path, step)
    with atomic_open(log_path, "w") as handle:
        handle.write("".join(line + "\n" for line in log_lines))

    start = time.perf_counter()

    def save() -> None:
        m = dict(meta, step=step, train_seconds=total_before + time.perf_counter() - start,
                 train_config=_plain_config(cfg), torch=str(torch.__version__))
        _save_training_checkpoint(last_path, net=net, ema=ema, opt=opt, gen=gen, step=step, cfg=cfg, meta=m)
        save_network(model_path, net if ema is None else ema, meta=m)
        if not progress:  # a line per checkpoint, so a background run's log shows progress
            print(f"checkpoint step {step}/{cfg.steps} loss {last_loss:.4f} "
                  f"{m['train_seconds']:.0f} s in all -> {last_path}", flush=True)

    from tqdm.auto import tqdm
    bar = tqdm(total=cfg.steps, initial=min(step, cfg.steps), disable=not progress, desc="train", unit="step")
    losses, running, count, last_loss = [], 0.0, 0, float("nan")
    n = data.shape[0]
    net.train()
    try:
        with open(log_path, "a", encoding="utf-8") as log:
            while step < cfg.steps:
                if time_limit is not None and time.perf_counter() - start >= time_limit:
                    break
                idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
                t = cfg.t_min + (1 - cfg.t_min) * torch.rand(cfg.batch_size, generator=gen)
                eps = torch.randn((cfg.batch_size,) + tuple(data.shape[1:]), generator=gen)
                x0, t, eps = data[idx.to(device)], t.to(device), eps.to(device)
                y = () if labels is None else (labels[idx.to(device)],)
                for group in opt.param_groups:
                    group["lr"] = learning_rate(cfg, step)
                loss = torch.nn.functional.mse_loss(net(vp_noise(x0, t, eps), t, *y), eps)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss is {loss.item()} at step {step}; lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                opt.step()
                if ema is not None:
                    _ema_update(ema, net, cfg.ema_decay, step)
                step += 1
                last_loss = float(loss.detach())
                running, count = running + last_loss, count + 1
                bar.update(1)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    secs = total_before + time.perf_counter() - start
                    mean = running / count
                    record = dict(step=step, loss=round(mean, 6), lr=learning_rate(cfg, step - 1),
                                  seconds=round(secs, 2),
                                  samples_per_s=round(step * cfg.batch_size / max(secs, 1e-9), 1))
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    losses.append((step, mean))
                    bar.set_postfix(loss=f"{mean:.4f}")
                    running, count = 0.0, 0
                if step % cfg.checkpoint_every == 0:
                    save()
                if callback is not None:
                    callback(step, last_loss)
    except KeyboardInterrupt:
        bar.close()
        save()
        raise
    bar.close()
    save()
    secs = time.perf_counter() - start
    return TrainResult(out, step, resumed_from, secs, total_before + secs, last_loss, losses)
