"""The comparison protocol of docs/calibration.md: per-seed classes, --net-steps, calibration by the
median of per-seed best P, the seed-overlap check, the ceiling path and resuming."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from creativity_fast.calibration import (agreement_figure, calibrate, compare, load_compare_result,
                                        select_patch_sizes)
from creativity_fast.classes import seed_classes, splitmix64
from creativity_fast.data import load_dataset
from creativity_fast.denoisers import ELSDenoiser, LocalDenoiser
from creativity_fast.schedules import PatchSchedule, cosine_vp_sigmas

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- #
# classes per seed


def test_seed_classes_are_a_fixed_function_of_the_seed():
    # SplitMix64's first output for state 0 (the published test vector of the generator)
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    classes = seed_classes(range(2000), range(10))
    assert classes[:8] == [5, 5, 0, 3, 8, 8, 2, 7]  # pinned: changing the rule changes every result file
    counts = np.bincount(classes, minlength=10)
    assert counts.min() > 150 and counts.max() < 250  # about 200 each
    assert seed_classes([7, 3], range(10)) == [classes[7], classes[3]]  # per seed, not per position
    assert seed_classes([5], [7, 2]) == [[2, 7][splitmix64(5) % 2]]  # among the sorted classes present
    with pytest.raises(ValueError, match="labelled"):
        seed_classes([0], [])
    with pytest.raises(ValueError, match="non-negative"):
        seed_classes([-1], [0, 1])


# --------------------------------------------------------------------------- #
# calibration and comparison (Python API)

SIGMAS = torch.tensor([3.0, 1.5, 0.8, 0.4, 0.2, 0.0])


def _labelled(n=8, size=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, 3, 3, generator=g)
    data = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear").tanh()
    return data, torch.arange(n) % 2


def test_calibrating_a_conditional_machine_against_itself_returns_its_schedule():
    data, labels = _labelled()
    known = [7, 5, 5, 3, 3]
    net = ELSDenoiser(data, P=PatchSchedule(SIGMAS, known), labels=labels, backend="reference")
    seeds = [0, 1, 2, 3]
    classes = seed_classes(seeds, [0, 1])
    assert len(set(classes)) == 2  # both classes used, so a class mix-up would show
    result = calibrate(net, lambda d, P: ELSDenoiser(d, P=P, labels=labels, backend="reference"), data, SIGMAS,
                       [3, 5, 7], seeds, class_labels=classes)
    assert result.patch_sizes == known and result.selection == "per_seed"
    assert (result.per_seed_best == np.array(known)[:, None]).all()
    assert np.allclose(result.best_scores, 1.0)
    assert result.to_json()["class_labels"] == classes
    # a machine that ignores the class (the whole set) does not match at cosine 1
    def unconditional(d, P):
        machine = ELSDenoiser(d, P=P, backend="reference")
        return lambda z, sigma, class_labels=None: machine(z, sigma)

    wrong = calibrate(net, unconditional, data, SIGMAS, [3, 5, 7], seeds, class_labels=classes)
    assert min(wrong.best_scores) < 0.999


def test_per_seed_selection_is_the_median_of_argmaxes_not_the_argmax_of_the_median():
    # one step, candidates 3/5/7, five seeds: best P per seed = 3, 3, 7, 7, 7 -> median 7;
    # but the median score is best at 5 (medians 0, 0.8, 0.35)
    per_seed = np.array([[[0.95, 0.95, 0.0, 0.0, 0.0],
                          [0.90, 0.90, 0.8, 0.3, 0.3],
                          [0.00, 0.00, 0.85, 0.35, 0.35]]])
    sizes, scores, best = select_patch_sizes(per_seed, [3, 5, 7], "cosine", "per_seed")
    assert sizes == [7] and best.tolist() == [[3, 3, 7, 7, 7]]
    assert select_patch_sizes(per_seed, [3, 5, 7], "cosine", "median_score")[0] == [5]
    # MSE: lower is better
    assert select_patch_sizes(-per_seed, [3, 5, 7], "mse", "per_seed")[0] == [7]
    # even number of seeds: best 3, 3, 7, 7 -> median 5 (a candidate); 3, 5 -> 4 -> the smaller, 3
    even = np.array([[[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]]], dtype=float)
    assert select_patch_sizes(even, [3, 5, 7], "cosine")[0] == [5]
    two = np.array([[[1, 0], [0, 1], [0, 0]]], dtype=float)
    assert select_patch_sizes(two, [3, 5, 7], "cosine")[0] == [3]
    # candidates in any order: the same answer
    assert select_patch_sizes(per_seed[:, ::-1], [7, 5, 3], "cosine")[0] == [7]


def test_a_network_that_is_the_els_machine_gives_r_1_and_net_steps_change_only_the_network():
    data, labels = _labelled(seed=3)
    seeds = [0, 1, 2, 3]
    classes = seed_classes(seeds, [0, 1])
    sig20, sig30 = cosine_vp_sigmas(6), cosine_vp_sigmas(9)
    els = ELSDenoiser(data, P=PatchSchedule(sig20, 5), labels=labels, backend="reference")
    local = LocalDenoiser(data, P=PatchSchedule(sig20, 5), labels=labels, backend="reference")
    same = compare(els, {"els": els, "local": local}, seeds, sig20, (1, 9, 9), class_labels=classes)
    np.testing.assert_allclose(same.r["els"], 1.0, atol=1e-6)
    np.testing.assert_allclose(same.r2["els"], 1.0, atol=1e-6)
    assert same.median_r["local"] < 0.999
    assert same.class_labels == classes
    stats = same.to_json()["statistics"]
    assert stats["machines"]["els"]["r"]["ci"] == pytest.approx([1.0, 1.0], abs=1e-6)
    # the network on its own (longer) schedule: its samples change, the machines' do not
    longer = compare(els, {"els": els, "local": local}, seeds, sig20, (1, 9, 9), class_labels=classes,
                     net_sigmas=sig30)
    assert longer.settings["net_steps"] == 9 and longer.settings["n_steps"] == 6
    torch.testing.assert_close(longer.samples["els"], same.samples["els"], rtol=0, atol=0)
    torch.testing.assert_close(longer.samples["local"], same.samples["local"], rtol=0, atol=0)
    assert not torch.allclose(longer.samples["network"], same.samples["network"], atol=1e-4)
    with pytest.raises(ValueError, match="same noise"):
        compare(els, {"els": els}, seeds, sig20, (1, 9, 9), net_sigmas=sig30[1:])
    with pytest.raises(ValueError, match="one int label per seed"):
        compare(els, {"els": els}, seeds, sig20, (1, 9, 9), class_labels=[0])


def test_two_networks_the_ceiling_path():
    data, labels = _labelled(seed=4)
    sig = cosine_vp_sigmas(4)
    a = ELSDenoiser(data, P=PatchSchedule(sig, 5), backend="reference")
    b = ELSDenoiser(data, P=PatchSchedule(sig, 3), backend="reference")
    res = compare(a, {}, [0, 1, 2], sig, (1, 9, 9), networks={"ceiling": b, "copy": a})
    np.testing.assert_allclose(res.r["copy"], 1.0, atol=1e-6)
    assert res.machines == ["ceiling", "copy"] and res.baseline is None
    with pytest.raises(ValueError, match="reference"):
        compare(a, {}, [0], sig, (1, 9, 9), networks={"network": b})


# --------------------------------------------------------------------------- #
# the commands


def test_compare_cli_net_steps_resume_overlap_and_ceiling(tmp_path, tiny_net, capsys):
    from creativity_fast.cli import main
    common = ["--net", str(tiny_net), "--limit", "12", "--steps", "2", "--seeds", "0-1", "--no-progress",
              "--machine", "local,ideal", "--patch-schedule", "3"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["compare", *common, "--out", str(a)]) == 0
    assert main(["compare", *common, "--net-steps", "3", "--out", str(b)]) == 0
    sa, sb = np.load(a / "compare_samples.npz"), np.load(b / "compare_samples.npz")
    for name in ("local", "ideal"):
        np.testing.assert_array_equal(sa[f"samples_{name}"], sb[f"samples_{name}"])
    assert np.abs(sa["samples_network"] - sb["samples_network"]).max() > 1e-3
    js_b = json.loads((b / "compare.json").read_text())
    assert js_b["settings"]["net_steps"] == 3 and js_b["settings"]["steps"] == 2
    assert js_b["settings"]["network_evaluations"] == 2 * 3
    # pairs: LS at P = 3 on 28 x 28 with zero padding, 12 images, 2 seeds, 2 steps
    from creativity_fast.dictionary import count_pairs
    assert js_b["settings"]["pairs"]["local"] == 2 * 2 * count_pairs(1, 12, 28, 28, 3, "local", "zeros")
    assert js_b["settings"]["pairs"]["ideal"] == 2 * 2 * 12
    capsys.readouterr()

    # a rerun with the same settings samples nothing and gives identical numbers
    first = json.loads((a / "compare.json").read_text())
    assert main(["compare", *common, "--out", str(a)]) == 0
    out = capsys.readouterr().out
    assert out.count("resuming, 2 of 2 seeds already finished") == 3
    again = json.loads((a / "compare.json").read_text())
    assert again["machines"] == first["machines"] and again["statistics"] == first["statistics"]
    # more seeds reuse the finished ones
    assert main(["compare", *[c if c != "0-1" else "0-2" for c in common], "--out", str(a)]) == 0
    assert "resuming, 2 of 3 seeds already finished" in capsys.readouterr().out
    more = json.loads((a / "compare.json").read_text())
    assert more["machines"]["local"]["r"][:2] == first["machines"]["local"]["r"]
    # sampling time adds up over resumed runs: the rerun sampled nothing and kept the first
    # run's times; the longer run added one timed seed per entry
    for entry in ("network", "local", "ideal"):
        t1, t2, t3 = (x["settings"]["sampling_seconds"][entry] for x in (first, again, more))
        assert (t1["timed_seeds"], t1["seeds"]) == (2, 2) and t1["seconds"] > 0
        assert t2 == t1
        assert (t3["timed_seeds"], t3["seeds"]) == (3, 3) and t3["seconds"] >= t1["seconds"]

    # evaluation seeds must not be calibration seeds
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"patch_sizes": [3, 3], "seeds": [1, 5]}))
    bad = [*common[:-2], "--patch-schedule", str(cal)]
    assert main(["compare", *bad, "--out", str(tmp_path / "o")]) == 2
    assert "calibrated on seeds [1]" in capsys.readouterr().err
    assert main(["compare", *bad, "--allow-seed-overlap", "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "compare.json").read_text())["settings"]["seed_overlap"] == {"local": [1]}
    assert main(["compare", *common, "--schedule-for", "els=5", "--out", str(tmp_path / "x")]) == 2
    assert main(["compare", *common, "--figure-seeds", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "--figure-seeds must be 0 (all) or a positive int" in capsys.readouterr().err

    # the ceiling path: the network against a second network (here itself: r = 1)
    assert main(["compare", *common[:-4], "--machine", "none", "--net-ceiling", str(tiny_net),
                 "--out", str(tmp_path / "c")]) == 0
    ceiling = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert ceiling["machines"]["ceiling"]["r"] == pytest.approx([1.0, 1.0])
    assert main(["compare", *common[:-4], "--machine", "none", "--out", str(tmp_path / "d")]) == 2

    # scripts/protocol_report.py: one row per machine with its interval and the paper's
    # number, and the ceiling of the matching protocol (network steps 20 -> Table 2)
    import importlib.util
    spec = importlib.util.spec_from_file_location("protocol_report", ROOT / "scripts" / "protocol_report.py")
    protocol_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(protocol_report)
    root = tmp_path / "proto"
    (root / "table2_own").mkdir(parents=True)
    (root / "ceiling_20").mkdir()
    (root / "table2_own_net_b").mkdir()
    for src, run in ((a, "table2_own"), (tmp_path / "c", "ceiling_20"), (a, "table2_own_net_b")):
        for name in ("compare.json", "compare_samples.npz"):
            shutil.copy(src / name, root / run)
    text = protocol_report.report(root, "resnet")
    # its figures are drawn from the saved run, which loads back as it was computed
    assert "[table2_own_grid.png](table2_own_grid.png), [table2_own_scatter.png]" in text
    assert "[ceiling_20_grid.png](ceiling_20_grid.png)" in text and "ceiling_20_scatter" not in text
    assert all((root / f).stat().st_size > 1000 for f in ("table2_own_grid.png", "table2_own_scatter.png"))
    loaded = load_compare_result(a)
    assert loaded.seeds == [0, 1, 2] and loaded.machines == list(more["machines"]) and loaded.baseline == "ideal"
    assert loaded.to_json()["statistics"] == more["statistics"] and more["baseline"] == "ideal"
    assert ceiling["baseline"] is None and load_compare_result(tmp_path / "c").baseline is None
    # the saved baseline wins over compare's default: a result tested against LS loads back so
    (tmp_path / "ls").mkdir()
    shutil.copy(a / "compare_samples.npz", tmp_path / "ls")
    against_ls = dataclasses.replace(loaded, baseline="local")
    (tmp_path / "ls" / "compare.json").write_text(json.dumps(against_ls.to_json()))
    assert load_compare_result(tmp_path / "ls").baseline == "local"
    assert against_ls.to_json()["statistics"] != more["statistics"]
    assert torch.equal(loaded.samples["local"], torch.from_numpy(np.load(a / "compare_samples.npz")["samples_local"]))
    from PIL import Image
    heights = [Image.open(agreement_figure(loaded, tmp_path / f"g{k}.png", columns=1, max_seeds=k)).size[1]
               for k in (1, 3)]
    assert heights[1] > 2 * heights[0]                             # one seed drawn, then three
    with pytest.raises(ValueError, match="max_seeds"):
        agreement_figure(loaded, tmp_path / "g.png", max_seeds=0)
    r_ls = more["statistics"]["machines"]["local"]["r"]          # a/compare.json: the 3-seed run
    assert f"| LS | {r_ls['median']:.3f} [{r_ls['ci'][0]:.3f}, {r_ls['ci'][1]:.3f}]" in text
    assert text.count("| 0.88 |") == 2 and "| 0.74 |" in text      # the paper's Table 2 LS and IS, per network
    assert "| ceiling: network B vs network | 1.000 [1.000, 1.000]" in text
    assert "Table 1" not in text                                    # no Table 1 outputs given
    assert text.count("## Table 2") == 2 and text.count("against network B") == 1
    assert text.index("against network B") > text.index("[table2_own_scatter.png]")  # after the own table
    assert "sampling network " in text and " s on cpu." in text and "seeds timed" not in text

    # --resize 32 reaches the samples and every output's settings
    assert main(["compare", *common[:-4], "--machine", "ideal", "--resize", "32", "--out", str(tmp_path / "r")]) == 0
    resized = json.loads((tmp_path / "r" / "compare.json").read_text())
    assert resized["settings"]["resize"] == 32
    assert np.load(tmp_path / "r" / "compare_samples.npz")["samples_ideal"].shape == (2, 1, 32, 32)
    assert main(["calibrate", *common[:-4], "--seeds", "100", "--candidates", "3", "--resize", "32",
                 "--out", str(tmp_path / "rc")]) == 0
    assert json.loads((tmp_path / "rc" / "calibration.json").read_text())["resize"] == 32


def test_class_conditional_cli_with_the_els_machine_as_the_network(tmp_path, monkeypatch, capsys):
    """A class-conditional "network" that is the ELS machine: every seed gets its class, r(ELS) = 1."""
    from creativity_fast.cli import main
    from creativity_fast.commands import compare as compare_cmd
    data = load_dataset(None, limit=40)
    sigmas = cosine_vp_sigmas(2)

    def fake_load(path, **kwargs):
        den = ELSDenoiser(data.images, P=PatchSchedule(sigmas, 3), labels=data.labels)
        return den, {"path": "els-as-network", "config": {"padding": "zeros", "num_classes": 10}}

    monkeypatch.setattr(compare_cmd, "load_denoiser", fake_load)
    out = tmp_path / "cc"
    assert main(["compare", "--limit", "40", "--steps", "2", "--seeds", "0-3", "--no-progress",
                 "--machine", "els,ideal", "--patch-schedule", "3", "--out", str(out)]) == 0
    res = json.loads((out / "compare.json").read_text())
    present = sorted(set(data.labels.tolist()))
    assert res["class_labels"] == seed_classes(range(4), present) and res["settings"]["conditional"] is True
    assert res["machines"]["els"]["r"] == pytest.approx([1.0] * 4, abs=1e-6)
    rows = (out / "compare_per_seed.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[1]) for r in rows] == res["class_labels"]
    # --class fixes the class of every seed
    assert main(["compare", "--limit", "40", "--steps", "2", "--seeds", "0-1", "--no-progress", "--machine", "els",
                 "--patch-schedule", "3", "--class", str(present[0]), "--out", str(tmp_path / "k")]) == 0
    assert json.loads((tmp_path / "k" / "compare.json").read_text())["class_labels"] == [present[0]] * 2
    # calibrate gives the seeds classes the same way, and recovers the "network"'s constant P = 3
    cal = tmp_path / "cal"
    assert main(["calibrate", "--limit", "40", "--steps", "2", "--seeds", "1000-1002", "--no-progress",
                 "--candidates", "3,5", "--out", str(cal)]) == 0
    obj = json.loads((cal / "calibration.json").read_text())
    assert obj["class_labels"] == seed_classes([1000, 1001, 1002], present) and obj["conditional"] is True
    assert obj["patch_sizes"] == [3, 3] and obj["selection"] == "per_seed" and obj["seeds"] == [1000, 1001, 1002]
    # the samples of the IS machine are training images of the seed's class
    samples = np.load(out / "compare_samples.npz")
    for i, c in enumerate(res["class_labels"]):
        dist = ((data.images - torch.from_numpy(samples["samples_ideal"][i])) ** 2).flatten(1).sum(1)
        assert int(data.labels[int(dist.argmin())]) == c


def test_compare_runs_split_by_seeds_merge_to_the_single_run(tmp_path, tiny_net, capsys):
    """scripts/merge_compare_runs.py: the same command on seeds 0-1 and on seed 2, merged, resumes
    as one run of seeds 0-2 and gives its numbers; runs with other settings are refused."""
    import importlib.util
    from creativity_fast.cli import main
    spec = importlib.util.spec_from_file_location("merge_compare_runs", ROOT / "scripts" / "merge_compare_runs.py")
    merge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge)
    common = ["--net", str(tiny_net), "--limit", "12", "--steps", "2", "--no-progress",
              "--machine", "local,ideal", "--patch-schedule", "3"]
    x, y, whole = tmp_path / "x", tmp_path / "y", tmp_path / "whole"
    assert main(["compare", *common, "--seeds", "0-1", "--out", str(x)]) == 0
    assert main(["compare", *common, "--seeds", "2", "--out", str(y)]) == 0
    assert merge.main([str(x), str(y)]) == 0
    capsys.readouterr()
    assert main(["compare", *common, "--seeds", "0-2", "--out", str(x)]) == 0
    assert capsys.readouterr().out.count("resuming, 3 of 3 seeds already finished") == 3
    assert main(["compare", *common, "--seeds", "0-2", "--out", str(whole)]) == 0
    merged, single = (json.loads((d / "compare.json").read_text()) for d in (x, whole))
    for name in ("local", "ideal"):  # equal up to float rounding: seed 2 ran in a batch of its own
        assert merged["machines"][name]["r"] == pytest.approx(single["machines"][name]["r"], abs=1e-6)
    # every seed keeps the time it was sampled in
    assert merged["settings"]["sampling_seconds"]["local"]["timed_seeds"] == 3
    other = tmp_path / "other"
    # the network with other steps: its machine files would merge, its network file not (checked last)
    assert main(["compare", *common, "--seeds", "3", "--net-steps", "3", "--out", str(other)]) == 0
    before = {p.name: p.read_bytes() for p in x.glob("per_seed_*.npz")}
    assert merge.main([str(x), str(other)]) == 2
    assert "per_seed_network.npz was sampled with other settings" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in x.glob("per_seed_*.npz")} == before  # nothing half-merged
    with pytest.raises(ValueError, match="nothing to merge"):
        merge.merge_runs(x, [tmp_path / "empty"])


def test_timed_checkpoint_shares_batch_time_and_skips_untimed_seeds(tmp_path, monkeypatch):
    """Each batch's wall time is split equally among its new seeds; seeds from a file written
    without times stay untimed, and resumed seeds are not timed again."""
    from creativity_fast.commands import common

    clock = iter([10.0, 16.0, 17.0])
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock))
    path, sample = tmp_path / "per_seed_x.npz", (torch.zeros(1, 2, 2), None)
    common.save_partial(path, {0: sample}, "S")  # an old file: no times
    assert common.load_partial_seconds(path, "S") == {}
    done = common.load_partial(path, "S")
    checkpoint = common.TimedCheckpoint(path, "S", keep=done, done=done)  # clock 10
    checkpoint({**done, 1: sample, 2: sample})  # clock 16: two new seeds in 6 s
    checkpoint({**done, 1: sample, 2: sample, 3: sample})  # clock 17: one new seed in 1 s
    assert common.load_partial_seconds(path, "S") == {1: 3.0, 2: 3.0, 3: 1.0}
    assert sorted(common.load_partial(path, "S")) == [0, 1, 2, 3]
    assert common.load_partial_seconds(path, "other settings") == {}



def test_paper_protocol_script_runs_every_step_and_reuses_samples(tmp_path):
    """scripts/paper_protocol.sh, with a stand-in `python` that records each command and writes
    each entry's per-seed file only when it is missing (as compare's resume does): every step runs
    in order, and the network's and machines' samples come from the run that first made them."""
    import os
    import subprocess

    bin_dir, root = tmp_path / "bin", tmp_path / "proto"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text("""#!/bin/bash
echo "$*" >> "$LOG"
out=""; prev=""; for a in "$@"; do [ "$prev" = --out ] && out=$a; prev=$a; done
case "$*" in
  *" calibrate "*) mkdir -p "$out"; echo made > "$out/calibration.json" ;;
  *" compare "*) mkdir -p "$out"
     entries="network els local ideal"; case "$*" in *"--machine none"*) entries="network ceiling" ;; esac
     for e in $entries; do [ -f "$out/per_seed_$e.npz" ] || basename "$out" > "$out/per_seed_$e.npz"; done ;;
esac
""")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(tmp_path / "log"),
           "NET": "a.pt", "NET_B": "b.pt", "ROOT": str(root)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "paper_protocol.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    steps = [line.split(" --out ")[-1].split()[0].replace(str(root) + "/", "") if "--out" in line else line.split()[0]
             for line in (tmp_path / "log").read_text().splitlines()]
    assert steps == ["cal_els", "cal_ls", "table2_own", "table1_own", "table2_published", "table1_published",
                     "ceiling_20", "ceiling_150", "table2_own_net_b", "table1_own_net_b",
                     "scripts/protocol_report.py"]

    def made_by(folder, entry):
        return (root / folder / f"per_seed_{entry}.npz").read_text().strip()

    assert made_by("table1_own", "els") == "table2_own" and made_by("table1_published", "ideal") == "table2_published"
    assert made_by("table2_published", "network") == "table2_own" and made_by("table1_published", "network") == "table1_own"
    assert made_by("ceiling_20", "network") == "table2_own" and made_by("ceiling_150", "network") == "table1_own"
    assert made_by("ceiling_20", "ceiling") == "ceiling_20"
    assert made_by("table1_own_net_b", "els") == "table2_own" and made_by("table2_own_net_b", "network") == "table2_own_net_b"
    assert all("--net b.pt " in line for line in (tmp_path / "log").read_text().splitlines() if "_net_b" in line)
    calibrations = [line for line in (tmp_path / "log").read_text().splitlines() if " calibrate " in line]
    assert len(calibrations) == 2 and all("--candidates 3-17 " in line for line in calibrations)

    # CANDIDATES widens the calibrated patch sizes (a UNet's)
    env["CANDIDATES"] = "3-27"
    (tmp_path / "log").unlink()
    assert subprocess.run(["bash", str(ROOT / "scripts" / "paper_protocol.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60).returncode == 0
    assert sum("--candidates 3-27 " in line for line in (tmp_path / "log").read_text().splitlines()) == 2
