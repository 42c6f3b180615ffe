"""Reference convolutional diffusion networks and their use as denoisers (docs/theory.md §6).

Two small eps-prediction networks like those of Kamb & Ganguli (2025), trained on
the cosine VP schedule ``abar(t) = cos^2(pi t / 2.016)``:

- ``ConvResNet``: a stack of ``depth`` 3x3 convolutions (input conv, residual blocks
  of two convs, output conv) at a constant width, no down-sampling. Its receptive
  field is ``2 * depth + 1`` pixels wide: ``depth = 8`` gives the paper's 17x17.
- ``SmallUNet``: a 3-level UNet (resolutions H, H/2, H/4) with one residual block
  per level and side, for comparison with a network of global receptive field.

``ConvResNet(attention="soft" | "top1")`` is the same CNN plus ONE self-attention layer over all
positions after its last residual block (``SelfAttention``; docs/attention.md): the attention
layer's parameters are the only ones the baseline lacks, so a trained pair isolates what
attention adds (docs/theory.md §3.7 is the closed-form optimum of the ``"top1"`` form).

Both take ``(x_t [B,C,H,W], t [B], class_labels [B] or None)`` with
``x_t = sqrt(abar) x0 + sqrt(1-abar) eps`` and return ``eps_hat``. Time enters through a
sinusoidal embedding and an MLP; a class-conditional network (``num_classes=K``) adds a
learned class vector (``nn.Embedding(K, .)``) to that time vector, so both reach every
residual block the same way. Each block uses the vector either as a per-channel scale
and shift (``embedding="film"``, the default) or as a per-channel bias added after its
first convolution (``embedding="add"``, the paper's additive embedding). Both are
spatially constant, so neither widens the receptive field.

Options (defaults are the original networks, so old checkpoints rebuild unchanged):
``norm`` ``"group"`` | ``"none"`` (no normalisation layer at all: strictly local),
``activation`` ``"silu"`` | ``"relu"``, and for the UNet ``mults`` (level widths as
multiples of ``width``; default ``(1, 2, 2)``), ``down`` ``"avg"`` | ``"max"`` (pooling) and
``up`` ``"nearest"`` | ``"transpose"`` (2x2 stride-2 transposed convolution).
``PAPER_ARCHITECTURES`` holds the paper's choices per network (docs/calibration.md,
"Networks as the paper"). Convolutions use ``padding_mode`` ``"zeros"`` (the paper's
zero-padded networks, compared with the boundary-broken ELS machine) or ``"circular"``.

Class labels rule: a class-conditional network needs ``class_labels`` (int ``[B]`` in
``[0, K)``) and raises a ``ValueError`` without them; an unconditional network raises
a ``ValueError`` when given labels (it cannot use them, and silently ignoring them
would hide a mismatch between a class-conditional machine and its network).

``NetworkDenoiser(net)`` wraps such a network as a sigma-space denoiser
``denoiser(z, sigma) -> x0_hat`` (docs/theory.md §2): ``abar = 1 / (1 + sigma^2)``,
``x_t = sqrt(abar) z``, ``t = (2.016 / pi) atan(sigma)``, and
``x0_hat = z - sigma * eps_hat``, clipped to the data range ``[-1, 1]`` by default (the
``clip_denoised`` of DDPM samplers; the true posterior mean lies in the data's convex
hull, and every machine's output does). Without the clip, the ``sigma`` factor turns a
small eps error at ``sigma ~ 80`` into an x0 error of several units.

Checkpoints are plain dictionaries of tensors and primitive values, read with
``torch.load(..., weights_only=True)`` (never runs code from the file)::

    {"format": "creativity_fast.net", "version": 1, "config": {...}, "state_dict": {...}, "meta": {...}}

``config`` is what ``build_network(config)`` needs; ``meta`` records the training
run (data set, steps, seconds...). Training checkpoints (``training.py``) add the
optimizer, EMA and RNG states under further keys and load the same way.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn
from torch.nn import functional as F

from ._validate import sigma_float64
from .schedules import COSINE_S

__all__ = [
    "ARCHITECTURES", "PADDINGS", "NORMS", "ConvResNet", "SmallUNet", "build_network", "NetworkDenoiser",
    "load_network", "load_checkpoint", "save_network", "network_checkpoint", "default_network_path",
    "vp_noise", "CHECKPOINT_FORMAT", "ACTIVATIONS", "EMBEDDINGS", "DOWNSAMPLES", "UPSAMPLES",
    "PAPER_ARCHITECTURES", "paper_network_config", "check_class_labels", "ATTENTIONS", "SelfAttention",
]

CHECKPOINT_FORMAT = "creativity_fast.net"
CHECKPOINT_VERSION = 1
ARCHITECTURES = ("resnet", "unet")
PADDINGS = ("zeros", "circular")
NORMS = ("group", "none")
ACTIVATIONS = ("silu", "relu")
EMBEDDINGS = ("film", "add")
DOWNSAMPLES = ("avg", "max")
UPSAMPLES = ("nearest", "transpose")
ATTENTIONS = ("soft", "top1")

#: The paper's networks (Kamb & Ganguli 2025; docs/calibration.md "Networks as the paper"): no normalisation,
#: ReLU, additive time (and class) embeddings; the ResNet has 8 3x3 convs (receptive field 17) at 256 channels,
#: the UNet 3 levels of 64/128/256 channels, max-pool down, transposed convolutions up.
PAPER_ARCHITECTURES = {
    "resnet": dict(arch="resnet", width=256, depth=8, padding="zeros", norm="none", activation="relu",
                   embedding="add"),
    "unet": dict(arch="unet", width=64, mults=[1, 2, 4], padding="zeros", norm="none", activation="relu",
                 embedding="add", down="max", up="transpose"),
}


def paper_network_config(arch: str, *, channels: int = 1, num_classes: Optional[int] = None,
                         width: Optional[int] = None) -> dict:
    """``build_network`` config of the paper's ``arch`` (``"resnet"`` | ``"unet"``), optionally narrower/wider."""
    if arch not in PAPER_ARCHITECTURES:
        raise ValueError(f"arch must be one of {', '.join(PAPER_ARCHITECTURES)}; got {arch!r}")
    cfg = dict(PAPER_ARCHITECTURES[arch], channels=channels, num_classes=num_classes)
    if width is not None:
        cfg["width"] = width
    return cfg

#: The network shipped with the package (trained by ``creativity-fast train``; see docs/calibration.md).
DEFAULT_NETWORK = "fashion_mnist_resnet.pt"


def default_network_path() -> Path:
    """Path of the shipped Fashion-MNIST ResNet checkpoint (it may be absent in a source checkout)."""
    return Path(__file__).resolve().parent / "checkpoints" / DEFAULT_NETWORK


# --------------------------------------------------------------------------- #
# building blocks
# --------------------------------------------------------------------------- #

def _groups(width: int) -> int:
    """Largest group count <= 8 that divides ``width`` (GroupNorm)."""
    for g in (8, 4, 2, 1):
        if width % g == 0:
            return g
    return 1


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of ``t [B]`` in ``[0, 1]`` (scaled by 1000 as in DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _norm(kind: str, width: int) -> nn.Module:
    return nn.GroupNorm(_groups(width), width) if kind == "group" else nn.Identity()


def _conv3x3(cin: int, cout: int, padding: str) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, padding_mode=padding)


_ACTIVATION_FUNCTIONS = {"silu": F.silu, "relu": F.relu}
_ACTIVATION_MODULES = {"silu": nn.SiLU, "relu": nn.ReLU}


class _TimeMLP(nn.Module):
    """``t [B] -> [B, 2*dim]``: sinusoidal embedding, Linear, activation, Linear."""

    def __init__(self, dim: int, activation: str = "silu"):
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(nn.Linear(dim, 2 * dim), _ACTIVATION_MODULES[activation](),
                                 nn.Linear(2 * dim, 2 * dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(timestep_embedding(t, self.dim))


class ResBlock(nn.Module):
    """``skip(x) + conv(act(...conv(act(norm(x))) (+) emb...))``: one or two 3x3 convolutions.

    The embedding vector ``temb [B, E]`` enters after the first convolution, as a per-channel
    scale and shift (``embedding="film"``: ``h (1 + scale) + shift``) or as a per-channel bias
    (``embedding="add"``: ``h + W temb``).
    """

    def __init__(self, cin: int, cout: int, temb_dim: int, padding: str, convs: int = 2, norm: str = "group",
                 activation: str = "silu", embedding: str = "film"):
        super().__init__()
        if convs not in (1, 2):
            raise ValueError(f"convs must be 1 or 2; got {convs}")
        self.act = _ACTIVATION_FUNCTIONS[activation]
        self.embedding = embedding
        self.norm1 = _norm(norm, cin)
        self.conv1 = _conv3x3(cin, cout, padding)
        if embedding == "film":
            self.film = nn.Linear(temb_dim, 2 * cout)
        else:
            self.emb = nn.Linear(temb_dim, cout)
        self.convs = convs
        if convs == 2:
            self.norm2 = _norm(norm, cout)
            self.conv2 = _conv3x3(cout, cout, padding)
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        if self.embedding == "film":
            scale, shift = self.film(temb)[:, :, None, None].chunk(2, dim=1)
            h = (self.norm2(h) if self.convs == 2 else h) * (1 + scale) + shift
        else:
            h = h + self.emb(temb)[:, :, None, None]
            if self.convs == 2:
                h = self.norm2(h)
        if self.convs == 2:
            h = self.conv2(self.act(h))
        return self.skip(x) + h


def check_class_labels(class_labels, num_classes: Optional[int], batch: int, device=None) -> Optional[torch.Tensor]:
    """``class_labels`` as int64 ``[batch]`` (a single label is broadcast), checked against the network.

    A network with ``num_classes=None`` is unconditional and must get ``None``; one with
    ``num_classes=K`` must get labels in ``[0, K)``.
    """
    if num_classes is None:
        if class_labels is not None:
            raise ValueError("this network is unconditional (num_classes=None): class_labels must be None")
        return None
    if class_labels is None:
        raise ValueError(f"this network is class-conditional (num_classes={num_classes}): class_labels "
                         f"(ints in [0, {num_classes}), one per image) are required")
    labels = torch.as_tensor(class_labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"class_labels must be integers; got dtype {labels.dtype}")
    labels = labels.reshape(-1).long()
    if labels.numel() == 1:
        labels = labels.expand(batch)
    if labels.numel() != batch:
        raise ValueError(f"class_labels has {labels.numel()} values for a batch of {batch}")
    if batch and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"class_labels must lie in [0, {num_classes}); got {int(labels.min())}..{int(labels.max())}")
    return labels if device is None else labels.to(device)


class _Conditioning(nn.Module):
    """Shared by both networks: the embedding vector ``act(time_mlp(t) + class_embed(y)) [B, 2*temb_dim]``."""

    def _init_conditioning(self, temb_dim: int, activation: str, num_classes: Optional[int]) -> None:
        self.activation, self.num_classes = activation, num_classes
        self.time = _TimeMLP(temb_dim, activation)
        # nn.Embedding's N(0, 1) start; Adam's steps do not depend on the scale
        self.class_embed = None if num_classes is None else nn.Embedding(num_classes, 2 * temb_dim)

    def embed(self, x: torch.Tensor, t: torch.Tensor, class_labels) -> torch.Tensor:
        labels = check_class_labels(class_labels, self.num_classes, x.shape[0], device=x.device)
        e = self.time(t)
        if labels is not None:
            e = e + self.class_embed(labels)
        return _ACTIVATION_FUNCTIONS[self.activation](e)


class SelfAttention(nn.Module):
    """One self-attention layer over all ``H*W`` positions, added residually: ``h + W_o (A V)``.

    ``h [B, D, H, W]``; ``q, k, v = W_{q,k,v} norm(h)`` (1x1 convolutions, ``D`` channels each);
    scores ``s_xy = <q_x, k_y> / sqrt(D)``, ``-inf`` for keys ``y`` closer to ``x`` than ``exclude``
    in Chebyshev distance (``exclude = 0``: every key; the same rule as the machines' attention).

    - ``mode="soft"``: ``A = softmax_y(s)``.
    - ``mode="top1"``: ``A = onehot(argmax_y s)`` in the forward pass (lowest flat index on ties),
      so each output position reads exactly one key's value; trained with the straight-through
      estimator ``A = onehot + softmax(s) - stop_grad(softmax(s))``: the backward pass is the soft
      layer's, the forward value is exactly the one-hot (``softmax - softmax`` is exactly 0).

    ``W_o`` starts at zero, so at initialisation the network equals its CNN baseline.
    """

    def __init__(self, width: int, mode: str = "soft", norm: str = "group", exclude: int = 0):
        super().__init__()
        if mode not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}; got {mode!r}")
        self.mode, self.exclude = mode, _check_int(exclude, "attention_exclude", 0)
        self.norm = _norm(norm, width)
        self.qkv = nn.Conv2d(width, 3 * width, 1)
        self.proj = nn.Conv2d(width, width, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def _key_mask(self, H: int, W: int, device) -> Optional[torch.Tensor]:
        """``[HW, HW]`` bool, True where key ``y`` is admissible for query ``x`` (None: all are)."""
        if self.exclude == 0:
            return None
        from .reference import _outside_exclusion
        mask = _outside_exclusion(H, W, self.exclude, device)
        if not bool(mask.any(1).all()):
            raise ValueError(f"attention_exclude={self.exclude} leaves some query of a {H}x{W} image "
                             "without any key; lower attention_exclude")
        return mask

    def scores(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``s [B, HW, HW]`` (query rows, key columns) and values ``v [B, HW, D]``."""
        B, D, H, W = h.shape
        q, k, v = self.qkv(self.norm(h)).reshape(B, 3, D, H * W).transpose(2, 3).unbind(1)
        s = q @ k.transpose(1, 2) / math.sqrt(D)
        mask = self._key_mask(H, W, h.device)
        return (s if mask is None else s.masked_fill(~mask, float("-inf"))), v

    def weights(self, h: torch.Tensor) -> torch.Tensor:
        """Attention weights ``A [B, HW, HW]`` as the forward pass uses them (rows sum to 1)."""
        s, _ = self.scores(h)
        return self._weights(s)

    def _weights(self, s: torch.Tensor) -> torch.Tensor:
        soft = torch.softmax(s, dim=-1)
        if self.mode == "soft":
            return soft
        hard = F.one_hot(s.argmax(-1), s.shape[-1]).to(soft.dtype)
        return hard + (soft - soft.detach())  # straight-through: forward hard, backward soft

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, D, H, W = h.shape
        s, v = self.scores(h)
        out = (self._weights(s) @ v).transpose(1, 2).reshape(B, D, H, W)
        return h + self.proj(out)


class ConvResNet(_Conditioning):
    """ResNet of ``depth`` 3x3 convolutions at constant ``width``: receptive field ``2*depth+1``.

    Layout: 3x3 input conv, ``depth - 2`` convs in residual blocks of two (the last
    block has one when ``depth`` is odd), 3x3 output conv after GroupNorm + SiLU.

    ``norm="group"`` (GroupNorm before each conv) couples all pixels through each group's
    mean and variance: the convolutional path sees ``(2*depth+1)^2`` pixels, the
    normalisation statistics see the whole image. ``norm="none"`` makes the network
    strictly local (exactly the receptive field above). ``activation``, ``embedding`` and
    ``num_classes`` as in the module doc; ``PAPER_ARCHITECTURES["resnet"]`` is the paper's.

    ``attention``: None (the CNN), ``"soft"`` or ``"top1"``: one :class:`SelfAttention` layer
    (keys closer than ``attention_exclude`` excluded) after the last residual block, before the
    output convolution. It is built last, so under one ``torch.manual_seed`` every other parameter
    starts equal to the baseline's.
    """

    def __init__(self, channels: int = 1, width: int = 32, depth: int = 8, padding: str = "zeros",
                 temb_dim: Optional[int] = None, norm: str = "group", activation: str = "silu",
                 embedding: str = "film", num_classes: Optional[int] = None, attention: Optional[str] = None,
                 attention_exclude: int = 0):
        super().__init__()
        _check_config_values(channels=channels, width=width, depth=depth, padding=padding, min_depth=2, norm=norm,
                             activation=activation, embedding=embedding, num_classes=num_classes, temb_dim=temb_dim)
        if attention is not None and attention not in ATTENTIONS:
            raise ValueError(f"attention must be None or one of {', '.join(ATTENTIONS)}; got {attention!r}")
        _check_int(attention_exclude, "attention_exclude", 0)
        temb_dim = int(temb_dim or width)
        self.channels, self.width, self.depth, self.padding, self.norm = channels, width, depth, padding, norm
        self.embedding = embedding
        self._init_conditioning(temb_dim, activation, num_classes)
        self.conv_in = _conv3x3(channels, width, padding)
        inner = depth - 2
        self.blocks = nn.ModuleList(
            [ResBlock(width, width, 2 * temb_dim, padding, convs=min(2, inner - 2 * i), norm=norm,
                      activation=activation, embedding=embedding)
             for i in range((inner + 1) // 2)])
        self.norm_out = _norm(norm, width)
        self.conv_out = _conv3x3(width, channels, padding)
        # built last: the baseline's parameters draw the same initial values under one seed
        self.attention = attention
        self.attn = None if attention is None else SelfAttention(width, attention, norm, attention_exclude)

    @property
    def receptive_field(self) -> int:
        """Width of the convolutional receptive field (the attention layer, when present, adds the whole image)."""
        return 2 * self.depth + 1

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels=None) -> torch.Tensor:
        """``eps_hat [B, C, H, W]`` from ``x [B, C, H, W]``, ``t [B]``, ``class_labels [B]`` (conditional nets)."""
        temb = self.embed(x, t, class_labels)
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, temb)
        if self.attn is not None:
            h = self.attn(h)
        return self.conv_out(_ACTIVATION_FUNCTIONS[self.activation](self.norm_out(h)))


class SmallUNet(_Conditioning):
    """3-level UNet (H, H/2, H/4; widths ``width * mults``), pooling down, up-sampling up, skip concatenation.

    ``down``: ``"avg"`` or ``"max"`` 2x2 pooling; ``up``: ``"nearest"`` (parameter-free) or
    ``"transpose"`` (a 2x2 stride-2 ``ConvTranspose2d`` keeping the channel count). Defaults
    (``mults=(1, 2, 2)``, avg, nearest, GroupNorm, SiLU, FiLM) are the original network;
    ``PAPER_ARCHITECTURES["unet"]`` is the paper's. ``H`` and ``W`` must be divisible by 4
    (28x28 and 32x32 are).
    """

    def __init__(self, channels: int = 1, width: int = 32, padding: str = "zeros", temb_dim: Optional[int] = None,
                 norm: str = "group", activation: str = "silu", embedding: str = "film",
                 num_classes: Optional[int] = None, mults=(1, 2, 2), down: str = "avg", up: str = "nearest"):
        super().__init__()
        _check_config_values(channels=channels, width=width, depth=None, padding=padding, norm=norm,
                             activation=activation, embedding=embedding, num_classes=num_classes, temb_dim=temb_dim,
                             mults=mults, down=down, up=up)
        temb_dim = int(temb_dim or width)
        self.channels, self.width, self.padding, self.norm = channels, width, padding, norm
        self.embedding, self.mults, self.down, self.up = embedding, tuple(int(m) for m in mults), down, up
        w1, w2, w3 = (width * m for m in self.mults)
        e = 2 * temb_dim
        self._init_conditioning(temb_dim, activation, num_classes)
        opts = dict(norm=norm, activation=activation, embedding=embedding)
        self.conv_in = _conv3x3(channels, w1, padding)
        self.down1 = ResBlock(w1, w1, e, padding, **opts)
        self.down2 = ResBlock(w1, w2, e, padding, **opts)
        self.mid = ResBlock(w2, w3, e, padding, **opts)
        self.up2 = ResBlock(w3 + w2, w2, e, padding, **opts)
        self.up1 = ResBlock(w2 + w1, w1, e, padding, **opts)
        if up == "transpose":
            self.upsample2 = nn.ConvTranspose2d(w3, w3, 2, stride=2)
            self.upsample1 = nn.ConvTranspose2d(w2, w2, 2, stride=2)
        self.norm_out = _norm(norm, w1)
        self.conv_out = _conv3x3(w1, channels, padding)

    def _down(self, h: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(h, 2) if self.down == "max" else F.avg_pool2d(h, 2)

    def _up(self, h: torch.Tensor, level: int) -> torch.Tensor:
        if self.up == "transpose":
            return (self.upsample2 if level == 2 else self.upsample1)(h)
        return F.interpolate(h, scale_factor=2.0, mode="nearest")

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels=None) -> torch.Tensor:
        """``eps_hat [B, C, H, W]`` from ``x [B, C, H, W]``, ``t [B]``, ``class_labels [B]`` (conditional nets)."""
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"SmallUNet needs H and W divisible by 4; got {tuple(x.shape[-2:])}")
        temb = self.embed(x, t, class_labels)
        h1 = self.down1(self.conv_in(x), temb)                 # H
        h2 = self.down2(self._down(h1), temb)                  # H/2
        h3 = self.mid(self._down(h2), temb)                    # H/4
        u2 = self.up2(torch.cat([self._up(h3, 2), h2], 1), temb)
        u1 = self.up1(torch.cat([self._up(u2, 1), h1], 1), temb)
        return self.conv_out(_ACTIVATION_FUNCTIONS[self.activation](self.norm_out(u1)))


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def _check_config_values(*, channels, width, depth, padding, min_depth: int = 2, norm: str = "group",
                         activation: str = "silu", embedding: str = "film", num_classes=None, temb_dim=None,
                         mults=(1, 2, 2), down: str = "avg", up: str = "nearest") -> None:
    _check_int(channels, "channels", 1)
    _check_int(width, "width", 1)
    if depth is not None:
        _check_int(depth, "depth", min_depth)
    if temb_dim is not None:
        _check_int(temb_dim, "temb_dim", 1)
    if num_classes is not None:
        _check_int(num_classes, "num_classes", 1)
    for name, value, choices in (("padding", padding, PADDINGS), ("norm", norm, NORMS),
                                 ("activation", activation, ACTIVATIONS), ("embedding", embedding, EMBEDDINGS),
                                 ("down", down, DOWNSAMPLES), ("up", up, UPSAMPLES)):
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    if isinstance(mults, (str, bytes)) or not hasattr(mults, "__len__") or len(mults) != 3:
        raise ValueError(f"mults must be 3 positive ints (the UNet's level widths / width); got {mults!r}")
    for m in mults:
        _check_int(m, "mults entry", 1)


_COMMON_KEYS = ("channels", "width", "padding", "temb_dim", "norm", "activation", "embedding", "num_classes")
_ARCH_KEYS = {"resnet": _COMMON_KEYS + ("depth", "attention", "attention_exclude"),
              "unet": _COMMON_KEYS + ("mults", "down", "up")}


def build_network(config: dict) -> nn.Module:
    """Network from a config dict: ``{"arch": "resnet"|"unet", "channels", "width", "padding", "temb_dim", "norm",
    "activation", "embedding", "num_classes"}`` plus ``"depth"`` and optionally ``"attention"``
    (None | "soft" | "top1") and ``"attention_exclude"`` (resnet), or ``"mults", "down", "up"`` (unet).

    A missing key takes the constructor's default (the original networks), so checkpoints written
    before an option existed rebuild unchanged. An unknown key is an error (a typo must not be ignored).
    """
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict; got {type(config).__name__}")
    arch = config.get("arch")
    if arch not in ARCHITECTURES:
        raise ValueError(f"config['arch'] must be one of {', '.join(ARCHITECTURES)}; got {arch!r}")
    unknown = sorted(set(config) - set(_ARCH_KEYS[arch]) - {"arch"})
    if unknown:
        raise ValueError(f"config has keys a {arch} does not take: {', '.join(unknown)}")
    kwargs = {k: config[k] for k in _ARCH_KEYS[arch] if k in config}
    return ConvResNet(**kwargs) if arch == "resnet" else SmallUNet(**kwargs)


def network_config(net: nn.Module) -> dict:
    """The config dict that rebuilds ``net`` with ``build_network`` (plain values: safe for ``weights_only``)."""
    if not isinstance(net, (ConvResNet, SmallUNet)):
        raise TypeError(f"net must be a ConvResNet or SmallUNet; got {type(net).__name__}")
    cfg = dict(arch="resnet" if isinstance(net, ConvResNet) else "unet", channels=net.channels, width=net.width,
               padding=net.padding, temb_dim=net.time.dim, norm=net.norm, activation=net.activation,
               embedding=net.embedding, num_classes=net.num_classes)
    if isinstance(net, ConvResNet):
        cfg["depth"] = net.depth
        if net.attn is not None:  # absent for the plain CNN: its config (and old checkpoints) unchanged
            cfg.update(attention=net.attention, attention_exclude=net.attn.exclude)
    else:
        cfg.update(mults=list(net.mults), down=net.down, up=net.up)
    return cfg


# --------------------------------------------------------------------------- #
# VP noising (training) and the sigma-space denoiser (sampling)
# --------------------------------------------------------------------------- #

def cosine_abar(t: torch.Tensor, s: float = COSINE_S) -> torch.Tensor:
    """``abar(t) = cos^2(pi t / s)``."""
    return torch.cos(math.pi * t / s) ** 2


def vp_noise(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, s: float = COSINE_S) -> torch.Tensor:
    """``x_t = sqrt(abar(t)) x0 + sqrt(1 - abar(t)) eps`` on the cosine schedule; ``t [B]``."""
    abar = cosine_abar(t, s).to(x0.dtype)[:, None, None, None]
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


class NetworkDenoiser:
    """An eps-prediction VP network as a sigma-space denoiser ``denoiser(z, sigma, class_labels=None) -> x0_hat``.

    ``abar = 1/(1+sigma^2)``, ``x_t = z sqrt(abar)``, ``t = (s/pi) atan(sigma)`` (cosine schedule,
    ``s = 2.016``), ``x0_hat = z - sigma * eps_hat(x_t, t, class_labels)``, then clamped to
    ``clip = (lo, hi)`` (default ``(-1, 1)``, the data range; ``None`` for the raw estimate). Runs
    under ``torch.no_grad`` in eval mode, in batches of at most ``batch_size`` on the network's
    device; returns on ``z``'s device and dtype. ``sigma`` is a float or a ``[B]`` tensor.

    ``class_labels``: int ``[B]`` (or one label for the whole batch) for a class-conditional
    network (``num_classes`` is not None: then required), None for an unconditional one
    (labels are then an error, see the module doc). A network without a ``num_classes``
    attribute (any user module ``net(x_t, t)``) counts as unconditional.
    """

    def __init__(self, net: nn.Module, *, s: float = COSINE_S, batch_size: int = 256, name: str = "network",
                 clip: Optional[tuple] = (-1.0, 1.0)):
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module; got {type(net).__name__}")
        if clip is not None:
            if len(clip) != 2 or not float(clip[0]) < float(clip[1]):
                raise ValueError(f"clip must be None or (lo, hi) with lo < hi; got {clip!r}")
            clip = (float(clip[0]), float(clip[1]))
        self.clip = clip
        self.net = net.eval()
        self.s = float(s)
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.name = name

    @property
    def num_classes(self) -> Optional[int]:
        """The network's class count, or None for an unconditional network."""
        return getattr(self.net, "num_classes", None)

    @property
    def class_conditional(self) -> bool:
        return self.num_classes is not None

    @property
    def device(self) -> torch.device:
        try:
            return next(self.net.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def eps(self, z: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        """``eps_hat`` at sigma-space state ``z``."""
        sig = sigma_float64(sigma, z)
        labels = check_class_labels(class_labels, self.num_classes, z.shape[0])
        abar = 1.0 / (1.0 + sig.double() ** 2)
        t = (self.s / math.pi) * torch.atan(sig.double())
        xt = z.double() * abar.sqrt()[:, None, None, None]
        dev, out = self.device, []
        with torch.no_grad():
            for i in range(0, z.shape[0], self.batch_size):
                sl = slice(i, i + self.batch_size)
                args = (xt[sl].float().to(dev), t[sl].float().to(dev))
                if labels is not None:
                    args += (labels[sl].to(dev),)
                out.append(self.net(*args).to(z.device))
        return torch.cat(out).to(z.dtype)

    def __call__(self, z: torch.Tensor, sigma, class_labels=None, **_unused) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.dim() != 4:
            raise ValueError(f"z must be a [B, C, H, W] tensor; got {getattr(z, 'shape', type(z).__name__)}")
        check_class_labels(class_labels, self.num_classes, z.shape[0])  # before any work
        sig = sigma_float64(sigma, z)
        x0 = (z - sig.to(z.dtype)[:, None, None, None] * self.eps(z, sig, class_labels)).to(z.dtype)
        return x0 if self.clip is None else x0.clamp(*self.clip)


# --------------------------------------------------------------------------- #
# checkpoints
# --------------------------------------------------------------------------- #

def network_checkpoint(net: nn.Module, meta: Optional[dict] = None, state_dict: Optional[dict] = None) -> dict:
    """The inference checkpoint dict of ``net`` (weights as float32 CPU tensors)."""
    sd = net.state_dict() if state_dict is None else state_dict
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": network_config(net),
            "state_dict": {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone()
                           for k, v in sd.items()},
            "meta": dict(meta or {})}


def save_network(path: Union[str, os.PathLike], net: nn.Module, meta: Optional[dict] = None,
                 state_dict: Optional[dict] = None) -> Path:
    """Write an inference checkpoint atomically (see the module doc for its layout)."""
    from .io import atomic_open
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        torch.save(network_checkpoint(net, meta, state_dict), handle)
    return path


def load_checkpoint(path: Union[str, os.PathLike]) -> dict:
    """Read a checkpoint dict with ``weights_only=True``; clear errors on missing or malformed files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such network checkpoint: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, pickle refusing code, not a torch file...
        raise ValueError(f"cannot read {path} as a creativity_fast network checkpoint "
                         f"(torch.load weights_only=True failed: {type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a creativity_fast network checkpoint "
                         f"(expected a dict with format={CHECKPOINT_FORMAT!r})")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint version {ckpt.get('version')!r} "
                         f"(this creativity_fast reads version {CHECKPOINT_VERSION})")
    for key, kind in (("config", dict), ("state_dict", dict)):
        if not isinstance(ckpt.get(key), kind):
            raise ValueError(f"{path}: checkpoint field {key!r} is missing or not a {kind.__name__}")
    return ckpt


def load_network(path: Union[str, os.PathLike, None] = None, *, ema: bool = True, device=None
                 ) -> tuple[nn.Module, dict]:
    """Rebuild a network from a checkpoint: ``(net in eval mode, checkpoint meta + config)``.

    ``path=None`` loads the shipped Fashion-MNIST ResNet. For a training checkpoint,
    ``ema=True`` takes the EMA weights when present.
    """
    path = default_network_path() if path is None else Path(path)
    ckpt = load_checkpoint(path)
    try:
        net = build_network(ckpt["config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: bad network config {ckpt['config']!r}: {exc}") from None
    state = ckpt.get("ema_state_dict") if ema and isinstance(ckpt.get("ema_state_dict"), dict) else ckpt["state_dict"]
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match the config {ckpt['config']!r}: {exc}") from None
    if device is not None:
        net = net.to(device)
    info = dict(ckpt.get("meta") or {})
    info["config"] = dict(ckpt["config"])
    info["path"] = str(path)
    return net.eval(), info
