#!/usr/bin/env python
"""PELS beside ELS on Fashion-MNIST, from the same initial noise (docs/attention.md).

One command reproduces the grid of docs/attention.md (rerunning resumes each machine's samples)::

    python scripts/pels_fashion_mnist.py --threads 1      # writes results/pels_fashion_mnist/

Data: one class (``--class``, default Trouser: two legs, a pair of distant parts that should agree) of the
first ``--limit`` Fashion-MNIST training images, resized to 32 x 32 (``--resize``; docs/theory.md §8).
Each machine is sampled with ``creativity-fast sample`` (deterministic DDIM, ``--steps`` steps of the cosine
VP schedule, the published ``fashion_mnist`` patch schedule, zero boundary) from the same seeds:
ELS, and PELS at every ``--betas`` (attention patch ``--attention-P``, exclusion = attention patch, partner
window = the step's P, attention on ``--attend-on``).

Outputs in ``--out``: ``grid.png`` (8 seeds per row, one row per machine, the same seed in every column), ``summary.json`` and
``summary.md`` (per machine: memorized fraction with a Wilson 95% interval, median nearest-training-image
distance relative to held-out test images of the class and the median mirror r (:func:`mirror_r`, beside the
real images' value), with bootstrap 95% intervals, and against ELS the per-seed Pearson r and RMS difference), and ``<machine>/samples.npz`` (not kept in git).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from creativity_fast import io  # noqa: E402
from creativity_fast.calibration import agreement  # noqa: E402
from creativity_fast.cli import main as cli_main  # noqa: E402
from creativity_fast.data import load_dataset  # noqa: E402
from creativity_fast.figures import save_samples_by_machine  # noqa: E402
from creativity_fast.metrics import memorization, nearest_neighbours  # noqa: E402
from creativity_fast.stats import median_summary, win_fraction  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX folder")
    p.add_argument("--out", default="results/pels_fashion_mnist")
    p.add_argument("--class", dest="class_label", default="Trouser")
    p.add_argument("--limit", type=int, default=2000, help="first LIMIT training images (default: %(default)s)")
    p.add_argument("--resize", type=int, default=32)
    p.add_argument("--seeds", default="0-15")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--betas", default="1,4", help="PELS beta values (default: %(default)s)")
    p.add_argument("--attention-P", type=int, default=5)
    p.add_argument("--attend-on", default="x0", choices=("z", "x0"))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--force", action="store_true", help="resample machines whose samples.npz exists")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def machines(args) -> list[tuple[str, str, list[str]]]:
    """(label, folder, extra ``sample`` arguments) per row: ELS, then PELS at every beta."""
    rows = [("ELS", "els", ["--machine", "els"])]
    for beta in args.betas.split(","):
        rows.append((f"PELS beta={float(beta):g}", f"pels_beta{float(beta):g}",
                     ["--machine", "pels", "--opt", f"beta={float(beta):g}", "--opt", f"attention_P={args.attention_P}",
                      "--opt", f"attend_on={args.attend_on}"]))
    return rows


def sample_argv(args, folder: Path, extra: list[str]) -> list[str]:
    argv = ["sample", "--data", args.data, "--resize", str(args.resize), "--limit", str(args.limit),
            "--class", args.class_label, "--seeds", args.seeds, "--steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--device", "cpu", "--out", str(folder), *extra]
    return argv + (["--no-progress"] if args.no_progress else [])


def mirror_r(images: torch.Tensor) -> np.ndarray:
    """Per image ``[B, C, H, W]``: Pearson r over all pixels between the image and its left-right mirror image.

    A crude global-consistency proxy for a symmetric class (trousers: do the two legs agree?); 1 for a
    mirror-symmetric image. Not a project metric: reported beside the same number for real images.
    """
    x = images.flatten(1).double()
    y = images.flip(-1).flatten(1).double()
    x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    return ((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)).clamp_min(1e-12)).numpy()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    finals, commands = {}, {}
    for label, folder, extra in machines(args):
        argv_sample = sample_argv(args, out / folder, extra)
        commands[label] = "creativity-fast " + " ".join(argv_sample)
        path = out / folder / "samples.npz"
        if args.force or not path.exists():  # a finished machine is kept; an interrupted one resumes
            print(commands[label], flush=True)
            if cli_main(argv_sample) != 0:
                return 1
        finals[label] = torch.from_numpy(np.asarray(io.load_npz(path)["samples"], dtype=np.float32))
    train = load_dataset(args.data, limit=args.limit, resize=args.resize)
    cls = train.class_names.index(args.class_label)
    images = train.images[train.labels == cls]
    test = load_dataset(args.data, split="test", resize=args.resize)
    held = test.images[test.labels == cls]
    held_median = float(nearest_neighbours(held, images, 1)[0][:, 0].median())
    rows = {}
    for label, samples in finals.items():
        mem = memorization(samples, images)
        row = {"memorized": mem["summary"],
               "nn_relative": median_summary(mem["nn_distance"][:, 0].numpy() / held_median),
               "mirror_r": median_summary(mirror_r(samples)),
               "value_range": [float(samples.min()), float(samples.max())], "command": commands[label]}
        if label != "ELS":
            r, _ = agreement(finals["ELS"], samples)
            rms = (samples - finals["ELS"]).pow(2).flatten(1).mean(1).sqrt().numpy()
            row.update(r_vs_els=median_summary(r), rms_vs_els=median_summary(rms),
                       mirror_r_minus_els=median_summary(mirror_r(samples) - mirror_r(finals["ELS"])),
                       more_symmetric_than_els=win_fraction(mirror_r(samples), mirror_r(finals["ELS"])))
        rows[label] = row
    config = {k: v for k, v in vars(args).items() if k not in ("no_progress", "out")}
    config.update(n_train_class=int(images.shape[0]), n_heldout_class=int(held.shape[0]),
                  heldout_nn_median=held_median, torch=torch.__version__,
                  mirror_r_train=median_summary(mirror_r(images)), mirror_r_heldout=median_summary(mirror_r(held)))
    io.save_json(out / "summary.json", {"config": config, "rows": rows})
    def med(s):
        return f"{s['median']:.2f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]"

    def win(w):
        return f"{w['wins']}/{w['n']} [{w['ci'][0]:.2f}, {w['ci'][1]:.2f}]"

    lines = [f"Fashion-MNIST class {args.class_label}: the {images.shape[0]} images of it among the first {args.limit} "
             f"training images, resized to {args.resize}x{args.resize}; seeds {args.seeds} (the same initial noise in "
             f"every row), DDIM {args.steps} steps, published fashion_mnist patch schedule; PELS attention patch "
             f"{args.attention_P}, attention on {args.attend_on}. Held-out: the {held.shape[0]} test images of the class.",
             "", "Mirror r: per image, Pearson r between the image and its left-right mirror image (a crude "
             f"consistency proxy for a symmetric class); training images {med(config['mirror_r_train'])}, held-out "
             f"{med(config['mirror_r_heldout'])}.", "",
             "| row | memorized | NN dist / held-out (median) | mirror r (median) | mirror r - ELS's, per seed "
             "(median) | more symmetric than ELS | r vs ELS (median) | RMS diff vs ELS (median) |",
             "|---|---|---|---|---|---|---|---|"]

    for label, row in rows.items():
        m = row["memorized"]
        lines.append(f"| {label} | {m['fraction']:.2f} [{m['ci95'][0]:.2f}, {m['ci95'][1]:.2f}] | "
                     f"{med(row['nn_relative'])} | {med(row['mirror_r'])} | "
                     f"{med(row['mirror_r_minus_els']) if 'r_vs_els' in row else '-'} | "
                     f"{win(row['more_symmetric_than_els']) if 'r_vs_els' in row else '-'} | {med(row['r_vs_els']) if 'r_vs_els' in row else '-'} | "
                     f"{med(row['rms_vs_els']) if 'rms_vs_els' in row else '-'} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    # 8 seeds per row, the machines of one block of seeds one under the other (same noise in each column)
    groups, captions = {}, {}
    for start in range(0, len(finals["ELS"]), 8):
        for label, samples in finals.items():
            key = f"{label}\nseeds {start}-{min(start + 8, len(samples)) - 1}"
            groups[key] = samples[start:start + 8]
            captions[key] = f"mirror r {rows[label]['mirror_r']['median']:.2f} (all)" if start == 0 else ""
    save_samples_by_machine(groups, out / "grid.png", per_row=8, captions=captions)
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
