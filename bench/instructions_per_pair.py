"""Instructions per (query pixel, key) pair of one CPU ELS call, counted by callgrind.

    python bench/instructions_per_pair.py --P 3 --sigma 1 --boundary zeros
    python bench/instructions_per_pair.py --P 3 --trajectory bench/.cache/trajectory_N1000_B8_full.pt --sigma 0.05

Wall times on a shared 2-core machine swing by 2-3x with the load; instruction counts do
not. This runs one ``patch_posterior_mean`` call under ``valgrind --tool=callgrind``,
collecting only inside the forward kernel (``forward_patch``), and divides by
``count_pairs``. Two checkouts compare with ``--root`` (the checkout whose built
extension is measured). Valgrind does not emulate AVX-512, so the AVX2 build runs
(4 double lanes per vector; the AVX-512 build executes about half the vector
instructions). Slow: about 1,000 times a native call (minutes for N = 100).

Queries: test images plus sigma * noise (default), or ``--trajectory FILE``, a
``{sigma: z [B,1,28,28]}`` file as written by the benchmark's trajectory fixture
(bench/conftest.py), whose first ``--queries`` samples at ``--sigma`` are used.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import sys, torch
sys.path.insert(0, {root!r})
from creativity_fast.data import load_dataset
torch.set_num_threads(1)
data = load_dataset(limit={n}).images.contiguous()
if {trajectory!r}:
    z = torch.load({trajectory!r})[{sigma!r}][:{b}].contiguous()
else:
    x0 = load_dataset(split="test", limit={b}).images.contiguous()
    z = x0 + {sigma!r} * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1234))
s = torch.full((z.shape[0],), {sigma!r})
torch.ops.creativity_fast.patch_posterior_mean(z, data, s, {P}, "els", {boundary!r}, "all", None, False)
"""


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--P", type=int, default=3)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--boundary", choices=("zeros", "circular"), default="zeros")
    ap.add_argument("--images", type=int, default=100, help="training images N (default 100)")
    ap.add_argument("--queries", type=int, default=2, help="queries B (default 2)")
    ap.add_argument("--trajectory", default="", help="queries from this trajectory file instead of fresh noise")
    ap.add_argument("--root", default=str(HERE.parent), help="checkout whose built extension is measured")
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found")
    sys.path.insert(0, args.root)
    import creativity_fast as cf

    code = CHILD.format(root=args.root, n=args.images, b=args.queries, sigma=args.sigma, P=args.P,
                        boundary=args.boundary, trajectory=args.trajectory)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        run = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                              "--toggle-collect=*forward_patch*", sys.executable, "-c", code],
                             capture_output=True, text=True)
        m = re.search(r"Collected : (\d+)", run.stderr)
        if run.returncode != 0 or not m:
            sys.exit(f"callgrind failed (exit {run.returncode}):\n{run.stderr[-2000:]}")
    instructions = int(m.group(1))
    pairs = cf.count_pairs(args.queries, args.images, 28, 28, args.P, "els", args.boundary)
    result = {"P": args.P, "sigma": args.sigma, "boundary": args.boundary, "N": args.images, "B": args.queries,
              "queries": "trajectory" if args.trajectory else "fresh noise", "root": args.root,
              "instructions": instructions, "pairs": pairs, "instructions_per_pair": instructions / pairs}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
