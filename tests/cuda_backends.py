"""The two backends of the CUDA kernel sources for the tests: the GPU and the CPU emulator.

Shared by test_cuda.py, test_cuda_attention.py, test_cuda_paired.py and test_op_errors.py; ``tests/conftest.py``
turns :func:`backend_runner` into the ``runner`` fixture.

``CudaRunner`` calls the compiled CUDA operators through ``torch.ops.creativity_fast``.

``emulator_module()`` compiles ``csrc/cuda/emulated_ops.cuh`` (the CUDA host flows, launch
ladder and kernels of csrc/cuda, on the CPU emulator of ``cpu_emulation.cuh``) with
``torch.utils.cpp_extension.load_inline`` once per process (1-2 minutes cold, then cached on
disk by torch under a name that hashes every header under csrc/, the source and the flags).
``EmulatorRunner`` calls it like the CUDA operators, on CPU tensors.
``CREATIVITY_FAST_CUDA_EMULATOR=0`` disables it (``emulator_enabled()``).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import pytest
import torch

from creativity_fast.ops import environment

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"

SOURCE = (
    "#define CF_CUDA_EMULATION 1\n"
    '#include "cuda/emulated_ops.cuh"\n'
    "PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {\n"
    '  m.def("forward", &cf_emu::forward);\n'
    '  m.def("backward", &cf_emu::backward);\n'
    '  m.def("backward_lse", &cf_emu::backward_lse);\n'
    '  m.def("attention", &cf_emu::attention);\n'
    '  m.def("paired_forward", &cf_emu::paired_forward);\n'
    '  m.def("precision_stats", &cf_emu::precision_stats);\n'
    "}\n"
)
CFLAGS = ["-O1", "-w"]


def emulator_enabled() -> bool:
    return os.environ.get("CREATIVITY_FAST_CUDA_EMULATOR", "1") != "0"


def emulator_digest() -> str:
    """Hash of everything the build reads: every header under csrc/ (whatever it includes,
    transitively: dictionary.h, op_args.h, attention_rules.h, cuda/*.cuh, ...), the source
    and the compile flags; a change to any of them names a new build."""
    h = hashlib.sha1()
    for path in sorted(p for p in CSRC.rglob("*") if p.suffix in (".h", ".cuh", ".hpp", ".inc")):
        h.update(str(path.relative_to(CSRC)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(SOURCE.encode() + b"\0" + " ".join(CFLAGS).encode())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def emulator_module():
    from torch.utils.cpp_extension import load_inline

    digest = emulator_digest()
    return load_inline(name=f"creativity_fast_cuda_emulator_{digest}", cpp_sources=[f"// csrc {digest}\n" + SOURCE],
                       extra_include_paths=[str(CSRC)], extra_cflags=CFLAGS, verbose=False)


class EmulatorRunner:
    """The CUDA operators on the emulator, with the argument order of torch.ops.creativity_fast.*."""

    name = "emulator"
    SMS, MAJOR = 2, 8  # a small sm_80-class GPU: small plans, tf32 allowed
    SMEM = 100 * 1024  # dynamic shared memory per block (the attention kernel's scratch)

    def __init__(self, module=None):
        self.device = torch.device("cpu")
        self.module = module if module is not None else emulator_module()

    def forward(self, z, data, sigma, P, mode, boundary, keys, key_logw=None, return_argmax=True):
        return tuple(self.module.forward(z, data, sigma, P, mode, boundary, keys, key_logw, return_argmax,
                                         self.SMS, self.MAJOR))

    def backward(self, grad, z, data, sigma, P, mode, boundary, keys, key_logw, x0, lse):
        return self.module.backward(grad, z, data, sigma, P, mode, boundary, keys, key_logw, x0, lse,
                                    self.SMS, self.MAJOR)

    def backward_lse(self, grad, grad_lse, z, data, sigma, P, mode, boundary, keys, key_logw, x0, lse):
        return self.module.backward_lse(grad, grad_lse, z, data, sigma, P, mode, boundary, keys, key_logw, x0, lse,
                                        self.SMS, self.MAJOR)

    def paired_forward(self, z, data, sigma, P, P2, query_partner, key_partner, beta, boundary, keys,
                       return_argmax=True):
        return tuple(self.module.paired_forward(z, data, sigma, P, P2, query_partner, key_partner, beta, boundary,
                                                keys, return_argmax, self.SMS, self.MAJOR))

    def tf32_capable(self):
        return True

    STAT_NAMES = ("tf32", "fp32", "forced", "data_passes", "last_bound", "last_tol", "last_knorm", "last_qnorm")

    def precision_stats(self):
        """The precision policy's decisions so far in this process (ops_impl.cuh: PrecisionStats)."""
        return dict(zip(self.STAT_NAMES, self.module.precision_stats()))

    def attention(self, images, center, P, exclude, tau):
        return tuple(self.module.attention(images, center, P, exclude, tau, self.SMS, self.MAJOR, self.SMEM))


class CudaRunner:
    """The compiled CUDA operators, with the same methods as ``EmulatorRunner``."""

    name = "cuda"
    device = torch.device("cuda")

    def forward(self, z, data, sigma, P, mode, boundary, keys, key_logw=None, return_argmax=True):
        return torch.ops.creativity_fast.patch_posterior_mean(z, data, sigma, P, mode, boundary, keys, key_logw,
                                                              return_argmax)

    def backward(self, grad, z, data, sigma, P, mode, boundary, keys, key_logw, x0, lse):
        return torch.ops.creativity_fast.patch_posterior_mean_backward(grad, z, data, sigma, P, mode, boundary, keys,
                                                                       key_logw, x0, lse)

    def backward_lse(self, grad, grad_lse, z, data, sigma, P, mode, boundary, keys, key_logw, x0, lse):
        return torch.ops.creativity_fast.patch_posterior_mean_backward_lse(grad, grad_lse, z, data, sigma, P, mode,
                                                                           boundary, keys, key_logw, x0, lse)

    def paired_forward(self, z, data, sigma, P, P2, query_partner, key_partner, beta, boundary, keys,
                       return_argmax=True):
        return torch.ops.creativity_fast.paired_patch_posterior_mean(z, data, sigma, P, P2, query_partner,
                                                                     key_partner, beta, boundary, keys, return_argmax)

    def tf32_capable(self):
        return torch.cuda.get_device_capability()[0] >= 8

    def precision_stats(self):
        """Not exposed by the CUDA extension: tests compare with forced paths instead."""
        return None

    def attention(self, images, center, P, exclude, tau):
        return torch.ops.creativity_fast.patch_argmax_attention(images, center, P, exclude, tau)


def backend_runner(name: str):
    """The runner of backend ``"cuda"`` or ``"emulator"``, or a pytest skip saying why it is absent."""
    from creativity_fast import ops

    if name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        if not ops.has_kernel("cuda"):
            pytest.skip("creativity_fast was built without CUDA kernels")
        return CudaRunner()
    if not emulator_enabled():
        pytest.skip("CPU emulator of the CUDA kernels disabled (CREATIVITY_FAST_CUDA_EMULATOR=0)")
    return EmulatorRunner(emulator_module())


# Environment variables set for the duration of a ``with`` block (the operators read them per call).
set_env = environment
