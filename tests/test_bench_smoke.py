"""CI smoke run of the patch-posterior benchmark (bench/bench_patch_posterior.py, issue 3).

Runs the real suite with ``--bench-smoke`` (tiny sizes, seconds): the kernel, the
reference, the machine-rate microbenchmark and the report generator all execute, and
the kernel must beat the reference on pairs per second while agreeing with it.
The full suite: ``PYTHONPATH=. python -m pytest bench/bench_patch_posterior.py --benchmark-group-by=group -q``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from creativity_fast import ops

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not ops.has_kernel("cpu"), reason="CPU kernel not built")
def test_benchmark_smoke(tmp_path):
    out = tmp_path / "smoke.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "bench" / "bench_patch_posterior.py"),
                          "--bench-smoke", "--bench-out", str(out), "-q", "-p", "no:cacheprovider",
                          "--benchmark-disable-gc"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads(out.read_text())
    rate = {}
    for r in doc["results"]:
        rate[(r["impl"], r["P"], r["sigma"], r["boundary"])] = r["gpairs_per_s"]
        if r["impl"] == "kernel":
            assert r["max_abs_err_vs_float64_reference"] < 2e-5
    kernel = {k[1:]: v for k, v in rate.items() if k[0] == "kernel"}
    refs = {k[1:]: v for k, v in rate.items() if k[0] == "reference"}
    assert kernel and kernel.keys() == refs.keys()
    for case, v in kernel.items():
        assert v > refs[case], (case, v, refs[case])  # typically 30-100x: a loose, robust bound
    machine = doc["machine"]
    assert machine.get("exp_per_s_1t", 0) > 1e7 or "error" in machine

    sys.path.insert(0, str(ROOT / "bench"))
    import plot_results

    rows = plot_results.main(out, tmp_path)
    assert len(rows) == len(kernel)
    assert (tmp_path / "pairs_per_second.png").stat().st_size > 1000
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| P | sigma | boundary |" in text and "bench_patch_posterior.py" in text
