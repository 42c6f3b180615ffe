"""Scaling-out measurements (docs/scaling.md): 1 process vs torchrun ranks, peak RSS per rank.

    # a memory-mapped .npy training set (full Fashion-MNIST train if installed, else the embedded subset tiled)
    python bench/scaling.py data /tmp/fmnist.npy [--n 60000]

    # run the CLI in this process and print one JSON line: rank, wall time, peak RSS (getrusage)
    python bench/scaling.py cli -- sample --data /tmp/fmnist.npy ...
    torchrun --standalone --nproc-per-node 2 bench/scaling.py cli -- sample --data /tmp/fmnist.npy ...

    # alternate 1 process and N ranks (the machine is shared: repeat, report medians)
    python bench/scaling.py compare --repeats 3 --nproc 2 -- sample --data /tmp/fmnist.npy ...

``compare`` runs, per repeat: one process with the default threads, one process with
one thread, and ``torchrun`` with ``--nproc`` ranks (one thread each, torchrun's
default), and prints the median wall time and the largest peak RSS per rank.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # measure the checkout, not an installed copy


def make_data(path: Path, n: int | None) -> None:
    import numpy as np

    from creativity_fast.data import FASHION_MNIST_ROOT, embedded_dataset_path, read_idx

    root = Path(FASHION_MNIST_ROOT)
    idx = [p for p in root.glob("train-images-idx3-ubyte*")] if root.is_dir() else []
    if idx:
        images = np.asarray(read_idx(idx[0]))
        labels = np.asarray(read_idx(next(root.glob("train-labels-idx1-ubyte*"))))
        source = str(idx[0])
    else:
        arrays = np.load(embedded_dataset_path())
        images, labels, source = arrays["train_images"], arrays["train_labels"], "embedded subset"
    n = images.shape[0] if n is None else n
    reps = -(-n // images.shape[0])
    images = np.concatenate([images] * reps)[:n]
    labels = np.concatenate([labels] * reps)[:n].astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, images)
    np.save(path.with_name(path.stem + "_labels.npy"), labels)
    print(f"wrote {path}: {images.shape} {images.dtype} ({images.nbytes / 2**20:.0f} MiB) from {source}")


def run_cli(argv: list[str]) -> int:
    from creativity_fast import cli

    start = time.perf_counter()
    rc = cli.main(argv)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_kib = usage.ru_maxrss  # KiB on Linux
    import torch
    print("SCALING " + json.dumps(dict(rank=int(os.environ.get("RANK", 0)), world=int(os.environ.get("WORLD_SIZE", 1)),
                                       threads=torch.get_num_threads(), wall_s=round(wall, 2),
                                       cpu_s=round(usage.ru_utime + usage.ru_stime, 1),
                                       peak_rss_mib=round(peak_kib / 1024, 1), rc=rc)), flush=True)
    return rc


def _records(stdout: str) -> list[dict]:
    return [json.loads(line.split("SCALING ", 1)[1]) for line in stdout.splitlines() if line.startswith("SCALING ")]


def compare(argv: list[str], repeats: int, nproc: int) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    me = [sys.executable, str(Path(__file__).resolve()), "cli", "--"]
    launchers = {
        "1 process, default threads": (me, {}),
        "1 process, 1 thread": (me, {"OMP_NUM_THREADS": "1"}),
        f"torchrun, {nproc} ranks x 1 thread": (
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
             str(Path(__file__).resolve()), "cli", "--"], {"OMP_NUM_THREADS": "1"}),
    }
    results: dict[str, list[list[dict]]] = {name: [] for name in launchers}
    outputs = []
    for r in range(repeats):
        for name, (cmd, extra) in launchers.items():
            out = tempfile.mkdtemp(prefix="scaling-")
            proc = subprocess.run(cmd + argv + ["--out", out, "--no-progress"], env={**env, **extra},
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{name} failed:\n{proc.stdout}\n{proc.stderr}")
            results[name].append(_records(proc.stdout))
            outputs.append((name, out))
            print(f"repeat {r}: {name}: {max(x['wall_s'] for x in results[name][-1]):.1f} s "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    import numpy as np
    base = np.load(Path(outputs[0][1]) / "samples.npz")["samples"]
    print("\n| launch | wall s (median) | CPU s, all ranks (median) | peak RSS per rank, MiB | "
          "max abs difference to 1 process |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        wall = statistics.median(max(x["wall_s"] for x in run) for run in runs)
        cpu = statistics.median(sum(x["cpu_s"] for x in run) for run in runs)
        rss = [max(run[i]["peak_rss_mib"] for run in runs) for i in range(len(runs[0]))]
        diff = max(float(abs(np.load(Path(o) / "samples.npz")["samples"] - base).max())
                   for n, o in outputs if n == name)
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {', '.join(f'{v:.0f}' for v in sorted(rss))} | {diff:.1e} |")
    for _, out in outputs:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    d = sub.add_parser("data")
    d.add_argument("path", type=Path)
    d.add_argument("--n", type=int, default=None)
    c = sub.add_parser("cli")
    c.add_argument("argv", nargs=argparse.REMAINDER)
    m = sub.add_parser("compare")
    m.add_argument("--repeats", type=int, default=3)
    m.add_argument("--nproc", type=int, default=2)
    m.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = [a for a in getattr(args, "argv", []) if a != "--"] if args.what != "data" else []
    if args.what == "data":
        make_data(args.path, args.n)
    elif args.what == "cli":
        sys.exit(run_cli(argv))
    else:
        compare(argv, args.repeats, args.nproc)


if __name__ == "__main__":
    main()
