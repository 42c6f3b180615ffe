"""Fixtures shared by several test files."""

import pytest

from cuda_backends import backend_runner


@pytest.fixture(params=["cuda", "emulator"])
def runner(request):
    """Each backend of the CUDA kernel sources: the GPU (skips without one) and the CPU emulator."""
    return backend_runner(request.param)
