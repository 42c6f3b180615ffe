"""Calibration of score machines against trained networks, and sample agreement (docs/theory.md §6).

``calibrate``: run the *network's* sampler trajectory from per-seed initial noise; at
every step ``i`` (state ``z_i`` at ``sigma_i``) evaluate the network and the machine for
every candidate patch size ``P`` on the same ``z_i`` and score their agreement per seed.
Per step, the chosen ``P`` is (``selection="per_seed"``, the paper's rule and the default)
the median over seeds of each seed's best ``P``, rounded to the nearest candidate (ties
to the smaller), or (``selection="median_score"``, earlier versions) the ``P`` with the
best median score. The metric:

- ``metric="cosine"``: cosine similarity of the scores ``(x0_hat - z) / sigma^2``
  (higher is better; the ``1/sigma^2`` cancels, so it is the cosine of ``x0_hat - z``);
- ``metric="mse"``: mean squared difference of ``x0_hat`` (equivalently of ``sigma^2 * score``;
  lower is better).

``compare``: sample the network and every machine from the same initial noise (one
``torch.Generator`` per seed) with the same sampler and sigmas, then per seed compare
each machine's final sample ``m`` with the network's ``n`` over all pixels (the network may
take its own schedule, ``net_sigmas``: the paper's Table 1 samples it with 150 steps and
the machines with 20; class-conditional runs pass one class per seed to every denoiser):

- Pearson ``r = cov(n, m) / (std(n) std(m))``;
- ``R^2 = 1 - sum (n - m)^2 / sum (n - mean(n))^2``, the coefficient of determination of
  the network's sample by the machine's (it can be negative; ``R^2 <= r^2``).

Medians over seeds with bootstrap intervals summarise (``creativity_fast.stats``). IS (``ideal``) and LS (``local``) are the baselines that
the ELS machine should beat (Kamb & Ganguli 2025, Table 1).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from .samplers import get_sampler, initial_noise
from .schedules import _check_sigmas_1d, resample_steps

__all__ = [
    "METRICS", "SELECTIONS", "CalibrationResult", "CompareResult", "calibrate", "select_patch_sizes", "compare", "agreement",
    "sample_seeds",
    "load_patch_schedule", "resolve_patch_schedule", "calibration_seeds", "default_schedule_path", "save_calibration",
    "calibration_figure", "agreement_figure", "scatter_figure", "compare_figures", "load_compare_result",
]

METRICS = ("cosine", "mse")
SELECTIONS = ("per_seed", "median_score")
SCHEDULE_FORMAT = "creativity_fast.patch_schedule"
DEFAULT_SCHEDULE = "calibrated_schedule.json"

Denoiser = Callable[..., torch.Tensor]


def default_schedule_path() -> Path:
    """The calibrated schedule shipped beside the default network (may be absent)."""
    return Path(__file__).resolve().parent / "checkpoints" / DEFAULT_SCHEDULE


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #

def _as_images(data) -> torch.Tensor:
    images = getattr(data, "images", data)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"data must be a non-empty [N, C, H, W] tensor or a Dataset; "
                         f"got {getattr(images, 'shape', type(images).__name__)}")
    return images


def _check_seeds(seeds) -> List[int]:
    if isinstance(seeds, numbers.Integral) or isinstance(seeds, (str, bytes)):
        raise TypeError(f"seeds must be a sequence of ints; got {seeds!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct; got {seeds}")
    return seeds


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    return metric


def _check_candidates(candidates) -> List[int]:
    cands = [int(p) for p in candidates]
    if not cands:
        raise ValueError("candidates is empty")
    for p in cands:
        if p <= 0 or p % 2 == 0:
            raise ValueError(f"candidates must be odd positive patch sizes; got {p}")
    if len(set(cands)) != len(cands):
        raise ValueError(f"candidates must be distinct; got {cands}")
    return cands


def _check_class_labels(class_labels, n: int) -> Optional[torch.Tensor]:
    """``class_labels`` (one int per seed, or None) as a ``[n]`` int64 CPU tensor."""
    if class_labels is None:
        return None
    labels = torch.as_tensor(list(class_labels) if not isinstance(class_labels, torch.Tensor) else class_labels)
    if labels.dim() != 1 or labels.numel() != n or labels.is_floating_point():
        raise ValueError(f"class_labels must hold one int label per seed ({n}); got {labels.tolist()}")
    return labels.long().cpu()


def _make_factory(machine_factory, machine_options: Optional[dict]):
    """``(data, P) -> denoiser`` from a callable or a registered machine name."""
    if isinstance(machine_factory, str):
        from .registry import make_denoiser
        name, opts = machine_factory, dict(machine_options or {})
        return lambda data, P: make_denoiser(name, data, P=P, **opts)
    if not callable(machine_factory):
        raise TypeError(f"machine_factory must be a callable (data, P) -> denoiser or a machine name; "
                        f"got {type(machine_factory).__name__}")
    if machine_options:
        raise ValueError("machine_options only apply when machine_factory is a machine name")
    return machine_factory


def sample_seeds(denoiser: Denoiser, seeds: Sequence[int], shape_chw, sigmas: torch.Tensor, *,
                 sampler: str = "ddim", eta: float = 0.0, batch_size: int = 16, progress: bool = False,
                 callback: Optional[Callable[[List[int], dict], None]] = None, device=None,
                 class_labels: Optional[Sequence[int]] = None) -> torch.Tensor:
    """One final sample per seed, ``[B, C, H, W]``, from ``initial_noise(seeds)`` (per-seed generators).

    ``callback(batch_seeds, info)`` receives the sampler's per-step info for each batch. ``device``: where
    the sampler runs (the noise is drawn on the CPU and moved there); the samples come back on the CPU.
    ``class_labels``: one class per seed, passed to the denoiser as ``class_labels [B]`` (None: unconditional).
    """
    seeds = _check_seeds(seeds)
    labels = _check_class_labels(class_labels, len(seeds))
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int; got {batch_size}")
    fn = get_sampler(sampler)
    out = []
    for start in range(0, len(seeds), batch_size):
        batch = seeds[start:start + batch_size]
        z, gens = initial_noise(batch, shape_chw, float(sigmas[0]), device=device)
        kwargs = dict(generator=gens, progress=progress)
        if labels is not None:
            kwargs["extra_args"] = {"class_labels": labels[start:start + batch_size]}
        if callback is not None:
            kwargs["callback"] = lambda info, batch=batch: callback(batch, info)
        if sampler == "ddim":
            kwargs["eta"] = eta
        out.append(fn(denoiser, z, sigmas, **kwargs).cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------- #
# calibration
# --------------------------------------------------------------------------- #

@dataclass
class CalibrationResult:
    """Per-step patch sizes that best match a network along its own trajectory.

    ``patch_sizes[i]``: chosen ``P`` at step ``i`` (sampling order, step 0 = highest noise).
    ``scores [n_steps, n_candidates]``: median over seeds of the metric; ``per_seed
    [n_steps, n_candidates, n_seeds]``: the values themselves; ``per_seed_best [n_steps, n_seeds]``:
    each seed's best ``P`` per step; ``selection``: how ``patch_sizes`` follow from them (module doc);
    ``class_labels``: the class of each seed (None: unconditional).
    """

    patch_sizes: List[int]
    candidates: List[int]
    scores: np.ndarray
    per_seed: np.ndarray
    sigmas: np.ndarray
    seeds: List[int]
    metric: str
    selection: str = "per_seed"
    per_seed_best: Optional[np.ndarray] = None
    class_labels: Optional[List[int]] = None

    @property
    def best_scores(self) -> List[float]:
        idx = [self.candidates.index(p) for p in self.patch_sizes]
        return [float(self.scores[i, j]) for i, j in enumerate(idx)]

    def to_json(self) -> dict:
        return {
            "format": SCHEDULE_FORMAT, "version": 1,
            "patch_sizes": list(self.patch_sizes),
            "patch_sizes_low_to_high_noise": list(reversed(self.patch_sizes)),
            "n_steps": len(self.patch_sizes), "metric": self.metric,
            "better": "higher" if self.metric == "cosine" else "lower",
            "candidates": list(self.candidates), "seeds": list(self.seeds),
            "sigmas": [float(s) for s in self.sigmas],
            "best_scores": self.best_scores,
            "scores": [[float(v) for v in row] for row in self.scores],
            "selection": self.selection,
            "per_seed_best": None if self.per_seed_best is None else [[int(v) for v in row]
                                                                       for row in self.per_seed_best],
            "class_labels": None if self.class_labels is None else [int(c) for c in self.class_labels],
        }


def _agreement_per_seed(net_x0: torch.Tensor, mach_x0: torch.Tensor, z: torch.Tensor, metric: str) -> np.ndarray:
    b = z.shape[0]
    a = (net_x0.double() - z.double()).reshape(b, -1)
    m = (mach_x0.double() - z.double()).reshape(b, -1)
    if metric == "cosine":
        num = (a * m).sum(1)
        den = a.norm(dim=1) * m.norm(dim=1)
        return torch.where(den > 0, num / den.clamp_min(1e-300), torch.ones_like(num)).numpy()
    return ((a - m) ** 2).mean(1).numpy()


def calibrate(net_denoiser: Denoiser, machine_factory, data, sigmas, candidates: Sequence[int],
              seeds: Sequence[int], metric: str = "cosine", *, sampler: str = "ddim", eta: float = 0.0,
              machine_options: Optional[dict] = None, batch_size: int = 64, progress: bool = False,
              done: Optional[Mapping[int, np.ndarray]] = None,
              checkpoint: Optional[Callable[[Dict[int, np.ndarray]], None]] = None,
              selection: str = "per_seed", class_labels: Optional[Sequence[int]] = None) -> CalibrationResult:
    """Per step, the ``P`` whose machine best matches the network along the network's trajectory.

    Args:
        net_denoiser: the network as a denoiser ``(z, sigma) -> x0_hat`` (e.g. ``nets.NetworkDenoiser``).
        machine_factory: ``(data, P) -> denoiser``, or a registered machine name (built with
            ``make_denoiser(name, data, P=P, **machine_options)``).
        data: the training set, ``[N, C, H, W]`` or a ``Dataset``; the network's trajectory and the
            machines run on its device (the trajectory is kept on the CPU).
        sigmas: ``[n+1]`` sampling schedule (highest noise first).
        candidates: odd patch sizes to try.
        seeds: one trajectory per seed (``initial_noise`` generators).
        metric: ``"cosine"`` (of scores, higher is better) or ``"mse"`` (of ``x0_hat``, lower is better).
        sampler, eta: the sampler that makes the network's trajectory.
        batch_size: seeds per network/machine call.
        done / checkpoint: resume support; ``done[i]`` is a finished step's ``[n_candidates, n_seeds]``
            table; ``checkpoint(tables)`` is called after every finished step.
        selection: ``"per_seed"`` (the median over seeds of each seed's best ``P``, the paper's rule)
            or ``"median_score"`` (the ``P`` with the best median score); see :func:`select_patch_sizes`.
        class_labels: one class per seed, passed as ``class_labels`` to the network and the machines
            (the machine then uses that class's images only); None: unconditional.
    Returns:
        :class:`CalibrationResult`. Ties go to the smaller ``P``.
    """
    metric = _check_metric(metric)
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}; got {selection!r}")
    cands = _check_candidates(candidates)
    seeds = _check_seeds(seeds)
    labels = _check_class_labels(class_labels, len(seeds))
    images = _as_images(data)
    s = _check_sigmas_1d(sigmas)
    sig = s.to(torch.float32)
    n_steps = s.numel() - 1
    factory = _make_factory(machine_factory, machine_options)
    device = images.device

    # 1. the network's own trajectory: the state z_i before step i, for every seed
    states = torch.empty((n_steps, len(seeds)) + tuple(images.shape[1:]), dtype=images.dtype)  # on the CPU
    net_x0 = torch.empty_like(states)
    offset = 0

    def record(batch, info):
        i = info["i"]
        if i + 1 < n_steps:
            states[i + 1, offset:offset + len(batch)] = info["z"]
        net_x0[i, offset:offset + len(batch)] = info["x0_hat"]

    for start in range(0, len(seeds), batch_size):
        batch = seeds[start:start + batch_size]
        offset = start
        z0, _ = initial_noise(batch, images.shape[1:], float(sig[0]))
        states[0, start:start + len(batch)] = z0
        sample_seeds(net_denoiser, batch, images.shape[1:], sig, sampler=sampler, eta=eta, batch_size=len(batch),
                     callback=record, device=device,
                     class_labels=None if labels is None else labels[start:start + batch_size])

    # 2. every candidate machine at every state
    tables: Dict[int, np.ndarray] = {int(k): np.asarray(v, dtype=np.float64) for k, v in (done or {}).items()}
    machines: dict = {}
    from tqdm.auto import tqdm
    bar = tqdm(total=n_steps * len(cands), disable=not progress, desc="calibrate", unit="call")
    bar.update(len(tables) * len(cands))
    for i in range(n_steps):
        if i in tables:
            continue
        table = np.empty((len(cands), len(seeds)))
        for j, P in enumerate(cands):
            if P not in machines:
                machines[P] = factory(images, P)
            for start in range(0, len(seeds), batch_size):
                sl = slice(start, start + batch_size)
                z = states[i, sl]
                extra = {} if labels is None else {"class_labels": labels[sl]}
                mx = machines[P](z.to(device), sig[i].expand(z.shape[0]).to(device), **extra).cpu()
                table[j, sl] = _agreement_per_seed(net_x0[i, sl], mx, z, metric)
            bar.update(1)
        tables[i] = table
        if checkpoint is not None:
            checkpoint(dict(tables))
    bar.close()
    per_seed = np.stack([tables[i] for i in range(n_steps)])          # [steps, cands, seeds]
    sizes, scores, best = select_patch_sizes(per_seed, cands, metric, selection)
    return CalibrationResult(sizes, cands, scores, per_seed, s.numpy(), seeds, metric, selection, best,
                             None if labels is None else labels.tolist())


def select_patch_sizes(per_seed: np.ndarray, candidates: Sequence[int], metric: str = "cosine",
                       selection: str = "per_seed") -> tuple[List[int], np.ndarray, np.ndarray]:
    """The patch size per step from a score table ``per_seed [n_steps, n_candidates, n_seeds]``.

    Returns ``(sizes [n_steps], median scores [n_steps, n_candidates], per-seed best P [n_steps, n_seeds])``.
    Each seed's best ``P`` is the candidate with the highest cosine (lowest MSE); ties go to the
    smaller ``P``. ``selection="per_seed"``: per step, the median of those per-seed best values
    (``numpy.median``; with an even number of seeds it may fall between candidates) rounded to the
    nearest candidate, ties to the smaller. ``selection="median_score"``: the candidate whose median
    score over seeds is best.
    """
    cands = np.asarray(list(candidates))
    order = np.argsort(cands, kind="stable")                 # ties to the smaller P whatever the order given
    table = np.asarray(per_seed, dtype=np.float64)[:, order, :]
    sorted_cands = cands[order]
    sign = 1.0 if metric == "cosine" else -1.0
    best = sorted_cands[np.argmax(sign * table, axis=1)]     # [steps, seeds]
    scores = np.median(np.asarray(per_seed, dtype=np.float64), axis=2)
    if selection == "per_seed":
        med = np.median(best.astype(np.float64), axis=1)     # [steps]
        pick = np.argmin(np.abs(sorted_cands[None, :] - med[:, None]), axis=1)  # first minimum: the smaller P
        sizes = [int(sorted_cands[j]) for j in pick]
    else:
        pick = np.argmax(sign * np.median(table, axis=2), axis=1)
        sizes = [int(sorted_cands[j]) for j in pick]
    return sizes, scores, best


# --------------------------------------------------------------------------- #
# patch schedules from calibration files
# --------------------------------------------------------------------------- #

def save_calibration(path: Union[str, os.PathLike], result: CalibrationResult, **extra) -> Path:
    """Write ``result.to_json()`` (plus ``extra`` fields) atomically; ``load_patch_schedule`` reads it."""
    from .io import save_json
    obj = result.to_json()
    obj.update(extra)
    return save_json(path, obj)


def load_patch_schedule(path: Union[str, os.PathLike], n_steps: Optional[int] = None) -> List[int]:
    """Patch sizes (sampling order) from a calibration JSON, resampled to ``n_steps`` if given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such patch-schedule file: {path}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path} as a patch-schedule JSON: {exc}") from None
    sizes = obj.get("patch_sizes") if isinstance(obj, dict) else None
    if not isinstance(sizes, list) or not sizes or not all(
            isinstance(p, int) and not isinstance(p, bool) and p > 0 and p % 2 == 1 for p in sizes):
        raise ValueError(f"{path}: 'patch_sizes' must be a non-empty list of odd positive ints "
                         "(one per step, highest noise first)")
    return sizes if n_steps is None else resample_steps(sizes, n_steps)


def calibration_seeds(spec) -> Optional[List[int]]:
    """The seeds a ``--patch-schedule`` value was calibrated on (its JSON's ``seeds``), or None when the
    value is not a calibration file (an int, a list, a published name)."""
    if not isinstance(spec, (str, os.PathLike)):
        return None
    text = os.fspath(spec)
    path = default_schedule_path() if text.strip().lower() == "calibrated" else Path(text)
    if not (text.strip().lower() == "calibrated" or text.lower().endswith(".json") or path.is_file()):
        return None
    try:
        seeds = json.loads(path.read_text()).get("seeds")
    except (OSError, ValueError, AttributeError):
        return None
    return [int(v) for v in seeds] if isinstance(seeds, list) else None


def resolve_patch_schedule(spec, n_steps: int):
    """A ``--patch-schedule`` value for ``PatchSchedule``: JSON files (and ``"calibrated"``, the
    shipped schedule) become a per-step list; anything else is returned unchanged."""
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text.strip().lower() == "calibrated":
            return load_patch_schedule(default_schedule_path(), n_steps)
        if text.lower().endswith(".json") or Path(text).is_file():
            return load_patch_schedule(text, n_steps)
    return spec


# --------------------------------------------------------------------------- #
# comparison of final samples
# --------------------------------------------------------------------------- #

def agreement(reference: torch.Tensor, other: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per sample Pearson ``r`` and ``R^2`` (of ``reference`` by ``other``) over all pixels.

    ``reference, other: [B, C, H, W]``. A constant reference image has ``R^2 = 1`` if ``other``
    equals it, else ``-inf``; ``r`` is NaN when either image is constant (and 1 if both are equal).
    """
    if reference.shape != other.shape:
        raise ValueError(f"shapes differ: {tuple(reference.shape)} and {tuple(other.shape)}")
    b = reference.shape[0]
    x = reference.double().reshape(b, -1)
    y = other.double().reshape(b, -1)
    xc, yc = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    den = xc.norm(dim=1) * yc.norm(dim=1)
    equal = (x == y).all(1)
    r = torch.where(den > 0, (xc * yc).sum(1) / den.clamp_min(1e-300),
                    torch.where(equal, 1.0, float("nan")))
    ss_res = ((x - y) ** 2).sum(1)
    ss_tot = (xc ** 2).sum(1)
    r2 = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-300),
                     torch.where(ss_res == 0, 1.0, -math.inf))
    return r.clamp(-1, 1).numpy(), r2.numpy()


@dataclass
class CompareResult:
    """Agreement of machines with a network on the same seeds (see the module doc).

    ``r[name]``, ``r2[name]``: per-seed Pearson ``r`` and coefficient of determination ``R^2`` (of the
    network's sample by that machine's; ``r2`` keeps its historical name and means ``R^2``, not ``r*r``).
    ``class_labels``: the class of each seed (None: unconditional). ``baseline``: the machine the others
    are tested against (fraction of seeds beaten, paired difference; ``ideal`` by default).
    """

    seeds: List[int]
    samples: Dict[str, torch.Tensor]          # "network" and every machine name -> [B, C, H, W]
    r: Dict[str, np.ndarray]                  # machine -> [B]
    r2: Dict[str, np.ndarray]
    reference: str = "network"
    settings: dict = field(default_factory=dict)
    class_labels: Optional[List[int]] = None
    baseline: Optional[str] = "ideal"

    @property
    def machines(self) -> List[str]:
        return list(self.r)

    @property
    def median_r(self) -> Dict[str, float]:
        return {k: float(np.nanmedian(v)) for k, v in self.r.items()}

    @property
    def median_r2(self) -> Dict[str, float]:
        return {k: float(np.nanmedian(v)) for k, v in self.r2.items()}

    def statistics(self, **kwargs) -> dict:
        """:func:`creativity_fast.stats.summarize` of ``r`` and ``R^2`` (medians, bootstrap intervals,
        fraction of seeds beating ``baseline``, paired differences)."""
        from .stats import summarize
        return summarize(self.r, self.r2, baseline=self.baseline, **kwargs)

    def per_seed_rows(self) -> List[dict]:
        from .stats import per_seed_rows
        classes = self.class_labels if self.class_labels is not None else [None] * len(self.seeds)
        return per_seed_rows(self.seeds, classes, self.r, self.r2)

    def to_json(self) -> dict:
        return {
            "reference": self.reference, "baseline": self.baseline, "seeds": list(self.seeds),
            "n_seeds": len(self.seeds),
            "class_labels": None if self.class_labels is None else [int(c) for c in self.class_labels],
            "median_r": self.median_r, "median_r2": self.median_r2,
            "statistics": self.statistics(),
            "machines": {k: {"median_r": self.median_r[k], "median_r2": self.median_r2[k],
                             "r": [float(v) for v in self.r[k]], "r2": [float(v) for v in self.r2[k]]}
                         for k in self.r},
            "definitions": {"r": "Pearson correlation over all pixels and channels, per seed",
                            "r_squared": "r * r per seed", "r2 / R2": "coefficient of determination "
                            "1 - SS_res / SS_tot of the network sample by the machine sample, per seed"},
            "settings": dict(self.settings),
        }


def compare(net_denoiser: Denoiser, machines: Mapping[str, Denoiser], seeds: Sequence[int], sigmas,
            shape, *, sampler: str = "ddim", eta: float = 0.0, batch_size: int = 16, progress: bool = False,
            sample_fn: Optional[Callable[[str, Denoiser], torch.Tensor]] = None, net_sigmas=None,
            networks: Optional[Mapping[str, Denoiser]] = None, class_labels: Optional[Sequence[int]] = None,
            baseline: Optional[str] = "ideal") -> CompareResult:
    """Sample the network and each machine from the same initial noise; per-seed ``r`` and ``R^2``.

    Args:
        net_denoiser: the reference (the network's samples are what the machines should predict).
        machines: ``{name: denoiser}`` (e.g. ``els``, ``local``, ``ideal``), sampled over ``sigmas``.
        seeds: one sample per seed; ``initial_noise(seeds)`` makes the shared starting noise.
        sigmas: ``[n+1]`` schedule of the machines; shape: ``(C, H, W)``.
        sampler, eta, batch_size, progress: as ``sample_seeds``.
        sample_fn: ``(name, denoiser, sigmas) -> [B, C, H, W]`` overrides the sampling (the CLI uses it
            to save finished batches and resume); it must use the same seeds, the given schedule and
            the same class labels.
        net_sigmas: the network's schedule (default ``sigmas``); its first sigma must equal
            ``sigmas[0]`` so that both start from the same noise.
        networks: further networks ``{name: denoiser}`` compared with the reference like machines but
            sampled over ``net_sigmas`` (e.g. a second network of the same recipe: the ceiling).
        class_labels: one class per seed, passed as ``class_labels`` to every denoiser; None: unconditional.
        baseline: the entry the others are tested against in :meth:`CompareResult.statistics`.
    Returns:
        :class:`CompareResult`.
    """
    seeds = _check_seeds(seeds)
    networks = dict(networks or {})
    if not isinstance(machines, Mapping) or not (machines or networks):
        raise ValueError("machines must be a non-empty dict {name: denoiser} (or give networks)")
    clash = sorted(({"network"} | set(machines)) & set(networks)) + (["network"] if "network" in machines else [])
    if clash:
        raise ValueError(f"{clash[0]!r} names the reference or two entries; rename it")
    sig = _check_sigmas_1d(sigmas).to(torch.float32)
    net_sig = sig if net_sigmas is None else _check_sigmas_1d(net_sigmas).to(torch.float32)
    if float(net_sig[0]) != float(sig[0]):
        raise ValueError(f"net_sigmas must start at the machines' first sigma {float(sig[0])} (the same noise); "
                         f"got {float(net_sig[0])}")
    labels = _check_class_labels(class_labels, len(seeds))
    shape = tuple(int(d) for d in shape)
    if sample_fn is None:
        def sample_fn(name, den, schedule):
            return sample_seeds(den, seeds, shape, schedule, sampler=sampler, eta=eta, batch_size=batch_size,
                                progress=progress, class_labels=labels)
    samples = {"network": sample_fn("network", net_denoiser, net_sig)}
    r, r2 = {}, {}
    for name, den, schedule in ([(n, d, sig) for n, d in machines.items()]
                                + [(n, d, net_sig) for n, d in networks.items()]):
        samples[name] = sample_fn(name, den, schedule)
        r[name], r2[name] = agreement(samples["network"], samples[name])
    settings = dict(sampler=sampler, eta=eta, n_steps=int(sig.numel() - 1), net_steps=int(net_sig.numel() - 1),
                    networks=list(networks))
    return CompareResult(seeds, samples, r, r2, settings=settings,
                         class_labels=None if labels is None else labels.tolist(),
                         baseline=baseline if baseline in r else None)


def load_compare_result(out: Union[str, os.PathLike]) -> CompareResult:
    """The :class:`CompareResult` a ``compare`` run saved in the folder ``out`` (``compare.json``
    and ``compare_samples.npz``), e.g. to draw its figures again."""
    from .io import load_npz
    out = Path(out)
    obj = json.loads((out / "compare.json").read_text())
    arrays = load_npz(out / "compare_samples.npz")
    seeds = [int(s) for s in obj["seeds"]]
    if [int(s) for s in arrays["seeds"]] != seeds:
        raise ValueError(f"{out}: compare.json and compare_samples.npz hold different seeds")
    names = [obj["reference"]] + list(obj["machines"])
    missing = [k for k in names if f"samples_{k}" not in arrays]
    if missing:
        raise ValueError(f"{out}/compare_samples.npz has no samples for {', '.join(missing)}")
    machines = obj["machines"]
    return CompareResult(seeds, {k: torch.from_numpy(arrays[f"samples_{k}"]) for k in names},
                         {k: np.asarray(v["r"], dtype=np.float64) for k, v in machines.items()},
                         {k: np.asarray(v["r2"], dtype=np.float64) for k, v in machines.items()},
                         reference=obj["reference"], settings=obj.get("settings", {}),
                         class_labels=obj.get("class_labels"),
                         # files written before the baseline was saved: compare's default
                         baseline=obj.get("baseline", "ideal" if "ideal" in machines else None))


# --------------------------------------------------------------------------- #
# figures
# --------------------------------------------------------------------------- #

_LABELS = {"network": "network", "els": "ELS", "local": "LS", "ideal": "IS", "ceiling": "network B"}


def _save_figure(fig, path: Union[str, os.PathLike]) -> Path:
    import io as _io
    from .io import atomic_open
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        handle.write(buf.getvalue())
    return path


def agreement_figure(result: CompareResult, path: Union[str, os.PathLike], *, columns: int = 16,
                     max_seeds: Optional[int] = None) -> Path:
    """Rows network | ELS | LS | IS (every machine of ``result``), one column per seed, wrapped
    every ``columns`` seeds; each machine row is labelled with its median ``r`` and ``R^2`` over
    all of the result's seeds. ``max_seeds``: draw only the first that many seeds (None: all)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if max_seeds is not None and (isinstance(max_seeds, bool) or not isinstance(max_seeds, numbers.Integral)
                                  or max_seeds <= 0):
        raise ValueError(f"max_seeds must be a positive int or None; got {max_seeds!r}")
    names = ["network"] + result.machines
    n_all = len(result.seeds)
    n = n_all if max_seeds is None else min(int(max_seeds), n_all)
    columns = max(1, min(columns, n))
    blocks = math.ceil(n / columns)
    per = len(names) + 1                     # a thin spacer row between blocks of seeds
    rows = blocks * per - 1
    ratios = [1.0 if (r + 1) % per else 0.45 for r in range(rows)]
    fig, axes = plt.subplots(rows, columns, figsize=(0.75 * columns + 1.6, 0.8 * sum(ratios) + 0.4), squeeze=False,
                             gridspec_kw={"height_ratios": ratios})
    for r in range(per - 1, rows, per):
        for ax in axes[r]:
            ax.axis("off")
    mr, mr2 = result.median_r, result.median_r2
    for blk in range(blocks):
        for k, name in enumerate(names):
            row = blk * per + k
            imgs = result.samples[name]
            for c in range(columns):
                ax = axes[row, c]
                ax.set_xticks([]), ax.set_yticks([])
                i = blk * columns + c
                if i >= n:
                    ax.axis("off")
                    continue
                img = imgs[i].detach().float().clamp(-1, 1)
                arr = img[0].numpy() if img.shape[0] == 1 else ((img.permute(1, 2, 0).numpy() + 1) / 2)
                ax.imshow(arr, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
                if k == 0:
                    cls = "" if result.class_labels is None else f"\nclass {result.class_labels[i]}"
                    ax.set_title(f"seed {result.seeds[i]}{cls}", fontsize=6)
                if k > 0:
                    ax.set_xlabel(f"{result.r[name][i]:.2f}", fontsize=6, labelpad=1)
            label = _LABELS.get(name, name)
            if name != "network":
                label += f"\nr={mr[name]:.2f}\nR²={mr2[name]:.2f}"
            axes[row, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    shown = f"{n} seeds" if n == n_all else f"the first {n} of {n_all} seeds; row medians over all {n_all}"
    fig.suptitle(f"network vs machines from the same noise ({shown}; per-image Pearson r under each sample)",
                 fontsize=8, y=1.0 if result.class_labels is None else 1.03)  # clear of two-line seed titles
    fig.subplots_adjust(wspace=0.05, hspace=0.35)
    out = _save_figure(fig, path)
    plt.close(fig)
    return out


def scatter_figure(result: CompareResult, path: Union[str, os.PathLike], *, baseline: Optional[str] = None) -> Path:
    """Per-seed ``r`` of each machine (y) against the baseline's ``r`` (x, default ``result.baseline``),
    with the diagonal: points above it are seeds where the machine beats the baseline. Writes a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = baseline or result.baseline
    if base is None or base not in result.r:
        raise ValueError(f"the scatter needs a baseline among the machines ({', '.join(result.r)}); got {base!r}")
    others = [m for m in result.machines if m != base]
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    x = np.asarray(result.r[base], dtype=np.float64)
    lo = np.nanmin([np.nanmin(x)] + [np.nanmin(result.r[m]) for m in others]) if others else np.nanmin(x)
    lo = min(0.0, float(lo)) if np.isfinite(lo) else 0.0
    ax.plot([lo, 1], [lo, 1], color="0.6", lw=0.8, ls="--", zorder=0)
    stats = result.statistics(n_boot=2000) if others else {"versus": {}}
    for m, marker in zip(others, "os^vDPX*"):
        y = np.asarray(result.r[m], dtype=np.float64)
        beats = stats["versus"].get(m, {}).get("beats", {})
        label = f"{_LABELS.get(m, m)} (above the line: {beats.get('wins', 0)}/{beats.get('n', 0)})"
        ax.scatter(x, y, s=14, marker=marker, alpha=0.75, label=label)
    ax.set_xlabel(f"r({_LABELS.get(base, base)}) per seed")
    ax.set_ylabel("r(machine) per seed")
    ax.set_xlim(lo, 1)
    ax.set_ylim(lo, 1)
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"agreement with the network, {len(result.seeds)} seeds", fontsize=8)
    out = _save_figure(fig, path)
    plt.close(fig)
    return out


def compare_figures(result: CompareResult, grid: Union[str, os.PathLike], scatter: Union[str, os.PathLike], *,
                    columns: int = 16, max_seeds: Optional[int] = None) -> List[Path]:
    """A compare run's figures: the :func:`agreement_figure` grid, and the :func:`scatter_figure`
    where there is a baseline and another machine to set against it. Returns the paths written."""
    written = [agreement_figure(result, grid, columns=columns, max_seeds=max_seeds)]
    if result.baseline is not None and len(result.machines) > 1:
        written.append(scatter_figure(result, scatter))
    return written


def calibration_figure(result: CalibrationResult, path: Union[str, os.PathLike]) -> Path:
    """Heat map of the median metric per (step, P), rescaled per step to [0, 1] (1 = best P of
    that step; the raw values are in the JSON), with the chosen P per step marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = result.scores if result.metric == "cosine" else -result.scores
    lo, hi = scores.min(1, keepdims=True), scores.max(1, keepdims=True)
    rel = np.where(hi > lo, (scores - lo) / np.where(hi > lo, hi - lo, 1.0), 1.0)
    fig, ax = plt.subplots(figsize=(0.45 * len(result.candidates) + 2.5, 0.3 * len(result.patch_sizes) + 1.5))
    im = ax.imshow(rel, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(result.candidates)), [str(p) for p in result.candidates], fontsize=7)
    ax.set_yticks(range(len(result.patch_sizes)),
                  [f"{i}: σ={s:.3g}" for i, s in enumerate(result.sigmas[:-1])], fontsize=6)
    ax.set_xlabel("patch size P")
    ax.set_ylabel("step (highest noise first)")
    cols = [result.candidates.index(p) for p in result.patch_sizes]
    ax.plot(cols, range(len(cols)), "r.-", lw=1, ms=5)
    fig.colorbar(im, ax=ax, label=f"median {result.metric} over {len(result.seeds)} seeds, rescaled per step")
    out = _save_figure(fig, path)
    plt.close(fig)
    return out
