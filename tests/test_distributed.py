"""The training set sharded over ranks (docs/theory.md §4.2, §9): exact merges, sharded machines, torchrun CLI.

Multi-process tests start 2 gloo ranks on 127.0.0.1 (free ports; ``torch.multiprocessing``
with the spawn method, or ``torchrun --standalone``). Every one has a deadline, and the
process groups a timeout, so a broken rank fails the test instead of hanging it.
Data are tiny: a few 6x6 or 8x8 images.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from creativity_fast import distributed, reference
from creativity_fast.attention import AELSDenoiser
from creativity_fast.commands import common
from creativity_fast.denoisers import GaussianDenoiser, PatchMachine
from creativity_fast.ops import has_kernel, patch_posterior_mean
from creativity_fast.paired import PELSDenoiser
from creativity_fast.registry import applicable
from creativity_fast.samplers import sample_ddim

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 240  # whole multi-process test, including the spawn start-up on a loaded 2-core machine

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


# ---------------------------------------------------------------------------
# helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join_ranks(rank: int, world: int, port: int, timeout_s: float):
    """Inside a spawned rank: the torchrun environment, then ``init_from_env`` (gloo, with a timeout)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), CREATIVITY_FAST_DIST_TIMEOUT=str(timeout_s))
    torch.set_num_threads(1)
    me = distributed.init_from_env(backend="gloo")
    assert me is not None and (me.rank, me.size) == (rank, world)
    return me


def spawn(fn, world: int, *args, deadline_s: float = DEADLINE_S):
    """Run ``fn(rank, world, port, *args)`` on ``world`` spawned ranks; re-raise a rank's error; never hang."""
    ctx = mp.start_processes(fn, args=(world, free_port(), *args), nprocs=world, join=False, start_method="spawn")
    end = time.monotonic() + deadline_s
    try:
        while not ctx.join(timeout=0.5):
            if time.monotonic() > end:
                pytest.fail(f"{world} ranks still running after {deadline_s} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({"OMP_NUM_THREADS": "1", "CREATIVITY_FAST_DIST_TIMEOUT": "60", **extra})
    env.pop("CREATIVITY_FAST_DEBUG", None)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "--monitor-interval", "0.5", "-m", "creativity_fast", *args]


# ---------------------------------------------------------------------------
# one process: shard partials merge exactly


MODES = [("ideal", "zeros", "all", 1), ("local", "zeros", "all", 3), ("els", "zeros", "all", 3),
         ("els", "circular", "all", 5), ("els", "circular", "valid", 3), ("els", "zeros", "all", 13),
         ("local", "circular", "all", 13)]


@pytest.mark.parametrize("mode,boundary,keys,P", MODES)
@pytest.mark.parametrize("with_logw", [False, True])
def test_shard_partials_merge_exactly(mode, boundary, keys, P, with_logw):
    # float64: the merge is exact, so only rounding at 1e-16 separates it from one pass
    g = torch.Generator().manual_seed(0)
    data = torch.rand(7, 2, 5, 6, generator=g, dtype=torch.float64) * 2 - 1
    z = torch.randn(3, 2, 5, 6, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    logw = None
    if with_logw:
        logw = torch.randn((7,) if mode == "ideal" else (7, 5, 6), generator=g, dtype=torch.float64)
    full = reference.patch_posterior_mean_reference(z, data, sigma, P, mode, boundary, keys, logw)
    bounds = [(0, 3), (3, 3), (3, 7)]  # includes an empty shard
    parts = [distributed.patch_posterior_partials(
        z, data[a:b], sigma, P, mode=mode, boundary=boundary, keys=keys, backend="reference", offset=a,
        key_logw=None if logw is None else logw[a:b]) for a, b in bounds]
    x0, lse, best = distributed.finalize_partials(distributed.merge_partials_list(parts))
    torch.testing.assert_close(x0, full[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(lse, full[1], atol=1e-9, rtol=1e-12)
    assert torch.equal(best, full[2])
    # the kernel's output form (x0_hat, lse, best_key) is a valid partial too
    kernel_like = []
    for a, b in bounds[::2]:
        shard_logw = None if logw is None else logw[a:b]
        x, l, k = reference.patch_posterior_mean_reference(z, data[a:b], sigma, P, mode, boundary, keys, shard_logw)
        best_logit = distributed.key_logits(z, data[a:b], sigma, P, mode, boundary, shard_logw, k)
        kernel_like.append(distributed.partials_from_mean(x, l, k + a * 30, best_logit))
    x0, _, best = distributed.finalize_partials(distributed.merge_partials_list(kernel_like))
    torch.testing.assert_close(x0, full[0], atol=1e-10, rtol=0)
    assert torch.equal(best, full[2])
    # the recomputed best logit is the streaming one
    ref = reference.patch_posterior_partials_reference(z, data, sigma, P, mode, boundary, keys, logw)
    torch.testing.assert_close(distributed.key_logits(z, data, sigma, P, mode, boundary, logw, ref.best_key),
                               ref.best, atol=1e-9, rtol=1e-12)


@pytest.mark.skipif(not has_kernel("cpu"), reason="no compiled CPU kernel")
@pytest.mark.parametrize("mode,boundary,P", [("ideal", "zeros", 1), ("local", "zeros", 3), ("els", "zeros", 3),
                                             ("els", "circular", 5)])
def test_kernel_partials_merge_like_one_kernel_call(mode, boundary, P):
    g = torch.Generator().manual_seed(1)
    data = torch.rand(6, 2, 6, 5, generator=g) * 2 - 1
    z = torch.randn(3, 2, 6, 5, generator=g)
    sigma = torch.tensor([0.2, 0.9, 3.0])
    full = patch_posterior_mean(z, data, sigma, P, mode=mode, boundary=boundary, return_stats=True, backend="kernel")
    parts = [distributed.patch_posterior_partials(z, data[a:b], sigma, P, mode=mode, boundary=boundary,
                                                  backend="kernel", offset=a) for a, b in [(0, 4), (4, 6), (6, 6)]]
    x0, lse, best = distributed.finalize_partials(distributed.merge_partials_list(parts))
    assert x0.dtype == lse.dtype == torch.float64  # the partials are float64 whatever the input
    torch.testing.assert_close(x0.float(), full.x0_hat, atol=1e-5, rtol=0)
    torch.testing.assert_close(lse.float(), full.lse, atol=1e-4, rtol=1e-5)
    assert torch.equal(torch.stack([best // 30, best % 30], -1), full.argmax)


def test_provenance_ties_go_to_the_lowest_global_key():
    data = torch.rand(2, 1, 4, 4) * 2 - 1
    twice = torch.cat([data, data])  # images 2 and 3 duplicate 0 and 1: every best logit is tied
    z = torch.randn(2, 1, 4, 4)
    full = reference.patch_posterior_mean_reference(z, twice, torch.tensor([0.5, 0.5]), 3, "els", "zeros")
    parts = [distributed.patch_posterior_partials(z, twice[2:], 0.5, 3, offset=2, backend="reference"),
             distributed.patch_posterior_partials(z, twice[:2], 0.5, 3, offset=0, backend="reference")]
    _, _, best = distributed.finalize_partials(distributed.merge_partials_list(parts))  # higher ids first
    assert torch.equal(best, full[2]) and int(best.max()) < 2 * 16


@pytest.mark.parametrize("boundary,P,P2", [("zeros", 3, 3), ("circular", 3, 5), ("zeros", 5, 1)])
def test_paired_shard_partials_merge_exactly(boundary, P, P2):
    g = torch.Generator().manual_seed(2)
    data = torch.rand(7, 2, 5, 6, generator=g, dtype=torch.float64) * 2 - 1
    z = torch.randn(3, 2, 5, 6, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    q = torch.randint(-1, 30, (3, 5, 6), generator=g)
    k = torch.randint(-1, 30, (7, 5, 6), generator=g)
    full = reference.paired_patch_posterior_mean_reference(z, data, sigma, P, P2, q, k, 1.5, boundary)
    backends = ("reference", "kernel") if has_kernel("cpu", "paired_patch_posterior_mean") else ("reference",)
    for backend in backends:
        parts = [distributed.paired_patch_posterior_partials(z, data[a:b], sigma, P, q, k[a:b], beta=1.5, P2=P2,
                                                             boundary=boundary, backend=backend, offset=a)
                 for a, b in [(0, 3), (3, 3), (3, 7)]]  # includes an empty shard
        x0, lse, best = distributed.finalize_partials(distributed.merge_partials_list(parts))
        torch.testing.assert_close(x0, full[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(lse, full[1], atol=1e-9, rtol=1e-12)
        assert torch.equal(best, full[2])
    # the recomputed best logit is the streaming one
    ref = reference.paired_patch_posterior_partials_reference(z, data, sigma, P, P2, q, k, 1.5, boundary)
    torch.testing.assert_close(distributed.paired_key_logits(z, data, sigma, P, P2, q, k, 1.5, boundary,
                                                             ref.best_key), ref.best, atol=1e-9, rtol=1e-12)


def test_shard_partials_check_arguments():
    z = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="do not match"):
        distributed.patch_posterior_partials(z, torch.zeros(0, 1, 5, 4), 1.0, 3)
    with pytest.raises(ValueError, match="P must be an odd"):
        distributed.patch_posterior_partials(z, torch.zeros(0, 1, 4, 4), 1.0, 4)
    with pytest.raises(ValueError, match="sigma"):
        distributed.patch_posterior_partials(z, torch.zeros(2, 1, 4, 4), -1.0, 3)
    empty = distributed.patch_posterior_partials(z, torch.zeros(0, 1, 4, 4), 1.0, 3)
    assert bool((empty.sum == 0).all()) and bool((empty.best_key == -1).all())
    assert bool(torch.isneginf(empty.max).all())


def test_one_process_is_a_world_of_one(monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_from_env() is None
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_env() is None  # torchrun with one rank: the one-process path
    data = torch.rand(4, 1, 5, 5) * 2 - 1
    z = torch.randn(2, 1, 5, 5)
    machine = distributed.shard_denoiser("els", data, P=3, backend="reference")
    torch.testing.assert_close(machine(z, 0.7), PatchMachine(data, "els", 3, backend="reference")(z, 0.7))
    assert distributed.is_shardable("els") and not distributed.is_shardable("nearest")


# ---------------------------------------------------------------------------
# two gloo ranks on loopback


def _assert_same(a, b, what, atol=1e-5):
    if not torch.allclose(a, b, atol=atol, rtol=0):
        raise AssertionError(f"{what}: max difference {(a - b).abs().max().item():.3g}")


def _equivalence_worker(rank, world, port):
    _join_ranks(rank, world, port, timeout_s=60)
    g = torch.Generator().manual_seed(0)
    data = torch.rand(5, 1, 6, 6, generator=g) * 2 - 1  # shards: images 0-2 on rank 0, 3-4 on rank 1
    labels = torch.tensor([0, 1, 0, 2, 0])  # class 1 only on rank 0, class 2 only on rank 1
    z = torch.randn(3, 1, 6, 6, generator=g) * 1.5
    sigma = torch.tensor([0.25, 0.8, 2.5])
    schedule = lambda s: 3 if s < 1 else 5  # noqa: E731  (a patch-size schedule: two P in one call)

    def compare(full, sharded, what, **call):
        a, b = full(z, sigma, **call), sharded(z, sigma, **call)
        _assert_same(a, b, what)
        if getattr(full, "last_stats", None) is not None:
            _assert_same(full.last_stats.lse, sharded.last_stats.lse, f"{what} lse", atol=1e-4)
            if not torch.equal(full.last_stats.argmax, sharded.last_stats.argmax):
                raise AssertionError(f"{what}: provenance differs")

    def shard(mode, data, **settings):  # the sharded machine with the settings it takes (as the CLI does)
        return distributed.shard_denoiser(mode, data, **applicable(mode, **settings))

    for mode in ("ideal", "local", "els"):
        for boundary, keys in (("zeros", "all"), ("circular", "all"), ("circular", "valid")):
            if keys == "valid" and mode != "els":
                continue
            P = 1 if mode == "ideal" else schedule
            opts = dict(boundary=boundary, keys=keys, backend="reference", record_stats=True)
            compare(PatchMachine(data, mode, P, **opts), shard(mode, data, P=P, **opts),
                    f"{mode}/{boundary}/{keys}")
        logw = torch.randn((5,) if mode == "ideal" else (5, 6, 6), generator=g)
        P = 1 if mode == "ideal" else 3
        compare(PatchMachine(data, mode, P, key_logw=logw, record_stats=True),
                shard(mode, data, P=P, key_logw=logw, record_stats=True), f"{mode} key_logw")
        # class-conditional: a class absent from one rank's shard, fixed and per sample
        for label in (1, 2):
            compare(PatchMachine(data, mode, P, labels=labels, class_label=label, record_stats=True),
                    shard(mode, data, P=P, labels=labels, class_label=label, record_stats=True),
                    f"{mode} class {label}")
        compare(PatchMachine(data, mode, P, labels=labels, record_stats=True),
                shard(mode, data, P=P, labels=labels, record_stats=True),
                f"{mode} per-sample classes", class_labels=torch.tensor([2, 1, 0]))
        # more ranks than images: rank 1's shard is empty
        compare(PatchMachine(data[:1], mode, P, record_stats=True),
                shard(mode, data[:1], P=P, record_stats=True), f"{mode} one image")

    compare(GaussianDenoiser(data), distributed.shard_denoiser("gaussian", data), "gaussian")
    compare(GaussianDenoiser(data, labels=labels, class_label=2),
            distributed.shard_denoiser("gaussian", data, labels=labels, class_label=2), "gaussian class 2")
    compare(GaussianDenoiser(data[:1]), distributed.shard_denoiser("gaussian", data[:1]), "gaussian one image")
    compare(AELSDenoiser(data, 3, lam=1.0, gamma=1.0, record_stats=True),
            distributed.shard_denoiser("aels", data, P=3, lam=1.0, gamma=1.0, record_stats=True), "aels")
    for attend_on in ("z", "x0"):
        compare(PELSDenoiser(data, schedule, beta=1.5, attend_on=attend_on, record_stats=True),
                shard("pels", data, P=schedule, beta=1.5, attend_on=attend_on, record_stats=True),
                f"pels attend_on={attend_on}")
    compare(PELSDenoiser(data, 3, beta=2.0, P2=5, boundary="circular", labels=labels, record_stats=True),
            shard("pels", data, P=3, beta=2.0, P2=5, boundary="circular", labels=labels, record_stats=True),
            "pels per-sample classes", class_labels=torch.tensor([2, 1, 0]))
    compare(PELSDenoiser(data[:1], 3, record_stats=True), shard("pels", data[:1], P=3, record_stats=True),
            "pels one image")

    # a class absent from every shard fails alike on every rank (no rank waits for another)
    try:
        distributed.shard_denoiser("els", data, P=3, labels=labels, class_label=7)
    except ValueError as exc:
        assert "no training images on any rank" in str(exc)
    else:
        raise AssertionError("an absent class was accepted")

    # a whole sampling run through the sharded machine
    sigmas = torch.tensor([3.0, 1.0, 0.3, 0.0])
    full = sample_ddim(PatchMachine(data, "els", 3), z * 2, sigmas, progress=False)
    sharded = sample_ddim(distributed.shard_denoiser("els", data, P=3), z * 2, sigmas, progress=False)
    _assert_same(full, sharded, "ddim samples")
    distributed.shutdown()


def test_two_ranks_match_one_process_for_every_machine():
    spawn(_equivalence_worker, 2)


def _hang_worker(rank, world, port):
    _join_ranks(rank, world, port, timeout_s=3)
    if rank == 1:
        time.sleep(120)  # alive but never joins the collective
        return
    start = time.monotonic()
    try:
        distributed.shard_denoiser("els", torch.zeros(2, 1, 4, 4), P=3)(torch.zeros(1, 1, 4, 4), 1.0)
    except distributed.DistributedError as exc:
        assert "rank 0 of 2" in str(exc) and "did not answer within 3 s" in str(exc), str(exc)
        assert time.monotonic() - start < 30
        distributed.shutdown()  # as the CLI does after a failure
        raise SystemExit(17)  # the expected failure, told apart from any other
    raise AssertionError("the collective returned although rank 1 never joined")


def test_a_rank_that_stops_answering_fails_the_others_after_the_timeout():
    with pytest.raises(mp.ProcessExitedException) as info:
        spawn(_hang_worker, 2, deadline_s=120)
    assert info.value.exit_code == 17 and info.value.error_index == 0


# ---------------------------------------------------------------------------
# the CLI under torchrun


def _write_npy(tmp_path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, images)
    np.save(tmp_path / "x_labels.npy", labels)
    return path


def test_torchrun_sample_writes_the_one_process_samples(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 8, 8), dtype=np.uint8)
    labels = np.array([1, 1, 0, 1, 0, 0, 2])  # class 1: rows 0, 1, 3, all on rank 0 (rows 0-3)
    path = _write_npy(tmp_path, images, labels)
    args = ["sample", "--data", str(path), "--machine", "els", "--class", "1", "--patch-schedule", "3,5,3",
            "--steps", "3", "--seeds", "0-2", "--batch-size", "2", "--no-progress"]
    one = subprocess.run([sys.executable, "-m", "creativity_fast", *args, "--out", str(tmp_path / "one")],
                         env=cli_env(), capture_output=True, text=True, timeout=180)
    assert one.returncode == 0, one.stderr
    # resume: seed 1 already finished (rank 0 reads it; every rank must then run seeds 0 and 2 only)
    a = np.load(tmp_path / "one" / "samples.npz")
    results = {1: (torch.from_numpy(a["samples"][1]), torch.from_numpy(a["provenance"][1]))}
    (tmp_path / "two").mkdir()
    common.save_partial(common.partial_results_path(tmp_path / "two", "samples"), results, str(a["settings"]))
    two = subprocess.run(torchrun(*args, "--out", str(tmp_path / "two")), env=cli_env(), capture_output=True,
                         text=True, timeout=180)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("wrote ") == 1 and "2 ranks" in two.stdout  # rank 0 alone prints
    assert two.stdout.count("resuming: 1 of 3 samples") == 1
    b = np.load(tmp_path / "two" / "samples.npz")
    assert sorted(a.files) == sorted(b.files)
    np.testing.assert_allclose(b["samples"], a["samples"], atol=1e-5, rtol=0)
    for key in ("provenance", "seeds", "sigmas", "patch_sizes", "settings"):
        np.testing.assert_array_equal(b[key], a[key])
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["samples.npz", "samples.png"]


def test_torchrun_fails_clearly_when_one_rank_fails(tmp_path):
    images = np.linspace(-1, 1, 6 * 8 * 8, dtype=np.float32).reshape(6, 8, 8)
    images[5, 0, 0] = 5.0  # out of range, in rank 1's shard (rows 3-5) only
    path = _write_npy(tmp_path, images, np.zeros(6, dtype=np.int64))
    start = time.monotonic()
    run = subprocess.run(torchrun("sample", "--data", str(path), "--steps", "2", "--seeds", "0",
                                  "--patch-schedule", "3", "--no-progress", "--out", str(tmp_path / "out")),
                         env=cli_env(CREATIVITY_FAST_DIST_TIMEOUT="30"), capture_output=True, text=True, timeout=180)
    assert run.returncode != 0
    assert time.monotonic() - start < 120
    assert "creativity-fast: error: rank 1 of 2:" in run.stderr and "outside the value range" in run.stderr, \
        run.stderr
    assert not (tmp_path / "out" / "samples.npz").exists()
