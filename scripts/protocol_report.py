"""Tables of the paper's Fashion-MNIST protocol from the outputs of ``scripts/paper_protocol.sh``.

Reads ``ROOT/{table2_own, table1_own, table2_published, table1_published, table2_own_net_b,
table1_own_net_b, ceiling_20, ceiling_150}/compare.json`` (whichever exist; ``_net_b``: the
same machines against the ceiling's second network) and writes ``ROOT/report.md``: one table per
protocol (Table 1: network 150 DDIM steps, machines 20; Table 2: 20 and 20), each machine's
median Pearson r, r^2 and coefficient of determination R^2 with bootstrap 95% intervals,
the fraction of seeds where it beats IS, the median per-seed difference to IS, the
ceiling (the same r between two networks of the same recipe), and the paper's number
beside it; and per run two figures beside it, ``ROOT/<run>_grid.png`` (network | ELS | LS |
IS from the same noise, the first 16 seeds) and ``ROOT/<run>_scatter.png`` (per-seed r of
each machine against IS's). docs/calibration.md, "The paper's protocol", defines every
quantity.

    python scripts/protocol_report.py ROOT [--paper resnet|none]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from creativity_fast.calibration import compare_figures, load_compare_result

# Median r between the network and each machine in Kamb & Ganguli (2025), Fashion-MNIST
# ResNet: Table 1 (network 150 steps, machines 20) and Table 2 (20 and 20).
PAPER_R = {
    "resnet": {"table1": {"els": 0.94, "local": 0.88, "ideal": 0.68},
               "table2": {"els": 0.90, "local": 0.88, "ideal": 0.74}},
    "none": {"table1": {}, "table2": {}},
}
MACHINE_LABEL = {"els": "ELS", "local": "LS", "ideal": "IS"}
# (protocol, patch schedule, network): "b" is the ceiling's second network, judged with the
# schedules calibrated on the first.
RUNS = [("table2", "own", ""), ("table1", "own", ""), ("table2", "published", ""), ("table1", "published", ""),
        ("table2", "own", "b"), ("table1", "own", "b")]
NETWORK = {"": "", "b": "; against network B (the ceiling's second network, not the one calibrated on)"}
PROTOCOL = {"table1": "Table 1 protocol: network 150 DDIM steps, machines 20",
            "table2": "Table 2 protocol: network 20 DDIM steps, machines 20"}


def _ci(stat: dict, digits: int = 3) -> str:
    lo, hi = stat["ci"]
    return f"{stat['median']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _load(path: Path):
    f = path / "compare.json"
    return json.loads(f.read_text()) if f.exists() else None


def run_table(obj: dict, paper: dict, ceiling: dict | None) -> list[str]:
    """Markdown rows for one compare.json: machines, then the ceiling if given."""
    st = obj["statistics"]
    rows = ["| machine | median r [95% CI] | median r^2 | median R^2 [95% CI] | beats IS: fraction of seeds [95% CI] "
            "| median r - r(IS) [95% CI] | paper's median r |",
            "|---|---|---|---|---|---|---|"]
    for name in obj["machines"]:
        m = st["machines"][name]
        vs = st.get("versus", {}).get(name)
        beats = (f"{vs['beats']['wins']}/{vs['beats']['n']} = {vs['beats']['fraction']:.2f} "
                 f"[{vs['beats']['ci'][0]:.2f}, {vs['beats']['ci'][1]:.2f}]") if vs else "-"
        diff = _ci(vs["difference"]) if vs else "-"
        ref = paper.get(name)
        rows.append(f"| {MACHINE_LABEL.get(name, name)} | {_ci(m['r'])} | {m['r_squared']['median']:.3f} | "
                    f"{_ci(m['R2'])} | {beats} | {diff} | {'-' if ref is None else f'{ref:.2f}'} |")
    if ceiling is not None:
        c = ceiling["statistics"]["machines"]["ceiling"]
        rows.append(f"| ceiling: network B vs network | {_ci(c['r'])} | {c['r_squared']['median']:.3f} | "
                    f"{_ci(c['R2'])} | - | - | - |")
    return rows


def _sampling_time(settings: dict) -> str:
    """Sampling time summed over every (resumed) run, per entry, with the seeds it covers."""
    per_entry = settings.get("sampling_seconds")
    if not per_entry:
        return f"{settings['seconds']:.0f} s (last invocation)"
    parts = []
    for name, t in per_entry.items():
        label = MACHINE_LABEL.get(name, name)
        if t["timed_seeds"] == 0:
            parts.append(f"{label} untimed")
        elif t["timed_seeds"] == t["seeds"]:
            parts.append(f"{label} {t['seconds']:.0f} s")
        else:
            parts.append(f"{label} {t['seconds']:.0f} s for the {t['timed_seeds']} of {t['seeds']} seeds timed "
                         f"({t['seconds'] / t['timed_seeds']:.0f} s per seed)")
    return "sampling " + ", ".join(parts)


def _short(path) -> str:
    """A file by its folder and name (``cal_els/calibration.json``), enough to tell runs apart."""
    path = Path(str(path))
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _schedules(settings: dict) -> str:
    """Each patch machine's per-step P (highest noise first) and where it came from; IS has none."""
    sizes, sources = settings.get("patch_sizes", {}), settings.get("patch_schedules", {})
    return "; ".join(f"{MACHINE_LABEL.get(k, k)} P = {' '.join(map(str, sizes[k]))} (`{_short(sources.get(k, '?'))}`)"
                     for k in sizes if k != "ideal" and sizes[k] is not None)


def figures(root: Path, run: str, *, grid_seeds: int = 16) -> list[str]:
    """Draw ``run``'s grid (its first ``grid_seeds`` seeds) and, where IS was sampled, its
    per-seed scatter against IS into ``root``; returns the file names written."""
    return [path.name for path in compare_figures(load_compare_result(root / run), root / f"{run}_grid.png",
                                                  root / f"{run}_scatter.png", max_seeds=grid_seeds)]


def report(root: Path, paper_key: str, *, draw: bool = True) -> str:
    lines = ["# The paper's Fashion-MNIST protocol: results", "",
             f"Written by `python scripts/protocol_report.py` from the runs in `{root.name}/` (one folder per "
             "run, named as below); medians over seeds with bootstrap 95% intervals, fractions with Wilson "
             "intervals. r: Pearson correlation of the network's and the machine's final images over all "
             "pixels; r^2: its square; R^2: coefficient of determination of the network's image by the "
             "machine's.", ""]
    for table, schedule, net in RUNS:
        run = f"{table}_{schedule}" + (f"_net_{net}" if net else "")
        obj = _load(root / run)
        if obj is None:
            continue
        s = obj["settings"]
        ceiling = _load(root / f"ceiling_{150 if table == 'table1' else 20}")
        lines += [f"## {PROTOCOL[table]}; patch schedule: {schedule}{NETWORK[net]}", "",
                  f"{obj['n_seeds']} seeds; network `{_short(s['net'])}`; {_schedules(s)}; "
                  f"{s['n_train']:,} training images at {s['resize']} x {s['resize']}; "
                  f"{sum(s['pairs'].values()):.3g} pairs; {_sampling_time(s)} on {s['device']}.", ""]
        lines += run_table(obj, PAPER_R[paper_key][table], ceiling)
        lines.append("")
        if draw:
            lines += ["Figures: " + ", ".join(f"[{n}]({n})" for n in figures(root, run)), ""]
    if draw:
        drawn = [n for steps in (20, 150) if (root / f"ceiling_{steps}" / "compare.json").exists()
                 for n in figures(root, f"ceiling_{steps}")]
        if drawn:
            lines += ["Ceiling figures (network | network B): " + ", ".join(f"[{n}]({n})" for n in drawn), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--paper", choices=sorted(PAPER_R), default="resnet",
                   help="whose published medians to print beside ours (the paper gives the ResNet's only)")
    p.add_argument("--no-figures", action="store_true", help="write report.md only")
    args = p.parse_args(argv)
    text = report(args.root, args.paper, draw=not args.no_figures)
    (args.root / "report.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
