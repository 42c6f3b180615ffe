"""scripts/tradeoff_experiment.py and scripts/pels_fashion_mnist.py: tiny runs and the helpers they rest on."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from creativity_fast.data.synthetic import glyph_templates, twin_glyphs

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tradeoff_point_metrics_on_known_samples():
    """Copies of training images are memorized at NN distance 0; an empty image is not, and its distance is its own
    NN distance relative to the held-out median; the same-glyph rate and chance come from the detected glyphs."""
    exp = _script("tradeoff_experiment")
    train = twin_glyphs(8, 12, 12, seed=0)
    t = glyph_templates(4)
    mixed = -torch.ones(1, 12, 12)
    mixed[:, 0:5, 0:5], mixed[:, 6:11, 6:11] = t[0], t[1]
    samples = torch.stack([train.images[0], train.images[1], mixed, -torch.ones(1, 12, 12)])
    m = exp.point_metrics(samples, train.images, held_median=2.0, alphabet=4)
    assert m["n"] == 4 and m["n_two"] == 3
    assert m["same_given_two"]["count"] == 2  # the two copies; the hand-made sample mixes glyphs 0 and 1
    assert m["memorized"]["count"] == 2 and m["no_glyph"]["count"] == 1
    ids = [int(train.labels[0])] * 2 + [int(train.labels[1])] * 2 + [0, 1]
    p = np.bincount(ids, minlength=4) / len(ids)
    assert m["chance"] == pytest.approx(float((p ** 2).sum()), rel=1e-12)
    def nn(x):
        return float((x - train.images).flatten(1).norm(dim=1).min())

    # relative distances [0, 0, d(mixed) / 2, d(empty) / 2]: the median of all four, of the three with a glyph
    assert m["nn_relative"]["n"] == 4
    assert m["nn_relative"]["median"] == pytest.approx(min(nn(mixed), nn(samples[3])) / 2 / 2)
    assert m["nn_relative_glyph"]["n"] == 3 and m["nn_relative_glyph"]["median"] == pytest.approx(0.0, abs=1e-9)


def test_tradeoff_script_runs_and_resumes(tmp_path):
    exp = _script("tradeoff_experiment")
    out = tmp_path / "out"
    argv = ["--out", str(out), "--samples", "3", "--P", "5,7", "--betas", "0,1", "--attend-on", "z,x0",
            "--n-train", "8", "--n-heldout", "4", "--steps", "2", "--batch-size", "3", "--backend", "reference",
            "--no-progress"]
    assert exp.main(argv) == 0
    table = json.loads((out / "tradeoff.json").read_text())
    labels = [r["label"] for r in table["rows"]]
    assert labels == ["IS", "ELS P=5 (beta=0)", "ELS P=7 (beta=0)", "PELS P=5 beta=1 on=z", "PELS P=5 beta=1 on=x0",
                      "PELS P=7 beta=1 on=z", "PELS P=7 beta=1 on=x0"]
    assert table["config"]["sweep"][:1] == ["sweep"] and "--beta" in table["config"]["sweep"]
    assert all("chance" in r["metrics"] and "nn_relative_glyph" in r["metrics"] for r in table["rows"])
    assert (out / "tradeoff.png").stat().st_size > 0 and "| IS |" in (out / "tradeoff.md").read_text()
    row = out / "sweep" / "rows" / "pels_P5_beta1_onz.json"
    mtime = row.stat().st_mtime
    assert exp.main(argv) == 0  # resumed: no grid point recomputed
    assert row.stat().st_mtime == mtime


def test_mirror_r_and_fashion_mnist_commands():
    exp = _script("pels_fashion_mnist")
    g = torch.Generator().manual_seed(0)
    half = torch.rand(2, 1, 6, 3, generator=g)
    symmetric = torch.cat([half, half.flip(-1)], -1)
    assert exp.mirror_r(symmetric) == pytest.approx([1.0, 1.0])
    ramp = torch.arange(6.0).repeat(1, 1, 4, 1)  # [1, 1, 4, 6]: the mirror image is the reversed ramp
    assert exp.mirror_r(ramp) == pytest.approx([-1.0])
    args = exp.parse_args(["--betas", "1,4", "--out", "x"])
    rows = exp.machines(args)
    assert [r[0] for r in rows] == ["ELS", "PELS beta=1", "PELS beta=4"]
    argv = exp.sample_argv(args, Path("x") / rows[2][1], rows[2][2])
    assert argv[0] == "sample" and argv[argv.index("--resize") + 1] == "32"
    assert "beta=4" in argv and "attend_on=x0" in argv and argv[argv.index("--class") + 1] == "Trouser"
