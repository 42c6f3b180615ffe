#!/usr/bin/env python
"""Merge `creativity-fast compare` runs of the same command on disjoint seeds into one folder.

A long comparison splits over processes (or machines) by seeds: run the same command with
``--seeds 0-49 --out A`` and ``--seeds 50-99 --out B``, then

    python scripts/merge_compare_runs.py A B

adds B's finished samples (``per_seed_<entry>.npz``, with their sampling times) to A's, and
``compare --seeds 0-99 --out A`` then resumes every seed and writes the joint tables
(docs/calibration.md, "Outputs, resuming and cost", says when splitting pays). Runs whose
settings differ (schedule, data, network, ...) are refused, file by file.
"""

import argparse
import sys
from pathlib import Path

from creativity_fast.commands.common import read_partial_files, save_partial


def merge_runs(target: Path, sources: list[Path]) -> dict:
    """``{entry file name: seeds now in target}`` for every per-seed file of ``sources``. Every
    file is checked before any is written, so a refused merge leaves ``target`` as it was."""
    names = sorted({p.name for src in sources for p in Path(src).glob("per_seed_*.npz")})
    if not names:
        raise ValueError(f"no per_seed_*.npz in {', '.join(map(str, sources))}: nothing to merge")
    merged = {name: read_partial_files([p for p in [target / name, *(Path(src) / name for src in sources)]
                                        if p.exists()])
              for name in names}
    target.mkdir(parents=True, exist_ok=True)
    for name, (settings, results, seconds) in merged.items():
        save_partial(target / name, results, settings, seconds=seconds)
    return {name: sorted(results) for name, (_, results, _) in merged.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path, help="the run folder to merge into")
    parser.add_argument("sources", type=Path, nargs="+", help="run folders of the same command on other seeds")
    args = parser.parse_args(argv)
    try:
        merged = merge_runs(args.target, args.sources)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, seeds in merged.items():
        print(f"{args.target / name}: {len(seeds)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
