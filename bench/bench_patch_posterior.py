"""The ELS step on Fashion-MNIST: fused CPU kernel, pure-PyTorch reference and KeOps side by side.

    PYTHONPATH=. python -m pytest bench/bench_patch_posterior.py --benchmark-group-by=group -q

Cases: B = 8 queries, N = 1000 training images (the first 1000 of the
embedded Fashion-MNIST subset), P in {3, 7, 15}, sigma in {0.05, 1, 10}, zero and
circular boundaries; queries are test images plus sigma * noise (a diffusion step).

- ``kernel``: ``torch.ops.creativity_fast.patch_posterior_mean`` (CPU dispatch key).
- ``reference``: ``reference.patch_posterior_mean_reference`` on the first
  ``--ref-images`` training images (default 20). It streams the data in chunks, so its
  cost is linear in N and its pairs/s at N=20 are its pairs/s at N=1000 (one case is
  also timed at 4x that N to show it); a full N=1000 sweep of it would take hours here.
  ``--ref-images 1000`` runs it literally.
- ``keops``: the same reduction written with pykeops LazyTensors (softmax-weighted sum
  over every key patch; the zero-boundary admissibility of docs/theory.md §3.3 as a mask), CPU,
  on ``--keops-images`` images, only at sigma = 1: it has no pruning, so its time does
  not depend on sigma. Skipped (with the reason recorded) when pykeops is missing.

Every case reports (query pixel, admissible key) pairs per second, counted by
``creativity_fast.count_pairs`` for the N it ran on. The session also measures the
machine's exp and FMA rates (bench/microbench.py) and writes bench/RESULTS.md and
bench/pairs_per_second.png (bench/plot_results.py). Machines are shared and noisy:
compare ratios within one run.
"""

from __future__ import annotations

import time

import pytest
import torch

import creativity_fast as cf
from creativity_fast import reference

PS = (3, 7, 15)
SIGMAS = (0.05, 1.0, 10.0)
BOUNDARIES = ("zeros", "circular")
TRAJECTORY_SIGMAS = (10.0, 1.0, 0.1, 0.05)


def _cases(smoke: bool):
    if smoke:
        return [(3, 1.0, "zeros"), (3, 0.05, "circular")]
    return [(P, s, b) for P in PS for s in SIGMAS for b in BOUNDARIES]


def pytest_generate_tests(metafunc):
    if "trajectory_sigma" in metafunc.fixturenames:
        pytest_generate_tests_trajectory(metafunc, metafunc.config.getoption("bench_smoke"))
    if "case" in metafunc.fixturenames:
        smoke = metafunc.config.getoption("bench_smoke")
        cases = _cases(smoke)
        metafunc.parametrize("case", cases, ids=[f"P{P}-s{s:g}-{b}" for P, s, b in cases])


def queries(x0: torch.Tensor, sigma: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return x0 + sigma * torch.randn(x0.shape, generator=g)


def kernel_fn(z, data, sigma, P, boundary):
    s = torch.full((z.shape[0],), float(sigma))
    op = torch.ops.creativity_fast.patch_posterior_mean
    return lambda: op(z, data, s, P, "els", boundary, "all", None, False)[0]


def reference_fn(z, data, sigma, P, boundary):
    s = torch.full((z.shape[0],), float(sigma))
    return lambda: reference.patch_posterior_mean_reference(z, data, s, P, "els", boundary, "all")[0]


def keops_fn(z, data, sigma, P, boundary):
    """ELS as a KeOps reduction: for every query patch, softmax over every key patch."""
    from pykeops.torch import LazyTensor

    from creativity_fast.reference import _patch_geometry, extract_patches

    B, C, H, W = z.shape
    N = data.shape[0]
    rows, cols, pad, weights = _patch_geometry(H, W, C, P, boundary, z)
    sw = weights.sqrt()  # multiplicities (circular P > size) folded into the coordinates
    q = (extract_patches(z, rows, cols, pad) * sw).reshape(B * H * W, -1).contiguous()
    k = (extract_patches(data, rows, cols, pad) * sw).reshape(N * H * W, -1).contiguous()
    centres = data.permute(0, 2, 3, 1).reshape(N * H * W, C).contiguous()
    inv = 1.0 / (2.0 * sigma * sigma)
    Q, K, V = LazyTensor(q[:, None, :]), LazyTensor(k[None, :, :]), LazyTensor(centres[None, :, :])
    logits = -inv * ((Q - K) ** 2).sum(-1)
    if boundary == "zeros":  # docs/theory.md §3.3: interior pixels see interior keys, edge pixels their own row/column
        m = (P - 1) // 2
        pos = torch.stack(torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij"), -1).reshape(-1, 2)
        inner = ((pos >= m) & (pos <= torch.tensor([H - 1 - m, W - 1 - m]))).float()
        fq = torch.cat([pos.float(), inner], 1).repeat(B, 1).contiguous()
        fk = torch.cat([pos.float(), inner], 1).repeat(N, 1).contiguous()
        FQ, FK = LazyTensor(fq[:, None, :]), LazyTensor(fk[None, :, :])
        allowed = None
        for a in range(2):
            same = (0.25 - (FQ[a] - FK[a]) ** 2).step()
            both_inner = FQ[2 + a] * FK[2 + a]
            ok = same + both_inner - same * both_inner
            allowed = ok if allowed is None else allowed * ok
        logits = logits - 1e4 * (1 - allowed)
    return lambda: logits.sumsoftmaxweight(V, axis=1).reshape(B, H, W, C).permute(0, 3, 1, 2)


def _record(results, benchmark, impl, P, sigma, boundary, B, n, extra=None):
    pairs = cf.count_pairs(B, n, 28, 28, P, "els", boundary)
    best = benchmark.stats.stats.min
    info = {"impl": impl, "P": P, "sigma": sigma, "boundary": boundary, "B": B, "N": n, "pairs": pairs,
            "seconds": best, "gpairs_per_s": pairs / best / 1e9, "rounds": benchmark.stats.stats.rounds}
    info.update(extra or {})
    benchmark.extra_info.update(info)
    results.append(info)
    return info


def test_kernel(benchmark, case, fmnist, bench_config, results, machine_rates):
    P, sigma, boundary = case
    if not cf.has_kernel("cpu"):
        pytest.skip("CPU kernel not built")
    data, x0, _ = fmnist
    z = queries(x0, sigma)
    fn = kernel_fn(z, data, sigma, P, boundary)
    benchmark.group = f"P={P} sigma={sigma:g} {boundary}"
    benchmark.pedantic(fn, rounds=2 if bench_config.smoke else 3, iterations=1, warmup_rounds=1)
    # agreement with the reference on the reference's training subset (float32 vs float64)
    sub = data[:bench_config.ref_n]
    err = (kernel_fn(z, sub, sigma, P, boundary)().double()
           - reference_fn(z.double(), sub.double(), sigma, P, boundary)()).abs().max().item()
    _record(results, benchmark, "kernel", P, sigma, boundary, z.shape[0], data.shape[0],
            {"max_abs_err_vs_float64_reference": err})


def test_reference(benchmark, case, fmnist, bench_config, results):
    P, sigma, boundary = case
    data, x0, _ = fmnist
    z = queries(x0, sigma)
    n = bench_config.ref_n
    fn = reference_fn(z, data[:n], sigma, P, boundary)
    benchmark.group = f"P={P} sigma={sigma:g} {boundary}"
    benchmark.pedantic(fn, rounds=1, iterations=1)
    _record(results, benchmark, "reference", P, sigma, boundary, z.shape[0], n)


def test_reference_is_linear_in_N(benchmark, fmnist, bench_config, results):
    """The reference's pairs/s do not depend on N (why it may run on fewer images)."""
    if bench_config.smoke:
        pytest.skip("full runs only")
    P, sigma, boundary = 7, 1.0, "circular"
    data, x0, _ = fmnist
    n = min(data.shape[0], 4 * bench_config.ref_n)
    fn = reference_fn(queries(x0, sigma), data[:n], sigma, P, boundary)
    benchmark.group = f"P={P} sigma={sigma:g} {boundary}"
    benchmark.pedantic(fn, rounds=1, iterations=1)
    _record(results, benchmark, "reference", P, sigma, boundary, x0.shape[0], n, {"linearity_check": True})


def test_keops(benchmark, case, fmnist, bench_config, results):
    P, sigma, boundary = case
    if not bench_config.keops:
        pytest.skip("KeOps disabled (--no-keops or smoke run)")
    if sigma != 1.0:
        pytest.skip("KeOps has no pruning: its time does not depend on sigma (timed at sigma=1)")
    try:
        import pykeops  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the machine
        results.append({"impl": "keops", "P": P, "sigma": sigma, "boundary": boundary,
                        "skipped": f"pykeops unavailable: {type(exc).__name__}: {exc}"})
        pytest.skip(f"pykeops unavailable: {exc}")
    data, x0, _ = fmnist
    z = queries(x0, sigma)
    n = bench_config.keops_n
    t = time.perf_counter()
    keops_fn(z, data[:1], sigma, P, boundary)()  # compiles the formula once (not timed)
    compile_s = time.perf_counter() - t
    fn = keops_fn(z, data[:n], sigma, P, boundary)
    benchmark.group = f"P={P} sigma={sigma:g} {boundary}"
    out = benchmark.pedantic(fn, rounds=2, iterations=1)
    err = (out.double() - reference_fn(z.double(), data[:n].double(), sigma, P, boundary)()).abs().max().item()
    _record(results, benchmark, "keops", P, sigma, boundary, z.shape[0], n,
            {"first_call_seconds": compile_s, "max_abs_err_vs_float64_reference": err})


VARIANTS = [("auto", 1), ("auto", 0), ("gw", 1), ("direct", 1)]


@pytest.mark.parametrize("algo,prune", VARIANTS, ids=[f"{a}-prune{p}" for a, p in VARIANTS])
@pytest.mark.parametrize("P", PS)
@pytest.mark.parametrize("sigma", (0.05, 1.0))
def test_kernel_variants(benchmark, algo, prune, P, sigma, fmnist, bench_config, results, monkeypatch):
    """The algorithm choices behind the kernel's dispatch, on --variant-images (default 50) images.

    auto: streaming box filter with sliding double sums (the default); gw: materialised box
    filter with Gil-Werman prefix/suffix sums; direct: explicit O(P^2) patch distances.
    prune: skip keys whose weight provably underflows (exact).
    """
    if bench_config.smoke:
        pytest.skip("full runs only")
    if not cf.has_kernel("cpu"):
        pytest.skip("CPU kernel not built")
    monkeypatch.setenv("CREATIVITY_FAST_CPU_ALGO", algo)
    monkeypatch.setenv("CREATIVITY_FAST_CPU_PRUNE", str(prune))
    data, x0, _ = fmnist
    n = min(data.shape[0], bench_config.variant_n)
    z = queries(x0, sigma)
    fn = kernel_fn(z, data[:n], sigma, P, "circular")
    benchmark.group = f"variants P={P} sigma={sigma:g} circular"
    benchmark.pedantic(fn, rounds=2, iterations=1, warmup_rounds=0 if algo == "direct" else 1)
    _record(results, benchmark, f"kernel:{algo},prune={prune}", P, sigma, "circular", z.shape[0], n,
            {"variant": True, "algo": algo, "prune": prune})


def test_kernel_trajectory(benchmark, P, boundary, trajectory_sigma, trajectory, bench_config, results):
    """The kernel on queries from a real sampling trajectory (bench/conftest.py: ``trajectory``).

    Fresh noise around test images is the worst case for any pruning: a trajectory's
    queries near the end are close to mosaics of training patches, so the softmax is
    peaked. Same pair count as the fresh-noise cases at the same (P, boundary).
    """
    if not cf.has_kernel("cpu"):
        pytest.skip("CPU kernel not built")
    data, zs = trajectory
    z = zs[trajectory_sigma]
    fn = kernel_fn(z, data, trajectory_sigma, P, boundary)
    benchmark.group = f"trajectory P={P} sigma={trajectory_sigma:g} {boundary}"
    benchmark.pedantic(fn, rounds=2 if bench_config.smoke else 3, iterations=1, warmup_rounds=1)
    _record(results, benchmark, "kernel", P, trajectory_sigma, boundary, z.shape[0], data.shape[0],
            {"inputs": "trajectory"})


def pytest_generate_tests_trajectory(metafunc, smoke: bool):
    cases = [(3, "zeros", 0.05), (7, "circular", 1.0)] if smoke else [
        (P, b, s) for P in PS for b in BOUNDARIES for s in TRAJECTORY_SIGMAS]
    metafunc.parametrize("P,boundary,trajectory_sigma", cases, ids=[f"P{P}-s{s:g}-{b}" for P, b, s in cases])
