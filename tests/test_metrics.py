"""Metrics (docs/theory.md §7) on constructed cases with known answers."""

import json

import numpy as np
import pytest
import torch

from creativity_fast import io
from creativity_fast import metrics as Mx
from creativity_fast.data.synthetic import glyph_templates, twin_glyphs
from creativity_fast.figures import id_colours, provenance_panels, save_provenance_png


def _data(N=6, H=8, W=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(N, 1, H, W, generator=g) * 2 - 1


def test_nearest_neighbours_match_brute_force_and_chunks():
    data = _data(37)
    samples = _data(5, seed=1)
    d, i = Mx.nearest_neighbours(samples, data, 3, chunk_size=4)
    full = torch.cdist(samples.reshape(5, -1).double(), data.reshape(37, -1).double())
    want_d, want_i = full.topk(3, largest=False)
    torch.testing.assert_close(d, want_d)
    assert torch.equal(i, want_i)


def test_exact_training_image_is_memorized():
    data = _data()
    samples = torch.stack([data[2], _data(1, seed=5)[0]])
    out = Mx.memorization(samples, data)
    assert out["nn_distance"][0, 0].item() == 0.0 and out["nn_index"][0, 0].item() == 2
    assert out["ratio"][0].item() == 0.0
    assert out["memorized"].tolist() == [True, False]
    assert out["summary"]["count"] == 1 and out["summary"]["n"] == 2
    # A slightly perturbed copy is still memorized (d1 << d2).
    near = data[3] + 0.01 * torch.randn_like(data[3])
    assert Mx.memorization(near[None], data)["memorized"].item()


def test_mosaic_of_two_images_has_two_sources():
    data = _data(5, H=8, W=8)
    mosaic = data[1].clone()
    mosaic[..., 4:] = data[3][..., 4:]  # left half from image 1, right half from image 3
    want = torch.tensor([1] * 4 + [3] * 4).expand(8, 8)
    for mode in ("local", "els"):
        # P = 1: every pixel value occurs exactly once in the (continuous, random) training set.
        prov = Mx.compute_provenance(mosaic[None], data, 1, mode=mode, backend="reference")
        assert torch.equal(prov[0, ..., 0], want)
        assert Mx.provenance_summary(prov)["n_sources"].tolist() == [2]
        # P = 3: pixels whose patch does not cross the seam still find their exact source.
        prov = Mx.compute_provenance(mosaic[None], data, 3, mode=mode, backend="reference")
        away = torch.tensor([0, 1, 2, 5, 6, 7])
        assert torch.equal(prov[0, :, away, 0], want[:, away])
    # Local machine: every pixel comes from its own location.
    prov = Mx.compute_provenance(mosaic[None], data, 1, mode="local", backend="reference")
    assert Mx.provenance_summary(prov)["moved_fraction"].item() == 0.0
    assert not Mx.memorization(mosaic[None], data)["memorized"].item()


def test_provenance_summary_known_answer():
    H, W = 2, 2
    prov = torch.zeros(1, H, W, 2, dtype=torch.long)
    prov[0, ..., 0] = torch.tensor([[0, 0], [0, 7]])
    prov[0, ..., 1] = torch.tensor([[0, 1], [3, 3]])  # pixel (1, 0) = flat 2 comes from location 3
    s = Mx.provenance_summary(prov)
    assert s["n_sources"].item() == 2
    assert s["moved_fraction"].item() == pytest.approx(0.25)
    assert s["top_source_share"].item() == pytest.approx(0.75)


def test_local_consistency():
    data = _data()
    out = Mx.local_consistency(data[:2], data, 3, backend="reference")
    assert torch.equal(out["fraction"], torch.ones(2, dtype=torch.float64))
    noise = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(9)) * 2 - 1
    assert Mx.local_consistency(noise, data, 3, backend="reference")["fraction"].item() < 0.5


def _twin_image(glyph_a, glyph_b, H=16, W=16):
    t = glyph_templates(4)
    img = -torch.ones(1, H, W)
    img[:, 1:6, 1:6] = t[glyph_a]
    img[:, 9:14, 9:14] = t[glyph_b]
    return img


def test_twin_glyph_global_consistency():
    samples = torch.stack([_twin_image(0, 0), _twin_image(0, 2), -torch.ones(1, 16, 16)])
    out = Mx.global_consistency(samples, alphabet=4)
    assert out["glyphs"] == [[0, 0], [0, 2], []]
    assert out["consistent"].tolist() == [True, False, False]
    assert out["twin"].tolist() == [True, False, False]
    assert out["mixed"].tolist() == [False, True, False]
    assert out["summary"]["consistent"]["count"] == 1
    train = twin_glyphs(8, 16, 16, seed=0)
    assert Mx.global_consistency(train.images)["twin"].all()


def test_same_glyph_chance_by_hand_and_by_simulation():
    # glyph frequencies over all samples: 0 x6, 1 x2, 2 x0 -> p = (3/4, 1/4, 0)
    glyphs = [[0, 0], [0, 1], [0], [1, 0, 0], []]
    p = np.array([6, 2, 0]) / 8
    expected = ((p ** 2).sum() + (p ** 2).sum() + (p ** 3).sum()) / 3
    assert Mx.same_glyph_chance(glyphs, 3) == pytest.approx(expected, rel=1e-12)
    assert Mx.same_glyph_chance([[0, 1], [2, 3]], 4) == pytest.approx(0.25)
    assert np.isnan(Mx.same_glyph_chance([[0], []], 4))
    # independent draws from p match the chance rate
    rng = np.random.default_rng(0)
    draws = rng.choice(3, p=[0.5, 0.3, 0.2], size=(20000, 2))
    same = (draws[:, 0] == draws[:, 1]).mean()
    assert Mx.same_glyph_chance(draws.tolist(), 3) == pytest.approx(same, abs=0.01)


def test_wilson_and_bootstrap_intervals():
    lo, hi = Mx.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = Mx.wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    values = np.arange(101, dtype=float)
    lo, hi = Mx.bootstrap_interval(values, n_boot=300)
    assert lo < 50 < hi
    assert Mx.fraction_summary([True, False, True, True])["fraction"] == 0.75


def test_analyze_samples_is_json_ready(tmp_path):
    train = twin_glyphs(12, 16, 16, seed=0)
    samples = torch.cat([train.images[:2], _twin_image(1, 3)[None]])
    out = Mx.analyze_samples(samples, train.images, P=5, heldout=twin_glyphs(6, seed=1).images, glyphs=True,
                             backend="reference")
    s = out["summary"]
    assert s["memorization"]["count"] == 2
    assert s["global_consistency"]["mixed"]["count"] == 1
    path = io.save_json(tmp_path / "m.json", out)
    assert json.loads(path.read_text())["summary"]["n_samples"] == 3


def test_provenance_png(tmp_path):
    data = _data(4, H=6, W=6)
    prov = Mx.compute_provenance(data[:2], data, 3, backend="reference")
    row = provenance_panels(data[0], prov[0])
    assert row.shape == (6, 3 * 6 + 2, 3) and row.dtype == np.uint8
    # Each training image has its own colour; the offset panel of an exact copy is white (offset 0).
    assert (id_colours(np.array([0, 1])) [0] != id_colours(np.array([0, 1]))[1]).any()
    local = Mx.compute_provenance(data[:1], data, 3, mode="local", backend="reference")
    assert (provenance_panels(data[0], local[0])[:, -6:] == 255).all()
    path = save_provenance_png(data[:2], prov, tmp_path / "p.png")
    assert path.exists() and path.stat().st_size > 0


def test_sweep_and_analyze_cli(tmp_path, capsys):
    from creativity_fast.cli import main

    train = twin_glyphs(8, 12, 12, seed=0)
    held = twin_glyphs(4, 12, 12, seed=1)
    data = io.save_npz(tmp_path / "twin_glyphs_12x12.npz", train_images=train.images.numpy(),
                       train_labels=train.labels.numpy(), test_images=held.images.numpy(),
                       test_labels=held.labels.numpy())
    out = tmp_path / "sweep"
    argv = ["sweep", "--data", str(data), "--machines", "ideal,els,aels", "--P", "5", "--lam", "0,1", "--gamma", "0",
            "--steps", "2", "--seeds", "0-3", "--batch-size", "2", "--backend", "reference", "--no-progress",
            "--attention-P", "3", "--out", str(out)]
    assert main(argv) == 0
    table = json.loads((out / "sweep.json").read_text())
    assert [r["id"] for r in table["rows"]] == ["ideal", "els_P5", "aels_P5_lam0_gamma0", "aels_P5_lam1_gamma0"]
    ideal, els, aels0 = table["rows"][:3]
    assert ideal["memorized"] == 1.0 and ideal["twin"] == 1.0
    assert els["memorized"] == aels0["memorized"] and els["consistent"] == aels0["consistent"]  # lam=gamma=0 is ELS
    for name in ("sweep.csv", "sweep.md", "sweep.png"):
        assert (out / name).stat().st_size > 0
    mtime = (out / "rows" / "els_P5.json").stat().st_mtime
    assert main(argv) == 0  # resumed: nothing recomputed
    assert (out / "rows" / "els_P5.json").stat().st_mtime == mtime

    # analyze with recorded provenance, then without (recomputed)
    run = out / "runs" / "els_P5.npz"
    assert main(["analyze", str(run), "--out", str(tmp_path / "a")]) == 0
    metrics = json.loads((tmp_path / "a" / "els_P5_metrics.json").read_text())
    assert "global_consistency" in metrics["summary"] and metrics["inputs"]["provenance"].startswith("recorded")
    assert metrics["summary"]["novelty"]["heldout"]["n"] == 4
    arrays = io.load_npz(run)
    arrays.pop("provenance")
    bare = io.save_npz(tmp_path / "bare.npz", **arrays)
    assert main(["analyze", str(bare), "--no-heldout"]) == 0
    metrics = json.loads((tmp_path / "bare_metrics.json").read_text())
    assert metrics["inputs"]["provenance"].startswith("recomputed")
    assert (tmp_path / "bare_provenance.png").exists() and (tmp_path / "bare_nn_distances.png").exists()
    assert main(["analyze", str(tmp_path / "missing.npz")]) == 2


def test_sweep_covers_pels_beta_and_attend_on(tmp_path, capsys):
    from creativity_fast.cli import main

    train = twin_glyphs(6, 11, 11, seed=0)
    data = io.save_npz(tmp_path / "twin_glyphs_11x11.npz", train_images=train.images.numpy())
    out = tmp_path / "sweep"
    argv = ["sweep", "--data", str(data), "--machines", "els,pels", "--P", "5", "--beta", "0,2", "--attend-on",
            "z,x0", "--steps", "2", "--seeds", "0-2", "--batch-size", "3", "--backend", "reference", "--no-progress",
            "--no-heldout", "--attention-P", "3", "--out", str(out)]
    assert main(argv) == 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["id"] for r in rows] == ["els_P5", "pels_P5_beta0_onz", "pels_P5_beta0_onx0", "pels_P5_beta2_onz",
                                       "pels_P5_beta2_onx0"]
    assert rows[0]["beta"] is None and rows[3]["beta"] == 2.0 and rows[4]["attend_on"] == "x0"
    runs = {r["id"]: io.load_npz(out / "runs" / f"{r['id']}.npz")["samples"] for r in rows}
    # beta = 0 is ELS whatever the attention source; beta = 2 is not
    for pid in ("pels_P5_beta0_onz", "pels_P5_beta0_onx0"):
        np.testing.assert_allclose(runs[pid], runs["els_P5"], atol=1e-5)
    assert np.abs(runs["pels_P5_beta2_onz"] - runs["els_P5"]).max() > 1e-3
    # ELS points keep their settings (no PELS keys), so older sweeps resume unchanged
    assert "beta" not in json.loads(json.loads((out / "rows" / "els_P5.json").read_text())["settings"])
    assert main(argv[:-2] + ["--attend-on", "y", "--out", str(tmp_path / "bad")]) == 2
    assert "--attend-on must be" in capsys.readouterr().err


def test_analyze_a_networks_samples(tmp_path, capsys):
    """`analyze --net PATH` samples the network (resumable file) and analyzes those samples."""
    import json

    from creativity_fast.cli import main
    from creativity_fast.nets import default_network_path

    out = tmp_path / "net"
    args = ["analyze", "--net", str(default_network_path()), "--limit", "40", "--seeds", "0-1", "--steps", "2",
            "--no-heldout", "--no-progress", "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    result = json.loads((out / "network_samples_metrics.json").read_text())
    assert result["summary"]["n_samples"] == 2 and result["inputs"]["n_train"] == 40
    assert result["inputs"]["settings"]["machine"] == "network"
    assert result["inputs"]["provenance"].startswith("recomputed")
    for both_or_neither in (["analyze", "--no-progress"], ["analyze", str(out / "network_samples.npz"), "--net",
                                                             str(default_network_path())]):
        assert main(both_or_neither) == 2
        assert "either RESULTS.npz or --net" in capsys.readouterr().err
