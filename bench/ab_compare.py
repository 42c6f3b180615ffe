"""Two builds side by side in one run: the same ELS kernel cases, alternating A and B, medians and ratios.

    python bench/ab_compare.py --a /path/to/old/checkout --b . [--rounds 5] [--cases smoke,full]

Each checkout must have its extension built in place (``python setup.py build_ext --inplace``).
Every round runs each build in a fresh process (A then B, B then A on the next round, so
drift on a shared machine hits both alike); a process times ``--reps`` calls of
``torch.ops.creativity_fast.patch_posterior_mean`` after one warm-up and reports the best.
The table gives the median over rounds of each build's time, G pairs/s, and B/A.

Cases: ``smoke`` (the CI smoke benchmark's cases: B = 2, N = 24, P = 3, sigma = 1 zeros and
sigma = 0.05 circular) and ``full`` (one case of bench/bench_patch_posterior.py:
B = 8, N = 1000, P = 7, sigma = 1, zeros); queries as in that benchmark.
Results go to stdout and, with ``--out``, to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CASES = {
    "smoke": [dict(B=2, N=24, P=3, sigma=1.0, boundary="zeros"),
              dict(B=2, N=24, P=3, sigma=0.05, boundary="circular")],
    "full": [dict(B=8, N=1000, P=7, sigma=1.0, boundary="zeros")],
}

CHILD = r"""
import json, sys, time, torch
import creativity_fast as cf
from creativity_fast.data import load_dataset
case, reps = json.loads(sys.argv[1]), int(sys.argv[2])
data = load_dataset()
train = data.images[:case["N"]].contiguous()
x0 = data.images[-case["B"]:]
z = x0 + case["sigma"] * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1234))
s = torch.full((case["B"],), case["sigma"])
op = torch.ops.creativity_fast.patch_posterior_mean
call = lambda: op(z, train, s, case["P"], "els", case["boundary"], "all", None, False)
out = call()[0]
times = []
for _ in range(reps):
    t = time.perf_counter(); call(); times.append(time.perf_counter() - t)
pairs = cf.count_pairs(case["B"], case["N"], 28, 28, case["P"], "els", case["boundary"])
print(json.dumps({"best": min(times), "pairs": pairs, "file": cf.__file__,
                  "checksum": float(out.double().sum())}))
"""


def run_child(root: Path, case: dict, reps: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(case), str(reps)], env=env, cwd=root,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{root}: the timing process failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not str(result["file"]).startswith(str(root)):
        raise RuntimeError(f"{root}: imported creativity_fast from {result['file']}, not from this checkout")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="checkout A (the baseline)")
    p.add_argument("--b", default=".", help="checkout B (default: this one)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cases", default="smoke,full", help=f"comma list of {', '.join(CASES)}")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    roots = {"A": Path(args.a).resolve(), "B": Path(args.b).resolve()}
    cases = [c for name in args.cases.split(",") for c in CASES[name.strip()]]
    rows = []
    for case in cases:
        times = {"A": [], "B": []}
        checksums = {}
        for r in range(args.rounds):
            for build in (("A", "B") if r % 2 == 0 else ("B", "A")):
                res = run_child(roots[build], case, args.reps)
                times[build].append(res["best"])
                checksums[build] = res["checksum"]
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(dict(case=case, pairs=res["pairs"], median_s=med, rounds=times, checksums=checksums,
                         ratio_b_over_a=med["B"] / med["A"]))
    print(f"A = {roots['A']}\nB = {roots['B']}\n")
    print(f"{'B':>2} {'N':>5} {'P':>3} {'sigma':>6} {'boundary':>9} {'A s':>9} {'B s':>9} "
          f"{'A Gp/s':>7} {'B Gp/s':>7} {'B/A':>6}  same output")
    for row in rows:
        c, m = row["case"], row["median_s"]
        same = row["checksums"]["A"] == row["checksums"]["B"]
        print(f"{c['B']:>2} {c['N']:>5} {c['P']:>3} {c['sigma']:>6g} {c['boundary']:>9} {m['A']:>9.4f} "
              f"{m['B']:>9.4f} {row['pairs'] / m['A'] / 1e9:>7.2f} {row['pairs'] / m['B'] / 1e9:>7.2f} "
              f"{row['ratio_b_over_a']:>6.3f}  {same}")
    if args.out:
        Path(args.out).write_text(json.dumps({"a": str(roots["A"]), "b": str(roots["B"]), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
