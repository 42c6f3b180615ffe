"""Any diffusion network as a sigma-space denoiser, and a denoiser as a diffusers-style model (docs/theory.md §11).

Every machine and network in this package is a denoiser
``denoiser(z [B,C,H,W], sigma float | [B], class_labels=None) -> x0_hat`` with
``z = x0 + sigma * eps`` (docs/theory.md §2). This module converts other parametrisations
into that contract and back:

- :class:`DiffusersUNetDenoiser`: a discrete-time network called as ``unet(x_t, t)``
  (a diffusers ``UNet2DModel`` or anything returning a tensor or an object with
  ``.sample``) with its scheduler's ``alphas_cumprod``, predicting ``"epsilon"``,
  ``"v_prediction"`` or ``"sample"`` (x0). Any sigma maps to a fractional timestep by
  interpolating ``log sigma`` over the discrete schedule
  (:func:`~creativity_fast.schedules.discrete_sigma_to_t`).
- :class:`KDiffusionDenoiser`: a k-diffusion-style ``model(x, sigma) -> x0`` (validation
  and batching only).
- :class:`EDMDenoiser`: an EDM-preconditioned raw network ``F(c_in z, c_noise)``
  (Karras et al. 2022), ``x0 = c_skip z + c_out F``.
- The project's own checkpoints: :class:`creativity_fast.nets.NetworkDenoiser`.
- :class:`DiffusersStyleModel`: the other direction, a denoiser as an eps-prediction model
  ``model(x_t, t) -> eps`` on a discrete schedule, so that a diffusers scheduler loop
  (``scheduler.step(model(x, t), t, x)``) drives a machine.
- :func:`load_denoiser`: a project checkpoint (``.pt``) or a local diffusers folder (pipeline
  or bare ``UNet2DModel``), detected from what the path holds; used by ``--net``.

The conversion formulas live in :mod:`creativity_fast.schedules`. diffusers is an optional
dependency (``pip install creativity_fast[diffusers]``): it is imported only inside
:func:`load_denoiser` and the diffusers loaders, never when this module is imported.
"""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from ._validate import sigma_float64
from .schedules import (discrete_sigma_to_t, discrete_sigmas, discrete_t_to_sigma,
                        edm_preconditioning, eps_to_x0, v_to_x0, x0_to_eps, x0_to_v)

__all__ = [
    "PREDICTION_TYPES", "DEFAULT_SCHEDULER", "DiffusersUNetDenoiser", "KDiffusionDenoiser", "EDMDenoiser",
    "DiffusersStyleModel", "load_denoiser", "detect_network_kind", "load_diffusers_unet",
]

#: The output parametrisations of diffusers' schedulers (``scheduler.config.prediction_type``).
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

#: The schedule assumed for a bare ``UNet2DModel`` folder (no scheduler saved with it):
#: diffusers' ``DDPMScheduler`` defaults, i.e. DDPM's linear betas 1e-4 .. 0.02 over 1000
#: steps, eps prediction.
DEFAULT_SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 1e-4,
                     "beta_end": 0.02, "beta_schedule": "linear", "prediction_type": "epsilon"}


# --------------------------------------------------------------------------- #
# shared plumbing
# --------------------------------------------------------------------------- #

def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
    return int(batch_size)


def _check_clip(clip) -> Optional[tuple]:
    if clip is None:
        return None
    if len(clip) != 2 or not float(clip[0]) < float(clip[1]):
        raise ValueError(f"clip must be None or (lo, hi) with lo < hi; got {clip!r}")
    return float(clip[0]), float(clip[1])


def _check_z(z) -> None:
    if not isinstance(z, torch.Tensor) or z.dim() != 4 or not z.is_floating_point():
        raise ValueError(f"z must be a floating-point [B, C, H, W] tensor; got {getattr(z, 'shape', type(z).__name__)}")


def _module_device_dtype(module) -> tuple:
    try:
        p = next(module.parameters())
        return p.device, p.dtype
    except (AttributeError, StopIteration, TypeError):
        return None, None


def _output_tensor(out, what: str) -> torch.Tensor:
    """A network's output: a tensor, an object with ``.sample`` (diffusers) or a tuple whose first item is one."""
    if isinstance(out, torch.Tensor):
        return out
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"{what} must return a tensor (or an object with a .sample tensor); got {type(out).__name__}")


class _BatchedDenoiser:
    """Common call path: validate, split into batches, run the network under no_grad, clip, restore dtype."""

    name = "network"

    def __init__(self, net, *, batch_size: int, clip, name: Optional[str]):
        if not callable(net):
            raise TypeError(f"the network must be callable; got {type(net).__name__}")
        if isinstance(net, torch.nn.Module):
            net.eval()
        self.net = net
        self.batch_size = _check_batch_size(batch_size)
        self.clip = _check_clip(clip)
        if name is not None:
            self.name = name

    @property
    def device(self) -> torch.device:
        device, _ = _module_device_dtype(self.net)
        return device if device is not None else torch.device("cpu")

    def _x0(self, z: torch.Tensor, sig: torch.Tensor, extra: dict) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, z: torch.Tensor, sigma, class_labels=None, **extra) -> torch.Tensor:
        _check_z(z)
        sig = sigma_float64(sigma, z)
        if class_labels is not None:
            labels = torch.as_tensor(class_labels).reshape(-1).to(z.device)
            if labels.numel() == 1:
                labels = labels.expand(z.shape[0])
            if labels.numel() != z.shape[0]:
                raise ValueError(f"class_labels has {labels.numel()} values for a batch of {z.shape[0]}")
        out = []
        with torch.no_grad():
            for i in range(0, z.shape[0], self.batch_size):
                sl = slice(i, i + self.batch_size)
                kw = dict(extra)
                if class_labels is not None:
                    kw["class_labels"] = labels[sl]
                x0 = self._x0(z[sl], sig[sl], kw)
                if x0.shape != z[sl].shape:
                    raise ValueError(f"{self.name} returned shape {tuple(x0.shape)} for input {tuple(z[sl].shape)}")
                out.append(x0.to(device=z.device, dtype=z.dtype))
        x0 = torch.cat(out)
        return x0 if self.clip is None else x0.clamp(*self.clip)


# --------------------------------------------------------------------------- #
# networks -> denoisers
# --------------------------------------------------------------------------- #

class DiffusersUNetDenoiser(_BatchedDenoiser):
    """A discrete-time VP network ``unet(x_t, t)`` with its schedule as a sigma-space denoiser.

    For ``sigma`` (docs/theory.md §2, §11): ``abar = 1 / (1 + sigma^2)``, ``x_t = sqrt(abar) z``,
    ``t = discrete_sigma_to_t(sigma, sigma_table)`` (fractional, log-sigma interpolation over
    ``sigma_table = sqrt((1 - alphas_cumprod) / alphas_cumprod)``, clamped at both ends), then

    - ``"epsilon"``: ``x0 = z - sigma * eps_hat``;
    - ``"v_prediction"``: ``x0 = sqrt(abar) x_t - sqrt(1 - abar) v_hat``;
    - ``"sample"``: ``x0 = x0_hat`` as predicted.

    A module runs in its parameters' dtype and device (a plain callable in ``z``'s), with a float
    ``t`` of shape ``[B]`` in that dtype; the conversion runs in float64 and the result comes back in ``z``'s dtype and device.

    Args:
        unet: ``unet(x_t [B,C,H,W], t [B], class_labels=...) -> tensor | obj.sample``.
        alphas_cumprod: ``[T]`` strictly decreasing in (0, 1) (a scheduler's ``alphas_cumprod``).
        prediction_type: one of :data:`PREDICTION_TYPES`.
        clip: ``(lo, hi)`` clamp of ``x0`` (e.g. ``(-1, 1)``), or None (default).
        batch_size: largest batch passed to the network.
    """

    def __init__(self, unet: Callable, alphas_cumprod, *, prediction_type: str = "epsilon",
                 clip: Optional[tuple] = None, batch_size: int = 256, name: Optional[str] = "diffusers"):
        super().__init__(unet, batch_size=batch_size, clip=clip, name=name)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}; got {prediction_type!r}")
        self.prediction_type = prediction_type
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
        self.sigma_table = discrete_sigmas(self.alphas_cumprod)

    @property
    def sigma_min(self) -> float:
        return float(self.sigma_table[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigma_table[-1])

    def sigma_to_t(self, sigma) -> torch.Tensor:
        """Fractional timestep(s) of ``sigma`` (see :func:`~creativity_fast.schedules.discrete_sigma_to_t`)."""
        return discrete_sigma_to_t(sigma, self.sigma_table)

    def _x0(self, z, sig, extra):
        dev, dtype = _module_device_dtype(self.net)
        dev = dev if dev is not None else z.device
        # a module runs in its parameters' dtype; a plain callable gets z's dtype
        dtype = dtype if dtype is not None and dtype.is_floating_point else z.dtype
        z64 = z.to(torch.float64)
        s = sig.to(z64.device)
        abar = (1.0 / (1.0 + s * s))[:, None, None, None]
        xt = abar.sqrt() * z64
        t = self.sigma_to_t(sig.cpu())
        kw = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in extra.items()}
        out = self.net(xt.to(device=dev, dtype=dtype), t.to(device=dev, dtype=dtype), **kw)
        pred = _output_tensor(out, "the network").to(device=z.device, dtype=torch.float64)
        if self.prediction_type == "epsilon":
            return eps_to_x0(z64, s, pred)
        if self.prediction_type == "v_prediction":
            return v_to_x0(z64, s, pred)
        return pred


class KDiffusionDenoiser(_BatchedDenoiser):
    """A k-diffusion-style ``model(x, sigma [B], **extra) -> x0`` (already this package's contract).

    Adds only validation (``[B,C,H,W]`` input, ``sigma > 0`` float or ``[B]``, output of the same
    shape), batching, ``torch.no_grad``, an optional clip, and the ``class_labels`` keyword
    (passed on when given). ``sigma`` reaches the model as ``[B]`` in ``z``'s dtype.
    """

    def __init__(self, model: Callable, *, clip: Optional[tuple] = None, batch_size: int = 256,
                 name: Optional[str] = "k-diffusion"):
        super().__init__(model, batch_size=batch_size, clip=clip, name=name)

    def _x0(self, z, sig, extra):
        return _output_tensor(self.net(z, sig.to(z.dtype), **extra), "the model")


class EDMDenoiser(_BatchedDenoiser):
    """An EDM-preconditioned raw network ``F`` (Karras et al. 2022) as a denoiser.

    ``x0 = c_skip z + c_out F(c_in z, c_noise)`` with
    ``c_skip = sd^2/(sigma^2+sd^2)``, ``c_out = sigma sd/sqrt(sigma^2+sd^2)``,
    ``c_in = 1/sqrt(sigma^2+sd^2)``, ``c_noise = log(sigma)/4`` and ``sd = sigma_data``
    (:func:`~creativity_fast.schedules.edm_preconditioning`). ``F`` gets ``c_noise`` as ``[B]``.
    """

    def __init__(self, F: Callable, *, sigma_data: float = 0.5, clip: Optional[tuple] = None,
                 batch_size: int = 256, name: Optional[str] = "edm"):
        super().__init__(F, batch_size=batch_size, clip=clip, name=name)
        edm_preconditioning(1.0, sigma_data)  # validates sigma_data
        self.sigma_data = float(sigma_data)

    def _x0(self, z, sig, extra):
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sig.to(torch.float64), self.sigma_data)
        dev, dtype = _module_device_dtype(self.net)
        dev = dev if dev is not None else z.device
        dtype = dtype if dtype is not None and dtype.is_floating_point else z.dtype
        z64 = z.to(torch.float64)
        b = (slice(None), None, None, None)
        F_out = self.net((c_in[b] * z64).to(device=dev, dtype=dtype), c_noise.to(device=dev, dtype=dtype), **extra)
        F_out = _output_tensor(F_out, "F").to(device=z.device, dtype=torch.float64)
        return c_skip[b] * z64 + c_out[b] * F_out


# --------------------------------------------------------------------------- #
# denoiser -> diffusers-style eps model
# --------------------------------------------------------------------------- #

class _Config(dict):
    """A dict whose keys are also attributes (what diffusers code reads from ``model.config``)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


class _ModelOutput:
    """``out.sample``: the shape of a diffusers ``UNet2DOutput``."""

    def __init__(self, sample: torch.Tensor):
        self.sample = sample

    def __getitem__(self, i):
        return (self.sample,)[i]


class DiffusersStyleModel:
    """A denoiser (any machine) as a discrete-time model ``model(x_t, t) -> eps_hat`` (docs/theory.md §11).

    For a timestep ``t`` (int or float, scalar or ``[B]``): ``sigma_t`` is read off the schedule
    (``sqrt((1 - abar_t) / abar_t)`` at integer ``t``, log-linear in between), ``z = x_t / sqrt(abar_t)``
    with ``abar_t = 1 / (1 + sigma_t^2)``, ``x0_hat = denoiser(z, sigma_t)`` and

    - ``prediction_type="epsilon"`` (default): ``eps = (z - x0_hat) / sigma_t``;
    - ``"v_prediction"``: ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0_hat``;
    - ``"sample"``: ``x0_hat``.

    So a diffusers scheduler loop drives the machine::

        scheduler.set_timesteps(n)
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t), t, x).prev_sample

    The call returns a tensor (``return_dict=False``, the default) or, with ``return_dict=True``,
    an object with ``.sample`` as a ``UNet2DModel`` does (what diffusers pipelines read).
    ``model.config`` carries ``sample_size``, ``in_channels``, ``out_channels``,
    ``num_train_timesteps`` and ``prediction_type``.

    Args:
        denoiser: ``denoiser(z, sigma [B], **extra) -> x0_hat``.
        alphas_cumprod: the schedule ``[T]`` (a scheduler's ``alphas_cumprod``), or a scheduler.
        sample_size, in_channels: image size and channels (for ``.config``).
    """

    def __init__(self, denoiser: Callable, alphas_cumprod, *, sample_size: Optional[int] = None,
                 in_channels: Optional[int] = None, prediction_type: str = "epsilon",
                 dtype: Optional[torch.dtype] = None):
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable; got {type(denoiser).__name__}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}; got {prediction_type!r}")
        if hasattr(alphas_cumprod, "alphas_cumprod"):
            alphas_cumprod = alphas_cumprod.alphas_cumprod
        self.denoiser = denoiser
        self.prediction_type = prediction_type
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
        self.sigma_table = discrete_sigmas(self.alphas_cumprod)
        self.dtype = dtype if dtype is not None else torch.float32
        self.device = torch.device("cpu")
        self.config = _Config(sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
                              num_train_timesteps=int(self.alphas_cumprod.numel()), prediction_type=prediction_type)

    def sigma_of(self, t) -> torch.Tensor:
        """``sigma_t`` (float64) of timestep(s) ``t``: exact at integers, log-linear in between."""
        t = torch.as_tensor(t).detach().cpu()
        if not t.is_floating_point():
            t = t.long()
            if bool(((t < 0) | (t >= self.sigma_table.numel())).any()):
                raise ValueError(f"timestep out of range [0, {self.sigma_table.numel() - 1}]: {t.tolist()}")
            return self.sigma_table[t]
        return discrete_t_to_sigma(t.to(torch.float64), self.sigma_table)

    def __call__(self, sample: torch.Tensor, timestep, class_labels=None, return_dict: bool = False, **extra):
        _check_z(sample)
        sig = self.sigma_of(timestep).reshape(-1)
        if sig.numel() == 1:
            sig = sig.expand(sample.shape[0])
        if sig.numel() != sample.shape[0]:
            raise ValueError(f"timestep has {sig.numel()} values for a batch of {sample.shape[0]}")
        sig = sig.to(sample.device)
        x64 = sample.to(torch.float64)
        abar = 1.0 / (1.0 + sig * sig)
        z = x64 / abar.sqrt()[:, None, None, None]
        if class_labels is not None:
            extra["class_labels"] = class_labels
        x0 = self.denoiser(z.to(sample.dtype), sig.to(sample.dtype), **extra).to(torch.float64)
        if self.prediction_type == "epsilon":
            out = x0_to_eps(z, sig, x0)
        elif self.prediction_type == "v_prediction":
            out = x0_to_v(z, sig, x0)
        else:
            out = x0
        out = out.to(sample.dtype)
        return _ModelOutput(out) if return_dict else out

    # what diffusers pipelines call on their models
    def eval(self):
        return self

    def to(self, *args, **kwargs):
        return self


# --------------------------------------------------------------------------- #
# loading: project checkpoint or local diffusers folder
# --------------------------------------------------------------------------- #

def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path} as JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return obj


def detect_network_kind(path: Union[str, os.PathLike]) -> str:
    """What ``path`` holds: ``"checkpoint"`` (a file, read as a project checkpoint), ``"diffusers_pipeline"``
    (a folder with ``model_index.json`` and ``unet/``) or ``"diffusers_unet"`` (a folder whose ``config.json``
    names ``UNet2DModel``). Anything else is a ``ValueError``/``FileNotFoundError`` with the reason."""
    p = Path(path)
    if p.is_file():
        return "checkpoint"
    if not p.is_dir():
        raise FileNotFoundError(f"--net {path}: no such file or folder")
    if (p / "model_index.json").is_file():
        index = _read_json(p / "model_index.json")
        if "unet" not in index or not (p / "unet").is_dir():
            raise ValueError(f"--net {path}: a diffusers pipeline folder without a unet/ component "
                             f"(model_index.json lists {sorted(k for k in index if not k.startswith('_'))})")
        return "diffusers_pipeline"
    if (p / "config.json").is_file():
        cls = _read_json(p / "config.json").get("_class_name")
        if cls == "UNet2DModel":
            return "diffusers_unet"
        raise ValueError(f"--net {path}: config.json describes {cls!r}; only UNet2DModel folders are supported")
    raise ValueError(f"--net {path}: a folder that is neither a diffusers pipeline (model_index.json) nor a "
                     "UNet2DModel folder (config.json)")


def _import_diffusers():
    try:
        import diffusers  # noqa: PLC0415 - optional dependency, imported on use
    except ImportError:
        raise ImportError("loading a diffusers folder needs diffusers: pip install 'creativity_fast[diffusers]' "
                          "(or pip install diffusers safetensors)") from None
    return diffusers


def _has_safetensors(folder: Path) -> bool:
    return any(folder.glob("*.safetensors"))


def load_diffusers_unet(path: Union[str, os.PathLike], *, device=None):
    """``(unet, scheduler_config dict, alphas_cumprod [T] float64)`` from a local diffusers folder.

    A pipeline folder gives its ``unet/`` and ``scheduler/``; a bare ``UNet2DModel`` folder gets
    :data:`DEFAULT_SCHEDULER`. Loading is local only (``local_files_only=True``; the path is
    never looked up on a hub), safetensors weights when the folder has them.
    """
    diffusers = _import_diffusers()
    p = Path(path)
    kind = detect_network_kind(p)
    if kind == "checkpoint":
        raise ValueError(f"{path} is a file, not a diffusers folder")
    unet_dir = p / "unet" if kind == "diffusers_pipeline" else p
    unet = diffusers.UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True, low_cpu_mem_usage=False,
                                                 use_safetensors=True if _has_safetensors(unet_dir) else None)
    if kind == "diffusers_pipeline" and (p / "scheduler").is_dir():
        sched_dir = p / "scheduler"
        sched_cfg = _read_json(sched_dir / "scheduler_config.json")
        cls_name = sched_cfg.get("_class_name", "DDPMScheduler")
        cls = getattr(diffusers, str(cls_name), None)
        if cls is None:
            raise ValueError(f"{sched_dir}: unknown scheduler class {cls_name!r} in this diffusers")
        scheduler = cls.from_pretrained(str(sched_dir), local_files_only=True)
    else:
        scheduler = diffusers.DDPMScheduler(**{k: v for k, v in DEFAULT_SCHEDULER.items() if k != "_class_name"})
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise ValueError(f"{path}: scheduler {type(scheduler).__name__} has no alphas_cumprod table")
    config = {"_class_name": type(scheduler).__name__, **{k: v for k, v in dict(scheduler.config).items()
                                                           if not k.startswith("_")}}
    if device is not None:
        unet = unet.to(device)
    return unet.eval(), config, torch.as_tensor(abar).to("cpu", torch.float64)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def load_denoiser(path: Union[str, os.PathLike, None] = None, *, clip: Optional[tuple] = (-1.0, 1.0),
                  batch_size: int = 256, device=None):
    """``(denoiser, info)`` for ``--net PATH``: a project checkpoint or a local diffusers folder.

    - ``None``: the shipped project checkpoint (:func:`creativity_fast.nets.default_network_path`);
    - a file: a project checkpoint (``torch.load(..., weights_only=True)``), wrapped in
      :class:`~creativity_fast.nets.NetworkDenoiser`;
    - a folder with ``model_index.json`` (e.g. written by ``DDPMPipeline.save_pretrained``): its
      ``unet/`` and ``scheduler/``;
    - a folder whose ``config.json`` has ``_class_name`` ``"UNet2DModel"``: that UNet with
      :data:`DEFAULT_SCHEDULER` (DDPM linear betas 1e-4..0.02, 1000 steps, eps prediction).

    Diffusers networks become :class:`DiffusersUNetDenoiser` with the scheduler's
    ``prediction_type``. ``info`` is :func:`~creativity_fast.nets.load_network`'s for a project
    checkpoint (``path``, ``config``, training metadata); for a diffusers folder it has ``path``,
    ``kind`` and ``config`` (``arch``, ``padding`` = ``"zeros"``, ``channels``, ``prediction_type``,
    the UNet's and the scheduler's configs and where the scheduler came from).
    """
    from .nets import NetworkDenoiser, load_network
    if path is None or detect_network_kind(path) == "checkpoint":
        net, info = load_network(path, device=device)
        return NetworkDenoiser(net, batch_size=batch_size, clip=clip), info
    kind = detect_network_kind(path)
    unet, sched_cfg, abar = load_diffusers_unet(path, device=device)
    prediction = sched_cfg.get("prediction_type", "epsilon")
    den = DiffusersUNetDenoiser(unet, abar, prediction_type=prediction, clip=clip, batch_size=batch_size,
                                name=f"diffusers:{Path(path).name}")
    ucfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    info = {"path": str(path), "kind": kind,
            "config": _jsonable({"arch": "diffusers.UNet2DModel", "padding": "zeros", "channels": ucfg.get("in_channels"),
                                 "prediction_type": prediction, "unet": ucfg, "scheduler": sched_cfg,
                                 "scheduler_source": "saved" if kind == "diffusers_pipeline" and (Path(path) / "scheduler").is_dir()
                                 else "default (DDPMScheduler: linear betas 1e-4..0.02, 1000 steps, epsilon)"})}
    return den, info

