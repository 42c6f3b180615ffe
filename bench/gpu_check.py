#!/usr/bin/env python3
"""One-shot GPU check of the creativity_fast CUDA kernels (docs/theory.md §4, §9).

Run once on a machine with an NVIDIA GPU, from anywhere:

    python bench/gpu_check.py            # build, check, time (about 3-5 minutes on an H200)
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
3. Timing: one full Fashion-MNIST ELS step (60,000 training images; the real set when its
   IDX files are installed, else the embedded subset tiled to 60,000, else random images of
   that shape) for P in {3, 7, 15}, at a low sigma (exact fp32 path) and a high sigma (where
   the automatic policy picks tf32 tensor cores); prints G pairs/s, useful TFLOP/s
   (2*D flops per pair, docs/theory.md §9) and the fraction of the GPU's measured fp32 and tf32 matmul
   peaks. Then patch_argmax_attention over the 60,000 training images (the in-degree of
   AELS, once per P) and over a batch of samples: ms, G pairs/s, against the CPU kernel.

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
    os.environ["CREATIVITY_FAST_CUDA_TILES_PER_BLOCK"] = "1"
    check_forward("forward els/circular/all 28x28 N=300 P=7 f32 (one key tile per block)", z, data, sigma, 7,
                  ("els", "circular", "all"), torch.float32)
    os.environ.pop("CREATIVITY_FAST_CUDA_TILES_PER_BLOCK")

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

    # Precision policy: tf32 at high sigma within its error estimate, fp32 at low sigma.
    if torch.cuda.get_device_capability()[0] >= 8:
        for P in (3, 7, 15):
            seed += 1
            z, data, sigma, _ = random_inputs(B=2, C=1, H=28, W=28, N=100, sigma=(80.0,), seed=seed)
            args = (z.float().cuda(), data.float().cuda(), sigma.float().cuda(), P, "els", "zeros", "all", None, True)
            outs = {}
            for math_path in ("auto", "tf32", "fp32"):
                os.environ["CREATIVITY_FAST_CUDA_MATH"] = math_path
                outs[math_path] = torch.ops.creativity_fast.patch_posterior_mean(*args)
            os.environ.pop("CREATIVITY_FAST_CUDA_MATH")
            # the estimate of csrc/cuda/plan.cuh (tf32_logit_error); D = P*P for 28x28, zeros, P <= 15
            D, qmax, kmax = P * P, z.abs().max().item(), data.abs().max().item()
            est = (2.0 ** -10 * math.sqrt(D) * qmax * kmax + 2.0 ** -25 * D * (qmax ** 2 + kmax ** 2)) / 80.0 ** 2
            x_ref, l_ref, _ = patch_posterior_mean_reference(z, data, sigma, P, "els", "zeros", "all")
            same = all(torch.equal(a, b) for a, b in zip(outs["auto"], outs["tf32" if est <= 1e-3 else "fp32"]))
            ex_tf, ex_fp = max_err(outs["tf32"][0], x_ref), max_err(outs["fp32"][0], x_ref)
            record(f"precision policy sigma=80 P={P}: auto = {'tf32' if est <= 1e-3 else 'fp32'}, tf32 within 2x estimate",
                   same and ex_tf <= 2 * est and ex_fp <= 5e-5,
                   f"estimate {est:.1e}, x0 err tf32 {ex_tf:.1e} / fp32 {ex_fp:.1e}")
        seed += 1
        z, data, sigma, _ = random_inputs(B=2, C=1, H=28, W=28, N=100, sigma=(0.2,), seed=seed)
        args = (z.float().cuda(), data.float().cuda(), sigma.float().cuda(), 7, "els", "zeros", "all", None, True)
        os.environ["CREATIVITY_FAST_CUDA_MATH"] = "fp32"
        exact = torch.ops.creativity_fast.patch_posterior_mean(*args)
        os.environ.pop("CREATIVITY_FAST_CUDA_MATH")
        auto = torch.ops.creativity_fast.patch_posterior_mean(*args)
        record("precision policy sigma=0.2 P=7: auto = fp32", all(torch.equal(a, b) for a, b in zip(auto, exact)))

    check_attention(seed + 1)


def check_attention(seed: int) -> None:
    """patch_argmax_attention on CUDA against the CPU kernel (bitwise y*: the CUDA kernel reproduces its
    float64 scores) and, on exact (dyadic) inputs with ties, against the pure-PyTorch reference."""
    import torch
    from creativity_fast import ops
    from creativity_fast.ops import mean_patch
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
        os.environ["CREATIVITY_FAST_CUDA_ATTENTION_SPLITS"] = splits
        os.environ["CREATIVITY_FAST_CUDA_ATTENTION_SCRATCH"] = scratch
        for tau in (None, 1.0):
            run(f"attention 64x1x28x28 P=5 splits={splits} scratch={scratch} tau={tau}", images, center, 5, 5, tau)
    os.environ.pop("CREATIVITY_FAST_CUDA_ATTENTION_SPLITS")
    os.environ.pop("CREATIVITY_FAST_CUDA_ATTENTION_SCRATCH")
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


def timing(batch: int, reps: int) -> None:
    import torch
    from creativity_fast.dictionary import count_pairs

    log("\n== timing: one ELS step on 60,000 Fashion-MNIST images ==")
    fp32_peak, tf32_peak = measure_peaks()
    log(f"measured matmul peaks: fp32 {fp32_peak / 1e12:.1f} TFLOP/s, tf32 {tf32_peak / 1e12:.1f} TFLOP/s")
    images, source = fashion_mnist_60k()
    log(f"data: {source}; queries B={batch}")
    data = images.float().cuda()
    N, C, H, W = data.shape
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(N, (batch,), generator=g)
    noise = torch.randn(batch, C, H, W, generator=g)
    log(f"{'P':>3} {'sigma':>6} {'path':>5} {'ms':>9} {'G pairs':>9} {'G pairs/s':>10} {'TFLOP/s':>8} "
        f"{'/fp32 pk':>9} {'/tf32 pk':>9} {'mem GiB':>8}")
    for P in (3, 7, 15):
        D = C * min(P, 2 * H - 1) * min(P, 2 * W - 1)
        pairs = count_pairs(batch, N, H, W, P, "els", "zeros", "all")
        for sigma in (1.0, 80.0):
            z = (images[idx] + sigma * noise).cuda()
            s = torch.full((batch,), sigma, device="cuda")
            os.environ["CREATIVITY_FAST_CUDA_VERBOSE"] = "1"
            proc_path = _chosen_path(z, data, s, P)
            os.environ.pop("CREATIVITY_FAST_CUDA_VERBOSE")
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            torch.ops.creativity_fast.patch_posterior_mean(z, data, s, P, "els", "zeros", "all", None, True)
            torch.cuda.synchronize()
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                torch.ops.creativity_fast.patch_posterior_mean(z, data, s, P, "els", "zeros", "all", None, True)
            stop.record()
            torch.cuda.synchronize()
            sec = start.elapsed_time(stop) / 1e3 / reps
            mem = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
            flops = 2 * D * pairs / sec
            log(f"{P:>3} {sigma:>6g} {proc_path:>5} {sec * 1e3:>9.1f} {pairs / 1e9:>9.2f} {pairs / sec / 1e9:>10.1f} "
                f"{flops / 1e12:>8.2f} {flops / fp32_peak:>9.3f} {flops / tf32_peak:>9.3f} {mem:>8.2f}")
    # One backward step (B=2) for scale.
    P, b2 = 7, min(batch, 2)
    z = (images[idx[:b2]] + noise[:b2]).cuda()
    s = torch.ones(b2, device="cuda")
    x0, lse, _ = torch.ops.creativity_fast.patch_posterior_mean(z, data, s, P, "els", "zeros", "all", None, False)
    gout = torch.randn_like(x0)
    torch.cuda.synchronize()
    t0 = time.time()
    torch.ops.creativity_fast.patch_posterior_mean_backward(gout, z, data, s, P, "els", "zeros", "all", None, x0, lse)
    torch.cuda.synchronize()
    sec = time.time() - t0
    pairs = count_pairs(b2, N, H, W, P, "els", "zeros", "all")
    log(f"backward P={P} B={b2}: {sec * 1e3:.1f} ms, {pairs / sec / 1e9:.1f} G pairs/s")
    time_attention(images, batch, reps)


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


def _chosen_path(z, data, s, P) -> str:
    """Which path the automatic policy picks (from the verbose line on stderr)."""
    import torch

    read, write = os.pipe()
    saved = os.dup(2)
    os.dup2(write, 2)
    try:
        small = torch.ops.creativity_fast.patch_posterior_mean(z, data[:64], s, P, "els", "zeros", "all", None, False)
        del small
        torch.cuda.synchronize()
    finally:
        os.dup2(saved, 2)
        os.close(write)
        os.close(saved)
    text = os.read(read, 1 << 16).decode(errors="replace")
    os.close(read)
    if "-> tf32" in text:
        return "tf32"
    return "fp32"


# ---------------------------------------------------------------------------------------


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
    parser.add_argument("--batch", type=int, default=8, help="query images per timed ELS step")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per configuration")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    t_start = time.time()

    import torch

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
        timing(args.batch, args.reps)
    log(f"\ntotal wall time {time.time() - t_start:.0f} s")
    finish()


if __name__ == "__main__":
    main()
