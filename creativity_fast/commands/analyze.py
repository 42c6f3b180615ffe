"""``creativity-fast analyze RESULTS.npz``: memorization, novelty, provenance and consistency metrics (docs/theory.md §7).

Reads a ``samples.npz`` written by ``creativity-fast sample`` (or the sweep / the twin-glyph
experiment), reloads the training set named in its settings (or ``--data``), and writes
the files below. ``analyze --net PATH`` (a project checkpoint or a local diffusers folder,
docs/theory.md §11.1) first samples that network with the sampling options (one sample per
``--seeds``, resumable) into ``--out``/``network_samples.npz`` and analyzes those samples
against the network's training set; a network records no provenance, so it is recomputed.

- ``<stem>_metrics.json``: a summary (fractions with Wilson 95% intervals, distributions
  with bootstrap intervals of the median; on twin glyphs the consistency fractions with their
  chance rates, ``summary.global_consistency.chance``) and per-sample values;
- ``<stem>_provenance.png``: sample | source training image ids colour-coded | source offsets;
- ``<stem>_nn_distances.png``: nearest-training-image distances of samples vs held-out images.

Provenance is the one recorded at the sampler's last step when the file has it; otherwise
it is recomputed as the nearest admissible training patch of each final pixel.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import io
from ..data import load_dataset
from ..data.synthetic import DEFAULT_ALPHABET, GLYPH_NAMES
from . import common

MODE_OF_MACHINE = {"ideal": "ideal", "local": "local", "els": "els", "aels": "els"}
DEFAULT_NET_OUT = "out/analyze_net"


def register(sub) -> None:
    p = sub.add_parser("analyze", help="metrics and figures of a samples.npz (memorization, novelty, consistency)")
    p.add_argument("results", metavar="RESULTS.npz", nargs="?", default=None,
                   help="file written by `creativity-fast sample` (or give --net instead)")
    p.add_argument("--out", default=None, help="output directory (default: the file's directory; with --net: "
                   f"{DEFAULT_NET_OUT})")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="training set (default: the one named in the file's settings)")
    p.add_argument("--limit", type=int, default=None, help="use only the first LIMIT training images "
                   "(default: the file's setting)")
    p.add_argument("--resize", type=int, default=None, metavar="S",
                   help="resize the training images to S x S (default: the file's setting; docs/theory.md §8)")
    p.add_argument("--heldout", default=None, metavar="PATH",
                   help="held-out real images for novelty (default: the test split of the training source, if any)")
    p.add_argument("--no-heldout", action="store_true", help="skip the held-out comparison")
    p.add_argument("--glyphs", default="auto", choices=("auto", "on", "off"),
                   help="twin-glyph global consistency (auto: when the data set is twin glyphs)")
    p.add_argument("--alphabet", type=int, default=None, help="glyph alphabet size (default: from the data set)")
    p.add_argument("--P", type=int, default=None, help="patch size for provenance / local consistency "
                   "(default: the last step's)")
    p.add_argument("--tol", type=float, default=0.05, help="local-consistency tolerance (default: %(default)s)")
    p.add_argument("--rows", type=int, default=8, help="samples in the provenance figure (default: %(default)s)")
    p.add_argument("--backend", default="auto", choices=("auto", "kernel", "reference"))
    p.add_argument("--P-attr", dest="P_attr", type=int, default=None,
                   help="patch size of the attribution summary (default: the `attribute` default; "
                        "docs/theory.md §7)")
    p.add_argument("--no-attribution", action="store_true", help="skip the attribution summary")
    common.add_device_option(p)
    net = p.add_argument_group("a network's samples (--net)")
    net.add_argument("--net", metavar="PATH", default=None,
                     help="sample this network (a `creativity-fast train` checkpoint or a local diffusers folder) "
                          "and analyze its samples instead of RESULTS.npz")
    net.add_argument("--net-batch-size", type=int, default=256, help="network batch size (default: %(default)s)")
    net.add_argument("--clip", action=argparse.BooleanOptionalAction, default=False,
                     help="clip the network's x0 estimate to [-1, 1] at every step (default: the raw estimate, "
                          "as compare)")
    net.add_argument("--boundary", default=None, choices=("zeros", "circular"),
                     help="boundary of the recomputed provenance (default: the file's setting or the network's "
                          "padding)")
    common.add_sampling_options(p, default_seeds="0-15")
    p.set_defaults(func=run, class_label=None)


def read_results(path: str) -> tuple[dict, dict]:
    """``(arrays, settings)`` of a results file; settings ``{}`` when absent."""
    arrays = io.load_npz(path)
    if "samples" not in arrays:
        raise ValueError(f"{path} has no 'samples' array (found {sorted(arrays)})")
    samples = arrays["samples"]
    if samples.ndim != 4:
        raise ValueError(f"{path}: samples must be [B, C, H, W]; got shape {list(samples.shape)}")
    settings: dict = {}
    if "settings" in arrays:
        try:
            settings = json.loads(str(arrays["settings"]))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: settings is not JSON ({exc})") from None
    return arrays, settings


def is_twin_glyphs(data, settings: dict) -> bool:
    names = " ".join(str(x) for x in (data.name, data.source, settings.get("data_name"), settings.get("data"),
                                      settings.get("experiment")))
    return "twin_glyph" in names


def glyph_alphabet(data, requested: Optional[int]) -> int:
    if requested is not None:
        return requested
    if data.class_names and all(n in GLYPH_NAMES for n in data.class_names):
        return len(data.class_names)
    if data.labels is not None and data.labels.numel():
        return int(data.labels.max()) + 1
    return DEFAULT_ALPHABET


def heldout_images(data_path, heldout_path=None, *, resize: Optional[int] = None) -> Optional[torch.Tensor]:
    """Held-out real images: ``heldout_path`` if given, else the test split of ``data_path`` (None if absent).

    ``resize``: the training set's ``--resize``, applied to the held-out images too.
    """
    if heldout_path is not None:
        return load_dataset(heldout_path, resize=resize).images
    try:
        return load_dataset(data_path, split="test", resize=resize).images
    except (ValueError, FileNotFoundError):
        return None


def analysis_settings(arrays: dict, settings: dict, P: Optional[int]):
    """``(mode, P, boundary, keys)`` for provenance and local consistency."""
    machine = settings.get("machine", "els")
    mode = MODE_OF_MACHINE.get(machine, "els")
    if P is None:
        if "patch_sizes" in arrays and np.asarray(arrays["patch_sizes"]).size:
            P = int(np.asarray(arrays["patch_sizes"]).reshape(-1)[-1])
        elif isinstance(settings.get("P"), int):
            P = settings["P"]
        else:
            P = 3
    return mode, P, settings.get("boundary", "zeros"), settings.get("keys", "all")


def sample_network(args) -> Path:
    """Sample ``--net`` on ``--seeds`` (resumable) and write ``--out``/network_samples.npz; returns its path.

    The settings name the network's training set (as ``compare`` finds it), so the analysis
    reloads the same images.
    """
    from .compare import load_net_and_data

    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be a positive int; got {args.batch_size}")
    seeds = common.parse_seeds(args.seeds)
    device = common.resolve_device(args.device)
    out = common.ensure_out_dir(args.out or DEFAULT_NET_OUT)
    denoiser, info, data = load_net_and_data(args)
    common.network_to(denoiser, device)
    sigmas = common.noise_sigmas(args)
    settings = json.dumps(dict(machine="network", net=info["path"], net_clip=bool(args.clip), data=args.data,
                               limit=args.limit, resize=args.resize, data_name=data.name, boundary=args.boundary,
                               keys="all", steps=args.steps, sampler=args.sampler, eta=args.eta,
                               noise_schedule=args.noise_schedule, device=device.type), sort_keys=True)
    partial = common.partial_results_path(out, "network_samples")
    done = common.load_partial(partial, settings)
    common.report_device(device, args.device, show=not args.no_progress)
    results = common.sample_images(denoiser, seeds, data.image_shape, sigmas, sampler=args.sampler, eta=args.eta,
                                   batch_size=args.batch_size, progress=not args.no_progress, done=done,
                                   checkpoint=lambda r: common.save_partial(partial, r, settings), device=device)
    samples, _ = common.stack_results(results, seeds)
    path = io.save_npz(out / "network_samples.npz", samples=samples.numpy(), seeds=np.array(seeds),
                       settings=np.array(settings), sigmas=sigmas.numpy())
    common.remove_quietly(partial)
    return Path(path)


def load_results_and_data(args, device):
    """``(arrays, settings, data, samples [B,C,H,W] on the CPU, data path, resize)`` of ``args.results``.

    The training set is the one the file's settings name (``data``, ``limit``, ``resize``) unless
    ``--data``/``--limit``/``--resize`` say otherwise; its images are moved to ``device`` once.
    """
    arrays, settings = read_results(args.results)
    data_path = args.data if args.data is not None else settings.get("data")
    limit = args.limit if args.limit is not None else settings.get("limit")
    resize = args.resize if args.resize is not None else settings.get("resize")
    data = common.images_to(load_dataset(data_path, limit=limit, resize=resize), device)
    samples = torch.from_numpy(np.asarray(arrays["samples"], dtype=np.float32))
    if tuple(samples.shape[1:]) != data.image_shape:
        raise ValueError(f"samples are {list(samples.shape[1:])} but the training set {data.name} holds "
                         f"{list(data.image_shape)} images; pass the right --data")
    return arrays, settings, data, samples, data_path, resize


def analyze_file(args) -> dict:
    from ..figures import plot_nn_distances, save_provenance_png
    from ..metrics import analyze_samples

    device = common.resolve_device(args.device)
    arrays, settings, data, samples, data_path, resize = load_results_and_data(args, device)
    mode, P, boundary, keys = analysis_settings(arrays, settings, args.P)
    boundary = args.boundary or boundary
    provenance = None
    provenance_source = "recomputed: nearest admissible training patch of each final pixel"
    if "provenance" in arrays:
        provenance = torch.from_numpy(np.asarray(arrays["provenance"], dtype=np.int64))
        if tuple(provenance.shape) != (samples.shape[0], *samples.shape[2:], 2):
            raise ValueError(f"provenance has shape {list(provenance.shape)}; expected [B, H, W, 2]")
        provenance_source = "recorded at the sampler's last step"
    glyphs = args.glyphs == "on" or (args.glyphs == "auto" and is_twin_glyphs(data, settings))
    heldout = None if args.no_heldout else heldout_images(data_path, args.heldout, resize=resize)
    on_device = common.to_device((samples, provenance, heldout), device)
    result = analyze_samples(on_device[0], data.images, P=P, mode=mode, boundary=boundary, keys=keys,
                             provenance=on_device[1], heldout=on_device[2], glyphs=glyphs,
                             alphabet=glyph_alphabet(data, args.alphabet) if glyphs else None, tol=args.tol,
                             backend=args.backend, return_provenance=True)
    result = common.to_device(result, "cpu")  # what is saved and plotted
    provenance = result.pop("provenance")
    result["inputs"] = {"results": str(args.results), "data": data.source or data.name, "n_train": len(data),
                        "heldout": None if heldout is None else int(heldout.shape[0]), "resize": resize,
                        "mode": mode, "P": P,
                        "boundary": boundary, "keys": keys, "provenance": provenance_source, "settings": settings,
                        "device": device.type}
    if not args.no_attribution:
        result["summary"]["attribution"] = attribution_summary(on_device[0], data.images, args.P_attr, boundary,
                                                               keys if boundary == "circular" else "all",
                                                               progress=not args.no_progress)
    out = Path(args.out) if args.out else Path(args.results).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.results).stem
    files = {"metrics": io.save_json(out / f"{stem}_metrics.json", result)}
    files["provenance"] = save_provenance_png(samples, provenance, out / f"{stem}_provenance.png", max_rows=args.rows)
    nn = result["per_sample"]["nn_distance"]
    held_d = None
    if heldout is not None:
        from ..metrics import nearest_neighbours
        held_d = nearest_neighbours(on_device[2], data.images, 1)[0][:, 0].cpu().numpy()
    files["nn_distances"] = plot_nn_distances(np.asarray(nn), held_d, out / f"{stem}_nn_distances.png",
                                              title=f"{settings.get('machine', '?')} on {data.name}")
    result["files"] = {k: str(v) for k, v in files.items()}
    return result


def attribution_summary(samples, images, P_attr: Optional[int], boundary: str, keys: str, *,
                        progress: bool = False) -> dict:
    """The few attribution numbers ``analyze`` reports (``creativity-fast attribute`` gives them all)."""
    from .. import attribution as A

    att = A.attribute(samples, images, A.DEFAULT_P_ATTR if P_attr is None else P_attr, boundary=boundary, keys=keys,
                      progress=progress)
    full = A.run_summary(att, samples.cpu(), images.cpu())
    s, top = full["summary"], full["exposure"]["top1pct_share"]
    return {"P_attr": att["params"]["P_attr"], "params": att["params"],
            "n_sources_median": s["n_sources"].get("median"), "credited_median": s["credited"].get("median"),
            "common_median": s["common"].get("median"), "novel_median": s["novel"].get("median"),
            "largest_region_median": s["largest_region"].get("median"),
            "largest_region_max": s["largest_region"].get("max"),
            "images_exposed": full["exposure"]["images_exposed"], "top1pct_share": top["share"],
            "top1pct_uniform": top["uniform"], "top1pct_chance": top["chance_mean"]}


def consistency_lines(g: dict) -> list[str]:
    """The printed twin-glyph consistency fractions, each with its Wilson 95% interval and, beside it, its chance
    rate (``metrics.glyph_chance_rates``: each sample's glyph ids redrawn independently from the row's own glyph
    frequencies)."""
    def frac(name: str, label: str) -> str:
        f, chance = g[name], g["chance"][name]
        return (f"{label} {f['fraction']:.3f} [{f['ci95'][0]:.3f}, {f['ci95'][1]:.3f}] (n={f['n']}; "
                f"chance {chance:.3f})")

    return [frac("consistent", "globally consistent (>= 1 glyph, all the same):"),
            frac("twin", "twin (>= 2 glyphs, all the same):"),
            frac("mixed", "mixed (>= 2 different glyphs):"),
            frac("same_given_two", "same glyph among samples with >= 2 glyphs:"),
            f"no glyph: {g['no_glyph']['fraction']:.3f} [{g['no_glyph']['ci95'][0]:.3f}, "
            f"{g['no_glyph']['ci95'][1]:.3f}]"]


def run(args) -> int:
    if args.rows <= 0:
        raise ValueError(f"--rows must be a positive int; got {args.rows}")
    if not args.tol >= 0:
        raise ValueError(f"--tol must be >= 0; got {args.tol}")
    if (args.results is None) == (args.net is None):
        raise ValueError("give either RESULTS.npz or --net PATH (a network to sample and analyze)")
    if args.net is not None:
        args.results = str(sample_network(args))
        print(f"sampled {args.net}: {args.results}")
    result = analyze_file(args)
    s = result["summary"]
    mem = s["memorization"]
    lines = [f"{s['n_samples']} samples vs {s['n_train']} training images",
             f"memorized: {mem['fraction']:.3f} [{mem['ci95'][0]:.3f}, {mem['ci95'][1]:.3f}]"]
    nov = s["novelty"]
    lines.append(f"median NN distance: {nov['sample']['median']:.3f}"
                 + (f" (held-out real: {nov['heldout']['median']:.3f})" if "heldout" in nov else ""))
    if "local_consistency" in s:
        lines.append(f"local consistency (median pixel fraction): {s['local_consistency']['pixel_fraction']['median']:.3f}")
    if "provenance" in s:
        lines.append(f"distinct sources per sample (median): {s['provenance']['n_sources']['median']:.1f}")
    if "attribution" in s:
        a = s["attribution"]
        lines.append(f"attribution (P_attr={a['P_attr']}): distinct sources per sample (median) "
                     f"{a['n_sources_median']:.1f}, largest copied region (median) {a['largest_region_median']:.0f} px; "
                     f"top 1% of images hold {a['top1pct_share']:.3f} of copied pixels "
                     f"(uniform {a['top1pct_uniform']:.3f}, chance {a['top1pct_chance']:.3f})")
    if "global_consistency" in s:
        lines += consistency_lines(s["global_consistency"])
    print("\n".join(lines))
    print(f"on {result['inputs']['device']}, wrote " + ", ".join(result["files"].values()))
    return 0
