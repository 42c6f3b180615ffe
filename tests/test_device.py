"""``--device auto|cpu|cuda[:N]``: one option and one resolution rule for every command.

The CUDA kernel emulator (tests/cuda_backends.py) checks the operators' CUDA sources on the CPU;
it does not apply here: the option only chooses where tensors live, which the emulator does not model.
Choosing CUDA is tested by monkeypatching what torch and ``ops.has_kernel`` report.
"""

import json

import numpy as np
import pytest
import torch

from creativity_fast import ops
from creativity_fast.cli import build_parser, main
from creativity_fast.commands import common
from creativity_fast.commands.common import resolve_device

COMMANDS = ("sample", "compare", "calibrate", "sweep", "analyze", "train")


def fake_cuda(monkeypatch, *, available=True, count=2, kernels=True, current=0):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(ops, "has_kernel", lambda device="cpu", op="patch_posterior_mean":
                        kernels and torch.device(device).type == "cuda" or torch.device(device).type == "cpu")


def test_cpu_and_auto_without_cuda_resolve_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_auto_is_cpu_here():
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_without_a_device_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for text in ("cuda", "cuda:0"):
        with pytest.raises(ValueError) as info:
            resolve_device(text)
        message = str(info.value)
        assert message.startswith(f"--device {text}: torch has no CUDA device here")
        assert "torch.cuda.is_available() is False" in message and "\n" not in message


@pytest.mark.parametrize("text", ["gpu", "cuda:x", "cuda:", "cpu:0", "cuda:-1", "", "auto:1"])
def test_malformed_values_name_the_option(text):
    with pytest.raises(ValueError, match="--device must be auto, cpu, cuda or cuda:N"):
        resolve_device(text)


def test_auto_picks_cuda_when_torch_and_the_kernels_have_it(monkeypatch):
    fake_cuda(monkeypatch, current=1)
    assert resolve_device("auto") == torch.device("cuda", 1)  # the current CUDA device
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 1)  # a torchrun rank: local_rank % count
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_stays_on_cpu_without_cuda_kernels(monkeypatch):
    fake_cuda(monkeypatch, kernels=False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cuda") == torch.device("cuda", 0)  # asked for explicitly: the reference ops run there


def test_auto_stays_on_cpu_when_torch_has_no_cuda(monkeypatch):
    fake_cuda(monkeypatch, available=False, kernels=True)
    assert resolve_device("auto") == torch.device("cpu")


def test_an_index_past_the_device_count_has_its_own_message(monkeypatch):
    fake_cuda(monkeypatch, count=2)
    with pytest.raises(ValueError, match=r"^--device cuda:3: there is no CUDA device 3; torch sees 2 "
                                         r"\(cuda:0 to cuda:1\)$"):
        resolve_device("cuda:3")
    fake_cuda(monkeypatch, count=1)
    with pytest.raises(ValueError, match=r"torch sees 1 \(cuda:0\)$"):
        resolve_device("cuda:1")


def _subparser(name):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_the_same_device_option(name):
    p = _subparser(name)
    action = next(a for a in p._actions if a.dest == "device")
    assert action.option_strings == ["--device"]
    assert action.default == "auto" and action.help == common.DEVICE_HELP


@pytest.mark.parametrize("args,needle", [
    (["sample", "--device", "gpu"], "--device must be"),
    (["sample", "--device", "cuda:x"], "--device must be"),
    (["train", "--device", "gpu"], "--device must be"),
    (["analyze", "missing.npz", "--device", "gpu"], "--device must be"),
    (["sweep", "--device", "tpu"], "--device must be"),
])
def test_bad_device_is_one_line_through_the_cli(args, needle, capsys, tmp_path):
    assert main(args + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("creativity-fast: error:") and needle in err and "\n" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("name", ["sample", "compare", "calibrate", "sweep", "train"])
def test_cuda_where_there_is_none_is_one_line_through_the_cli(name, capsys, tmp_path):
    assert main([name, "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("creativity-fast: error: --device cuda: torch has no CUDA device here "
                   "(torch.cuda.is_available() is False)")
    assert not (tmp_path / "o").exists()  # refused before any output is made


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_sample_with_device_cpu_writes_the_same_samples(tmp_path, capsys):
    base = ["sample", "--limit", "30", "--steps", "3", "--seeds", "0-2", "--patch-schedule", "3", "--eta", "0.5"]
    assert main(base + ["--out", str(tmp_path / "plain")]) == 0  # with the progress output: a line on stderr
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0] == "device: cpu (--device auto)"
    assert ", cpu, " in captured.out  # the closing line names the device
    assert main(base + ["--device", "cpu", "--no-progress", "--out", str(tmp_path / "cpu")]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and ", cpu, " in captured.out
    a = np.load(tmp_path / "plain" / "samples.npz")
    b = np.load(tmp_path / "cpu" / "samples.npz")
    for key in ("samples", "provenance", "seeds", "sigmas", "patch_sizes", "settings"):
        np.testing.assert_array_equal(a[key], b[key])
    assert json.loads(str(a["settings"]))["device"] == "cpu"


def test_sample_images_returns_cpu_results_and_draws_noise_on_the_cpu():
    """With ``device`` given, the per-seed CPU generators still draw the noise (the same numbers)."""
    from creativity_fast.schedules import cosine_vp_sigmas

    seen = []

    def denoiser(z, sigma):
        seen.append(z.device)
        return torch.zeros_like(z)

    sigmas = cosine_vp_sigmas(3)
    a = common.sample_images(denoiser, [0, 1], (1, 4, 4), sigmas, sampler="euler_maruyama", progress=False,
                             device=torch.device("cpu"))
    b = common.sample_images(denoiser, [0, 1], (1, 4, 4), sigmas, sampler="euler_maruyama", progress=False)
    assert set(seen) == {torch.device("cpu")}
    for seed in (0, 1):
        assert a[seed][0].device.type == "cpu"
        torch.testing.assert_close(a[seed][0], b[seed][0], rtol=0, atol=0)


def test_device_joins_the_resume_key(tmp_path):
    """A partial file written under another device is not resumed (results differ bitwise across devices)."""
    out = tmp_path / "r"
    args = build_parser().parse_args(["sample", "--out", str(out)])
    cpu = common.settings_json(args, device="cpu")
    cuda = common.settings_json(args, device="cuda")
    partial = common.partial_results_path(common.ensure_out_dir(str(out)), "samples")
    common.save_partial(partial, {0: (torch.zeros(1, 2, 2), None)}, cuda)
    assert common.load_partial(partial, cpu) == {}
    assert list(common.load_partial(partial, cuda)) == [0]


def test_images_move_once_and_results_come_back():
    from creativity_fast.data import Dataset

    data = Dataset(torch.zeros(3, 1, 4, 4), torch.tensor([0, 1, 0]))
    assert common.images_to(data, torch.device("cpu")) is data  # already there: no copy
    moved = common.to_device({"a": torch.ones(2), "b": [torch.zeros(1), None], "c": (1, torch.ones(1))}, "cpu")
    assert moved["b"][1] is None and moved["c"][0] == 1 and moved["a"].device.type == "cpu"
