"""Training of the reference networks (docs/theory.md §6): eps-prediction on the cosine VP schedule.

Loss: ``E_{x0, t ~ U(t_min, 1), eps} || eps_theta(x_t, t) - eps ||^2`` with
``x_t = sqrt(abar(t)) x0 + sqrt(1 - abar(t)) eps``, ``abar(t) = cos^2(pi t / 2.016)``.
AdamW with a linear warm-up and a cosine decay of the learning rate, and an
exponential moving average (EMA) of the weights, which is what is sampled.

Long runs never lose finished work:

- ``OUT/last.pt`` (model, EMA, optimizer, RNG state, step) is written atomically every
  ``checkpoint_every`` steps, at the end, and when the run is interrupted
  (``KeyboardInterrupt``, which is then re-raised);
- calling :func:`train` again with the same ``out_dir`` resumes from ``last.pt``: the
  data order and noise continue from the saved generator state, so an interrupted and
  resumed run gives the same weights as an uninterrupted one;
- ``OUT/model.pt`` holds the EMA weights only (the inference checkpoint that
  ``nets.load_network`` reads), rewritten with every checkpoint;
- ``OUT/training_log.jsonl`` has one JSON object per logged step
  (``step, loss, lr, seconds, samples_per_s``); on resume, lines past the checkpoint are dropped.

Randomness: ``seed`` fixes the initial weights (``torch.manual_seed``) and one
``torch.Generator`` that draws every batch index, time and noise.
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
from .nets import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, build_network, load_checkpoint, network_config, vp_noise, \
    save_network

__all__ = ["TrainConfig", "TrainResult", "train", "LAST_CHECKPOINT", "MODEL_FILE", "LOG_FILE"]

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
    steps: int = 1000             # total optimisation steps
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup: int = 100             # linear warm-up steps
    min_lr_ratio: float = 0.1     # cosine decay from lr to lr * min_lr_ratio at `steps`
    ema_decay: float = 0.995
    grad_clip: float = 1.0
    t_min: float = 1e-3           # t ~ U(t_min, 1)
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10

    def network_config(self, channels: int) -> dict:
        cfg = dict(arch=self.arch, channels=channels, width=self.width, padding=self.padding, norm=self.norm)
        if self.arch == "resnet":
            cfg["depth"] = self.depth
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


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
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


def _save_training_checkpoint(path: Path, *, net, ema, opt, gen: torch.Generator, step: int, cfg: TrainConfig,
                              meta: dict) -> None:
    ckpt = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": network_config(net),
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "ema_state_dict": {k: v.detach().cpu().clone() for k, v in ema.state_dict().items()},
        "optimizer": opt.state_dict(), "generator": gen.get_state(), "step": int(step),
        "train_config": asdict(cfg), "meta": dict(meta),
    }
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
_RESUME_KEYS = ("arch", "width", "depth", "padding", "norm", "batch_size", "seed")


def train(data: torch.Tensor, out_dir: Union[str, os.PathLike], config: Optional[TrainConfig] = None, *,
          resume: bool = True, progress: bool = True, time_limit: Optional[float] = None,
          data_info: Optional[dict] = None, device=None,
          callback: Optional[Callable[[int, float], None]] = None) -> TrainResult:
    """Train (or resume training) an eps-prediction network on ``data [N, C, H, W]`` in ``[-1, 1]``.

    Args:
        data: training images.
        out_dir: checkpoints and log go here; an existing ``last.pt`` is resumed when ``resume``.
        config: :class:`TrainConfig` (defaults if None). On resume the architecture, batch size
            and seed must match the checkpoint; ``steps`` may be raised to train longer.
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
    device = torch.device(device or "cpu")
    data = data.to(device=device, dtype=torch.float32)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    last_path, model_path, log_path = out / LAST_CHECKPOINT, out / MODEL_FILE, out / LOG_FILE

    torch.manual_seed(cfg.seed)
    net = build_network(cfg.network_config(int(data.shape[1]))).to(device)
    ema = copy.deepcopy(net).eval()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    step, total_before = 0, 0.0
    meta = {"data": dict(data_info or {}), "n_train": int(data.shape[0]), "image_shape": list(data.shape[1:]),
            "train_device": device.type}

    if resume and last_path.exists():
        ckpt = load_checkpoint(last_path)
        saved = ckpt.get("train_config") or {}
        saved.setdefault("norm", "group")
        diff = {k: (saved.get(k), getattr(cfg, k)) for k in _RESUME_KEYS if saved.get(k) != getattr(cfg, k)}
        if diff:
            raise ValueError(f"cannot resume {last_path}: settings differ from the checkpoint "
                             f"(checkpoint, now): {diff}; use another --out or the same settings")
        if ckpt.get("meta", {}).get("n_train") not in (None, int(data.shape[0])):
            raise ValueError(f"cannot resume {last_path}: it was trained on {ckpt['meta']['n_train']} images, "
                             f"this data set has {data.shape[0]}")
        try:
            net.load_state_dict(ckpt["state_dict"])
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
                 train_config=asdict(cfg), torch=str(torch.__version__))
        _save_training_checkpoint(last_path, net=net, ema=ema, opt=opt, gen=gen, step=step, cfg=cfg, meta=m)
        save_network(model_path, ema, meta=m)

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
                for group in opt.param_groups:
                    group["lr"] = learning_rate(cfg, step)
                loss = torch.nn.functional.mse_loss(net(vp_noise(x0, t, eps), t), eps)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss is {loss.item()} at step {step}; lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                opt.step()
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
