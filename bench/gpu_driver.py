#!/usr/bin/env python3
"""Calls every instantiation of the CUDA kernels once, on small inputs: the program that
``scripts/gpu_validate.sh`` runs under compute-sanitizer (memcheck, racecheck, synccheck) and
Nsight Compute.

    python bench/gpu_driver.py                # every kernel instantiation once, on the GPU
    python bench/gpu_driver.py --emulator     # the same calls on the CPU emulator (no GPU)
    python bench/gpu_driver.py --ncu-forward  # one representative forward launch (B=8, N=2000, P=7)

Instantiations (launch_ladder.cuh): forward_kernel<float|double, 1|4, tf32 false|true (float)>,
merge_kernel<float|double>, backward_kernel<float|double, 1|4>, adjoint_kernel<float|double>,
ideal_kernel<float|double, 0|1|2>, attention_kernel<float|double, 0|1|2> with shared-memory and
global scratch, one and several displacement splits; plus the tf32 path's non-finite fallback.
Exit status 0 when every call returned finite results where they must be finite.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # helpers.py, cuda_backends.py
sys.path.insert(0, str(ROOT))


def runner_for(emulator: bool):
    from cuda_backends import CudaRunner, EmulatorRunner

    return EmulatorRunner() if emulator else CudaRunner()


def calls(r, dev):
    """(name, thunk) of every instantiation."""
    import torch

    from cuda_backends import set_env
    from helpers import random_inputs

    out = []

    def to(dtype, *ts):
        return [t.to(device=dev, dtype=dtype) for t in ts]

    for dtype in (torch.float32, torch.float64):
        tag = "f32" if dtype == torch.float32 else "f64"
        for C in (1, 3):  # cmax 1 and 4
            for mode in ("local", "els"):
                z, data, sigma, _ = random_inputs(B=2, C=C, H=9, W=8, N=5, seed=C, mode=mode)
                zc, dc, sc = to(dtype, z, data, sigma)
                paths = ("fp32", "tf32") if dtype == torch.float32 else ("auto",)
                for path in paths:
                    def fwd(zc=zc, dc=dc, sc=sc, mode=mode, path=path):
                        with set_env(CREATIVITY_FAST_CUDA_MATH=path):
                            return r.forward(zc, dc, sc, 5, mode, "zeros", "all", None, True)
                    out.append((f"forward {mode} C={C} {tag} {path}", fwd))

                def bwd(zc=zc, dc=dc, sc=sc, mode=mode):
                    x0, lse, _ = r.forward(zc, dc, sc, 3, mode, "circular", "all", None, False)
                    g = torch.ones_like(x0)
                    r.backward_lse(g, torch.ones_like(lse), zc, dc, sc, 3, mode, "circular", "all", None, x0, lse)
                    return r.backward(g, zc, dc, sc, 3, mode, "circular", "all", None, x0, lse)
                out.append((f"backward {mode} C={C} {tag}", bwd))
        z, data, sigma, _ = random_inputs(B=2, C=1, H=6, W=7, N=5, seed=9)
        zc, dc, sc = to(dtype, z, data, sigma)

        def ideal(zc=zc, dc=dc, sc=sc):
            x0, lse, _ = r.forward(zc, dc, sc, 3, "ideal", "zeros", "all", None, True)
            return r.backward(torch.ones_like(x0), zc, dc, sc, 3, "ideal", "zeros", "all", None, x0, lse)
        out.append((f"ideal forward+backward {tag}", ideal))
        images = torch.rand(3, 2, 7, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        ic = images.to(device=dev, dtype=dtype)
        center = torch.zeros(2, 3, 3, dtype=torch.float64, device=dev)
        for scratch in ("shared", "global"):
            for splits in ("0", "5"):
                for tau in (-1.0, 0.5):
                    def att(ic=ic, scratch=scratch, splits=splits, tau=tau):
                        with set_env(CREATIVITY_FAST_CUDA_ATTENTION_SCRATCH=scratch,
                                     CREATIVITY_FAST_CUDA_ATTENTION_SPLITS=splits):
                            return r.attention(ic, center, 3, 1, tau)
                    out.append((f"attention {tag} {scratch} splits={splits} tau={tau}", att))
    # the tf32 path's fallback for a non-finite pair (direct_distance)
    z, data, sigma, _ = random_inputs(B=1, C=1, H=6, W=7, N=3, seed=4)
    data[1, 0, 2, 3] = float("inf")
    zc, dc, sc = to(torch.float32, z, data, sigma)

    def nonfinite():
        with set_env(CREATIVITY_FAST_CUDA_MATH="tf32"):
            return r.forward(zc, dc, sc, 3, "els", "zeros", "all", None, True)
    out.append(("forward els tf32 with an inf in the data (fallback)", nonfinite))
    return out


def ncu_forward(r, dev):
    import torch

    from helpers import random_inputs

    z, data, sigma, _ = random_inputs(B=8, C=1, H=28, W=28, N=2000, seed=5, sigma=(1.0,))
    zc, dc, sc = (t.to(device=dev, dtype=torch.float32) for t in (z, data, sigma))
    r.forward(zc, dc, sc, 7, "els", "zeros", "all", None, False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--emulator", action="store_true", help="run on the CPU emulator (no GPU)")
    ap.add_argument("--ncu-forward", action="store_true", help="one representative forward launch only")
    args = ap.parse_args(argv)
    import torch

    if not args.emulator and not torch.cuda.is_available():
        print("gpu_driver: no CUDA device (use --emulator)")
        return 2
    if not args.emulator:
        import creativity_fast.ops  # noqa: F401  (loads the extension and its CUDA registrations)
    dev = torch.device("cpu" if args.emulator else "cuda")
    r = runner_for(args.emulator)
    if args.ncu_forward:
        ncu_forward(r, dev)
        if not args.emulator:
            torch.cuda.synchronize()
        print("gpu_driver: forward done")
        return 0
    bad = 0
    for name, fn in calls(r, dev):
        try:
            res = fn()
            if not args.emulator:
                torch.cuda.synchronize()
            first = res[0] if isinstance(res, (tuple, list)) else res
            finite = bool(torch.isfinite(first).all()) if first.is_floating_point() else True
            ok = finite or "inf" in name
            print(f"{'ok  ' if ok else 'BAD '} {name}", flush=True)
            bad += not ok
        except Exception as exc:  # noqa: BLE001
            print(f"FAIL {name}: {str(exc).splitlines()[0][:200]}", flush=True)
            bad += 1
    print(f"gpu_driver: {bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ.setdefault("CREATIVITY_FAST_CUDA_EMULATOR", "1")
    sys.exit(main())
