#!/usr/bin/env python
"""Does attention make a diffusion model globally consistent? Networks and machines on twin glyphs.

One command reproduces the tables of docs/attention.md (rerunning resumes; a larger
``--samples`` only samples the new seeds)::

    python scripts/attention_experiment.py --samples 512      # writes results/attention_twin_glyphs/

Data: the twin-glyph set of ``scripts/twin_glyph_experiment.py`` (64 images 12x12, each two
copies of one of 4 glyphs; seed 0). Denoisers, all sampled from the same initial noise (one
seed per sample) with deterministic DDIM, 10 steps on the cosine VP schedule:

- the trained networks of ``scripts/train_twin_glyph_nets.sh`` (``--nets``): the CNN, CNN + soft
  attention, CNN + top-1 attention, one row per training seed;
- IS, ELS (P = 9, the CNN's receptive field), AELS (lam = 1, gamma = 0);
- PELS (P = 9, attention patch 5, exclusion 5, partner window P2 = P = 9) for every ``--betas`` and
  both ``attend_on`` values (beta = 0 is ELS exactly, and is run once).

Outputs in ``--out``: ``table.md``, ``table.json``, ``samples.png`` (the first 16 samples of every row,
same seeds in every column), ``tradeoff.png`` (consistency against memorization and novelty) and ``samples_<row>.npz`` (the ``creativity-fast sample`` format).
Networks whose folder still holds a ``last.pt`` (training in progress) are skipped.
The other parts of the experiment have their own scripts: ``scripts/tradeoff_experiment.py`` (consistency
against novelty as P and beta vary) and ``scripts/pels_fashion_mnist.py`` (PELS beside ELS on Fashion-MNIST).

Tables:

(a) global consistency: among samples with two or more detected glyphs, the fraction whose
    glyphs are all the same (Wilson 95% interval), beside the chance rate: the same fraction
    expected if each glyph's identity were drawn independently from the row's own glyph
    frequencies (``same_glyph_chance``); also the memorized fraction and the median
    nearest-neighbour distance relative to held-out images.
(b) agreement from the same initial noise: per seed the Pearson r over all pixels between
    two denoisers' final images; the median over seeds with a bootstrap 95% interval, for every
    machine against every network and between networks (the ceiling: two networks of one kind
    from different training seeds); and the paired test of the prediction "PELS predicts the
    attention network better than ELS does": per seed r(PELS, net) - r(ELS, net), its median
    with a bootstrap interval and the fraction of seeds where PELS is closer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from creativity_fast import io  # noqa: E402
from creativity_fast.attention import AELSDenoiser  # noqa: E402,F401  (registers "aels")
from creativity_fast.calibration import agreement  # noqa: E402
from creativity_fast.data.synthetic import DEFAULT_ALPHABET  # noqa: E402
from creativity_fast.figures import save_samples_by_machine  # noqa: E402
from creativity_fast.metrics import analyze_samples, fraction_summary, same_glyph_chance  # noqa: E402
from creativity_fast.nets import NetworkDenoiser, load_network  # noqa: E402
from creativity_fast.registry import make_denoiser  # noqa: E402
from creativity_fast.stats import median_summary, win_fraction  # noqa: E402
from twin_glyph_experiment import add_run_options, prepare, sample_cached, slug  # noqa: E402

NET_KINDS = {"cnn": "CNN", "soft": "CNN+soft attn", "top1": "CNN+top-1 attn"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/attention_twin_glyphs")
    p.add_argument("--nets", default="results/twin_glyph_nets",
                   help="folder of <kind>_seed<k>/model.pt (scripts/train_twin_glyph_nets.sh)")
    p.add_argument("--samples", type=int, default=512, help="samples per row (default: %(default)s)")
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-heldout", type=int, default=256)
    p.add_argument("--size", type=int, default=12)
    p.add_argument("--alphabet", type=int, default=DEFAULT_ALPHABET)
    p.add_argument("--P", type=int, default=9, help="ELS / PELS patch size (default: %(default)s)")
    p.add_argument("--attention-P", type=int, default=5, help="PELS attention patch (default: the glyph size)")
    p.add_argument("--betas", default="0,0.25,0.5,1,2,4", help="PELS beta values (default: %(default)s)")
    p.add_argument("--attend-on", default="z,x0", help="PELS attend_on values (default: %(default)s)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--only", default=None, help="comma list of row slugs to run (default: all)")
    add_run_options(p, batch_size=128)
    return p.parse_args(argv)


def machine_rows(args) -> list[tuple[str, str, dict]]:
    """(label, registry name, options) of every machine row."""
    rows = [("IS", "ideal", {}), (f"ELS(P={args.P})", "els", {"P": args.P}),
            ("AELS(lam=1, gamma=0)", "aels", {"P": args.P, "lam": 1.0, "gamma": 0.0, "attention_P": args.attention_P})]
    for attend_on in args.attend_on.split(","):
        for beta in (float(b) for b in args.betas.split(",")):
            if beta == 0:
                continue  # ELS exactly (docs/theory.md §3.7); the ELS row stands for it
            rows.append((f"PELS(beta={beta:g}, on={attend_on})", "pels",
                         {"P": args.P, "beta": beta, "attention_P": args.attention_P, "attend_on": attend_on}))
    return rows


def network_rows(nets: Path) -> list[tuple[str, Path]]:
    """(label, model.pt) of every finished network under ``nets``, CNN first (a folder that still holds a
    ``last.pt`` is a run in progress, and is skipped)."""
    out = []
    for kind, name in NET_KINDS.items():
        for path in sorted(nets.glob(f"{kind}_seed*/model.pt")):
            if (path.parent / "last.pt").exists():
                print(f"skipped {path.parent}: training not finished", flush=True)
                continue
            out.append((f"{name} s{path.parent.name.split('seed')[-1]}", path))
    return out


def settings_for(label: str, args, data_path: Path, **extra) -> str:
    return json.dumps({"label": label, "steps": args.steps, "sampler": "ddim", "eta": 0.0, "noise_schedule": "cosine",
                       "data": str(data_path), "backend": args.backend, "experiment": "attention_twin_glyphs",
                       **extra}, sort_keys=True)


def consistency_row(label: str, samples: torch.Tensor, train, held, args, provenance=None) -> dict:
    """Table (a) row: same-glyph rate among samples with >= 2 glyphs, its chance rate, memorization, novelty."""
    m = analyze_samples(samples, train.images, P=args.P, mode="els", provenance=provenance, heldout=held.images,
                        glyphs=True, alphabet=args.alphabet, backend=args.backend)
    glyphs = m["per_sample"]["glyphs"]
    two = np.array([len(g) >= 2 for g in glyphs])
    twin = np.asarray(m["per_sample"]["twin"], dtype=bool)
    s = m["summary"]
    return {"row": label, "n": int(samples.shape[0]), "n_two": int(two.sum()),
            "same_given_two": fraction_summary(twin[two]) if two.any() else None,
            "chance": same_glyph_chance(glyphs, args.alphabet),
            "consistent": s["global_consistency"]["consistent"], "no_glyph": s["global_consistency"]["no_glyph"],
            "memorized": s["memorization"], "nn_relative": s["novelty"].get("relative_median", float("nan"))}


def agreement_tables(finals: dict, machines: list[str], nets: list[str]) -> dict:
    """Table (b): median r [bootstrap 95%] per (machine, network) and (network, network) pair, and the paired
    PELS - ELS differences against each attention network."""
    r = {}
    for a in machines + nets:
        for b in nets:
            if a != b:
                r[(a, b)] = agreement(finals[b], finals[a])[0]
    cells = {f"{a} | {b}": median_summary(v) for (a, b), v in r.items()}
    els = next((m for m in machines if m.startswith("ELS")), None)
    tests = {}
    for net in nets if els is not None else ():
        for m in machines:
            if m.startswith("PELS"):
                d = r[(m, net)] - r[(els, net)]
                tests[f"{m} vs {els} | {net}"] = {"difference": median_summary(d),
                                                   "pels_closer": win_fraction(r[(m, net)], r[(els, net)])}
    return {"median_r": cells, "pels_minus_els": tests}


def fmt_frac(summary) -> str:
    if summary is None:
        return "n/a"
    lo, hi = summary["ci95"]
    return f"{summary['fraction']:.2f} [{lo:.2f}, {hi:.2f}]"


def fmt_median(summary) -> str:
    lo, hi = summary["ci"]
    return f"{summary['median']:.3f} [{lo:.3f}, {hi:.3f}]"


def markdown(rows, tables, machines, nets, config) -> str:
    lines = [f"Twin glyphs {config['size']}x{config['size']}, {config['n_train']} training images, "
             f"{config['samples']} samples per row (seeds 0..{config['samples'] - 1}, the same initial noise for "
             f"every row), DDIM {config['steps']} steps; ELS/PELS P={config['P']}, PELS attention patch "
             f"{config['attention_P']}.", "",
             "(a) Global consistency. `same | >=2`: among samples with two or more detected glyphs, the fraction "
             "whose glyphs are all the same (Wilson 95%); `chance`: the same fraction if each glyph's identity "
             "were drawn independently from the row's own glyph frequencies.", "",
             "| row | n with >=2 glyphs | same given >=2 | chance | consistent (>=1, all same) | no glyph "
             "| memorized | NN dist / held-out |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['n_two']} | {fmt_frac(r['same_given_two'])} | {r['chance']:.2f} | "
                     f"{fmt_frac(r['consistent'])} | {fmt_frac(r['no_glyph'])} | {fmt_frac(r['memorized'])} | "
                     f"{r['nn_relative']:.2f} |")
    if not nets:
        return "\n".join(lines) + "\n"
    lines += ["", "(b) Agreement from the same initial noise: median over seeds of the per-seed Pearson r between "
              "final images (bootstrap 95% interval).", "",
              "| row | " + " | ".join(nets) + " |", "|---|" + "---|" * len(nets)]
    for a in machines + nets:
        cells = [fmt_median(tables["median_r"][f"{a} | {b}"]) if a != b else "-" for b in nets]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += ["", "Prediction test: per seed r(PELS, net) - r(ELS, net); median [bootstrap 95%], and the fraction of "
              "seeds where PELS is closer to the network (Wilson 95%).", "",
              "| PELS row | network | median difference | PELS closer |", "|---|---|---|---|"]
    for key, t in tables["pels_minus_els"].items():
        m, net = key.split(" | ")
        w = t["pels_closer"]
        lines.append(f"| {m.split(' vs ')[0]} | {net} | {fmt_median(t['difference'])} | "
                     f"{w['fraction']:.2f} [{w['ci'][0]:.2f}, {w['ci'][1]:.2f}] |")
    return "\n".join(lines) + "\n"


def tradeoff_figure(rows: list[dict], path: Path) -> Path:
    """Consistency against novelty: per row, the same-glyph rate among samples with >= 2 glyphs (x) against
    the memorized fraction and the median NN distance relative to held-out images (y); PELS rows joined
    along beta, one line per attend_on."""
    from creativity_fast.figures import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    usable = [r for r in rows if r["same_given_two"] is not None]
    for ax, key, label in ((axes[0], "memorized", "memorized fraction"),
                           (axes[1], "nn_relative", "NN distance / held-out (novelty)")):
        def y(r):
            return r[key]["fraction"] if key == "memorized" else r[key]

        for on in ("z", "x0"):
            line = [r for r in usable if r["row"].startswith("PELS") and r["row"].endswith(f"on={on})")]
            if line:
                ax.plot([r["same_given_two"]["fraction"] for r in line], [y(r) for r in line], "o-",
                        label=f"PELS on={on} (beta up)")
                for r in line:
                    ax.annotate(r["row"].split(",")[0].split("=")[1], (r["same_given_two"]["fraction"], y(r)),
                                fontsize=7, xytext=(3, 3), textcoords="offset points")
        for r in usable:
            if not r["row"].startswith("PELS"):
                ax.plot(r["same_given_two"]["fraction"], y(r), "s", label=f"{r['row']} (n={r['n_two']})")
        ax.set_xlabel("same glyph | >= 2 glyphs (global consistency)")
        ax.set_ylabel(label)
    axes[1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    out, data_path, train, held, sigmas = prepare(args)
    only = None if args.only is None else set(args.only.split(","))
    finals, rows, machines, nets = {}, [], [], []
    for label, path in network_rows(Path(args.nets)):
        if only and slug(label) not in only:
            continue
        net, info = load_network(path)
        settings = settings_for(label, args, data_path, network=str(path), net_step=info.get("step"),
                                config=info["config"])
        samples, prov, _, _ = sample_cached(slug(label), lambda: NetworkDenoiser(net, name=label), settings, args,
                                            train.image_shape, sigmas, out)
        finals[label] = samples
        nets.append(label)
    for label, name, options in machine_rows(args):
        if only and slug(label) not in only:
            continue
        settings = settings_for(label, args, data_path, machine=name, **options)
        make = lambda: make_denoiser(name, train.images, backend=args.backend, record_stats=True, **options)  # noqa: E731
        print(f"== {label}", flush=True)
        samples, prov, seconds, _ = sample_cached(slug(label), make, settings, args, train.image_shape, sigmas, out,
                                                  patch_size=options.get("P", 1))
        finals[label] = samples
        machines.append(label)
    for label in nets + machines:
        rows.append(consistency_row(label, finals[label], train, held, args))
        r = rows[-1]
        print(f"{label}: same|>=2 {fmt_frac(r['same_given_two'])} (n={r['n_two']}), chance {r['chance']:.2f}",
              flush=True)
    tables = agreement_tables(finals, machines, nets) if nets else {"median_r": {}, "pels_minus_els": {}}
    config = {k: v for k, v in vars(args).items() if k not in ("no_progress", "out")}
    config["torch"] = torch.__version__
    io.save_json(out / "table.json", {"config": config, "consistency": rows, "agreement": tables})
    (out / "table.md").write_text(markdown(rows, tables, machines, nets, config))
    captions = {r["row"]: f"same|>=2 {r['same_given_two']['fraction']:.2f}" if r["same_given_two"] else "no pairs"
                for r in rows}
    save_samples_by_machine(finals, out / "samples.png", captions=captions)
    tradeoff_figure(rows, out / "tradeoff.png")
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
