"""Memorization and privacy: which training images the samples of each machine copy, and how much.

For each stage (machine x training set x patch schedule) this script

1. samples (``creativity-fast sample``; the network through ``creativity-fast analyze --net``),
2. attributes every sample at ``--P-attr`` (``creativity_fast.attribution``, docs/theory.md §7
   "Attribution and exposure"), one sample at a time, each cached under ``STAGE/.attr/``,
3. writes ``STAGE/attribution.json`` (the ``attribute`` command's content), ``STAGE/attribution.png``,
   ``STAGE/exposure.png`` and ``STAGE/stage.json`` (settings + the summary below),

and finally ``OUT/summary.json`` (one row per finished stage) and the synthetic check
``OUT/synthetic_mosaic.png`` / ``.json`` (two training images pasted at known offsets on a
constant background: the method must find both and leave the background unattributed).

Every step is skipped when its output exists with the same settings, so rerunning the same
command resumes. The network (``creativity_fast/checkpoints/fashion_mnist_resnet.pt``) was
trained on the embedded 3,000-image subset only, so it has no 60,000-image stage.

    PYTHONPATH=. python scripts/privacy_experiment.py --sets embedded        # 6 stages
    PYTHONPATH=. python scripts/privacy_experiment.py --sets full            # 3 stages on 60,000 images
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from creativity_fast import attribution as A  # noqa: E402
from creativity_fast import io  # noqa: E402
from creativity_fast.data import load_dataset  # noqa: E402
from creativity_fast.commands.common import parse_seeds  # noqa: E402
from creativity_fast.metrics import memorization, wilson_interval  # noqa: E402

FULL_DATA = "/usr/share/datasets/fashion-mnist"
NET = "creativity_fast/checkpoints/fashion_mnist_resnet.pt"

#: name -> (machine, data set, seeds, patch schedule or None for the default)
STAGES = {
    "is_3k": ("ideal", "embedded", "0-15", None),
    "ls_3k": ("local", "embedded", "0-15", None),
    "els_3k": ("els", "embedded", "0-15", None),
    "els_P3_3k": ("els", "embedded", "0-7", "3"),
    "els_P7_3k": ("els", "embedded", "0-7", "7"),
    "network_3k": ("network", "embedded", "0-15", None),
    "els_60k": ("els", "full", "0-1", None),
    "is_60k": ("ideal", "full", "0-1", None),
    "ls_60k": ("local", "full", "0-1", None),
    "els_60k_b": ("els", "full", "2-3", None),  # two more ELS seeds on 60,000 images, as time allows
    # IS copies one image per sample; 64 samples (twice the top 1% of the 3,000 images, k = 30) are
    # what it takes for the top-1% share to say whether some images are copied more than chance.
    "is_3k_64": ("ideal", "embedded", "0-63", None),
    # the paired-patch machine (docs/theory.md §3.7) with its defaults (beta 1, attention on z)
    "pels_3k": ("pels", "embedded", "0-15", None),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "creativity_fast.cli", *args]
    log("$ " + " ".join(cmd[1:]))
    subprocess.run(cmd, check=True, cwd=ROOT)


def read_npz(path: Path) -> tuple[dict, dict]:
    arrays = io.load_npz(path)
    settings = json.loads(str(arrays["settings"])) if "settings" in arrays else {}
    return arrays, settings


def sample_stage(name: str, out: Path) -> Path:
    machine, dataset, seeds, schedule = STAGES[name]
    data_arg = [] if dataset == "embedded" else ["--data", FULL_DATA]
    path = out / ("network_samples.npz" if machine == "network" else "samples.npz")
    if path.exists():
        arrays, settings = read_npz(path)
        same = (list(np.asarray(arrays["seeds"]).reshape(-1)) == parse_seeds(seeds)
                and settings.get("machine") == machine
                and settings.get("data") == (None if dataset == "embedded" else FULL_DATA)
                and (machine == "network" or settings.get("patch_schedule") == (schedule or "fashion_mnist")))
        if same:
            log(f"{name}: samples exist ({path})")
            return path
        log(f"{name}: {path} has other settings; resampling")
    if machine == "network":
        # --clip: the shipped network was trained and calibrated with x0 clipped (docs/privacy.md).
        cli("analyze", "--net", NET, "--clip", "--seeds", seeds, "--out", str(out), "--no-attribution", "--no-heldout",
            "--glyphs", "off", "--no-progress")
    else:
        extra = [] if schedule is None else ["--patch-schedule", schedule]
        cli("sample", "--machine", machine, "--seeds", seeds, "--out", str(out), "--no-progress", *data_arg, *extra)
    return path


def attribute_stage(name: str, out: Path, samples_path: Path, data: torch.Tensor, P_attr: int) -> dict:
    """Per-sample attribution (cached), combined as the ``attribute`` command would."""
    arrays, settings = read_npz(samples_path)
    samples = torch.from_numpy(np.asarray(arrays["samples"], dtype=np.float32))
    seeds = [int(s) for s in np.asarray(arrays["seeds"]).reshape(-1)]
    cache = out / ".attr"
    cache.mkdir(exist_ok=True)
    parts = []
    for b, seed in enumerate(seeds):
        f = cache / f"seed{seed}_P{P_attr}_N{data.shape[0]}.pt"
        if f.exists():
            parts.append(torch.load(f))
            continue
        t0 = time.perf_counter()
        att = A.attribute(samples[b:b + 1], data, P_attr)
        part = {k: att[k] for k in ("label", "source", "offset", "rms", "flat", "regions", "params")}
        torch.save(part, f)
        parts.append(part)
        log(f"{name}: attributed seed {seed} ({b + 1}/{len(seeds)}) in {time.perf_counter() - t0:.1f} s")
    att = {k: torch.cat([p[k] for p in parts]) for k in ("label", "source", "offset", "rms", "flat")}
    att["regions"] = [r for p in parts for r in p["regions"]]
    att["params"] = parts[0]["params"]
    return att, samples, seeds, settings


def stage_summary(name: str, result: dict, mem: dict, samples: torch.Tensor, flat: torch.Tensor) -> dict:
    machine, dataset, seeds, schedule = STAGES[name]
    H, W = samples.shape[-2:]
    per = result["per_sample"]
    sizes = np.array([p["largest_region"]["size"] if p["largest_region"] else 0 for p in per])
    n = len(per)
    half = int((sizes > H * W / 2).sum())
    nonflat = (~flat).reshape(flat.shape[0], -1).sum(1).numpy()
    of_nonflat = sizes / np.maximum(nonflat, 1)
    half_nf = int((of_nonflat > 0.5).sum())
    e = result["exposure"]["top1pct_share"]
    return {
        "stage": name, "machine": machine, "data": dataset, "n_train": result["exposure"]["n_train"],
        "patch_schedule": schedule or "fashion_mnist (default)", "n_samples": n, "P_attr": result["params"]["P_attr"],
        "n_sources": result["summary"]["n_sources"],
        "credited": result["summary"]["credited"], "common": result["summary"]["common"],
        "novel": result["summary"]["novel"], "largest_region": result["summary"]["largest_region"],
        "largest_region_fraction_median": float(np.median(sizes) / (H * W)),
        "largest_region_max_abs_diff_median": float(np.median(
            [p["largest_region"]["max_abs_diff"] for p in per if p["largest_region"]] or [float("nan")])),
        "largest_region_over_half": {"count": half, "n": n, "fraction": half / n, "ci95": list(wilson_interval(half, n))},
        "largest_region_of_non_flat_median": float(np.median(of_nonflat)),
        "largest_region_over_half_non_flat": {"count": half_nf, "n": n, "fraction": half_nf / n,
                                              "ci95": list(wilson_interval(half_nf, n))},
        "memorized_nn_ratio": mem,
        "exposure": {"images_exposed": result["exposure"]["images_exposed"],
                     "copied_pixels": result["exposure"]["copied_pixels"], "top1pct": e},
    }


def run_stage(name: str, root: Path, P_attr: int, datasets: dict, resummarize: bool = False) -> dict:
    machine, dataset, seeds, schedule = STAGES[name]
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    settings = {"stage": name, "machine": machine, "data": dataset, "seeds": seeds, "patch_schedule": schedule,
                "P_attr": P_attr}
    done = out / "stage.json"
    if done.exists() and not resummarize:
        old = json.loads(done.read_text())
        if old.get("settings") == settings:
            log(f"{name}: done ({done})")
            return old["summary"]
    t0 = time.perf_counter()
    samples_path = sample_stage(name, out)
    if dataset not in datasets:
        datasets[dataset] = load_dataset(None if dataset == "embedded" else FULL_DATA).images
    data = datasets[dataset]
    att, samples, seed_list, sample_settings = attribute_stage(name, out, samples_path, data, P_attr)
    exp = A.exposure(att, int(len(data)))  # once: its summary in the JSON, its counts in the histogram
    result = A.run_summary(att, samples, data, exposure_result=exp)
    result["inputs"] = {"results": str(samples_path.relative_to(ROOT)), "data": dataset, "n_train": int(len(data)),
                        "machine": machine, "seeds": seed_list}
    from creativity_fast.attribution_figures import plot_exposure, save_attribution_png
    save_attribution_png(samples, data, att, result["per_sample"], out / "attribution.png", max_rows=8)
    plot_exposure(exp["pixels"], out / "exposure.png", n_samples=len(seed_list),
                  title=f"{name}: {machine} on {len(data)} images, P_attr={P_attr}")
    io.save_json(out / "attribution.json", result)
    mem = memorization(samples, data)["summary"]
    summary = stage_summary(name, result, mem, samples, att["flat"].cpu())
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    io.save_json(done, {"settings": settings, "summary": summary})
    log(f"{name}: sources median {summary['n_sources']['median']:.1f}; credited median "
        f"{summary['credited']['median']:.3f}; largest region median {summary['largest_region']['median']:.0f} / max "
        f"{summary['largest_region']['max']:.0f} px; memorized {mem['count']}/{mem['n']}; top-1% share "
        f"{summary['exposure']['top1pct']['share']:.3f} (uniform {summary['exposure']['top1pct']['uniform']:.3f}, "
        f"chance {summary['exposure']['top1pct']['chance_mean']:.3f})")
    return summary


# --------------------------------------------------------------------------- #
# the synthetic check


def synthetic_mosaic(root: Path, P_attr: int, datasets: dict) -> None:
    """Two training images' blocks pasted at known offsets on a constant background, attributed."""
    png, js = root / "synthetic_mosaic.png", root / "synthetic_mosaic.json"
    if png.exists() and js.exists() and json.loads(js.read_text()).get("P_attr") == P_attr:
        log("synthetic mosaic: done")
        return
    if "embedded" not in datasets:
        datasets["embedded"] = load_dataset(None).images
    data = datasets["embedded"]
    a, b = 10, 20  # two training images
    # (image, source rows, source cols, destination top-left): offset = source minus destination
    blocks = [(a, (2, 16), (4, 18), (1, 0)), (b, (10, 26), (8, 22), (12, 13))]
    bg = float(data.min())  # the background value of Fashion-MNIST (-1)
    s = torch.full((1, *data.shape[1:]), bg)
    truth = torch.full(data.shape[-2:], -1, dtype=torch.long)
    for mu, (r0, r1), (c0, c1), (dr, dc) in blocks:
        s[0, :, dr:dr + r1 - r0, dc:dc + c1 - c0] = data[mu][:, r0:r1, c0:c1]
        truth[dr:dr + r1 - r0, dc:dc + c1 - c0] = mu
    att = A.attribute(s, data, P_attr)
    label, offset = att["label"][0], att["offset"][0]
    report = {"P_attr": P_attr, "n_train": int(len(data)), "background_value": bg, "blocks": []}
    for mu, (r0, r1), (c0, c1), (dr, dc) in blocks:
        inside = truth == mu
        right = inside & (label == mu) & (offset[..., 0] == r0 - dr) & (offset[..., 1] == c0 - dc)
        non_flat = inside & ~att["flat"][0]
        m = (P_attr - 1) // 2  # pixels whose whole P_attr window lies inside the block
        core = torch.zeros_like(inside)
        core[dr + m:dr + r1 - r0 - m, dc + m:dc + c1 - c0 - m] = True
        report["blocks"].append({
            "image": mu, "source_rows": [r0, r1], "source_cols": [c0, c1], "placed_at": [dr, dc],
            "true_offset": [r0 - dr, c0 - dc], "pixels": int(inside.sum()), "non_flat_pixels": int(non_flat.sum()),
            "credited_right_image_and_offset": int(right.sum()),
            "credited_right_of_non_flat": float(right.sum() / max(1, int(non_flat.sum()))),
            "window_inside_pixels": int(core.sum()), "credited_right_of_window_inside": int((right & core).sum()),
            "credited_other_image": int((inside & (label >= 0) & (label != mu)).sum())})
    bgm = truth < 0
    m = (P_attr - 1) // 2
    near = torch.nn.functional.max_pool2d((truth >= 0).double()[None, None], P_attr, stride=1, padding=m)[0, 0] > 0
    report["background"] = {"pixels": int(bgm.sum()), "credited": int((bgm & (label >= 0)).sum()),
                            "common": int((bgm & (label == A.COMMON)).sum()),
                            "novel": int((bgm & (label == A.NOVEL)).sum()),
                            "far_pixels": int((bgm & ~near).sum()),
                            "far_credited": int((bgm & ~near & (label >= 0)).sum()),
                            "near_pixels": int((bgm & near).sum()),
                            "near_credited": int((bgm & near & (label >= 0)).sum())}
    report["regions"] = [{k: g[k] for k in ("image", "offset", "size")} for g in att["regions"][0][:5]]
    io.save_json(js, report)

    from creativity_fast.attribution_figures import _outline
    from creativity_fast.figures import id_colours
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 4, figsize=(10, 3.4))
    grey = lambda x: ((x[0].numpy() + 1) / 2).clip(0, 1)  # noqa: E731
    ax[0].imshow(grey(s[0]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax[0].set_title("mosaic: #%d and #%d\non a constant background" % (a, b), fontsize=8)
    lab = label.numpy()
    rgb = np.full((*lab.shape, 3), 0.92)
    rgb[lab == A.NOVEL] = (1.0, 0.85, 0.3)
    for mu in (a, b):
        rgb[lab == mu] = id_colours(np.array([mu]))[0] / 255.0
    other = (lab >= 0) & (lab != a) & (lab != b)
    rgb[other] = (0.2, 0.2, 0.2)
    ax[1].imshow(rgb, interpolation="nearest")
    bgr = report["background"]
    ax[1].set_title(f"attribution (P_attr={P_attr})\nbackground credited: {bgr['far_credited']} of {bgr['far_pixels']} px\n"
                    f"(beyond {m} px of a block; {bgr['near_credited']} of {bgr['near_pixels']} nearer)",
                    fontsize=8)
    for j, (mu, (r0, r1), (c0, c1), (dr, dc)) in enumerate(blocks):
        colour = id_colours(np.array([mu]))[0] / 255.0
        ax[2 + j].imshow(grey(data[mu]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        blk = report["blocks"][j]
        ax[2 + j].set_title(f"training #{mu}: offset {blk['true_offset']}\nright image+offset: {blk['credited_right_of_window_inside']}"
                            f" of {blk['window_inside_pixels']} px\nwith the window inside the block "
                            f"({blk['credited_right_image_and_offset']} in all)", fontsize=8, color=colour)
        for g in att["regions"][0]:
            if g["image"] == mu and g["size"] >= 4:
                _outline(ax[1], g["pixels"], colour)
                _outline(ax[2 + j], g["pixels"], colour, shift=tuple(g["offset"]))
        ax[0].add_patch(plt.Rectangle((dc - 0.5, dr - 0.5), c1 - c0, r1 - r0, fill=False, ec=colour, lw=1.2))
    for x in ax:
        x.set_xticks([])
        x.set_yticks([])
    fig.text(0.5, 0.01, "colour: credited to that image (outlines: copied regions, moved by their offset); "
             "light grey: common; yellow: novel; dark: another image", ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(png, dpi=110)
    plt.close(fig)
    log(f"synthetic mosaic: {[(blk['image'], blk['credited_right_image_and_offset'], blk['non_flat_pixels']) for blk in report['blocks']]}; "
        f"background {bgr}")


# --------------------------------------------------------------------------- #
# validation of nearest-patch attribution against a machine's own provenance

#: Extra DDIM steps at P = 3 appended below the default schedule's last sigma (0.078), so that
#: the last step's posterior is decided by the image rather than by its residual noise.
LOW_NOISE_TAIL = (0.02, 0.005, 0.001)


def provenance_check(root: Path, datasets: dict, seeds: str = "0-15") -> None:
    """ELS samples whose last step records a decisive provenance, attributed at that step's P.

    Two rows: the default schedule as sampled in ``els_3k`` (last sigma 0.078) and the same
    schedule with :data:`LOW_NOISE_TAIL`; both at P = 3 on the embedded set. Writes
    ``OUT/provenance_check.json``.
    """
    from creativity_fast.commands.common import sample_images, stack_results
    from creativity_fast.denoisers import ELSDenoiser
    from creativity_fast.schedules import PatchSchedule, cosine_vp_sigmas, patch_sizes_for_steps

    js = root / "provenance_check.json"
    settings = {"seeds": seeds, "tail": list(LOW_NOISE_TAIL), "steps": 20, "patch_schedule": "fashion_mnist",
                "measures": ["image", "image_and_location", "patch_content", "verdict"]}
    if js.exists() and json.loads(js.read_text()).get("settings") == settings:
        log("provenance check: done")
        return
    if "embedded" not in datasets:
        datasets["embedded"] = load_dataset(None).images
    data = datasets["embedded"]
    rows = {}
    default = root / "els_3k" / "samples.npz"
    if default.exists():
        arrays, st = read_npz(default)
        prov = torch.from_numpy(np.asarray(arrays["provenance"], dtype=np.int64))
        sm = torch.from_numpy(np.asarray(arrays["samples"], dtype=np.float32))
        P = int(np.asarray(arrays["patch_sizes"]).reshape(-1)[-1])
        rows["default_last_sigma_0.078"] = {"last_sigma": float(np.asarray(arrays["sigmas"])[-2]), "P": P,
                                            **A.agreement(A.attribute(sm, data, P), prov, data, sm)}
    base = cosine_vp_sigmas(20, dtype=torch.float64)
    sigmas = torch.cat([base[:-1], torch.tensor(LOW_NOISE_TAIL + (0.0,), dtype=torch.float64)])
    sizes = patch_sizes_for_steps("fashion_mnist", 20) + [3] * len(LOW_NOISE_TAIL)
    cached = root / "provenance_check_samples.npz"
    if cached.exists() and np.asarray(io.load_npz(cached)["seeds"]).tolist() == parse_seeds(seeds):
        arrays = io.load_npz(cached)
        sm = torch.from_numpy(np.asarray(arrays["samples"], dtype=np.float32))
        prov = torch.from_numpy(np.asarray(arrays["provenance"], dtype=np.int64))
        log(f"provenance check: samples exist ({cached})")
    else:
        machine = ELSDenoiser(data, P=PatchSchedule(sigmas, sizes), record_stats=True)
        t0 = time.perf_counter()
        results = sample_images(machine, parse_seeds(seeds), tuple(data.shape[1:]), sigmas.float(), progress=False)
        sm, prov = stack_results(results, parse_seeds(seeds))
        log(f"provenance check: sampled {len(results)} with the low-noise tail in {time.perf_counter() - t0:.0f} s")
        io.save_npz(cached, samples=sm.numpy(), provenance=prov.numpy(), sigmas=sigmas.numpy(),
                    patch_sizes=np.array(sizes), seeds=np.array(parse_seeds(seeds)))
    rows["low_noise_tail_0.001"] = {"last_sigma": LOW_NOISE_TAIL[-1], "P": sizes[-1],
                                    **A.agreement(A.attribute(sm, data, sizes[-1]), prov, data, sm)}
    io.save_json(js, {"settings": settings, "rows": rows})
    for name, r in rows.items():
        c, v = r["all_pixels"]["patch_content"], r["all_pixels"]["verdict"]
        log(f"provenance check {name}: verdict consistent {v['fraction']:.4f} [{v['ci95_by_sample'][0]:.4f}, "
            f"{v['ci95_by_sample'][1]:.4f}]; same patch {c['fraction']:.4f} [{c['ci95_by_sample'][0]:.4f}, "
            f"{c['ci95_by_sample'][1]:.4f}] of {c['n']} px; same image+location "
            f"{r['all_pixels']['image_and_location']['fraction']:.4f}; credited-only {r['image']['fraction']:.3f} "
            f"({r['image']['count']}/{r['image']['n']})")


def _frac(d) -> str:
    if not d:
        return "n/a"
    return f"{d['count']}/{d['n']} = {d['fraction']:.2f} [{d['ci95'][0]:.2f}, {d['ci95'][1]:.2f}]"


def _num(x) -> str:
    """Three decimals; ``n/a`` for an undefined value (null or NaN: nothing was copied)."""
    return "n/a" if x is None or x != x else f"{x:.3f}"


def table(rows: list) -> str:
    """The results table of docs/privacy.md (markdown)."""
    head = ("| stage | machine | training set | P schedule | samples | distinct sources / sample: median [range] "
            "| credited / common / novel (median fractions) | largest copied region, px: median / max "
            "| largest region > half the image / > half its non-flat pixels | memorized (NN ratio < 1/3) | top-1% share (uniform; chance mean [95%]) |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        ns, lr, e = r["n_sources"], r["largest_region"], r["exposure"]["top1pct"]
        lines.append(
            f"| {r['stage']} | {r['machine']} | {r['n_train']:,} | {r['patch_schedule']} | {r['n_samples']} "
            f"| {ns['median']:g} [{ns['min']:g}, {ns['max']:g}] "
            f"| {r['credited']['median']:.3f} / {r['common']['median']:.3f} / {r['novel']['median']:.3f} "
            f"| {lr['median']:g} / {lr['max']:g} | {_frac(r['largest_region_over_half'])} / "
            f"{_frac(r.get('largest_region_over_half_non_flat'))} "
            f"| {_frac(r['memorized_nn_ratio'])} "
            f"| {_num(e['share'])} ({_num(e['uniform'])}; {_num(e['chance_mean'])} [{_num(e['chance_95'][0])}, "
            f"{_num(e['chance_95'][1])}]) |")
    return "\n".join(lines) + "\n"


def collect(root: Path) -> None:
    rows = []
    for name in STAGES:
        f = root / name / "stage.json"
        if f.exists():
            rows.append(json.loads(f.read_text())["summary"])
    io.save_json(root / "summary.json", {"stages": rows, "missing": [n for n in STAGES if not (root / n / "stage.json").exists()]})
    (root / "table.md").write_text(table(rows))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="results/privacy", help="output directory (default: %(default)s)")
    p.add_argument("--P-attr", dest="P_attr", type=int, default=A.DEFAULT_P_ATTR)
    p.add_argument("--sets", default="embedded,full", help="embedded, full or both (default: %(default)s)")
    p.add_argument("--stages", default=None, help="comma-separated stage names (default: all of --sets): "
                   + ", ".join(STAGES))
    p.add_argument("--no-synthetic", action="store_true")
    p.add_argument("--no-provenance-check", action="store_true",
                   help="skip the validation of nearest-patch attribution against recorded provenance")
    p.add_argument("--resummarize", action="store_true",
                   help="recompute the summaries and figures of finished stages (from the cached samples and "
                        "attributions)")
    args = p.parse_args(argv)
    root = (ROOT / args.out) if not Path(args.out).is_absolute() else Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    sets = {"embedded": "embedded", "full": "full"}
    wanted = [sets[s.strip()] for s in args.sets.split(",") if s.strip()]
    names = args.stages.split(",") if args.stages else [n for n, st in STAGES.items() if st[1] in wanted]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        p.error(f"--stages: unknown stage(s) {unknown}; choose from {list(STAGES)}")
    datasets: dict = {}
    if not args.no_synthetic and "embedded" in wanted:
        synthetic_mosaic(root, args.P_attr, datasets)
    if not args.no_provenance_check and "embedded" in wanted:
        provenance_check(root, datasets)
    for name in names:
        if args.resummarize and not (root / name / "stage.json").exists():
            continue
        run_stage(name, root, args.P_attr, datasets, args.resummarize)
        collect(root)
    collect(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
