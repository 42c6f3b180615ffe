"""The ``creativity-fast`` command line: outputs, resume, and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from creativity_fast.cli import main
from creativity_fast.commands.common import parse_seeds


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "creativity_fast", *args], capture_output=True, text=True, timeout=600)


def test_sample_writes_grid_and_npz(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["sample", "--limit", "40", "--steps", "4", "--seeds", "0-2", "--patch-schedule", "3",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    assert "samples.png" in capsys.readouterr().out
    arrays = np.load(out / "samples.npz", allow_pickle=False)
    assert arrays["samples"].shape == (3, 1, 28, 28)
    assert float(np.abs(arrays["samples"]).max()) <= 1.0 + 1e-6
    assert list(arrays["seeds"]) == [0, 1, 2]
    assert arrays["sigmas"].shape == (5,) and list(arrays["patch_sizes"]) == [3, 3, 3, 3]
    assert arrays["provenance"].shape == (3, 28, 28, 2)
    settings = json.loads(str(arrays["settings"]))
    assert settings["machine"] == "els" and settings["steps"] == 4
    assert (out / "samples.png").stat().st_size > 0
    assert not list(out.glob(".*partial*"))


def test_seed_gives_the_same_sample_alone_or_in_a_batch(tmp_path):
    common = ["sample", "--limit", "12", "--steps", "3", "--patch-schedule", "3", "--no-progress",
              "--sampler", "euler_maruyama"]
    main(common + ["--seeds", "0-3", "--out", str(tmp_path / "a")])
    main(common + ["--seeds", "2", "--out", str(tmp_path / "b")])
    a = np.load(tmp_path / "a" / "samples.npz")["samples"]
    b = np.load(tmp_path / "b" / "samples.npz")["samples"]
    np.testing.assert_allclose(a[2], b[0], atol=1e-5)  # float32 rounding of batched reductions


def test_sample_resumes_from_partial_results(tmp_path, monkeypatch):
    from creativity_fast.commands import common
    out = tmp_path / "r"
    args = ["sample", "--limit", "20", "--steps", "2", "--patch-schedule", "3", "--no-progress",
            "--seeds", "0-3", "--batch-size", "2", "--out", str(out)]
    calls = {"n": 0}
    real_save = common.save_partial

    def save_then_interrupt(*a, **k):
        real_save(*a, **k)
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(common, "save_partial", save_then_interrupt)
    assert main(args) == 130
    assert (out / ".samples.partial.npz").exists()
    monkeypatch.setattr(common, "save_partial", real_save)
    finished = {}
    real_sample = common.sample_images

    def spy(*a, **k):
        finished["done"] = sorted(k.get("done") or {})
        return real_sample(*a, **k)

    monkeypatch.setattr(common, "sample_images", spy)
    assert main(args) == 0
    assert finished["done"] == [0, 1]
    assert np.load(out / "samples.npz")["samples"].shape[0] == 4


@pytest.mark.parametrize("args,needle", [
    (["sample", "--seeds", "x-3"], "--seeds"),
    (["sample", "--patch-schedule", "4"], "odd"),
    (["sample", "--data", "/nonexistent/path.npz"], "/nonexistent/path.npz"),
    (["sample", "--class", "Spaceship"], "--class"),
    (["sample", "--steps", "0"], "--steps"),
    (["sample", "--keys", "valid"], "keys='valid'"),
])
def test_bad_arguments_print_one_clear_line(args, needle):
    proc = run_cli(*args, "--out", "/tmp/creativity_fast_bad_args", "--no-progress")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("5,1,7-8") == [5, 1, 7, 8]
    with pytest.raises(ValueError):
        parse_seeds("3-1")
    with pytest.raises(ValueError):
        parse_seeds("1,1")


def test_machine_options_reach_the_machine(tmp_path):
    out = tmp_path / "aels"
    assert main(["sample", "--machine", "aels", "--opt", "lam=1", "--opt", "gamma=0", "--limit", "20", "--steps", "2",
                 "--seeds", "0", "--patch-schedule", "3", "--out", str(out), "--no-progress"]) == 0
    settings = json.loads(str(np.load(out / "samples.npz")["settings"]))
    assert settings["machine_opts"] == ["lam=1", "gamma=0"]
    proc = run_cli("sample", "--machine", "els", "--opt", "lam=1", "--limit", "5", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "does not take the option 'lam'" in proc.stderr


def test_attention_options_change_the_samples(tmp_path):
    """``--opt lam=...`` and ``--opt gamma=...`` change what the AELS machine computes, not only the
    settings JSON: lam (attention prior) and gamma (sample-time attention) each change the samples,
    and ``lam=0 gamma=0`` gives ELS's samples exactly (docs/theory.md §3.4)."""
    common = ["sample", "--limit", "20", "--steps", "3", "--seeds", "0-1", "--patch-schedule", "3", "--no-progress"]

    def samples(name, *args):
        out = tmp_path / name
        assert main(common + list(args) + ["--out", str(out)]) == 0
        return np.load(out / "samples.npz")["samples"]

    els = samples("els", "--machine", "els")
    off = samples("off", "--machine", "aels", "--opt", "lam=0", "--opt", "gamma=0")
    prior = samples("prior", "--machine", "aels", "--opt", "lam=5", "--opt", "gamma=0")
    attend = samples("attend", "--machine", "aels", "--opt", "lam=0", "--opt", "gamma=0.5")
    np.testing.assert_array_equal(off, els)
    for changed in (prior, attend):
        assert np.abs(changed - off).max() > 1e-3
    assert np.abs(prior - attend).max() > 1e-3
