"""CI smoke run of the patch-posterior benchmark (bench/bench_patch_posterior.py).

Runs the real suite with ``--bench-smoke`` (tiny sizes, seconds): the kernel, the
reference, the machine-rate microbenchmark and the report generator all execute, and
the kernel must beat the reference on pairs per second while agreeing with it. The
microbenchmark must have run: bench/conftest.py records a failure of it (no compiler,
a compile error) as ``machine["error"]`` and lets the suite pass, so the smoke check
rejects such a record.
The full suite: ``PYTHONPATH=. python -m pytest bench/bench_patch_posterior.py --benchmark-group-by=group -q``.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from creativity_fast import ops

ROOT = Path(__file__).resolve().parents[1]

needs_kernel = pytest.mark.skipif(not ops.has_kernel("cpu"), reason="CPU kernel not built")


def run_bench_smoke(out, *pytest_args, env=None):
    """Runs bench/bench_patch_posterior.py with --bench-smoke, writing the results JSON to ``out``;
    ``env``: extra environment variables. Returns the finished process."""
    env = dict(os.environ, **(env or {}))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "bench" / "bench_patch_posterior.py"),
                           "--bench-smoke", "--bench-out", str(out), "-q", "-p", "no:cacheprovider",
                           "--benchmark-disable-gc", *pytest_args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def check_machine_rates(machine):
    """The machine-rate microbenchmark (bench/microbench.py) ran and measured a plausible exp rate."""
    assert "error" not in machine, f"the microbenchmark failed: {machine['error']}"
    assert machine.get("exp_per_s_1t", 0) > 1e7, machine


def check_results(doc):
    """Kernel and reference cases alike, the kernel accurate and faster; returns {case: kernel rate}."""
    rate = {}
    trajectory = [r for r in doc["results"] if r.get("inputs") == "trajectory"]
    assert len(trajectory) == 2 and all(r["gpairs_per_s"] > 0 for r in trajectory), trajectory
    for r in doc["results"]:
        if r.get("inputs") == "trajectory":
            continue
        rate[(r["impl"], r["P"], r["sigma"], r["boundary"])] = r["gpairs_per_s"]
        if r["impl"] == "kernel":
            assert r["max_abs_err_vs_float64_reference"] < 2e-5
    kernel = {k[1:]: v for k, v in rate.items() if k[0] == "kernel"}
    refs = {k[1:]: v for k, v in rate.items() if k[0] == "reference"}
    assert kernel and kernel.keys() == refs.keys()
    for case, v in kernel.items():
        assert v > refs[case], (case, v, refs[case])  # typically 30-100x: a loose, robust bound
    return kernel


@needs_kernel
def test_benchmark_smoke(tmp_path):
    out = tmp_path / "smoke.json"
    run = run_bench_smoke(out)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads(out.read_text())
    kernel = check_results(doc)
    check_machine_rates(doc["machine"])

    sys.path.insert(0, str(ROOT / "bench"))
    import plot_results

    rows = plot_results.main(out, tmp_path)
    assert len(rows) == len(kernel)
    assert (tmp_path / "pairs_per_second.png").stat().st_size > 1000
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| P | sigma | boundary |" in text and "bench_patch_posterior.py" in text


@needs_kernel
@pytest.mark.skipif(shutil.which("false") is None, reason="needs the 'false' command as a failing compiler")
def test_smoke_check_fails_when_the_microbenchmark_errors(tmp_path):
    """A microbenchmark that cannot be built (CXX=false, and an empty build cache: TMPDIR) leaves the
    suite passing with machine["error"] recorded; check_machine_rates must reject that record.
    One kernel case only (about 5 s)."""
    out = tmp_path / "broken.json"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    run = run_bench_smoke(out, "-k", "test_kernel and P3-s1-zeros",
                          env={"CXX": shutil.which("false"), "TMPDIR": str(tmp)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]  # the suite itself does not fail
    machine = json.loads(out.read_text())["machine"]
    assert "error" in machine and "exp_per_s_1t" not in machine, machine
    with pytest.raises(AssertionError, match="the microbenchmark failed"):
        check_machine_rates(machine)
