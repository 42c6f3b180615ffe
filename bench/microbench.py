"""Machine rates for the patch-posterior benchmark: vectorised exp and FMA throughput.

    python bench/microbench.py            # prints a JSON line

``microbench.cpp`` runs the kernel's own exp (``csrc/cpu/vexp_f.h``, included, not
copied) on the widest vectors of this CPU (``-march=native``), and
independent float32 FMAs. Each runs for about a second per thread count; the rates
are wall-clock (the machines are shared: compare within one run). One (query, key)
pair of the kernel costs at least one exp, so ``exp_per_s`` at all threads is the
floor the G pairs/s of the kernel are compared with.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "microbench.cpp"
CSRC = HERE.parent / "csrc"
VEXP_HEADER = CSRC / "cpu" / "vexp_f.h"  # the kernel's exp, included by microbench.cpp


def build(cache_dir: str | os.PathLike | None = None) -> Path:
    """Compile microbench.cpp into a shared library (cached by source hash)."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    digest = hashlib.sha1(SOURCE.read_bytes() + VEXP_HEADER.read_bytes()).hexdigest()[:12]
    out_dir = Path(cache_dir or Path(tempfile.gettempdir()) / "creativity_fast_microbench")
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"microbench_{digest}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = [cxx, "-O3", "-march=native", "-std=c++17", "-fopenmp", "-shared", "-fPIC",
               "-I", str(CSRC), str(SOURCE), "-o", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:  # the compiler's own message, for the smoke test's failure report
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        os.replace(tmp, lib)
    return lib


def measure(threads: int | None = None, seconds: float = 1.0, cache_dir=None) -> dict:
    """exp and FMA rates (values per second) on 1 thread and on ``threads`` threads."""
    import torch  # the kernel's thread count

    threads = threads or torch.get_num_threads()
    lib = ctypes.CDLL(str(build(cache_dir)))
    for name in ("cf_exp_rate", "cf_fma_rate"):
        getattr(lib, name).restype = ctypes.c_double
        getattr(lib, name).argtypes = [ctypes.c_int, ctypes.c_double, ctypes.POINTER(ctypes.c_double)]
    sink = ctypes.c_double()
    out = {"threads": threads}
    for n, tag in ((1, "1t"), (threads, "all")):
        out[f"exp_per_s_{tag}"] = lib.cf_exp_rate(n, seconds, ctypes.byref(sink))
        out[f"fma_per_s_{tag}"] = lib.cf_fma_rate(n, seconds, ctypes.byref(sink))
    return out


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    print(json.dumps(measure(seconds=seconds)))
