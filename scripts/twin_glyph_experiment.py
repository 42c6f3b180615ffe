#!/usr/bin/env python
"""Twin glyphs: does attention make ELS samples globally consistent? (docs/theory.md §3.4, §7)

One command reproduces the table and figures of docs/attention.md::

    python scripts/twin_glyph_experiment.py            # writes results/twin_glyphs/

Training set: ``twin_glyphs(n_train, size, size)``: every image holds two copies of one
of 4 glyphs (5x5) at random, non-touching places. Machines, all sampled from the same
initial noise (one seed per sample) with deterministic DDIM on the cosine VP schedule:

- IS (ideal score: memorizes),
- ELS with patch size P,
- AELS(lam=1, gamma=0): ELS + attention prior,
- AELS(lam=0, gamma=1): ELS + sample-time attention (the seed's network form),
- AELS(lam=1, gamma=1): both,

plus any ``--extra lam,gamma`` pairs. Attention uses ``attention_P`` (default 5, the glyph
size) with the default exclusion radius (= attention_P, non-overlapping patches).

Per machine: memorized fraction (d(NN1)/d(NN2) < 1/3), global consistency from the
glyphs ``find_glyphs`` detects (consistent = >= 1 glyph, all the same [docs/theory.md §7]; twin = >= 2
glyphs, all the same; mixed = two different glyphs), local consistency, nearest-neighbour
distance relative to held-out real images; fractions with Wilson 95% intervals.

Outputs (``--out``): ``table.json``, ``table.md``, ``samples.png`` (16 samples per machine),
``provenance_<machine>.png``, ``samples_<machine>.npz`` (the ``creativity-fast sample``
format, so ``creativity-fast analyze`` runs on them) and ``twin_glyphs.npz`` (the data).
Finished machines are skipped when the command is rerun with the same settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from creativity_fast import io  # noqa: E402
from creativity_fast.attention import AELSDenoiser  # noqa: E402  (registers "aels")
from creativity_fast.commands import common  # noqa: E402
from creativity_fast.data.synthetic import DEFAULT_ALPHABET, GLYPH_NAMES, twin_glyphs  # noqa: E402
from creativity_fast.registry import make_denoiser  # noqa: E402
from creativity_fast.figures import save_provenance_png, save_samples_by_machine  # noqa: E402
from creativity_fast.metrics import analyze_samples, fraction_summary  # noqa: E402


def paired_difference(a, b, *, n_boot: int = 4000, seed: int = 0) -> dict:
    """Mean of ``a - b`` over paired samples (same seeds) with a percentile-bootstrap 95% interval."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(1)
    return {"difference": float(d.mean()), "ci95": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]}
from creativity_fast.ops import has_kernel  # noqa: E402
from creativity_fast.schedules import cosine_vp_sigmas  # noqa: E402


def add_run_options(p: argparse.ArgumentParser, *, batch_size: int) -> None:
    """The options every twin-glyph experiment script shares: backend, batch, threads, data seed, progress."""
    p.add_argument("--backend", default="auto", choices=("auto", "kernel", "reference"))
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="data seed (held-out data uses seed + 1)")
    p.add_argument("--no-progress", action="store_true")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/twin_glyphs")
    p.add_argument("--samples", type=int, default=64, help="samples per machine (default: %(default)s)")
    p.add_argument("--n-train", type=int, default=64, help="training images (default: %(default)s)")
    p.add_argument("--n-heldout", type=int, default=256, help="held-out real images for novelty")
    p.add_argument("--size", type=int, default=12, help="image height = width (default: %(default)s)")
    p.add_argument("--alphabet", type=int, default=DEFAULT_ALPHABET)
    p.add_argument("--P", type=int, default=9, help="ELS patch size (default: %(default)s)")
    p.add_argument("--attention-P", type=int, default=5, help="attention patch size (default: the glyph size, 5)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps (default: %(default)s)")
    p.add_argument("--extra", action="append", default=[], metavar="LAM,GAMMA",
                   help="another AELS setting to run (repeatable), e.g. --extra 0,0.25")
    add_run_options(p, batch_size=32)
    return p.parse_args(argv)


def machines(args) -> list[tuple[str, str, dict]]:
    """(label, registry name, options) per machine."""
    out = [("IS", "ideal", {}), (f"ELS(P={args.P})", "els", {"P": args.P})]
    pairs = [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)]
    for text in args.extra:
        lam, gamma = (float(v) for v in text.split(","))
        pairs.append((lam, gamma))
    for lam, gamma in pairs:
        out.append((f"AELS(lam={lam:g}, gamma={gamma:g})", "aels",
                    {"P": args.P, "lam": lam, "gamma": gamma, "attention_P": args.attention_P}))
    return out


def slug(label: str) -> str:
    keep = "".join(c if c.isalnum() else "_" for c in label.lower())
    return "_".join(part for part in keep.split("_") if part)


def write_data(out: Path, args) -> tuple[Path, object, object]:
    train = twin_glyphs(args.n_train, args.size, args.size, alphabet=args.alphabet, seed=args.seed)
    held = twin_glyphs(args.n_heldout, args.size, args.size, alphabet=args.alphabet, seed=args.seed + 1)
    path = out / f"twin_glyphs_{args.size}x{args.size}.npz"
    io.save_npz(path, train_images=train.images.numpy(), train_labels=train.labels.numpy(),
                test_images=held.images.numpy(), test_labels=held.labels.numpy(),
                class_names=np.array(list(GLYPH_NAMES[:args.alphabet])))
    return path, train, held


def run_machine(label, name, options, args, train, data_path, sigmas, out: Path):
    settings = json.dumps({"machine": name, "label": label, **options, "boundary": "zeros", "keys": "all",
                           "patch_schedule": str(options.get("P", 1)), "steps": args.steps, "sampler": "ddim",
                           "eta": 0.0, "noise_schedule": "cosine", "data": str(data_path), "limit": None,
                           "class_label": None, "backend": args.backend, "data_name": "twin_glyphs",
                           "n_train": len(train), "experiment": "twin_glyphs"}, sort_keys=True)
    make = lambda: make_denoiser(name, train.images, backend=args.backend, record_stats=True, **options)  # noqa: E731
    return sample_cached(slug(label), make, settings, args, train.image_shape, sigmas, out,
                         patch_size=options.get("P", 1))


def sample_cached(name: str, make, settings: str, args, shape_chw, sigmas, out: Path, *, patch_size: int = 1):
    """Samples of seeds ``0 .. args.samples - 1`` from ``make()`` (a denoiser), kept in ``samples_<name>.npz``.

    Seeds already in that file or in an interrupted run's partial file (same ``settings``) are
    reused, so rerunning with a larger ``--samples`` only samples the new seeds, and a
    rerun after an interruption loses at most one batch. Returns
    ``(samples [n, C, H, W], provenance [n, H, W, 2] or None, seconds of sampling, path)``.
    """
    path = out / f"samples_{name}.npz"
    seeds = list(range(args.samples))
    partial = common.partial_results_path(out, name)
    done = {**common.load_partial(path, settings), **common.load_partial(partial, settings)}
    seconds_before = float(io.load_npz(path).get("seconds", 0.0)) if path.exists() and done else 0.0
    seconds = 0.0
    if any(s not in done for s in seeds):
        start = time.perf_counter()
        done = common.sample_images(make(), seeds, shape_chw, sigmas, sampler="ddim", eta=0.0,
                                    batch_size=args.batch_size, progress=not args.no_progress, done=done,
                                    checkpoint=lambda r: common.save_partial(partial, r, settings))
        seconds = time.perf_counter() - start
        every = sorted(done)
        all_samples, all_prov = common.stack_results(done, every)
        arrays = dict(samples=all_samples.numpy(), seeds=np.array(every), settings=np.array(settings),
                      sigmas=sigmas.numpy(), patch_sizes=np.array([patch_size] * (len(sigmas) - 1)),
                      seconds=np.array(seconds_before + seconds))
        if all_prov is not None:
            arrays["provenance"] = all_prov.numpy()
        io.save_npz(path, **arrays)
        common.remove_quietly(partial)
    samples, provenance = common.stack_results(done, seeds)
    per_sample = (seconds_before + seconds) / max(1, len(done))
    return samples, provenance, per_sample * len(seeds), path


def fmt(summary: dict) -> str:
    lo, hi = summary["ci95"]
    return f"{summary['fraction']:.2f} [{lo:.2f}, {hi:.2f}]"


def prepare(args):
    """Threads, output folder, data and noise schedule of one run: (out, data_path, train, held, sigmas)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_path, train, held = write_data(out, args)
    return out, data_path, train, held, cosine_vp_sigmas(args.steps)


def main(argv=None) -> int:
    args = parse_args(argv)
    out, data_path, train, held, sigmas = prepare(args)
    kernel = has_kernel("cpu") and args.backend != "reference"
    rows, groups, total_start = [], {}, time.perf_counter()
    for label, name, options in machines(args):
        print(f"== {label}", flush=True)
        samples, provenance, seconds, path = run_machine(label, name, options, args, train, data_path, sigmas, out)
        mode = "ideal" if name == "ideal" else "els"
        metrics = analyze_samples(samples, train.images, P=options.get("P", 1), mode=mode, provenance=provenance,
                                  heldout=held.images, glyphs=True, alphabet=args.alphabet, backend=args.backend)
        s = metrics["summary"]
        n_glyphs = np.array([len(g) for g in metrics["per_sample"]["glyphs"]])
        two = n_glyphs >= 2
        same_given_two = fraction_summary(np.asarray(metrics["per_sample"]["twin"])[two]) if two.any() else None
        row = {"machine": label, "name": name, **{k: v for k, v in options.items()}, "n": int(samples.shape[0]),
               "seconds": seconds, "memorized": s["memorization"], "consistent": s["global_consistency"]["consistent"],
               "twin": s["global_consistency"]["twin"], "mixed": s["global_consistency"]["mixed"],
               "no_glyph": s["global_consistency"]["no_glyph"], "same_given_two": same_given_two,
               "glyph_count_histogram": s["global_consistency"]["glyph_count_histogram"],
               "local_consistency": s["local_consistency"], "novelty": s["novelty"],
               "provenance": s.get("provenance"), "samples_file": path.name,
               "value_range": [float(samples.min()), float(samples.max())]}
        row["_flags"] = {k: np.asarray(metrics["per_sample"][k], dtype=bool) for k in ("twin", "mixed", "memorized")}
        row["_flags"]["consistent"] = np.asarray(metrics["per_sample"]["globally_consistent"], dtype=bool)
        rows.append(row)
        groups[label] = samples
        if provenance is not None:
            save_provenance_png(samples, provenance, out / f"provenance_{slug(label)}.png")
        print(f"   memorized {fmt(row['memorized'])}  consistent {fmt(row['consistent'])}  twin {fmt(row['twin'])}  "
              f"mixed {fmt(row['mixed'])}  ({seconds:.0f} s)", flush=True)
    flags = [r.pop("_flags") for r in rows]
    els_flags = next(f for r, f in zip(rows, flags) if r["name"] == "els")
    for r, f in zip(rows, flags):  # paired (same seeds) differences against ELS
        r["vs_els"] = None if r["name"] == "els" else {k: paired_difference(f[k], els_flags[k]) for k in f}
    captions = {r["machine"]: f"mem {r['memorized']['fraction']:.2f}\ntwin {r['twin']['fraction']:.2f}" for r in rows}
    save_samples_by_machine(groups, out / "samples.png", captions=captions)
    config = {k: v for k, v in vars(args).items() if k not in ("no_progress", "out")}
    config.update(kernel_used=kernel, torch=torch.__version__, total_seconds=time.perf_counter() - total_start)
    io.save_json(out / "table.json", {"config": config, "rows": rows})
    (out / "table.md").write_text(markdown_table(rows, config))
    print((out / "table.md").read_text())
    return 0


def markdown_table(rows, config) -> str:
    lines = [f"Twin glyphs {config['size']}x{config['size']}, {config['n_train']} training images, "
             f"{config['samples']} samples per machine, DDIM {config['steps']} steps, ELS P={config['P']}, "
             f"attention P={config['attention_P']}; backend {'kernel' if config['kernel_used'] else 'reference'}. "
             "Fractions with Wilson 95% intervals.", "",
             "| machine | memorized | consistent (>=1 glyph, all same) | twin (>=2, all same) | mixed (>=2 ids) "
             "| no glyph | same given >=2 | local consistency (median px) | NN dist / held-out |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sg = r["same_given_two"]
        sg_text = f"{fmt(sg)} (n={sg['n']})" if sg else "n/a"
        lines.append(
            f"| {r['machine']} | {fmt(r['memorized'])} | {fmt(r['consistent'])} | {fmt(r['twin'])} | "
            f"{fmt(r['mixed'])} | {fmt(r['no_glyph'])} | {sg_text} | "
            f"{r['local_consistency']['pixel_fraction']['median']:.2f} | "
            f"{r['novelty'].get('relative_median', float('nan')):.2f} |")
    lines += ["", "Paired differences against ELS (same seeds; mean difference, bootstrap 95% interval):", "",
              "| machine | twin - ELS | mixed - ELS | consistent - ELS |", "|---|---|---|---|"]
    for r in rows:
        if r["vs_els"] is None:
            continue
        cells = [f"{r['vs_els'][k]['difference']:+.3f} [{r['vs_els'][k]['ci95'][0]:+.3f}, "
                 f"{r['vs_els'][k]['ci95'][1]:+.3f}]" for k in ("twin", "mixed", "consistent")]
        lines.append(f"| {r['machine']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
