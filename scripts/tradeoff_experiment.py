#!/usr/bin/env python
"""Can we trade locality against global consistency to control creativity? (docs/attention.md)

One command reproduces the trade-off plot and table of docs/attention.md (rerunning resumes; finished grid
points are skipped)::

    python scripts/tradeoff_experiment.py --samples 512 --threads 1     # writes results/pels_tradeoff/

Data: the twin-glyph set of ``scripts/twin_glyph_experiment.py`` (64 images 12x12, each two copies of one
of 4 glyphs; seed 0; 256 fresh images as the held-out novelty baseline). The grid is run with
``creativity-fast sweep`` (same seeds 0..samples-1, deterministic DDIM, 10 steps of the cosine VP
schedule, zero boundary) into ``--out``/sweep: IS, ELS at every ``--P`` (PELS at beta = 0 is ELS exactly,
docs/theory.md §3.7) and PELS at every ``--P`` x ``--betas`` x ``--attend-on`` (attention patch 5 = the
glyph size, exclusion 5, partner window P2 = P).

Per grid point, from the sweep's saved samples:

- global consistency: among samples with two or more detected glyphs, the fraction whose glyphs are all the
  same (Wilson 95%), beside its chance rate (``metrics.glyph_chance_rates``: each glyph drawn independently
  from the point's own glyph frequencies);
- novelty: the memorized fraction (d(NN1)/d(NN2) < 1/3, Wilson 95%) and the median nearest-training-image
  distance relative to the held-out median, over all samples and over the samples holding at least one
  glyph (an all-background image is far from every training image, so on this data the first cannot tell
  novel from empty); bootstrap 95% intervals of the medians;
- the fraction of samples with no glyph.

Outputs in ``--out``: ``tradeoff.png`` (consistency against memorization, novelty and emptiness, one row of
panels per ``attend_on``, one line per P along beta, the chance rate of every point drawn; points with fewer
than 10 two-glyph samples left out), ``tradeoff.json``, ``tradeoff.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from creativity_fast import io  # noqa: E402
from creativity_fast.cli import build_parser, main as cli_main  # noqa: E402
from creativity_fast.commands.sweep import grid, point_id  # noqa: E402
from creativity_fast.data.synthetic import DEFAULT_ALPHABET  # noqa: E402
from creativity_fast.metrics import global_consistency, memorization, nearest_neighbours  # noqa: E402
from creativity_fast.stats import median_summary  # noqa: E402
from twin_glyph_experiment import add_run_options, prepare  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/pels_tradeoff")
    p.add_argument("--samples", type=int, default=512, help="samples per grid point (default: %(default)s)")
    p.add_argument("--P", default="5,7,9,11", help="ELS / PELS patch sizes (default: %(default)s)")
    p.add_argument("--betas", default="0,0.5,1,2,4", help="PELS beta values; 0 is ELS (default: %(default)s)")
    p.add_argument("--attend-on", default="z,x0", help="PELS attend_on values (default: %(default)s)")
    p.add_argument("--attention-P", type=int, default=5, help="PELS attention patch (default: the glyph size)")
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-heldout", type=int, default=256)
    p.add_argument("--size", type=int, default=12)
    p.add_argument("--alphabet", type=int, default=DEFAULT_ALPHABET)
    p.add_argument("--steps", type=int, default=10)
    add_run_options(p, batch_size=128)
    return p.parse_args(argv)


def sweep_argv(args, data_path: Path, sweep_out: Path) -> list[str]:
    """The ``creativity-fast sweep`` command line of the grid (IS, ELS at every P, PELS at every beta > 0)."""
    betas = [b for b in args.betas.split(",") if float(b) != 0]
    machines = "ideal,els" + (",pels" if betas else "")
    argv = ["sweep", "--data", str(data_path), "--machines", machines, "--P", args.P,
            "--beta", ",".join(betas or ["1"]), "--attend-on", args.attend_on, "--attention-P", str(args.attention_P),
            "--steps", str(args.steps), "--seeds", f"0-{args.samples - 1}", "--batch-size", str(args.batch_size),
            "--backend", args.backend, "--device", "cpu", "--out", str(sweep_out)]
    return argv + (["--no-progress"] if args.no_progress else [])


def point_metrics(samples: torch.Tensor, train: torch.Tensor, held_median: float, alphabet: int) -> dict:
    """Consistency (with chance), memorization and novelty of one grid point's ``samples [B, C, H, W]``."""
    glob = global_consistency(samples, alphabet=alphabet)
    g = glob["summary"]
    n = np.asarray(glob["n_glyphs"])
    mem = memorization(samples, train)
    d = mem["nn_distance"][:, 0].numpy() / held_median
    return {"n": int(samples.shape[0]), "n_two": g["same_given_two"]["n"], "same_given_two": g["same_given_two"],
            "chance": g["chance"]["same_given_two"], "no_glyph": g["no_glyph"], "memorized": mem["summary"],
            "nn_relative": median_summary(d), "nn_relative_glyph": median_summary(d[n >= 1]),
            "value_range": [float(samples.min()), float(samples.max())]}


def label_of(point: dict) -> str:
    if point["machine"] == "ideal":
        return "IS"
    if point["machine"] == "els":
        return f"ELS P={point['P']} (beta=0)"
    return f"PELS P={point['P']} beta={point['beta']:g} on={point['attend_on']}"


def fmt_frac(s: dict) -> str:
    if not s["n"]:
        return "n/a"
    return f"{s['fraction']:.2f} [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]"


def fmt_median(s: dict) -> str:
    if not s["n"]:
        return "n/a"
    return f"{s['median']:.2f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]"


def markdown(rows: list[dict], args) -> str:
    lines = [f"Twin glyphs {args.size}x{args.size}, {args.n_train} training images, {args.samples} samples per "
             f"point (seeds 0..{args.samples - 1}, the same initial noise for every point), DDIM {args.steps} "
             f"steps; PELS attention patch {args.attention_P}, exclusion {args.attention_P}, partner window P2 = P. "
             "Fractions with Wilson 95% intervals, medians with bootstrap 95% intervals; `chance`: the same-glyph "
             "rate if each glyph were drawn independently from the point's own glyph frequencies; NN distances "
             "relative to the median of held-out real images.", "",
             "| point | n with >=2 glyphs | same given >=2 | chance | no glyph | memorized | NN dist / held-out "
             "(all) | NN dist / held-out (>=1 glyph) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        lines.append(f"| {r['label']} | {m['n_two']} | {fmt_frac(m['same_given_two'])} | {m['chance']:.2f} | "
                     f"{fmt_frac(m['no_glyph'])} | {fmt_frac(m['memorized'])} | {fmt_median(m['nn_relative'])} | "
                     f"{fmt_median(m['nn_relative_glyph'])} |")
    return "\n".join(lines) + "\n"


MIN_PAIRS = 10  # points with fewer samples holding two glyphs are left out of the figure (kept in the table)


def tradeoff_figure(rows: list[dict], path: Path, title: str) -> Path:
    """Global consistency (x: same glyph | >= 2 glyphs, Wilson 95% bars) against memorization, novelty of the
    glyph-holding samples and emptiness (columns), one row of panels per ``attend_on``; one colour per P, the
    points of one P joined along beta (beta = 0 is ELS, the open circle), every point's chance rate drawn as a
    tick of its colour at its height. Points with fewer than ``MIN_PAIRS`` two-glyph samples are left out."""
    from creativity_fast.figures import _pyplot, save_figure

    plt = _pyplot()
    panels = (("memorized", "memorized fraction (copies)", "frac"),
              ("nn_relative_glyph", "NN distance / held-out,\nsamples with >= 1 glyph (novelty)", "median"),
              ("no_glyph", "no complete glyph (empty samples)", "frac"))
    sources = sorted({r["point"]["attend_on"] for r in rows if r["point"]["machine"] == "pels"}) or [""]
    fig, axes = plt.subplots(len(sources), 3, figsize=(15, 4.4 * len(sources)), squeeze=False)
    Ps = sorted({r["point"]["P"] for r in rows if r["point"]["P"] is not None})
    shown = [r for r in rows if r["metrics"]["n_two"] >= MIN_PAIRS]

    def y_of(m, key, kind):
        s = m[key]
        return (s["fraction"], s["ci95"]) if kind == "frac" else (s["median"], s["ci"])

    for axrow, on in zip(axes, sources):
        for ax, (key, ylabel, kind) in zip(axrow, panels):
            for i, P in enumerate(Ps):
                colour = f"C{i}"
                line = [r for r in shown if r["point"]["machine"] == "els" and r["point"]["P"] == P]
                line += sorted((r for r in shown if r["point"]["machine"] == "pels" and r["point"]["P"] == P
                                and r["point"]["attend_on"] == on), key=lambda r: r["point"]["beta"])
                if not line:
                    continue
                xs = [r["metrics"]["same_given_two"]["fraction"] for r in line]
                ys = [y_of(r["metrics"], key, kind)[0] for r in line]
                ax.plot(xs, ys, "-", color=colour, lw=1.3, zorder=2, label=f"P={P}")
                ax.plot([r["metrics"]["chance"] for r in line], ys, "|", color=colour, ms=10, mew=1.5, zorder=2)
                for r, x, y in zip(line, xs, ys):
                    lo, hi = r["metrics"]["same_given_two"]["ci95"]
                    ylo, yhi = y_of(r["metrics"], key, kind)[1]
                    els = r["point"]["machine"] == "els"
                    ax.errorbar(x, y, xerr=[[x - lo], [hi - x]], yerr=[[max(0.0, y - ylo)], [max(0.0, yhi - y)]],
                                fmt="o", color=colour, ms=6 if els else 4, mfc="white" if els else colour,
                                elinewidth=0.6, capsize=1.5, zorder=3)
                    beta = 0 if els else r["point"]["beta"]
                    ax.annotate(f"{beta:g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
            for r in shown:
                if r["point"]["machine"] == "ideal":
                    m = r["metrics"]
                    ax.plot(m["same_given_two"]["fraction"], y_of(m, key, kind)[0], "k*", ms=10, zorder=4, label="IS")
                    ax.plot(m["chance"], y_of(m, key, kind)[0], "|", color="k", ms=10, mew=1.5)
            ax.set_xlabel("same glyph | >= 2 glyphs (global consistency)")
            ax.set_ylabel(ylabel, fontsize=8)
            ax.set_xlim(0, 1.03)
            ax.grid(alpha=0.3)
        axrow[0].set_title(f"PELS attention on {on}" if on else "", fontsize=9, loc="left")
    axes[0, 0].plot([], [], "|", color="0.3", ms=10, mew=1.5, label="chance of the point (same colour, same height)")
    axes[0, 0].plot([], [], "o", color="0.3", mfc="white", label="ELS (beta = 0); numbers: beta")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    out, data_path, train, held, _ = prepare(args)
    sweep_out = out / "sweep"
    argv_sweep = sweep_argv(args, data_path, sweep_out)
    print("creativity-fast " + " ".join(argv_sweep), flush=True)
    if cli_main(argv_sweep) != 0:
        return 1
    held_median = float(nearest_neighbours(held.images, train.images, 1)[0][:, 0].median())
    rows = []
    for point in grid(build_parser().parse_args(argv_sweep)):
        arrays = io.load_npz(sweep_out / "runs" / f"{point_id(point)}.npz")
        samples = torch.from_numpy(np.asarray(arrays["samples"], dtype=np.float32))
        rows.append({"label": label_of(point), "point": point,
                     "metrics": point_metrics(samples, train.images, held_median, args.alphabet)})
        m = rows[-1]["metrics"]
        print(f"{rows[-1]['label']}: same|>=2 {fmt_frac(m['same_given_two'])} (n={m['n_two']}, chance "
              f"{m['chance']:.2f}), memorized {fmt_frac(m['memorized'])}, NN/held-out (>=1 glyph) "
              f"{fmt_median(m['nn_relative_glyph'])}, no glyph {fmt_frac(m['no_glyph'])}", flush=True)
    config = {k: v for k, v in vars(args).items() if k not in ("no_progress", "out")}
    config.update(torch=torch.__version__, sweep=argv_sweep, heldout_nn_median=held_median)
    io.save_json(out / "tradeoff.json", {"config": config, "rows": rows})
    (out / "tradeoff.md").write_text(markdown(rows, args))
    title = (f"Twin glyphs {args.size}x{args.size}: patch size P (locality) and PELS beta (pairing) against global "
             f"consistency; {args.samples} samples per point, 95% intervals; tick = the point's chance rate; "
             f"points with < {MIN_PAIRS} two-glyph samples omitted")
    tradeoff_figure(rows, out / "tradeoff.png", title)
    print((out / "tradeoff.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
