"""Calibration and comparison against networks (docs/theory.md §6)."""

import json

import numpy as np
import pytest
import torch

from creativity_fast.calibration import (agreement, calibrate, compare, load_patch_schedule, resolve_patch_schedule,
                                         save_calibration)
from creativity_fast.denoisers import ELSDenoiser, GaussianDenoiser, LocalDenoiser
from creativity_fast.schedules import PatchSchedule


def _data(n=6, size=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, 3, 3, generator=g)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear").tanh()


SIGMAS = torch.tensor([3.0, 1.5, 0.8, 0.4, 0.2, 0.0])


@pytest.mark.parametrize("metric", ["cosine", "mse"])
def test_calibration_recovers_the_schedule_of_an_els_network(metric):
    data = _data()
    known = [7, 7, 5, 3, 3]
    fake_net = ELSDenoiser(data, P=PatchSchedule(SIGMAS, known), backend="reference")
    result = calibrate(fake_net, lambda d, P: ELSDenoiser(d, P=P, backend="reference"), data, SIGMAS,
                       candidates=[3, 5, 7], seeds=[0, 1, 2], metric=metric)
    assert result.patch_sizes == known
    assert result.scores.shape == (5, 3) and result.per_seed.shape == (5, 3, 3)
    best = result.best_scores
    if metric == "cosine":
        assert np.allclose(best, 1.0)
    else:
        assert np.allclose(best, 0.0, atol=1e-12)


def test_calibration_by_machine_name_and_resume():
    data = _data(seed=1)
    known = [5, 3, 3, 3, 3]
    fake_net = LocalDenoiser(data, P=PatchSchedule(SIGMAS, known), backend="reference")
    saved = {}
    full = calibrate(fake_net, "local", data, SIGMAS, [3, 5], [0, 1], machine_options=dict(backend="reference"),
                     checkpoint=lambda tables: saved.update(tables))
    assert full.patch_sizes == known and sorted(saved) == list(range(5))
    calls = {"n": 0}

    def counting(d, P):
        calls["n"] += 1
        return LocalDenoiser(d, P=P, backend="reference")

    partial = {i: saved[i] for i in range(3)}
    again = calibrate(fake_net, counting, data, SIGMAS, [3, 5], [0, 1], done=partial)
    assert again.patch_sizes == known
    np.testing.assert_allclose(again.per_seed, full.per_seed)
    with pytest.raises(ValueError, match="metric"):
        calibrate(fake_net, "local", data, SIGMAS, [3], [0], metric="l1")
    with pytest.raises(ValueError, match="odd"):
        calibrate(fake_net, "local", data, SIGMAS, [4], [0])


def test_compare_gives_r_1_for_identical_samplers():
    data = _data()
    sigmas = torch.tensor([5.0, 1.0, 0.3, 0.0])
    net = GaussianDenoiser(data)
    res = compare(net, {"same": GaussianDenoiser(data), "els": ELSDenoiser(data, P=3, backend="reference")},
                  seeds=[0, 1, 2, 3], sigmas=sigmas, shape=(1, 9, 9))
    np.testing.assert_allclose(res.r["same"], 1.0, atol=1e-6)
    np.testing.assert_allclose(res.r2["same"], 1.0, atol=1e-6)
    assert res.median_r["same"] == pytest.approx(1.0) and res.median_r2["same"] == pytest.approx(1.0)
    assert res.median_r["els"] < 1.0
    js = res.to_json()
    assert set(js["median_r"]) == {"same", "els"} and len(js["machines"]["els"]["r2"]) == 4
    assert res.samples["network"].shape == (4, 1, 9, 9)
    # samples depend on the seed, not on the batch
    solo = compare(net, {"same": net}, seeds=[2], sigmas=sigmas, shape=(1, 9, 9))
    torch.testing.assert_close(solo.samples["network"][0], res.samples["network"][2], atol=1e-5, rtol=1e-5)


def test_agreement_matches_numpy():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 1, 4, 4, generator=g)
    b = 0.5 * a + 0.3 * torch.randn(3, 1, 4, 4, generator=g) + 0.2
    r, r2 = agreement(a, b)
    for i in range(3):
        x, y = a[i].reshape(-1).double().numpy(), b[i].reshape(-1).double().numpy()
        assert r[i] == pytest.approx(np.corrcoef(x, y)[0, 1])
        assert r2[i] == pytest.approx(1 - ((x - y) ** 2).sum() / ((x - x.mean()) ** 2).sum())
    r, r2 = agreement(a, 2 * a + 1)  # perfectly correlated, badly scaled: r = 1 but R^2 < 1
    np.testing.assert_allclose(r, 1.0)
    assert (r2 < 0.5).all()
    with pytest.raises(ValueError, match="shapes"):
        agreement(a, a[:2])


def test_calibration_json_round_trip(tmp_path):
    data = _data()
    known = [7, 5, 5, 3, 3]
    fake_net = ELSDenoiser(data, P=PatchSchedule(SIGMAS, known), backend="reference")
    result = calibrate(fake_net, lambda d, P: ELSDenoiser(d, P=P, backend="reference"), data, SIGMAS,
                       [3, 5, 7], [0], metric="mse")
    path = save_calibration(tmp_path / "cal.json", result, machine="els")
    obj = json.loads(path.read_text())
    assert obj["patch_sizes"] == known and obj["patch_sizes_low_to_high_noise"] == known[::-1]
    assert load_patch_schedule(path) == known
    assert load_patch_schedule(path, 10) == [7, 7, 5, 5, 5, 5, 3, 3, 3, 3]
    assert resolve_patch_schedule(str(path), 5) == known
    assert resolve_patch_schedule("fashion_mnist", 5) == "fashion_mnist"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"patch_sizes": [4, 3]}))
    with pytest.raises(ValueError, match="odd"):
        load_patch_schedule(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        load_patch_schedule(bad)


def test_calibrate_and_compare_cli(tmp_path, tiny_net, capsys, monkeypatch):
    from creativity_fast.cli import main
    common = ["--net", str(tiny_net), "--limit", "12", "--steps", "2", "--seeds", "0-1", "--no-progress"]
    cal = tmp_path / "cal"
    assert main(["calibrate", *common, "--seeds", "100-101", "--candidates", "3,5", "--out", str(cal)]) == 0
    obj = json.loads((cal / "calibration.json").read_text())
    assert len(obj["patch_sizes"]) == 2 and set(obj["patch_sizes"]) <= {3, 5}
    assert obj["boundary"] == "zeros" and (cal / "calibration.png").stat().st_size > 0
    tables = np.load(cal / "calibration_tables.npz")
    assert list(tables["steps"]) == [0, 1] and tables["tables"].shape == (2, 2, 2)
    # a rerun of a finished calibration calls no machine and writes the same schedule
    import creativity_fast.commands.calibrate as calibrate_command

    def no_machine(*args, **kwargs):
        raise AssertionError("a finished calibration was recomputed")

    with monkeypatch.context() as patched:
        patched.setattr(calibrate_command, "make_denoiser", no_machine)
        assert main(["calibrate", *common, "--seeds", "100-101", "--candidates", "3,5", "--out", str(cal)]) == 0
    assert "resuming: 2 of 2 steps already calibrated" in capsys.readouterr().out
    again = json.loads((cal / "calibration.json").read_text())
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in obj.items() if k != "seconds"}
    cmp_out = tmp_path / "cmp"
    assert main(["compare", *common, "--patch-schedule", str(cal / "calibration.json"), "--out", str(cmp_out)]) == 0
    out = capsys.readouterr().out
    assert "median r" in out
    res = json.loads((cmp_out / "compare.json").read_text())
    for key in ("median_r", "median_r2"):
        assert set(res[key]) == {"els", "local", "ideal"}
    assert res["n_seeds"] == 2 and res["settings"]["patch_sizes"]["els"] == obj["patch_sizes"]
    assert (cmp_out / "compare.png").stat().st_size > 0 and (cmp_out / "compare_scatter.png").stat().st_size > 0
    samples = np.load(cmp_out / "compare_samples.npz", allow_pickle=False)
    assert samples["samples_network"].shape == (2, 1, 28, 28)
    stats = res["statistics"]
    assert set(stats["machines"]) == {"els", "local", "ideal"} and set(stats["versus"]) == {"els", "local"}
    assert stats["machines"]["els"]["r"]["median"] == pytest.approx(res["median_r"]["els"])
    assert res["settings"]["net_clip"] is False and res["settings"]["resize"] is None
    assert res["settings"]["conditional"] is False and res["class_labels"] is None
    rows = (cmp_out / "compare_per_seed.csv").read_text().splitlines()
    assert rows[0].startswith("seed,class,r_els,r2_els,R2_els") and len(rows) == 3
    # finished seeds stay on disk: a rerun samples nothing and gives the same numbers
    assert sorted(p.name for p in cmp_out.glob("per_seed_*.npz")) == [
        "per_seed_els.npz", "per_seed_ideal.npz", "per_seed_local.npz", "per_seed_network.npz"]
    # any registered machine; bad names are one-line errors
    assert main(["compare", *common, "--machine", "gaussian", "--out", str(tmp_path / "g")]) == 0
    # without --data/--limit the machines use the network's own training set (12 images here)
    no_limit = [a for a in common if a not in ("--limit", "12")]
    assert main(["compare", *no_limit, "--machine", "gaussian", "--out", str(tmp_path / "d")]) == 0
    assert json.loads((tmp_path / "d" / "compare.json").read_text())["settings"]["n_train"] == 12
    assert main(["compare", *no_limit, "--limit", "10", "--machine", "gaussian", "--out", str(tmp_path / "w")]) == 0
    assert "warning: the network was trained on" in capsys.readouterr().err
    assert main(["compare", *common, "--machine", "els,nope", "--out", str(tmp_path / "n")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["calibrate", *common, "--candidates", "4", "--out", str(cal)]) == 2


def test_shipped_network_and_schedule():
    from creativity_fast.calibration import default_schedule_path
    from creativity_fast.commands.compare import default_patch_schedule
    from creativity_fast.nets import NetworkDenoiser, default_network_path, load_network
    path = default_network_path()
    assert path.is_file() and path.stat().st_size < 2 * 1024 * 1024
    net, info = load_network()  # the default is the shipped checkpoint
    assert info["config"]["arch"] == "resnet" and info["config"]["padding"] == "zeros"
    assert 2 * info["config"]["depth"] + 1 == 17 and info["n_train"] == 3000
    x0 = NetworkDenoiser(net)(torch.randn(2, 1, 28, 28), 1.0)
    assert x0.shape == (2, 1, 28, 28) and float(x0.abs().max()) <= 1.0
    sizes = load_patch_schedule(default_schedule_path())
    assert len(sizes) == 20 and all(p % 2 == 1 for p in sizes)
    assert resolve_patch_schedule("calibrated", 20) == sizes
    # the shipped schedule was fitted on seeds 0-1 (the earlier rule), so it is not the default
    assert default_patch_schedule() == "fashion_mnist_resnet_zeros"
    from creativity_fast.calibration import calibration_seeds
    assert calibration_seeds("calibrated") == [0, 1]
    assert (path.parent / "training_log.jsonl").is_file()
