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


def test_glyph_chance_rates_by_hand_and_by_simulation():
    # p = (3/4, 1/4, 0); all-same probabilities s_1 = 1, s_2 = 5/8, s_3 = 7/16
    glyphs = [[0, 0], [0, 1], [0], [1, 0, 0], []]
    s2, s3 = 0.75 ** 2 + 0.25 ** 2, 0.75 ** 3 + 0.25 ** 3
    c = Mx.glyph_chance_rates(glyphs, 3)
    assert c["consistent"] == pytest.approx((s2 + s2 + 1 + s3 + 0) / 5, rel=1e-12)
    assert c["twin"] == pytest.approx((s2 + s2 + s3) / 5, rel=1e-12)
    assert c["mixed"] == pytest.approx((2 * (1 - s2) + (1 - s3)) / 5, rel=1e-12)
    assert c["same_given_two"] == pytest.approx((2 * s2 + s3) / 3, rel=1e-12)
    assert c["same_given_two"] == Mx.same_glyph_chance(glyphs, 3)
    assert c["twin"] + c["mixed"] == pytest.approx(3 / 5)  # every sample with >= 2 glyphs is one or the other
    assert all(np.isnan(v) for v in Mx.glyph_chance_rates([], 4).values())
    with pytest.raises(ValueError, match="alphabet"):
        Mx.glyph_chance_rates([[0, 4]], 4)
    # the null model itself: keep each sample's glyph count, redraw its ids independently from p
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 4, size=30000)
    redrawn = [rng.choice(3, p=[0.5, 0.3, 0.2], size=k).tolist() for k in counts]
    got = Mx.glyph_chance_rates(redrawn, 3)
    n = np.array([len(g) for g in redrawn])
    same = np.array([len(set(g)) == 1 for g in redrawn])
    assert got["consistent"] == pytest.approx(((n >= 1) & same).mean(), abs=0.01)
    assert got["twin"] == pytest.approx(((n >= 2) & same).mean(), abs=0.01)
    assert got["mixed"] == pytest.approx(((n >= 2) & ~same).mean(), abs=0.01)


def test_global_consistency_reports_same_given_two_and_chance():
    samples = torch.stack([_twin_image(0, 0), _twin_image(0, 2), _twin_image(1, 1), -torch.ones(1, 16, 16)])
    s = Mx.global_consistency(samples, alphabet=4)["summary"]
    assert s["same_given_two"]["count"] == 2 and s["same_given_two"]["n"] == 3
    p2 = (3 ** 2 + 2 ** 2 + 1 ** 2) / 6 ** 2  # glyph frequencies 3/6, 2/6, 1/6
    assert s["chance"]["same_given_two"] == pytest.approx(p2, rel=1e-12)
    assert s["chance"]["twin"] == pytest.approx(3 * p2 / 4, rel=1e-12)
    assert s["chance"]["mixed"] == pytest.approx(3 * (1 - p2) / 4, rel=1e-12)


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
    # every consistency fraction carries its chance rate (IS copies twin images: one glyph id each, chance 1/alphabet-ish)
    for name in ("consistent", "twin", "mixed", "same_given_two"):
        assert f"{name}_chance" in ideal
    assert ideal["same_given_two"] == 1.0 and ideal["n_two"] == 4
    assert "(chance " in (out / "sweep.md").read_text()
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
    assert set(metrics["summary"]["global_consistency"]["chance"]) == {"consistent", "twin", "mixed", "same_given_two"}
    assert metrics["summary"]["novelty"]["heldout"]["n"] == 4
    arrays = io.load_npz(run)
    arrays.pop("provenance")
    bare = io.save_npz(tmp_path / "bare.npz", **arrays)
    assert main(["analyze", str(bare), "--no-heldout"]) == 0
    metrics = json.loads((tmp_path / "bare_metrics.json").read_text())
    assert metrics["inputs"]["provenance"].startswith("recomputed")
    assert (tmp_path / "bare_provenance.png").exists() and (tmp_path / "bare_nn_distances.png").exists()
    assert main(["analyze", str(tmp_path / "missing.npz")]) == 2


def test_analyze_prints_and_writes_consistency_with_chance(tmp_path, capsys):
    """analyze on five hand-made 16x16 samples with known glyphs: (0, 0), (0, 2), (1, 1), (3), none."""
    from creativity_fast.cli import main

    train = twin_glyphs(8, 16, 16, seed=0)
    data = io.save_npz(tmp_path / "twin_glyphs_16x16.npz", train_images=train.images.numpy(),
                       train_labels=train.labels.numpy())
    single = -torch.ones(1, 16, 16)
    single[:, 1:6, 1:6] = glyph_templates(4)[3]
    samples = torch.stack([_twin_image(0, 0), _twin_image(0, 2), _twin_image(1, 1), single, -torch.ones(1, 16, 16)])
    results = io.save_npz(tmp_path / "hand.npz", samples=samples.numpy(),
                          settings=np.array(json.dumps({"machine": "els", "P": 3, "data": str(data)})))
    capsys.readouterr()
    assert main(["analyze", str(results), "--no-heldout", "--no-attribution", "--alphabet", "4",
                 "--backend", "reference"]) == 0
    printed = capsys.readouterr().out.splitlines()
    g = json.loads((tmp_path / "hand_metrics.json").read_text())["summary"]["global_consistency"]
    s2 = (3 ** 2 + 2 ** 2 + 1 ** 2 + 1 ** 2) / 7 ** 2  # glyph frequencies (3, 2, 1, 1) / 7
    want = {"same_given_two": s2, "twin": 3 * s2 / 5, "mixed": 3 * (1 - s2) / 5, "consistent": (3 * s2 + 1) / 5}
    for name, chance in want.items():
        assert g["chance"][name] == pytest.approx(chance, rel=1e-12), name
    assert g["same_given_two"]["fraction"] == pytest.approx(2 / 3) and g["same_given_two"]["n"] == 3
    assert g["consistent"]["fraction"] == pytest.approx(3 / 5)

    def line(prefix):
        return next(x for x in printed if x.startswith(prefix))

    assert f"0.667 [" in line("same glyph among") and f"(n=3; chance {s2:.3f})" in line("same glyph among")
    assert f"chance {want['consistent']:.3f})" in line("globally consistent")
    assert f"chance {want['twin']:.3f})" in line("twin")
    assert f"chance {want['mixed']:.3f})" in line("mixed")
