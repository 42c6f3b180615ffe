"""Options, data and result collection for bench/bench_patch_posterior.py.

The full suite:

    PYTHONPATH=. python -m pytest bench/bench_patch_posterior.py --benchmark-group-by=group -q

writes ``bench/results/patch_posterior.json`` and regenerates ``bench/RESULTS.md`` and
``bench/pairs_per_second.png`` (``bench/plot_results.py``). ``--bench-smoke`` runs the
same code on tiny sizes in seconds (CI: ``tests/test_bench_smoke.py``).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # measure the checkout, not an installed copy
sys.path.insert(0, str(HERE))


def pytest_addoption(parser):
    g = parser.getgroup("patch_posterior benchmark")
    g.addoption("--bench-smoke", action="store_true", help="tiny sizes: checks the suite runs (seconds)")
    g.addoption("--bench-images", type=int, default=1000, help="training images N for the kernel (default 1000)")
    g.addoption("--bench-queries", type=int, default=8, help="queries B (default 8)")
    g.addoption("--ref-images", type=int, default=20,
                help="training images for the reference (default 20: its cost is linear in N and a "
                     "full N=1000 sweep takes hours; pairs/s are compared)")
    g.addoption("--keops-images", type=int, default=20, help="training images for KeOps (default 20)")
    g.addoption("--variant-images", type=int, default=50,
                help="training images for the algorithm-variant cases (default 50)")
    g.addoption("--no-keops", action="store_true", help="skip KeOps even if it is installed")
    g.addoption("--bench-out", default=str(HERE / "results" / "patch_posterior.json"),
                help="where to write the results JSON")
    g.addoption("--no-report", action="store_true", help="do not regenerate RESULTS.md and the plot")


class Config:
    def __init__(self, opts):
        self.smoke = opts.bench_smoke
        self.n = 24 if self.smoke else opts.bench_images
        self.b = 2 if self.smoke else opts.bench_queries
        self.ref_n = min(self.n, 6 if self.smoke else opts.ref_images)
        self.keops_n = min(self.n, opts.keops_images)
        self.variant_n = min(self.n, opts.variant_images)
        self.keops = not (opts.no_keops or self.smoke)
        self.out = Path(opts.bench_out)
        self.report = not (opts.no_report or self.smoke)


@pytest.fixture(scope="session")
def bench_config(request):
    return Config(request.config.option)


@pytest.fixture(scope="session")
def fmnist(bench_config):
    """(training images [N,1,28,28], clean queries [B,1,28,28], source) from Fashion-MNIST."""
    from creativity_fast.data import load_dataset

    train = load_dataset(limit=bench_config.n)  # the embedded Fashion-MNIST subset (first N)
    test = load_dataset(split="test", limit=bench_config.b)
    return train.images.contiguous(), test.images.contiguous(), train.source


@pytest.fixture(scope="session")
def trajectory(fmnist, bench_config):
    """(training images, {sigma: queries [B,1,28,28]}) from one real ELS sampling trajectory.

    Deterministic DDIM with the ELS kernel on the benchmark's training images, the cosine
    schedule of the default run (20 steps) with the benchmark's sigmas inserted, and the
    published Fashion-MNIST patch schedule; one trajectory per query seed 0..B-1. The
    queries at each sigma are the states the sampler passes to the denoiser there. Cached
    in ``bench/.cache/`` by (N, B, smoke), since a full trajectory takes a minute.
    """
    import torch

    from bench_patch_posterior import TRAJECTORY_SIGMAS
    from creativity_fast import samplers, schedules
    from creativity_fast.denoisers import ELSDenoiser

    data, _, _ = fmnist
    B = bench_config.b
    targets = (0.05, 1.0) if bench_config.smoke else TRAJECTORY_SIGMAS
    cache = HERE / ".cache" / f"trajectory_N{data.shape[0]}_B{B}_{'smoke' if bench_config.smoke else 'full'}.pt"
    if cache.exists():
        zs = torch.load(cache)
        if set(zs) == set(targets):
            return data, zs
    base = schedules.cosine_vp_sigmas(20)
    sizes = schedules.PatchSchedule(base, "fashion_mnist")
    grid = sorted({float(s) for s in base[:-1] if float(s) > min(targets)} | set(targets), reverse=True)
    sigmas = torch.tensor(grid + [0.0], dtype=torch.float64)
    denoiser = ELSDenoiser(data, P=sizes, boundary="zeros")
    z, generators = samplers.initial_noise(range(B), tuple(data.shape[1:]), grid[0])
    zs = {}

    def record(z, sigma, class_labels=None):
        s = float(sigma if not torch.is_tensor(sigma) else sigma.flatten()[0])
        for t in targets:
            if abs(s - t) <= 1e-6 * t:  # the sampler may pass sigma in float32
                zs[t] = z.clone()
        return denoiser(z, sigma, class_labels)

    samplers.sample_ddim(record, z, sigmas, generator=generators, progress=False)
    cache.parent.mkdir(exist_ok=True)
    torch.save(zs, cache)
    return data, zs


_RESULTS: list[dict] = []
_MACHINE: dict = {}


@pytest.fixture(scope="session")
def results():
    return _RESULTS


@pytest.fixture(scope="session")
def machine_rates(bench_config):
    """exp / FMA rates of this machine (bench/microbench.py), measured once per session."""
    if not _MACHINE:
        import torch

        import microbench

        try:
            _MACHINE.update(microbench.measure(seconds=0.2 if bench_config.smoke else 1.0))
        except Exception as exc:  # no compiler: report without the floor
            _MACHINE["error"] = f"{type(exc).__name__}: {exc}"
        _MACHINE["torch_threads"] = torch.get_num_threads()
    return _MACHINE


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _isa() -> str:
    forced = os.environ.get("CREATIVITY_FAST_CPU_ISA", "auto")
    if forced not in ("", "auto"):
        return forced
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if all(f" {f}" in flags for f in ("avx512f", "avx512vl", "avx512bw", "avx512dq")):
        return "avx512"
    return "avx2" if (" avx2" in flags and " fma" in flags) else "generic"


def pytest_sessionfinish(session, exitstatus):
    if not _RESULTS:
        return
    cfg = Config(session.config.option)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    doc = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "PYTHONPATH=. python -m pytest " + " ".join(session.config.invocation_params.args),
        "cpu": _cpu_name(), "cores": os.cpu_count(), "isa": _isa(), "load_average": load,
        "config": {"n": cfg.n, "b": cfg.b, "ref_n": cfg.ref_n, "keops_n": cfg.keops_n, "variant_n": cfg.variant_n,
                   "smoke": cfg.smoke},
        "machine": _MACHINE, "results": _RESULTS,
    }
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(doc, indent=1))
    if cfg.report:
        import plot_results

        plot_results.main(cfg.out)
