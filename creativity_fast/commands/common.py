"""Options and steps shared by the sub-commands: data, machine, schedule, seeds, sampling."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .. import io
from ..data import Dataset, load_dataset
from ..classes import resolve_class_label
from ..registry import applicable, get_machine, machine_names, make_denoiser, make_sharded_denoiser
from ..samplers import SAMPLERS, get_sampler, initial_noise
from ..schedules import PatchSchedule, published_schedule_names, cosine_vp_sigmas, karras_sigmas

NOISE_SCHEDULES = ("cosine", "karras")
# Machine options every command sets from its own flags; --opt may not set them.
COMMAND_SETTINGS = ("P", "boundary", "keys", "labels", "class_label", "backend", "record_stats")
# Tensor-valued machine options: from the Python API only.
TENSOR_OPTIONS = ("key_logw", "mask")


def parse_seeds(text: str) -> list[int]:
    """``"0-15"``, ``"3"``, ``"0,2,5-7"`` -> a list of ints (in order, duplicates rejected)."""
    seeds: list[int] = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, "")
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise ValueError
                seeds.extend(range(lo_i, hi_i + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise ValueError(f"--seeds must look like '0-15' or '0,3,7-9'; got {text!r}") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"--seeds must be distinct non-negative ints; got {text!r}")
    return seeds


def add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="PATH", default=None,
                   help="training set: IDX directory/file, .npz, .npy, image folder, CIFAR-10 binary "
                        "folder, CelebA folder or Hugging Face save_to_disk folder "
                        "(default: the embedded Fashion-MNIST subset)")
    g.add_argument("--class", dest="class_label", metavar="LABEL", default=None,
                   help="class-conditional: sample this class (a label or class name)")
    g.add_argument("--limit", type=int, default=None, help="use only the first LIMIT training images")
    g.add_argument("--resize", type=int, default=None, metavar="S",
                   help="resize every image to S x S (bilinear, antialiased when downsampling; "
                        "docs/theory.md §8); default: keep the stored size")


def add_machine_options(p: argparse.ArgumentParser, *, default_machine: str = "els") -> None:
    g = p.add_argument_group("machine")
    g.add_argument("--machine", default=default_machine, choices=machine_names(), help="denoiser (default: %(default)s)")
    g.add_argument("--boundary", default="zeros", choices=("zeros", "circular"), help="default: %(default)s")
    g.add_argument("--keys", default="all", choices=("all", "valid"),
                   help="circular ELS key set (default: %(default)s)")
    g.add_argument("--patch-schedule", default="fashion_mnist", metavar="SCHEDULE",
                   help="P per step: an odd int, a comma list (one per step, sampling order) or a published "
                        f"schedule ({', '.join(published_schedule_names())}; the last two are aliases of the ResNet, zero-padding "
                        "schedules); default: %(default)s")
    g.add_argument("--backend", default="auto", choices=("auto", "kernel", "reference"), help="default: %(default)s")
    g.add_argument("--opt", dest="machine_opts", action="append", default=[], metavar="KEY=VALUE",
                   help="machine-specific option, repeatable, e.g. --opt lam=1 --opt gamma=0; an option the "
                        f"machine does not take is an error. Options: {machine_option_summary()}")


def machine_option_summary() -> str:
    """``"aels: lam, gamma, ...; smoothed: s, J, ..."``: each machine's own options (for ``--opt`` help)."""
    parts = []
    for name in machine_names():
        own = [o for o in get_machine(name).options if o not in COMMAND_SETTINGS + TENSOR_OPTIONS]
        if own:
            parts.append(f"{name}: {', '.join(own)}")
    return "; ".join(parts)


def parse_machine_opts(items: Sequence[str]) -> dict:
    """``["lam=1", "channels=shared"]`` -> ``{"lam": 1, "channels": "shared"}`` (ints, floats, else str)."""
    opts: dict = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"--opt must look like KEY=VALUE (e.g. lam=1); got {item!r}")
        for convert in (int, float):
            try:
                opts[key.strip()] = convert(value)
                break
            except ValueError:
                continue
        else:
            opts[key.strip()] = value
    return opts


def add_sampling_options(p: argparse.ArgumentParser, *, default_seeds: str = "0-15") -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=int, default=20, help="sampling steps (default: %(default)s)")
    g.add_argument("--sampler", default="ddim", choices=tuple(SAMPLERS), help="default: %(default)s")
    g.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (0: deterministic)")
    g.add_argument("--noise-schedule", default="cosine", choices=NOISE_SCHEDULES,
                   help="cosine VP schedule of the ELS paper or Karras (default: %(default)s)")
    g.add_argument("--seeds", default=default_seeds, help="one sample per seed, e.g. 0-15 (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=16, help="samples per batch (default: %(default)s)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def load_training_set(args, shard: Optional[tuple[int, int]] = None) -> Dataset:
    """The training set; ``shard=(rank, world_size)`` loads only that rank's contiguous part (torchrun)."""
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be a positive int; got {args.limit}")
    resize = getattr(args, "resize", None)
    if resize is not None and resize <= 0:
        raise ValueError(f"--resize must be a positive int; got {resize}")
    data = load_dataset(args.data, limit=args.limit, shard=shard, resize=resize)
    return data


def class_label_of(args, data: Dataset) -> Optional[int]:
    """The ``--class`` value as an int label (a class name is looked up); the machine checks it has images."""
    if args.class_label is None:
        return None
    if data.labels is None:
        raise ValueError("--class needs a labelled data set; this one has no labels")
    return resolve_class_label(str(args.class_label), data.class_names, argument="--class")


def noise_sigmas(args) -> torch.Tensor:
    if args.steps <= 0:
        raise ValueError(f"--steps must be a positive int; got {args.steps}")
    if args.noise_schedule == "karras":
        return karras_sigmas(args.steps)
    return cosine_vp_sigmas(args.steps)


def machine_kwargs(machine: str, opts: dict, **settings) -> dict:
    """Keyword arguments for machine ``machine``: the command's ``settings`` it takes, plus ``--opt`` ``opts``.

    ``--opt`` keys are checked by the registry (an option the machine does not take is an error).
    """
    clash = sorted(set(opts) & set(COMMAND_SETTINGS))
    if clash:
        raise ValueError(f"--opt {clash[0]}=...: set it with the command's own flag, not --opt")
    tensors = sorted(set(opts) & set(TENSOR_OPTIONS))
    if tensors:
        raise ValueError(f"--opt {tensors[0]}=...: a tensor option, only from the Python API")
    return {**applicable(machine, **settings), **opts}


def build_machine(args, data: Dataset, sigmas: torch.Tensor, *, shard=None):
    """The denoiser the options describe, with its patch-size schedule over ``sigmas``.

    ``shard`` (a ``distributed.ShardInfo``): ``data`` is this rank's shard; build the sharded machine.
    """
    schedule = PatchSchedule(sigmas, args.patch_schedule)
    kwargs = machine_kwargs(args.machine, parse_machine_opts(getattr(args, "machine_opts", [])), P=schedule,
                            boundary=args.boundary, keys=args.keys, labels=data.labels,
                            class_label=class_label_of(args, data), backend=args.backend, record_stats=True)
    if shard is not None:
        return make_sharded_denoiser(args.machine, data.images, offset=shard.start, **kwargs), schedule
    return make_denoiser(args.machine, data.images, **kwargs), schedule


@dataclass
class SampleRun:
    """What a sampling run produced; ``provenance [B,H,W,2]`` is (image, flat location) or None."""

    samples: torch.Tensor
    seeds: list[int]
    sigmas: torch.Tensor
    patch_sizes: list[int]
    provenance: Optional[torch.Tensor]
    seconds: float
    settings: dict = field(default_factory=dict)


def sample_images(denoiser, seeds: Sequence[int], shape_chw, sigmas: torch.Tensor, *, sampler: str = "ddim",
                  eta: float = 0.0, batch_size: int = 16, progress: bool = True,
                  checkpoint: Optional[Callable[[dict], None]] = None, done: Optional[dict] = None,
                  device: Optional[torch.device] = None, class_of: Optional[dict] = None) -> dict:
    """Sample one image per seed in batches; returns ``{seed: (sample [C,H,W], provenance or None)}``.

    ``class_of``: ``{seed: class label}`` for a class-conditional run (passed to the denoiser as
    ``class_labels [B]``); None: unconditional.

    ``done`` holds already finished seeds (resume); ``checkpoint(results)`` is called after each batch so
    that an interrupted run loses at most one batch. ``device``: where the batches run (the denoiser's
    data must be there); the per-seed noise is drawn on the CPU and moved, and the results come back
    on the CPU.
    """
    if batch_size <= 0:
        raise ValueError(f"--batch-size must be a positive int; got {batch_size}")
    sample_fn = get_sampler(sampler)
    results = dict(done or {})
    todo = [s for s in seeds if s not in results]
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        z, generators = initial_noise(batch, shape_chw, float(sigmas[0]), device=device)
        last = {}

        def remember_last(info, last=last):
            last["stats"] = getattr(denoiser, "last_stats", None)

        kwargs = dict(generator=generators, callback=remember_last, progress=progress)
        if class_of is not None:
            kwargs["extra_args"] = {"class_labels": torch.tensor([int(class_of[s]) for s in batch])}
        if sampler == "ddim":
            kwargs["eta"] = eta
        out = sample_fn(denoiser, z, sigmas, **kwargs).cpu()
        stats = last.get("stats")
        argmax = stats.argmax.cpu() if stats is not None and stats.argmax.shape[0] == len(batch) else None
        for j, seed in enumerate(batch):
            prov = argmax[j] if argmax is not None else None
            results[seed] = (out[j], prov)
        if checkpoint is not None:
            checkpoint(results)
    return results


def stack_results(results: dict, seeds: Sequence[int]):
    samples = torch.stack([results[s][0] for s in seeds])
    provs = [results[s][1] for s in seeds]
    provenance = torch.stack(provs) if all(p is not None for p in provs) else None
    return samples, provenance


def settings_json(args, **extra) -> str:
    keys = ("machine", "machine_opts", "boundary", "keys", "patch_schedule", "backend", "steps", "sampler", "eta",
            "noise_schedule", "data", "class_label", "limit", "resize")
    settings = {k: getattr(args, k) for k in keys if hasattr(args, k)}
    settings.update(extra)
    return json.dumps(settings, sort_keys=True)


def ensure_out_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {path} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def partial_results_path(out: Path, name: str) -> Path:
    return out / f".{name}.partial.npz"


def save_partial(path: Path, results: dict, settings: str, seconds: Optional[dict] = None) -> None:
    """Finished seeds, their settings string and, where known, each seed's sampling seconds."""
    seeds = sorted(results)
    arrays = dict(seeds=np.array(seeds), settings=np.array(settings),
                  samples=torch.stack([results[s][0] for s in seeds]).numpy())
    if all(results[s][1] is not None for s in seeds):
        arrays["provenance"] = torch.stack([results[s][1] for s in seeds]).numpy()
    if seconds:
        arrays["seconds"] = np.array([seconds.get(s, np.nan) for s in seeds], dtype=np.float64)
    io.save_npz(path, **arrays)


def matching_partial(path: Path, settings: str) -> Optional[dict]:
    """The arrays of a saved partial file written with the same settings string (else None)."""
    if not path.exists():
        return None
    try:
        arrays = io.load_npz(path)
    except ValueError:
        return None
    return arrays if str(arrays.get("settings")) == settings else None


def _partial_results(arrays: dict) -> dict:
    """``{seed: (sample, provenance or None)}`` of a partial file's arrays."""
    prov = arrays.get("provenance")
    return {int(s): (torch.from_numpy(arrays["samples"][i]), None if prov is None else torch.from_numpy(prov[i]))
            for i, s in enumerate(arrays["seeds"])}


def _partial_seconds(arrays: dict) -> dict:
    """``{seed: sampling seconds}`` of a partial file's arrays; seeds saved without a time are absent."""
    if "seconds" not in arrays:
        return {}
    return {int(s): float(t) for s, t in zip(arrays["seeds"], arrays["seconds"]) if np.isfinite(t)}


def load_partial(path: Path, settings: str) -> dict:
    """Finished seeds of an interrupted run with the same settings (else nothing)."""
    arrays = matching_partial(path, settings)
    return {} if arrays is None else _partial_results(arrays)


def load_partial_seconds(path: Path, settings: str) -> dict:
    """``{seed: sampling seconds}`` of a partial file's finished seeds; seeds saved without a time
    (files written before times were kept) are absent."""
    arrays = matching_partial(path, settings)
    return {} if arrays is None else _partial_seconds(arrays)


def read_partial_files(paths: Sequence[Path]) -> tuple[str, dict, dict]:
    """The union of partial files of the same command on other seeds (e.g. a run split over
    processes): ``(settings, {seed: (sample, provenance)}, {seed: seconds})``. Every file must
    carry the first one's settings string, and a seed in two files must hold the same sample."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no partial files to merge")
    settings = str(io.load_npz(paths[0])["settings"])
    results, seconds = {}, {}
    for path in paths:
        arrays = matching_partial(path, settings)  # each file read once
        if arrays is None:
            raise ValueError(f"{path} was sampled with other settings than {paths[0]}; only runs of the same "
                             f"command on other seeds can be merged")
        for seed, value in _partial_results(arrays).items():
            if seed in results and not torch.equal(results[seed][0], value[0]):
                raise ValueError(f"seed {seed} differs between {path} and an earlier file; not merging")
            results[seed] = value
        seconds.update(_partial_seconds(arrays))
    return settings, results, seconds


class TimedCheckpoint:
    """A ``checkpoint`` for :func:`sample_images` that saves the partial file and gives each newly
    finished seed an equal share of its batch's wall time, so that the sampling time of a run
    interrupted and resumed any number of times adds up (``seconds``: ``{seed: s}``).

    ``keep``: finished seeds to keep in the file besides this run's (earlier runs, other seed lists);
    ``done``: the seeds this run resumes from, which are not timed again.
    """

    def __init__(self, path: Path, settings: str, *, keep: dict, done: dict):
        self.path, self.settings, self.keep = path, settings, keep
        self.seconds = load_partial_seconds(path, settings)
        self.known = set(keep) | set(done)
        self.last = time.perf_counter()

    def __call__(self, results: dict) -> None:
        now = time.perf_counter()
        new = [s for s in results if s not in self.known]
        for s in new:
            self.seconds[s] = (now - self.last) / len(new)
        self.known.update(new)
        self.last = now
        save_partial(self.path, {**self.keep, **results}, self.settings, seconds=self.seconds)


def elapsed(start: float) -> float:
    return time.perf_counter() - start


def remove_quietly(path: Path) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------- #
# --device: where a command computes (docs/theory.md §11)

DEVICE_HELP = ("where to compute: auto (CUDA when torch sees a GPU and the CUDA kernels are built, else CPU), "
               "cpu, cuda or cuda:N (default: %(default)s)")


def add_device_option(p: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda|cuda:N`` (default ``auto``); read it with :func:`resolve_device`."""
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:N]", help=DEVICE_HELP)


def resolve_device(text: str, *, local_rank: Optional[int] = None) -> torch.device:
    """The ``--device`` value as a ``torch.device`` with its index (``cuda`` -> ``cuda:K``).

    ``auto``: CUDA when ``torch.cuda.is_available()`` and the compiled CUDA kernels are registered
    (``ops.has_kernel("cuda")``), else the CPU. Plain ``cuda`` is the current CUDA device, or
    ``cuda:local_rank`` (modulo the device count) for a rank launched by torchrun. A malformed value,
    CUDA asked for where there is none, or an index past the device count is a ``ValueError``.
    """
    from .. import ops

    value = str(text).strip().lower()
    kind, sep, index_text = value.partition(":")
    index: Optional[int] = None
    if sep:
        if not index_text.isdigit():
            kind = ""
        else:
            index = int(index_text)
    if kind not in ("auto", "cpu", "cuda") or (sep and kind != "cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N (N a device index); got {text!r}")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() and ops.has_kernel("cuda") else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {text}: torch has no CUDA device here (torch.cuda.is_available() is False)")
    count = torch.cuda.device_count()
    if index is None:
        index = local_rank % count if local_rank is not None else torch.cuda.current_device()
    elif index >= count:
        raise ValueError(f"--device {text}: there is no CUDA device {index}; torch sees {count} "
                         f"(cuda:0{'' if count == 1 else f' to cuda:{count - 1}'})")
    return torch.device("cuda", index)


def report_device(device: torch.device, requested: str = "auto", *, show: bool = True) -> None:
    """With the progress output (``show``), one line on stderr as the work starts: the device it runs on
    (and what ``--device`` asked for, if different). Each command's closing line names the device too."""
    if not show:
        return
    asked = "" if str(requested).strip().lower() == str(device) else f" (--device {requested})"
    print(f"device: {device}{asked}", file=sys.stderr, flush=True)


def images_to(data: Dataset, device: torch.device) -> Dataset:
    """``data`` with its images moved to ``device`` once (labels stay on the CPU); ``data`` itself if already there."""
    if data.images.device == device:
        return data
    return replace(data, images=data.images.to(device))


def network_to(denoiser, device: torch.device):
    """Move a network denoiser's module (its ``net``, or the denoiser itself if it is one) to ``device`` once."""
    module = getattr(denoiser, "net", denoiser)
    if isinstance(module, torch.nn.Module):
        module.to(device)
    return denoiser


def to_device(value, device):
    """``value`` with every tensor in it (nested dicts, lists, tuples) moved to ``device``; ``None`` stays."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value
