#!/usr/bin/env python3
"""One-shot GPU check of the creativity_fast CUDA kernels (docs/theory.md §4, §9).

Run once on a machine with an NVIDIA GPU, from anywhere:

    python bench/gpu_check.py            # build, check, time (about 6-9 minutes on an H200)
    python bench/gpu_check.py --no-build # use the extension already built in the source tree

1. Build: ``FORCE_CUDA=1 python setup.py build_ext --inplace`` in the repository, for the
   GPU's own architecture (TORCH_CUDA_ARCH_LIST, unless set), all CPU cores; or
   ``--build pip`` for ``pip install --no-build-isolation --no-deps .``.
2. Correctness: every op (forward: all modes, boundaries, key sets, key_logw, provenance;
   backward) on fresh random inputs against the pure-PyTorch reference on the CPU, at
   float32 tolerances (float64 for the backward and a forward subset); the tf32 precision
   policy; patch_argmax_attention (hard and soft, float32 and float64, shared-memory and
   global scratch, split displacements) against the CPU kernel (y* bitwise) and, on exact
   inputs with ties, the reference; one PASS/FAIL line each.
3. Accuracy at scale: 60,000 training images (the real set when its IDX files are installed,
   else the embedded subset tiled to 60,000, else random images of that shape), B = 2,
   P in {3, 7}: fp32 and forced tf32 against the GPU's own float64 path, at sigma = 1 and at
   the sigma where the policy switches to tf32 (the fp32 running sums over ~1e5 keys per
   thread). The precision switch itself is checked on both sides in step 2.
4. Timing, B in {1, 8, 64} (``--batches``), P in {3, 7, 15}: the forward and a warm backward
   by CUDA events, each kernel's share by the CUDA profiler; G pairs/s of useful pairs
   (``count_pairs``) with the padded pairs the tiles compute beside them, the fraction of the
   nominal exp-unit ceiling (SMs x 16 ex2/clock x SM clock) and of the measured fp32 matmul
   peak. Then patch_argmax_attention over the 60,000 images and over a batch of samples.
   ``--max-seconds`` bounds the timing section (later configurations are skipped).

``--dry-run`` (no GPU): the script's own logic (padded-pair counts, parsing of the policy's
verbose line) on the CPU emulator of the kernels.

Exit status 0 when every check passed. The operator variants, the random input factory and
the float32 tolerance model are the tests' own (tests/helpers.py).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # helpers.py: operator variants, random inputs, tolerances
RESULTS: list[tuple[str, bool]] = []


def log(msg: str = "") -> None:
    print(msg, flush=True)


def record(name: str, ok: bool, detail: str = "") -> None:
    RESULTS.append((name, ok))
    log(f"{'PASS' if ok else 'FAIL'}  {name}" + (f"  ({detail})" if detail else ""))


# ---------------------------------------------------------------------------------------
# 1. Build


def build(kind: str) -> None:
    import torch

    env = dict(os.environ, FORCE_CUDA="1", MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count() or 4)))
    if "TORCH_CUDA_ARCH_LIST" not in env:
        major, minor = torch.cuda.get_device_capability()
        env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    if kind == "pip":
        cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "."]
    else:
        cmd = [sys.executable, "setup.py", "build_ext", "--inplace"]
    log(f"build: {' '.join(cmd)}  (TORCH_CUDA_ARCH_LIST={env['TORCH_CUDA_ARCH_LIST']}, MAX_JOBS={env['MAX_JOBS']})")
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        log(proc.stdout[-6000:])
        log(proc.stderr[-12000:])
        record("build", False, f"exit {proc.returncode}")
        finish()
    record("build", True, f"{time.time() - t0:.0f} s")


# ---------------------------------------------------------------------------------------
# 2. Correctness


def max_err(actual, expected):
    """Largest |difference| over finite entries; inf when the non-finite patterns differ."""
    import torch

    a = actual.detach().cpu().double()
    if not torch.equal(torch.isnan(a), torch.isnan(expected)) or not torch.equal(torch.isinf(a), torch.isinf(expected)):
        return math.inf
    m = torch.isfinite(expected)
    return (a[m] - expected[m]).abs().max().item() if m.any() else 0.0


def check_forward(name, z, data, sigma, P, machine, dtype, key_logw=None, tol_x=None, tol_l=1e-4):
    import torch
    from creativity_fast.reference import patch_posterior_mean_reference
    from helpers import float32_x0_atol, patch_weight_sum

    mode, boundary, keys = machine
    x_ref, l_ref, b_ref = patch_posterior_mean_reference(z, data, sigma, P, mode, boundary, keys, key_logw)
    if tol_x is None:
        tol_x = float32_x0_atol(l_ref, patch_weight_sum(*z.shape[1:], P, mode, boundary))
    dev = lambda t: None if t is None else t.to("cuda", dtype)  # noqa: E731
    x0, lse, best = torch.ops.creativity_fast.patch_posterior_mean(dev(z), dev(data), dev(sigma), P, mode, boundary,
                                                                   keys, dev(key_logw), True)
    ex = max_err(x0, x_ref)
    el = max_err(lse, l_ref) / max(1.0, l_ref[torch.isfinite(l_ref)].abs().max().item() if torch.isfinite(l_ref).any()
                                   else 1.0)
    agree = (best.cpu() == b_ref).double().mean().item()
    need = 1.0 if dtype == torch.float64 else 0.97
    ok = ex <= tol_x and el <= tol_l and agree >= need
    record(name, ok, f"x0 err {ex:.1e}, lse rel err {el:.1e}, best key agreement {agree:.3f}")


def correctness() -> None:
    import torch
    from creativity_fast.ops import environment
    from creativity_fast.reference import patch_posterior_mean_reference
    from helpers import OPERATOR_VARIANTS as MACHINES
    from helpers import random_inputs

    # inputs: a training image plus sigma * noise; with key_logw, every 7th key removed (-inf:
    # some pixels may lose all keys, NaN x0 there, as in the reference)

    log("\n== correctness against creativity_fast.reference (CPU) ==")
    seed = int(time.time()) % 100000
    log(f"random seed {seed}")
    for machine in MACHINES:
        Ps = [3] if machine[0] == "ideal" else ([1, 3, 5] if machine[2] == "valid" else [1, 3, 7, 15])
        for P in Ps:
            for C, logw in [(1, False), (3, True)]:
                seed += 1
                z, data, sigma, kl = random_inputs(B=3, C=C, H=12, W=10, N=40, sigma=(0.3, 1.0, 3.0), seed=seed,
                                                   mode=machine[0], logw=logw, remove_every=7)
                check_forward(f"forward {'/'.join(machine)} P={P} C={C} key_logw={logw} f32", z, data, sigma, P,
                              machine, torch.float32, kl)
        seed += 1
        z, data, sigma, kl = random_inputs(B=2, C=2, H=9, W=8, N=30, sigma=(0.5, 2.0), seed=seed, mode=machine[0],
                                           logw=True, remove_every=7)
        check_forward(f"forward {'/'.join(machine)} P=3 C=2 f64", z, data, sigma, 3, machine, torch.float64, kl,
                      tol_x=1e-10, tol_l=1e-12)

    # Larger problem: many blocks and key splits with the default plan.
    seed += 1
    z, data, sigma, _ = random_inputs(B=4, C=1, H=28, W=28, N=300, sigma=(0.2, 0.7, 2.0, 10.0), seed=seed)
    for P in (3, 7, 15):
        check_forward(f"forward els/zeros/all 28x28 N=300 P={P} f32 (default plan)", z, data, sigma, P,
                      ("els", "zeros", "all"), torch.float32)
    with environment(CREATIVITY_FAST_CUDA_TILES_PER_BLOCK=1):
        check_forward("forward els/circular/all 28x28 N=300 P=7 f32 (one key tile per block)", z, data, sigma, 7,
                      ("els", "circular", "all"), torch.float32)

    # Backward against autograd through the reference, float64.
    for machine in MACHINES:
        for P, C in ([(3, 1), (3, 3)] if machine[0] == "ideal" else [(1, 1), (3, 3), (7, 1)]):
            if machine[2] == "valid" and P > 5:
                continue
            seed += 1
            mode, boundary, keys = machine
            z, data, sigma, kl = random_inputs(B=2, C=C, H=6, W=7, N=9, sigma=(1.5, 3.0), seed=seed, mode=mode,
                                               logw=True)
            zz = z.clone().requires_grad_(True)
            x_ref, _, _ = patch_posterior_mean_reference(zz, data, sigma, P, mode, boundary, keys, kl)
            g = torch.randn(x_ref.shape, dtype=torch.float64)
            (grad_ref,) = torch.autograd.grad((x_ref * g).sum(), zz)
            dev = lambda t: None if t is None else t.cuda()  # noqa: E731
            x0, lse, _ = torch.ops.creativity_fast.patch_posterior_mean(dev(z), dev(data), dev(sigma), P, mode,
                                                                        boundary, keys, dev(kl), False)
            grad = torch.ops.creativity_fast.patch_posterior_mean_backward(dev(g), dev(z), dev(data), dev(sigma), P,
                                                                           mode, boundary, keys, dev(kl), x0, lse)
            err = (grad.cpu() - grad_ref).abs().max().item() / max(1e-30, grad_ref.abs().max().item())
            record(f"backward {'/'.join(machine)} P={P} C={C} f64", err <= 1e-8, f"rel err {err:.1e}")

    # gradcheck through the public API (registered autograd), float64.
    from creativity_fast import ops

    for machine in (MACHINES[0], MACHINES[3], MACHINES[4]):
        seed += 1
        z, data, sigma, _ = random_inputs(B=1, C=1, H=4, W=5, N=3, sigma=(0.9,), seed=seed)
        zc = z.cuda().requires_grad_(True)
        fn = lambda x: ops.patch_posterior_mean(x, data.cuda(), sigma.cuda(), 3, mode=machine[0],  # noqa: E731
                                                boundary=machine[1], keys=machine[2], backend="kernel")
        try:
            ok = torch.autograd.gradcheck(fn, (zc,), eps=1e-6, atol=1e-7, rtol=1e-5)
            record(f"gradcheck {'/'.join(machine)} f64", ok)
        except Exception as exc:  # noqa: BLE001
            record(f"gradcheck {'/'.join(machine)} f64", False, str(exc).splitlines()[0][:200])

    # Precision policy: tf32 only where the proven bound allows (docs/theory.md §4.4); both
    # sides of the switch, errors against the GPU's float64 path within the bound.
    if torch.cuda.get_device_capability()[0] >= 8:
        for P in (3, 7, 15):
            seed += 1
            z, data, _, _ = random_inputs(B=2, C=1, H=28, W=28, N=100, sigma=(80.0,), seed=seed, query="gaussian",
                                          query_scale=3.0)
            check_switch(f"precision switch P={P} (default tolerance)", z, data, P, tol=None)
            check_switch(f"precision switch P={P} (tolerance 1e-3)", z, data, P, tol=1e-3)
        seed += 1
        z, data, sigma, _ = random_inputs(B=2, C=1, H=28, W=28, N=100, sigma=(0.2,), seed=seed)
        args = (z.float().cuda(), data.float().cuda(), sigma.float().cuda(), 7, "els", "zeros", "all", None, True)
        with environment(CREATIVITY_FAST_CUDA_MATH="fp32"):
            exact = torch.ops.creativity_fast.patch_posterior_mean(*args)
        auto = torch.ops.creativity_fast.patch_posterior_mean(*args)
        record("precision policy sigma=0.2 P=7: auto = fp32", all(torch.equal(a, b) for a, b in zip(auto, exact)))

    check_attention(seed + 1)


def policy_decision(z, data, sigma, P):
    """(path, bound, tol) of the automatic precision policy for this call, from its verbose
    line on stderr (csrc/cuda/ops_impl.cuh: choose_tf32)."""
    import re

    text = _stderr_of(lambda: _forward(z, data, sigma, P, math="auto", verbose=True))
    m = re.search(r"tf32 logit error <= ([0-9.eE+-]+|inf|nan) \(tol ([0-9.eE+-]+|inf|nan)\) -> (tf32|fp32)", text)
    if not m:
        return None, math.nan, math.nan
    return m.group(3), float(m.group(1)), float(m.group(2))


def _forward(z, data, sigma, P, math="auto", verbose=False, argmax=False):
    import torch

    from creativity_fast.ops import environment

    knobs = {"CREATIVITY_FAST_CUDA_MATH": math, **({"CREATIVITY_FAST_CUDA_VERBOSE": "1"} if verbose else {})}
    with environment(**knobs):
        out = torch.ops.creativity_fast.patch_posterior_mean(z, data, sigma, P, "els", "zeros", "all", None, argmax)
        torch.cuda.synchronize()
        return out


def _stderr_of(fn) -> str:
    """What fn() writes to the process's stderr (file descriptor 2: the C++ verbose lines)."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return tmp.read().decode(errors="replace")


def check_switch(name, z, data, P, tol):
    """At 1.02 and 0.98 times the switch sigma* (the bound is c / sigma^2 for fixed z), auto runs
    tf32 and fp32; the tf32 errors against the GPU's float64 path stay within the bound."""
    import torch

    from creativity_fast.ops import environment

    with environment(**({} if tol is None else {"CREATIVITY_FAST_TF32_TOL": tol})):
        zc, dc = z.float().cuda(), data.float().cuda()
        probe = torch.full((z.shape[0],), 1.0, device="cuda")
        _, bound1, tol_used = policy_decision(zc, dc, probe, P)
        if not (bound1 > 0 and tol_used > 0):
            record(name, False, f"no policy decision parsed (bound {bound1}, tol {tol_used})")
            return
        sigma_star = math.sqrt(bound1 / tol_used)
        R = (data.max() - data.min()).item()
        ok, details = True, []
        for side, factor in (("tf32", 1.02), ("fp32", 0.98)):
            s = torch.full((z.shape[0],), sigma_star * factor, device="cuda")
            path, bound, _ = policy_decision(zc, dc, s, P)
            x64, l64, _ = _forward(zc.double(), dc.double(), s.double(), P)
            xt, lt, _ = _forward(zc, dc, s, P, math="tf32")
            xf, lf, _ = _forward(zc, dc, s, P, math="fp32")
            ex_f, el_f = max_err(xf, x64.cpu()), max_err(lf, l64.cpu())
            ex_t, el_t = max_err(xt, x64.cpu()), max_err(lt, l64.cpu())
            within = ex_t <= R * math.tanh(bound / 2) + 2 * ex_f + 1e-6 and el_t <= bound + 2 * el_f + 1e-6
            ok = ok and path == side and within
            details.append(f"{factor} sigma*={sigma_star * factor:.3g}: auto {path}, bound {bound:.2e}, "
                           f"x0 err tf32 {ex_t:.1e} fp32 {ex_f:.1e}, lse err tf32 {el_t:.1e}")
        record(name, ok, "; ".join(details))


def accuracy_at_scale(images, source: str) -> None:
    """N = 60,000, B = 2, P in {3, 7}: fp32 and forced tf32 against the GPU's float64 path, at
    sigma = 1 (steep logits: fp32 running sums over ~1e5 keys per thread) and at the switch."""
    import torch

    from helpers import float32_x0_atol

    log(f"\n== accuracy at scale: {source}, B = 2, against the GPU's float64 path ==")
    data = images.float().cuda()
    N, C, H, W = data.shape
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(N, (2,), generator=g)
    noise = torch.randn(2, C, H, W, generator=g)
    for P in (3, 7):
        sumw = C * min(P, 2 * H - 1) * min(P, 2 * W - 1)
        z1 = (images[idx] + noise).float().cuda()
        _, b1, tol = policy_decision(z1, data, torch.ones(2, device="cuda"), P)
        sigma_star = math.sqrt(b1 / tol) if b1 > 0 and tol > 0 else float("nan")
        for sigma, label in ((1.0, "sigma=1"), (sigma_star, "sigma at the tf32 switch")):
            if not math.isfinite(sigma):
                record(f"accuracy N={N} P={P} {label}", False, "no switch sigma")
                continue
            z = (images[idx] + sigma * noise).float().cuda()
            s = torch.full((2,), sigma, device="cuda")
            x64, l64, _ = _forward(z.double(), data.double(), s.double(), P)
            x64, l64 = x64.cpu(), l64.cpu()
            atol = 1e-5 * max(1.0, data.abs().max().item()) + float32_x0_atol(l64, sumw)
            for path in ("fp32", "tf32"):
                x, l, _ = _forward(z, data, s, P, math=path)
                ex, el = max_err(x, x64), max_err(l, l64)
                _, bound, _ = policy_decision(z, data, s, P)
                allowed = atol if path == "fp32" else atol + 2 * math.tanh(bound / 2) * max(1.0, data.abs().max().item())
                record(f"accuracy N={N} P={P} {label} {path}", ex <= allowed,
                       f"sigma {sigma:.3g}: x0 err {ex:.2e} (allowed {allowed:.2e}), lse err {el:.2e}")
        del x64, l64
        torch.cuda.empty_cache()


def padded_pairs(B: int, N: int, H: int, W: int, P: int, TQ: int = 64, TK: int = 64) -> int:
    """(query, key) pairs the float kernels compute, padding of the query and key tiles included:
    sum over the plan's groups (csrc/cuda/plan.cuh) of ceil(nq / TQ) TQ * ceil(nk / TK) TK."""
    from creativity_fast.dictionary import admissible_centres

    def classes(size):
        mask = admissible_centres(size, P, "els", "zeros", "all")
        out = []
        for pos in range(size):
            keys = tuple(int(k) for k in mask[pos].nonzero().flatten()) if mask.dim() == 2 else None
            out.append(keys)
        groups = []
        for pos, keys in enumerate(out):
            if groups and groups[-1][1] == keys:
                groups[-1][0] += 1
            else:
                groups.append([1, keys])
        return [(n, len(k)) for n, k in groups]

    total = 0
    for nr, nrk in classes(H):
        for nc, nck in classes(W):
            nq, nk = B * nr * nc, N * nrk * nck
            total += -(-nq // TQ) * TQ * -(-nk // TK) * TK
    return total


def exp_ceiling() -> float:
    """Nominal exp-unit ceiling: SMs x 16 ex2 per clock x the largest SM clock (nvidia-smi), else 1.98 GHz."""
    import torch

    props = torch.cuda.get_device_properties(0)
    clock = 1.98e9
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout.split()
        clock = float(out[0]) * 1e6
    except Exception:  # noqa: BLE001
        pass
    return props.multi_processor_count * 16 * clock


def check_attention(seed: int) -> None:
    """patch_argmax_attention on CUDA against the CPU kernel (bitwise y*: the CUDA kernel reproduces its
    float64 scores) and, on exact (dyadic) inputs with ties, against the pure-PyTorch reference."""
    import torch
    from creativity_fast import ops
    from creativity_fast.ops import environment, mean_patch
    from creativity_fast.reference import patch_argmax_attention_reference

    cpu_kernel = ops.has_kernel("cpu", "patch_argmax_attention")

    def run(name, images, center, P, exclude, tau, exact=False):
        t = -1.0 if tau is None else tau
        y, deg = torch.ops.creativity_fast.patch_argmax_attention(images.cuda(), center.cuda(), P, exclude, t)
        torch.cuda.synchronize()
        y, deg = y.cpu(), deg.cpu()
        if cpu_kernel:
            y_ref, deg_ref = torch.ops.creativity_fast.patch_argmax_attention(images, center, P, exclude, t)
            what = "CPU kernel"
        else:
            ref = patch_argmax_attention_reference(images, P, exclude=exclude, center=center, tau=tau,
                                                   return_in_degree=True)
            y_ref, deg_ref, what = ref.y_star, ref.in_degree, "reference"
        ok = torch.equal(y, y_ref) and deg.dtype == images.dtype
        detail = f"y* differs at {(y != y_ref).sum().item()} of {y.numel()} pixels vs {what}"
        if tau is None:
            ok = ok and torch.equal(deg, deg_ref)
        else:
            err = (deg.double() - deg_ref.double()).abs().max().item()
            ok = ok and err <= (1e-9 if images.dtype == torch.float64 else 1e-4)
            detail += f", soft in-degree err {err:.1e}"
        if exact:  # dyadic inputs: exact scores, so the reference's ties are the kernel's
            ref = patch_argmax_attention_reference(images, P, exclude=exclude, center=center, return_in_degree=True)
            ok = ok and torch.equal(y, ref.y_star)
            detail += f"; vs reference {(y != ref.y_star).sum().item()}"
        record(name, ok, detail)

    g = torch.Generator().manual_seed(seed)
    for shape in ((5, 1, 28, 28), (3, 3, 32, 32), (2, 1, 13, 17), (1, 3, 7, 5)):
        images = torch.randn(shape, generator=g, dtype=torch.float64)
        for P in (3, 7, 15):
            center = mean_patch(images, P)
            for exclude in (P, 0):
                for dtype in (torch.float32, torch.float64):
                    for tau in (None, 0.5):
                        run(f"attention {'x'.join(map(str, shape))} P={P} exclude={exclude} tau={tau} "
                            f"{str(dtype)[6:]}", images.to(dtype), center.to(dtype), P, exclude, tau)
    # exact ties: an integer image made of a repeated 2 x 3 tile, dyadic centre
    tile = torch.randint(-2, 3, (4, 3, 2, 3), generator=g).double()
    images = tile.repeat(1, 1, 10, 7)[:, :, :19, :20].contiguous()
    for P in (1, 3, 5):
        center = torch.randint(-4, 5, (3, P, P), generator=g).double() / 8
        for exclude in sorted({0, 1, P}):
            run(f"attention ties 4x3x19x20 P={P} exclude={exclude}", images.float(), center.float(), P, exclude, None,
                exact=True)
    # forced paths: many displacement splits, the global-memory scratch, a large image (global scratch)
    images = torch.randn(64, 1, 28, 28, generator=g)
    center = mean_patch(images, 5)
    for splits, scratch in (("7", "shared"), ("3", "global"), ("1", "global")):
        with environment(CREATIVITY_FAST_CUDA_ATTENTION_SPLITS=splits, CREATIVITY_FAST_CUDA_ATTENTION_SCRATCH=scratch):
            for tau in (None, 1.0):
                run(f"attention 64x1x28x28 P=5 splits={splits} scratch={scratch} tau={tau}", images, center, 5, 5, tau)
    images = torch.randn(1, 3, 80, 80, generator=g)
    run("attention 1x3x80x80 P=7 (scratch > shared memory: global)", images, mean_patch(images, 7), 7, 7, None)


# ---------------------------------------------------------------------------------------
# 3. Timing


def measure_peaks():
    import torch

    def matmul_rate(allow_tf32: bool) -> float:
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        n = 8192
        a = torch.randn(n, n, device="cuda")
        b = torch.randn(n, n, device="cuda")
        for _ in range(2):
            a @ b
        torch.cuda.synchronize()
        reps = 5
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            a @ b
        stop.record()
        torch.cuda.synchronize()
        torch.backends.cuda.matmul.allow_tf32 = old
        return 2 * n ** 3 * reps / (start.elapsed_time(stop) / 1e3)

    return matmul_rate(False), matmul_rate(True)


def fashion_mnist_60k():
    import torch

    try:
        from creativity_fast.data import load_fashion_mnist_full

        return load_fashion_mnist_full().images, "Fashion-MNIST train (IDX files)"
    except Exception:  # noqa: BLE001
        pass
    try:
        from creativity_fast.data import embedded_dataset_path, load_dataset

        sub = load_dataset(embedded_dataset_path()).images
        reps = -(-60000 // sub.shape[0])
        return sub.repeat(reps, 1, 1, 1)[:60000].contiguous(), f"embedded subset ({sub.shape[0]}) tiled to 60,000"
    except Exception:  # noqa: BLE001
        pass
    g = torch.Generator().manual_seed(0)
    return torch.rand(60000, 1, 28, 28, generator=g) * 2 - 1, "random images 60,000 x 1 x 28 x 28"


KERNEL_NAMES = ("forward_kernel", "merge_kernel", "backward_kernel", "adjoint_kernel", "attention_kernel",
                "ideal_kernel")


def kernel_times(fn, reps: int) -> tuple[float, dict]:
    """(seconds per call by CUDA events, {kernel: seconds per call} from the CUDA profiler)."""
    import torch

    fn()  # warm: plan, caches (the data's patch norms), allocator
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    torch.cuda.synchronize()
    sec = start.elapsed_time(stop) / 1e3 / reps
    per_kernel: dict = {}
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        for ev in prof.key_averages():
            for k in KERNEL_NAMES:
                if k in ev.key:
                    t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
                    per_kernel[k] = per_kernel.get(k, 0.0) + t / 1e6
    except Exception as exc:  # noqa: BLE001  (the profiler is optional)
        per_kernel["profiler unavailable"] = str(exc)[:80]
    return sec, per_kernel


def timing(batches, reps: int, max_seconds: float) -> None:
    import torch
    from creativity_fast.dictionary import count_pairs

    t0 = time.time()
    log("\n== timing: one ELS step on 60,000 Fashion-MNIST images (CUDA events; kernels by the profiler) ==")
    fp32_peak, tf32_peak = measure_peaks()
    ceiling = exp_ceiling()
    log(f"measured matmul peaks: fp32 {fp32_peak / 1e12:.1f} TFLOP/s, tf32 {tf32_peak / 1e12:.1f} TFLOP/s; "
        f"exp-unit ceiling (nominal) {ceiling / 1e12:.2f} T exp/s")
    images, source = fashion_mnist_60k()
    log(f"data: {source}")
    data = images.float().cuda()
    N, C, H, W = data.shape
    accuracy_at_scale(images, source)
    log(f"\n{'pass':>8} {'B':>3} {'P':>3} {'path':>5} {'ms':>9} {'useful Gp':>9} {'padded Gp':>9} "
        f"{'G pairs/s':>10} {'/exp ceil':>9} {'TFLOP/s':>8} {'/fp32 pk':>8}  kernels (ms)")
    g = torch.Generator().manual_seed(1)
    for B in batches:
        idx = torch.randint(N, (B,), generator=g)
        noise = torch.randn(B, C, H, W, generator=g)
        z = (images[idx] + noise).float().cuda()  # sigma = 1: the exact fp32 path (policy)
        s = torch.ones(B, device="cuda")
        for P in (3, 7, 15):
            if time.time() - t0 > max_seconds:
                log(f"(time budget of {max_seconds:.0f} s spent: skipping B={B} P={P} and later)")
                break
            D = C * min(P, 2 * H - 1) * min(P, 2 * W - 1)
            useful = count_pairs(B, N, H, W, P, "els", "zeros", "all")
            padded = padded_pairs(B, N, H, W, P)
            path, _, _ = policy_decision(z, data[:64], s, P)
            n = reps if B <= 8 else 1
            sec, ker = kernel_times(lambda: _forward(z, data, s, P), n)
            flops = 2 * D * useful / sec
            kstr = " ".join(f"{k.replace('_kernel', '')} {v * 1e3:.1f}" for k, v in ker.items() if isinstance(v, float))
            log(f"{'forward':>8} {B:>3} {P:>3} {path or '?':>5} {sec * 1e3:>9.1f} {useful / 1e9:>9.2f} "
                f"{padded / 1e9:>9.2f} {useful / sec / 1e9:>10.1f} {useful / sec / ceiling:>9.3f} "
                f"{flops / 1e12:>8.2f} {flops / fp32_peak:>8.3f}  {kstr}")
            x0, lse, _ = _forward(z, data, s, P)
            gout = torch.randn_like(x0)
            back = lambda: torch.ops.creativity_fast.patch_posterior_mean_backward(  # noqa: E731
                gout, z, data, s, P, "els", "zeros", "all", None, x0, lse)
            sec, ker = kernel_times(back, 1)
            kstr = " ".join(f"{k.replace('_kernel', '')} {v * 1e3:.1f}" for k, v in ker.items() if isinstance(v, float))
            log(f"{'backward':>8} {B:>3} {P:>3} {'fp32':>5} {sec * 1e3:>9.1f} {useful / 1e9:>9.2f} "
                f"{padded / 1e9:>9.2f} {useful / sec / 1e9:>10.1f} {useful / sec / ceiling:>9.3f} "
                f"{'':>8} {'':>8}  {kstr}")
            x0 = lse = gout = back = None  # free the device memory before the next size
            torch.cuda.empty_cache()
    time_attention(images, max(batches), reps)


def _attention_pairs(H: int, W: int, exclude: int) -> int:
    """Admissible ordered pairs (x, y) of one H x W image: max(|dr|, |dc|) >= exclude."""
    return sum((H - abs(dr)) * (W - abs(dc)) for dr in range(-(H - 1), H) for dc in range(-(W - 1), W)
               if max(abs(dr), abs(dc)) >= exclude)


def time_attention(images, batch: int, reps: int) -> None:
    """patch_argmax_attention: the AELS training in-degree (all 60,000 images) and a batch of samples."""
    import torch
    from creativity_fast import ops
    from creativity_fast.ops import mean_patch

    log("\n== timing: patch_argmax_attention (float32 images, float64 scores) ==")
    log(f"{'images':>8} {'P':>3} {'tau':>5} {'ms':>9} {'G pairs':>9} {'G pairs/s':>10} {'CPU kernel G pairs/s':>21}")
    data = images.float().cuda()
    N, C, H, W = data.shape
    cpu_kernel = ops.has_kernel("cpu", "patch_argmax_attention")
    for M, P, tau in ((N, 3, None), (N, 7, None), (N, 3, 1.0), (batch, 3, None), (batch, 7, None)):
        x = data[:M]
        center = mean_patch(x, P)
        t = -1.0 if tau is None else tau
        torch.ops.creativity_fast.patch_argmax_attention(x, center, P, P, t)
        torch.cuda.synchronize()
        n = max(1, reps if M <= batch else 1)
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            torch.ops.creativity_fast.patch_argmax_attention(x, center, P, P, t)
        stop.record()
        torch.cuda.synchronize()
        sec = start.elapsed_time(stop) / 1e3 / n
        pairs = M * _attention_pairs(H, W, P)
        cpu = ""
        if cpu_kernel:  # the CPU kernel on at most 2,000 of the images, all cores
            xc, cc = images[:min(M, 2000)].float(), center.cpu()
            t0 = time.time()
            torch.ops.creativity_fast.patch_argmax_attention(xc, cc, P, P, t)
            cpu = f"{xc.shape[0] * _attention_pairs(H, W, P) / (time.time() - t0) / 1e9:.2f}"
        log(f"{M:>8} {P:>3} {str(tau):>5} {sec * 1e3:>9.1f} {pairs / 1e9:>9.2f} {pairs / sec / 1e9:>10.1f} {cpu:>21}")


# ---------------------------------------------------------------------------------------


def dry_run() -> int:
    """The script's logic without a GPU: padded-pair counts against a brute-force count of the
    plan, and the policy's verbose line parsed from the CPU emulator of the kernels."""
    from creativity_fast.dictionary import count_pairs

    sys.path.insert(0, str(ROOT))
    ok = True
    for B, N, H, W, P in ((1, 3, 28, 28, 3), (2, 5, 9, 7, 5), (8, 10, 28, 28, 15)):
        useful, padded = count_pairs(B, N, H, W, P, "els", "zeros", "all"), padded_pairs(B, N, H, W, P)
        good = useful <= padded < useful + (B * H * W + 64) * 64 * 4 * N * 10
        ok &= good
        log(f"{'ok' if good else 'BAD'}: B={B} N={N} {H}x{W} P={P}: useful {useful}, padded {padded}")
    from cuda_backends import EmulatorRunner, set_env
    from helpers import random_inputs

    emu = EmulatorRunner()
    z, data, sigma, _ = random_inputs(B=2, C=1, H=9, W=9, N=6, seed=1, sigma=(1e4,))
    with set_env(CREATIVITY_FAST_CUDA_VERBOSE="1", CREATIVITY_FAST_CUDA_MATH="auto"):
        text = _stderr_of(lambda: emu.forward(z.float(), data.float(), sigma.float(), 3, "els", "zeros", "all"))
    import re

    m = re.search(r"tf32 logit error <= ([0-9.eE+-]+) \(tol ([0-9.eE+-]+)\) -> (tf32|fp32)", text)
    ok &= m is not None
    log(f"{'ok' if m else 'BAD'}: policy line parsed from the emulator: {m.groups() if m else text[-300:]}")
    log("dry run " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


def finish() -> None:
    failed = [name for name, ok in RESULTS if not ok]
    log(f"\n== {len(RESULTS) - len(failed)} passed, {len(failed)} failed ==")
    for name in failed:
        log(f"FAILED: {name}")
    sys.exit(1 if failed else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-build", action="store_true", help="use the extension already built")
    parser.add_argument("--build", choices=["inplace", "pip"], default="inplace")
    parser.add_argument("--batches", default="1,8,64", help="query images per timed ELS step (comma list)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per configuration (1 for B > 8)")
    parser.add_argument("--max-seconds", type=float, default=360.0, help="time budget of the timing section")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU: check the script's own logic (padded pairs, policy parsing) on the CPU emulator")
    args = parser.parse_args()
    t_start = time.time()

    import torch

    if args.dry_run:
        sys.exit(dry_run())
    if not torch.cuda.is_available():
        log("no CUDA device: nothing to check")
        sys.exit(2)
    props = torch.cuda.get_device_properties(0)
    log(f"device: {props.name}, sm_{props.major}{props.minor}, {props.multi_processor_count} SMs, "
        f"{props.total_memory / 2 ** 30:.0f} GiB; torch {torch.__version__} (CUDA {torch.version.cuda})")
    if not args.no_build:
        build(args.build)
    if args.build == "inplace":
        sys.path.insert(0, str(ROOT))
    from creativity_fast import ops

    if not ops.has_kernel("cuda"):
        record("CUDA kernels registered", False, f"extension error: {ops.EXTENSION_ERROR}")
        finish()
    record("CUDA kernels registered", True)
    correctness()
    if not args.skip_timing:
        timing([int(b) for b in args.batches.split(",")], args.reps, args.max_seconds)
    log(f"\ntotal wall time {time.time() - t_start:.0f} s")
    finish()


if __name__ == "__main__":
    main()
