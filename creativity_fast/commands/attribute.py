"""``creativity-fast attribute``: which training images each sample copies, and how much (docs/theory.md §7).

Reads a samples file (``creativity-fast sample``, or ``analyze --net``'s ``network_samples.npz``:
any ``samples [B, C, H, W]`` array with the training set named in its settings or given by
``--data``), attributes every pixel by nearest-patch matching on the final image, and writes
``attribution.json``, ``attribution.png`` (samples beside their top sources, copied regions
outlined) and ``exposure.png``. With a recorded provenance (machine samples) it also
reports the agreement of attribution at the recorded patch size with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import attribution as A
from .. import io
from . import common


def register(sub) -> None:
    p = sub.add_parser("attribute", help="which training images each sample copies, and how much; exposure per image")
    p.add_argument("results", metavar="SAMPLES.npz", help="samples file (`creativity-fast sample` or `analyze --net`)")
    p.add_argument("--out", default=None, help="output directory (default: the file's directory)")
    p.add_argument("--net", metavar="PATH", default=None,
                   help="the samples came from this network (recorded in the JSON; nearest-patch matching "
                        "treats every sample the same way)")
    p.add_argument("--data", default=None, metavar="PATH", help="training set (default: the file's settings)")
    p.add_argument("--limit", type=int, default=None, help="first LIMIT training images (default: the file's)")
    p.add_argument("--resize", type=int, default=None, metavar="S", help="resize (default: the file's)")
    p.add_argument("--P-attr", dest="P_attr", type=int, default=A.DEFAULT_P_ATTR,
                   help="patch size of the evidence (default: %(default)s)")
    p.add_argument("--common-k", type=int, default=A.DEFAULT_COMMON_K,
                   help="a pixel is common when the k-th best distinct image is within --margin (default: %(default)s)")
    p.add_argument("--margin", type=float, default=A.DEFAULT_MARGIN, help="RMS margin (default: %(default)s)")
    p.add_argument("--flat-tol", type=float, default=A.DEFAULT_FLAT_TOL,
                   help="a window whose values span at most this is common (default: %(default)s)")
    p.add_argument("--match-tol", type=float, default=A.DEFAULT_MATCH_TOL,
                   help="best RMS distance above which a pixel is novel (default: %(default)s; <0: never)")
    p.add_argument("--no-agreement", action="store_true", help="skip the check against a recorded provenance")
    p.add_argument("--rows", type=int, default=8, help="samples in the picture (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    common.add_device_option(p)
    p.set_defaults(func=run)


def attribute_file(args) -> dict:
    """Attribute ``args.results``; returns the JSON-ready result (also written under ``--out``)."""
    from ..attribution_figures import plot_exposure, save_attribution_png
    from .analyze import load_results_and_data

    if args.rows <= 0:
        raise ValueError(f"--rows must be a positive int; got {args.rows}")
    device = common.resolve_device(args.device)
    arrays, settings, data, samples, _, _ = load_results_and_data(args, device)
    samples = samples.to(device)
    boundary = settings.get("boundary") or "zeros"
    keys = settings.get("keys", "all") if boundary == "circular" else "all"
    kwargs = dict(boundary=boundary, keys=keys, common_k=args.common_k, margin=args.margin, flat_tol=args.flat_tol,
                  match_tol=None if args.match_tol < 0 else args.match_tol, progress=not args.no_progress)
    att = A.attribute(samples, data.images, args.P_attr, **kwargs)
    images = data.images.cpu()
    exp = A.exposure(att, len(data))  # once: its summary goes in the JSON, its counts in the histogram
    result = A.run_summary(att, samples.cpu(), images, exposure_result=exp)
    result["inputs"] = {"results": str(args.results), "data": data.source or data.name, "n_train": len(data),
                        "net": args.net or settings.get("net"), "machine": settings.get("machine"),
                        "device": device.type}
    if "provenance" in arrays and not args.no_agreement and settings.get("machine") != "network":
        prov = torch.from_numpy(np.asarray(arrays["provenance"], dtype=np.int64))
        P_rec = int(np.asarray(arrays["patch_sizes"]).reshape(-1)[-1]) if "patch_sizes" in arrays else args.P_attr
        at_rec = att if P_rec == args.P_attr else A.attribute(samples, data.images, P_rec, **kwargs)
        result["agreement_with_recorded_provenance"] = {"P": P_rec, **A.agreement(at_rec, prov.to(device), data.images,
                                                                                     samples)}
    out = Path(args.out) if args.out else Path(args.results).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    files = {"attribution": out / "attribution.json"}
    files["picture"] = save_attribution_png(samples.cpu(), images, att, result["per_sample"],
                                            out / "attribution.png", max_rows=args.rows)
    files["exposure"] = plot_exposure(exp["pixels"], out / "exposure.png", n_samples=int(samples.shape[0]),
                                      title=f"{settings.get('machine', '?')} on {data.name}, P_attr={args.P_attr}")
    result["files"] = {k: str(v) for k, v in files.items()}
    io.save_json(files["attribution"], result)
    return result


def summary_lines(result: dict) -> list[str]:
    """The printed summary (also used by ``analyze``)."""
    s, e = result["summary"], result["exposure"]
    t = e["top1pct_share"]
    lines = [f"attribution at P_attr={result['params']['P_attr']}: distinct sources per sample (median) "
             f"{s['n_sources']['median']:.1f}; credited {s['credited']['median']:.3f}, common "
             f"{s['common']['median']:.3f}, novel {s['novel']['median']:.3f} (median pixel fractions)",
             f"largest copied region (median) {s['largest_region']['median']:.0f} px, max "
             f"{s['largest_region']['max']:.0f} px; top source share (median) {s['top_source_share']['median']:.3f}",
             f"exposure: {e['images_exposed']} of {e['n_train']} images copied; top 1% ({t['k']} images) hold "
             f"{t['share']:.3f} of copied pixels (uniform {t['uniform']:.3f}, chance {t['chance_mean']:.3f})"]
    agree = result.get("agreement_with_recorded_provenance")
    if agree:
        a = agree["image"]
        v, c = agree["all_pixels"]["verdict"], agree["all_pixels"]["patch_content"]
        lines.append(f"agreement with the recorded provenance at P={agree['P']}: {a['fraction']:.3f} "
                     f"[{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}] of {a['n']} credited pixels; verdict consistent on "
                     f"{v['fraction']:.3f} [{v['ci95_by_sample'][0]:.3f}, {v['ci95_by_sample'][1]:.3f}] and the same "
                     f"patch on {c['fraction']:.3f} of all {c['n']} pixels (intervals over samples)")
    return lines


def run(args) -> int:
    result = attribute_file(args)
    print("\n".join(summary_lines(result)))
    print("wrote " + ", ".join(result["files"].values()))
    return 0


__all__ = ["register", "attribute_file", "summary_lines", "run"]
