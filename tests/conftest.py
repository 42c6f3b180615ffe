"""Fixtures shared by several test files."""

import pytest

from cuda_backends import backend_runner


@pytest.fixture(params=["cuda", "emulator"])
def runner(request):
    """Each backend of the CUDA kernel sources: the GPU (skips without one) and the CPU emulator."""
    return backend_runner(request.param)


@pytest.fixture(scope="session")
def tiny_net(tmp_path_factory):
    """A 2-step, width-4 network trained on 12 embedded images (``model.pt``), for command tests."""
    from creativity_fast.cli import main
    out = tmp_path_factory.mktemp("net")
    assert main(["train", "--limit", "12", "--width", "4", "--depth", "2", "--batch-size", "4", "--steps", "2",
                 "--out", str(out), "--no-progress"]) == 0
    return out / "model.pt"
