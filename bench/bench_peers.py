"""Benchmarks of the peer machines (docs/theory.md §3.6, §9): one case per machine, kernel beside reference.

    PYTHONPATH=. python -m pytest bench/bench_peers.py --benchmark-group-by=group -q
    PYTHONPATH=. python bench/bench_peers.py            # a side-by-side table, no pytest

Small sizes (Fashion-MNIST 28x28 from the embedded subset, N=500 training images,
B=4 queries) so a run takes about a minute on two shared cores; ``BENCH_PEERS_N``,
``BENCH_PEERS_B`` and ``BENCH_PEERS_THREADS`` override them. ``extra_info`` records the (query unit, training
image) pairs of each case and pairs per second. Machines are shared and noisy: compare
the ratios within one run, not absolute times.

- ``nearest`` and ``smoothed`` run the ideal ``patch_posterior_mean`` path: ``kernel``
  there is the patch-operator kernel when one is built (skipped otherwise).
- ``pca_locality`` (two noise levels: small and large masks) and ``pspc`` (P = 3, 7, 15)
  run the masked-local operator: kernel ``csrc/cpu/masked_local_posterior.cpp`` beside
  ``reference.masked_local_posterior_reference``.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from creativity_fast.ops import has_kernel
from creativity_fast.peers import NearestDenoiser, PatchPosteriorAverage, PCALocalityDenoiser, SmoothedDenoiser

N = int(os.environ.get("BENCH_PEERS_N", 500))
B = int(os.environ.get("BENCH_PEERS_B", 4))
if "BENCH_PEERS_THREADS" in os.environ:  # e.g. 1 for stable ratios on a shared machine
    torch.set_num_threads(int(os.environ["BENCH_PEERS_THREADS"]))
BACKENDS = ("reference", "kernel")


def _data():
    try:
        from creativity_fast.data import load_dataset
        images = load_dataset(None).images[:N].float()
    except Exception:  # pragma: no cover - data package unavailable: synthetic images of the same size
        images = torch.rand(N, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    g = torch.Generator().manual_seed(1)
    z = images[torch.arange(B) * 7 % images.shape[0]] + 0.5 * torch.randn(B, *images.shape[1:], generator=g)
    return images, z


def _skip_without(op: str, backend: str):
    if backend == "kernel" and not has_kernel("cpu", op):
        pytest.skip(f"no compiled {op} kernel")


def _cases():
    """(group, name, backend, op, build(data) -> denoiser, sigma, pairs(data) -> int)."""
    cases = []
    for backend in BACKENDS:
        cases.append(("nearest", "nearest", backend, "patch_posterior_mean",
                      lambda d, be=backend: NearestDenoiser(d, backend=be), 1.0, lambda d: B * d.shape[0]))
        cases.append(("smoothed", "smoothed J=8", backend, "patch_posterior_mean",
                      lambda d, be=backend: SmoothedDenoiser(d, s=0.3, J=8, backend=be), 1.0,
                      lambda d: 8 * B * d.shape[0]))
        for sigma in (0.3, 5.0):
            cases.append((f"pca_locality sigma={sigma}", f"pca_locality sigma={sigma}", backend,
                          "masked_local_posterior",
                          lambda d, be=backend: PCALocalityDenoiser(d, backend=be), sigma,
                          lambda d: B * d.shape[0] * d[0].numel()))
        for P in (3, 7, 15):
            cases.append((f"pspc P={P}", f"pspc P={P}", backend, "masked_local_posterior",
                          lambda d, be=backend, P=P: PatchPosteriorAverage(d, P, backend=be), 0.5,
                          lambda d, P=P: B * d.shape[0] * (d.shape[2] - P + 1) * (d.shape[3] - P + 1)))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def peers_data():
    return _data()


@pytest.mark.parametrize("case", CASES, ids=[f"{c[1]}-{c[2]}" for c in CASES])
def test_peer_machine(benchmark, peers_data, case):
    group, _, backend, op, build, sigma, pairs = case
    _skip_without(op, backend)
    data, z = peers_data
    machine = build(data)
    machine(z, sigma)  # warm-up: builds masks / supports, caches
    benchmark.group = group
    benchmark.extra_info.update(backend=backend, N=data.shape[0], B=z.shape[0], pairs=pairs(data))
    out = benchmark.pedantic(machine, args=(z, sigma), rounds=3, iterations=1)
    assert out.shape == z.shape and bool(torch.isfinite(out).all())
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["pairs_per_s"] = pairs(data) / stats.stats.min


def main() -> None:
    """Print a kernel-beside-reference table (best of 3, process CPU time per thread)."""
    data, z = _data()
    rows = {}
    for group, name, backend, op, build, sigma, pairs in CASES:
        if backend == "kernel" and not has_kernel("cpu", op):
            continue
        machine = build(data)
        machine(z, sigma)
        times = []
        for _ in range(3):  # CPU time of this process: steadier than wall time on a shared machine
            t0 = time.process_time()
            machine(z, sigma)
            times.append((time.process_time() - t0) / torch.get_num_threads())
        rows.setdefault(name, {})[backend] = (min(times), pairs(data))
    print(f"N={data.shape[0]} B={z.shape[0]} threads={torch.get_num_threads()}")
    print(f"{'machine':<24}{'reference ms':>14}{'kernel ms':>12}{'speed-up':>10}{'kernel Mpairs/s':>17}")
    for name, r in rows.items():
        ref = r.get("reference", (float("nan"), 0))[0]
        ker, pairs = r.get("kernel", (float("nan"), 1))
        print(f"{name:<24}{ref * 1e3:>14.1f}{ker * 1e3:>12.1f}{ref / ker:>10.1f}{pairs / ker / 1e6:>17.1f}")


if __name__ == "__main__":
    main()
