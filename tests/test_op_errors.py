"""The C++ argument layer (csrc/op_args.h): every backend rejects the same bad inputs to
``torch.ops.creativity_fast.*`` with the same exception type and the same one-line message.

Backends: the CPU kernels (``torch.ops.creativity_fast.<op>`` on CPU tensors), the CUDA
operators' host code on the CPU emulator (tests/cuda_backends.py; skipped with
``CREATIVITY_FAST_CUDA_EMULATOR=0``) and, when a GPU is present, the CUDA kernels. Where the
Python layer (creativity_fast._validate) has the same check, its ValueError text is the
C++ message without the operator prefix.
"""

from __future__ import annotations

import pytest
import torch

import creativity_fast as cf
from creativity_fast import ops

from cuda_backends import EmulatorRunner, emulator_enabled

pytestmark = pytest.mark.skipif(not ops.has_kernel("cpu"), reason="CPU kernel not built")

OPS = torch.ops.creativity_fast if ops.has_kernel("cpu") else None


# ---------------------------------------------------------------------------------------
# Backends: name -> callables with the argument order of torch.ops.creativity_fast.*


class _TorchOps:
    def __init__(self, device):
        self.device = torch.device(device)

    def forward(self, *args):
        return OPS.patch_posterior_mean(*args)

    def backward(self, *args):
        return OPS.patch_posterior_mean_backward(*args)

    def backward_lse(self, *args):
        return OPS.patch_posterior_mean_backward_lse(*args)

    def attention(self, *args):
        return OPS.patch_argmax_attention(*args)


class _Emulator:
    device = torch.device("cpu")

    def __init__(self):
        self.runner = EmulatorRunner()

    def forward(self, *args):
        return self.runner.forward(*args)

    def backward(self, *args):
        return self.runner.backward(*args)

    def backward_lse(self, *args):
        return self.runner.backward_lse(*args)

    def attention(self, *args):
        return self.runner.attention(*args)


_BACKENDS = {}


def backends():
    """The available backends, built once (the emulator compiles on first use)."""
    if not _BACKENDS:
        _BACKENDS["cpu"] = _TorchOps("cpu")
        if emulator_enabled():
            _BACKENDS["emulator"] = _Emulator()
        if torch.cuda.is_available() and ops.has_kernel("cuda"):
            _BACKENDS["cuda"] = _TorchOps("cuda")
    return _BACKENDS


def outcome(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return type(exc), str(exc)
    return None, "no exception"


def assert_same_error(call, expected):
    """call(backend) raises on every backend, with one type and one single-line message that
    contains `expected`; returns the message."""
    results = {name: outcome(lambda b=b: call(b)) for name, b in backends().items()}
    kinds = {name: r[0] for name, r in results.items()}
    messages = {name: r[1] for name, r in results.items()}
    assert all(k is RuntimeError for k in kinds.values()), results
    assert len(set(messages.values())) == 1, f"messages differ between backends: {messages}"
    message = messages["cpu"]
    assert "\n" not in message.strip(), f"not one line: {message!r}"
    assert expected in message, f"{expected!r} not in {message!r}"
    return message


# ---------------------------------------------------------------------------------------
# Inputs


def _problem(B=2, C=1, H=7, W=9, N=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = torch.rand(N, C, H, W, generator=g, dtype=dtype)
    z = torch.rand(B, C, H, W, generator=g, dtype=dtype)
    sigma = torch.full((B,), 0.7, dtype=dtype)
    return z, data, sigma


def _to(b, *tensors):
    return [None if t is None else t.to(b.device) for t in tensors]


def _forward(z, data, sigma, P=3, mode="els", boundary="zeros", keys="all", key_logw=None):
    def call(b):
        zz, dd, ss, kw = _to(b, z, data, sigma, key_logw)
        return b.forward(zz, dd, ss, P, mode, boundary, keys, kw, False)
    return call


Z, DATA, SIGMA = _problem()
LOGW_PATCH = torch.zeros(5, 7, 9, dtype=torch.float64)
LOGW_IDEAL = torch.zeros(5, dtype=torch.float64)

# (id, call, expected substring, Python layer agrees: the same text without the prefix)
PPM = "patch_posterior_mean: "
FORWARD_CASES = [
    ("bad-mode", _forward(Z, DATA, SIGMA, mode="nope"),
     PPM + "mode must be one of 'ideal', 'local', 'els'; got 'nope'"),
    ("bad-boundary", _forward(Z, DATA, SIGMA, boundary="reflect"),
     PPM + "boundary must be one of 'zeros', 'circular'; got 'reflect'"),
    ("bad-keys", _forward(Z, DATA, SIGMA, keys="some"), PPM + "keys must be one of 'all', 'valid'; got 'some'"),
    ("valid-with-zeros", _forward(Z, DATA, SIGMA, keys="valid"),
     PPM + "keys='valid' applies only to mode='els' with boundary='circular'; got mode='els', boundary='zeros'"),
    ("valid-with-local", _forward(Z, DATA, SIGMA, mode="local", boundary="circular", keys="valid"),
     PPM + "keys='valid' applies only to mode='els' with boundary='circular'; got mode='local', boundary='circular'"),
    ("valid-with-ideal", _forward(Z, DATA, SIGMA, mode="ideal", boundary="circular", keys="valid"),
     PPM + "keys='valid' applies only to mode='els'"),
    ("valid-P-over-H", _forward(Z, DATA, SIGMA, P=9, boundary="circular", keys="valid"),
     PPM + "keys='valid' needs P <= H and P <= W (a patch that does not wrap); got P=9 for 7x9 images"),
    ("even-P", _forward(Z, DATA, SIGMA, P=4), PPM + "P must be an odd positive int (patch size 2m+1); got 4"),
    ("zero-P", _forward(Z, DATA, SIGMA, P=0), PPM + "P must be an odd positive int (patch size 2m+1); got 0"),
    ("negative-P", _forward(Z, DATA, SIGMA, P=-3), PPM + "P must be an odd positive int (patch size 2m+1); got -3"),
    ("huge-P", _forward(Z, DATA, SIGMA, P=(1 << 21) + 1), PPM + "P must be <= 1048575"),
    ("z-3d", _forward(Z[0], DATA, SIGMA), PPM + "z must have shape [B, C, H, W]; got [1, 7, 9]"),
    ("data-3d", _forward(Z, DATA[0], SIGMA), PPM + "data must have shape [N, C, H, W]; got [1, 7, 9]"),
    ("z-half", _forward(Z.half(), DATA.half(), SIGMA.half()), PPM + "z must be float32 or float64; got float16"),
    ("z-int", _forward(Z.long(), DATA.long(), SIGMA.long()), PPM + "z must be float32 or float64; got int64"),
    ("dtype-mismatch", _forward(Z.float(), DATA, SIGMA.float()),
     PPM + "data must have z's dtype (float32); got float64"),
    ("empty-axis", _forward(Z[:, :, :0], DATA[:, :, :0], SIGMA),
     PPM + "z has an empty channel or spatial axis: shape [2, 1, 0, 9]"),
    ("data-shape", _forward(Z, DATA[..., :4], SIGMA),
     PPM + "data images [N, C, H, W] = [5, 1, 7, 4] do not match z [B, C, H, W] = [2, 1, 7, 9] in C, H or W"),
    ("data-channels", _forward(Z, torch.cat([DATA, DATA], 1), SIGMA), PPM + "data images [N, C, H, W] = [5, 2, 7, 9]"),
    ("empty-data", _forward(Z, DATA[:0], SIGMA),
     PPM + "data is empty (shape [0, 1, 7, 9]): need at least one image"),
    ("sigma-length", _forward(Z, DATA, SIGMA[:1]), PPM + "sigma must be a [B] tensor with B=2; got shape [1]"),
    ("sigma-2d", _forward(Z, DATA, SIGMA[:, None]), PPM + "sigma must be a [B] tensor with B=2; got shape [2, 1]"),
    ("sigma-dtype", _forward(Z, DATA, SIGMA.float()), PPM + "sigma must have z's dtype (float64); got float32"),
    ("key_logw-shape", _forward(Z, DATA, SIGMA, key_logw=LOGW_IDEAL),
     PPM + "key_logw must have shape [5, 7, 9] for mode='els'; got [5]"),
    ("key_logw-shape-ideal", _forward(Z, DATA, SIGMA, mode="ideal", key_logw=LOGW_PATCH),
     PPM + "key_logw must have shape [5] for mode='ideal'; got [5, 7, 9]"),
    ("key_logw-dtype", _forward(Z, DATA, SIGMA, key_logw=LOGW_PATCH.float()),
     PPM + "key_logw must have z's dtype (float64); got float32"),
]


@pytest.mark.parametrize("call,expected", [c[1:] for c in FORWARD_CASES], ids=[c[0] for c in FORWARD_CASES])
def test_forward_errors_agree(call, expected):
    assert_same_error(call, expected)


PYTHON_CASES = [
    ("bad-mode", dict(mode="nope")),
    ("bad-boundary", dict(boundary="reflect")),
    ("bad-keys", dict(keys="some")),
    ("valid-with-zeros", dict(keys="valid")),
    ("valid-with-local", dict(mode="local", boundary="circular", keys="valid")),
    ("valid-P-over-H", dict(P=9, boundary="circular", keys="valid")),
    ("even-P", dict(P=4)),
    ("zero-P", dict(P=0)),
    ("key_logw-shape", dict(key_logw=LOGW_IDEAL)),
    ("key_logw-shape-ideal", dict(mode="ideal", key_logw=LOGW_PATCH)),
]


@pytest.mark.parametrize("kwargs", [c[1] for c in PYTHON_CASES], ids=[c[0] for c in PYTHON_CASES])
def test_python_layer_says_the_same(kwargs):
    """The public API raises ValueError before any kernel runs; its text is the C++ message
    without the operator prefix."""
    kw = dict(P=3, mode="els", boundary="zeros", keys="all", key_logw=None) | kwargs
    call = _forward(Z, DATA, SIGMA, **kw)
    cpp = outcome(lambda: call(backends()["cpu"]))
    assert cpp[0] is RuntimeError and cpp[1].startswith(PPM), cpp
    with pytest.raises(ValueError) as info:
        cf.patch_posterior_mean(Z, DATA, SIGMA, kw["P"], mode=kw["mode"], boundary=kw["boundary"], keys=kw["keys"],
                                key_logw=kw["key_logw"], backend="reference")
    assert str(info.value) == cpp[1][len(PPM):]


def test_valid_keys_with_zeros_is_rejected_not_treated_as_all():
    """Once silently equal to keys='all' on the CPU kernel; now an error on every backend."""
    assert_same_error(_forward(Z, DATA, SIGMA, boundary="zeros", keys="valid"), "keys='valid' applies only")
    for mode in ("local", "ideal"):
        for boundary in ("zeros", "circular"):
            assert_same_error(_forward(Z, DATA, SIGMA, mode=mode, boundary=boundary, keys="valid"),
                              "keys='valid' applies only")


# ---------------------------------------------------------------------------------------
# Backward operators


def _backward(which, grad=None, grad_lse=None, x0=None, lse=None, mode="els", P=3):
    z, data, sigma = Z, DATA, SIGMA
    x0 = torch.zeros_like(z) if x0 is None else x0
    lse = torch.zeros(2, 7, 9, dtype=z.dtype) if lse is None else lse
    grad = torch.ones_like(z) if grad is None else grad
    grad_lse = torch.ones(2, 7, 9, dtype=z.dtype) if grad_lse is None else grad_lse

    def call(b):
        g, gl, zz, dd, ss, xx, ll = _to(b, grad, grad_lse, z, data, sigma, x0, lse)
        if which == "backward":
            return b.backward(g, zz, dd, ss, P, mode, "zeros", "all", None, xx, ll)
        return b.backward_lse(g, gl, zz, dd, ss, P, mode, "zeros", "all", None, xx, ll)
    return call


BW = "patch_posterior_mean_backward: "
BWL = "patch_posterior_mean_backward_lse: "
BACKWARD_CASES = [
    ("bad-mode", _backward("backward", mode="nope"), BW + "mode must be one of"),
    ("even-P", _backward("backward", P=2), BW + "P must be an odd positive int"),
    ("grad-shape", _backward("backward", grad=torch.ones(2, 1, 7, 8, dtype=torch.float64)),
     BW + "grad_x0 must have shape [B, C, H, W] = [2, 1, 7, 9]; got [2, 1, 7, 8]"),
    ("grad-dtype", _backward("backward", grad=torch.ones(2, 1, 7, 9)),
     BW + "grad_x0 must have z's dtype (float64); got float32"),
    ("x0-shape", _backward("backward", x0=torch.zeros(2, 7, 9, dtype=torch.float64)),
     BW + "x0_hat must have shape [B, C, H, W] = [2, 1, 7, 9]; got [2, 7, 9]"),
    ("lse-shape", _backward("backward", lse=torch.zeros(2, 1, 7, 9, dtype=torch.float64)),
     BW + "lse must have shape [B, H, W] = [2, 7, 9]; got [2, 1, 7, 9]"),
    ("lse-dtype", _backward("backward", lse=torch.zeros(2, 7, 9)),
     BW + "lse must have z's dtype (float64); got float32"),
    ("lse-grad_lse-shape", _backward("backward_lse", grad_lse=torch.ones(2, 7, dtype=torch.float64)),
     BWL + "grad_lse must have shape [B, H, W] = [2, 7, 9]; got [2, 7]"),
    ("lse-valid-call", _backward("backward_lse", mode="local"), None),  # valid: runs everywhere
]


@pytest.mark.parametrize("call,expected", [c[1:] for c in BACKWARD_CASES], ids=[c[0] for c in BACKWARD_CASES])
def test_backward_errors_agree(call, expected):
    if expected is None:  # a valid call runs on every backend
        for b in backends().values():
            assert call(b).shape == Z.shape
        return
    assert_same_error(call, expected)


# ---------------------------------------------------------------------------------------
# patch_argmax_attention


def _attention(images=None, center=None, P=3, exclude=1, tau=-1.0):
    images = torch.rand(2, 1, 5, 6, dtype=torch.float64) if images is None else images
    center = torch.zeros(images.shape[1] if images.dim() == 4 else 1, 3, 3, dtype=torch.float64) \
        if center is None else center

    def call(b):
        x, c = _to(b, images, center)
        return b.attention(x, c, P, exclude, tau)
    return call


PAA = "patch_argmax_attention: "
ATTENTION_CASES = [
    ("even-P", _attention(P=4), PAA + "P must be an odd positive int (patch size 2m+1); got 4"),
    ("zero-P", _attention(P=0), PAA + "P must be an odd positive int (patch size 2m+1); got 0"),
    ("negative-P", _attention(P=-1), PAA + "P must be an odd positive int (patch size 2m+1); got -1"),
    ("negative-exclude", _attention(exclude=-1), PAA + "exclude must be a non-negative int (Chebyshev radius); got -1"),
    ("center-shape", _attention(center=torch.zeros(1, 1, 3, dtype=torch.float64)),
     PAA + "center must have shape [C, P, P] = [1, 3, 3]; got [1, 1, 3]"),
    ("center-channels", _attention(center=torch.zeros(2, 3, 3, dtype=torch.float64)),
     PAA + "center must have shape [C, P, P] = [1, 3, 3]; got [2, 3, 3]"),
    ("center-for-other-P", _attention(P=5), PAA + "center must have shape [C, P, P] = [1, 5, 5]; got [1, 3, 3]"),
    ("images-3d", _attention(images=torch.rand(1, 5, 6, dtype=torch.float64)),
     PAA + "images must have shape [M, C, H, W]; got [1, 5, 6]"),
    ("images-int", _attention(images=torch.ones(1, 1, 5, 6, dtype=torch.int64)),
     PAA + "images must be float32 or float64; got int64"),
    ("images-empty-axis", _attention(images=torch.rand(1, 1, 0, 6, dtype=torch.float64)),
     PAA + "images has an empty channel or spatial axis: shape [1, 1, 0, 6]"),
]


@pytest.mark.parametrize("call,expected", [c[1:] for c in ATTENTION_CASES], ids=[c[0] for c in ATTENTION_CASES])
def test_attention_errors_agree(call, expected):
    assert_same_error(call, expected)


# ---------------------------------------------------------------------------------------
# masked_local_posterior (CPU kernel only; csrc/cuda/ops_cuda.cu documents the gap)


def _masked(**override):
    g = torch.Generator().manual_seed(3)
    args = dict(z=torch.rand(2, 1, 6, generator=g, dtype=torch.float64),
                data=torch.rand(4, 1, 6, generator=g, dtype=torch.float64),
                sigma=torch.full((2,), 0.5, dtype=torch.float64),
                key_ptr=torch.tensor([0, 2, 4]), key_index=torch.tensor([0, 1, 2, 3]),
                key_weight=torch.ones(4, dtype=torch.float64),
                out_ptr=torch.tensor([0, 1, 2]), out_index=torch.tensor([0, 5]))
    args.update(override)
    return lambda: OPS.masked_local_posterior(*args.values())


MLP = "masked_local_posterior: "
MASKED_CASES = [
    ("z-2d", _masked(z=torch.rand(2, 6, dtype=torch.float64)), MLP + "z must have shape [B, C, U]; got [2, 6]"),
    ("data-2d", _masked(data=torch.rand(4, 6, dtype=torch.float64)),
     MLP + "data must have shape [N, C, U]; got [4, 6]"),
    ("z-int", _masked(z=torch.ones(2, 1, 6, dtype=torch.int64)), MLP + "z must be float32 or float64; got int64"),
    ("empty-data", _masked(data=torch.rand(0, 1, 6, dtype=torch.float64)), MLP + "data is empty"),
    ("data-shape", _masked(data=torch.rand(4, 1, 5, dtype=torch.float64)),
     MLP + "data [N, C, U] = [4, 1, 5] does not match z [B, C, U] = [2, 1, 6]"),
    ("data-dtype", _masked(data=torch.rand(4, 1, 6)), MLP + "data must have z's dtype (float64); got float32"),
    ("sigma-length", _masked(sigma=torch.ones(3, dtype=torch.float64)),
     MLP + "sigma must be a [B] tensor with B=2; got shape [3]"),
    ("ptr-2d", _masked(key_ptr=torch.tensor([[0, 2, 4]])),
     MLP + "key_ptr must be a 1-D int64 tensor; got shape [1, 3] of dtype int64"),
    ("index-int32", _masked(out_index=torch.tensor([0, 5], dtype=torch.int32)),
     MLP + "out_index must be a 1-D int64 tensor; got shape [2] of dtype int32"),
    ("ptr-lengths", _masked(out_ptr=torch.tensor([0, 2])),
     MLP + "key_ptr and out_ptr must both have Q+1 >= 1 entries; got 3 and 2"),
    ("ptr-empty", _masked(key_ptr=torch.tensor([], dtype=torch.int64), out_ptr=torch.tensor([], dtype=torch.int64)),
     MLP + "key_ptr and out_ptr must both have Q+1 >= 1 entries; got 0 and 0"),
    ("key_weight-length", _masked(key_weight=torch.ones(3, dtype=torch.float64)),
     MLP + "key_weight must have one weight per key index ([4]); got shape [3]"),
    ("key_weight-dtype", _masked(key_weight=torch.ones(4)),
     MLP + "key_weight must have z's dtype (float64); got float32"),
    ("ptr-start", _masked(key_ptr=torch.tensor([1, 2, 4])), MLP + "key_ptr must rise from 0 to len(key_index) = 4"),
    ("ptr-end", _masked(out_ptr=torch.tensor([0, 1, 1])), MLP + "out_ptr must rise from 0 to len(out_index) = 2"),
    ("ptr-decreasing", _masked(key_ptr=torch.tensor([0, 3, 2, 4]), out_ptr=torch.tensor([0, 1, 1, 2])),
     MLP + "key_ptr must rise from 0 to len(key_index) = 4 without decreasing"),
    ("index-range", _masked(key_index=torch.tensor([0, 1, 6, 3])),
     MLP + "key_index must lie in [0, U) = [0, 6); got 6"),
    ("index-negative", _masked(out_index=torch.tensor([0, -1])), MLP + "out_index must lie in [0, U) = [0, 6); got -1"),
]


@pytest.mark.parametrize("call,expected", [c[1:] for c in MASKED_CASES], ids=[c[0] for c in MASKED_CASES])
def test_masked_local_posterior_errors(call, expected):
    kind, message = outcome(call)
    assert kind is RuntimeError, (kind, message)
    assert "\n" not in message.strip() and message.startswith(expected), message


def test_masked_local_posterior_valid_call_runs():
    mean, lse = _masked()()
    assert mean.shape == (2, 1, 2) and lse.shape == (2, 2)


def test_cuda_registers_every_operator_but_masked_local_posterior():
    """csrc/cuda/ops_cuda.cu documents the one gap; checked where the extension has CUDA kernels."""
    if not ops.has_kernel("cuda"):
        pytest.skip("creativity_fast was built without CUDA kernels")
    for op in ("patch_posterior_mean", "patch_posterior_mean_backward", "patch_posterior_mean_backward_lse",
               "patch_argmax_attention"):
        assert ops.has_kernel("cuda", op), op
    assert not ops.has_kernel("cuda", "masked_local_posterior")


@pytest.mark.parametrize("sigma, error, match", [
    (0.0, ValueError, "sigma must be a finite value > 0"),
    (float("inf"), ValueError, "sigma must be a finite value > 0"),
    (1e-50, ValueError, r"finite value > 0 in torch.float32"),  # flushes to 0 in float32
    (1e39, ValueError, r"finite value > 0 in torch.float32"),  # overflows float32
    (torch.tensor([0.5, float("nan")]), ValueError, "sigma must be finite and > 0 everywhere"),
    (torch.tensor([0.5, -1.0]), ValueError, "sigma must be finite and > 0 everywhere"),
    (True, TypeError, "sigma must be a float or a"),
])
def test_wrapper_sigma_is_checked_in_z_dtype(sigma, error, match):
    """The typed wrapper rejects a sigma that is not finite and > 0 once rounded to z's dtype."""
    import creativity_fast as cf

    z, data = torch.zeros(2, 1, 5, 4), torch.zeros(3, 1, 5, 4)
    with pytest.raises(error, match=match):
        cf.patch_posterior_mean(z, data, sigma, 3)
    assert cf.patch_posterior_mean(z, data, 1e-30, 3).shape == z.shape  # tiny but representable
