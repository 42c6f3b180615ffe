"""Attribution and exposure (docs/theory.md §7, "Attribution and exposure") on cases with known answers."""

import json

import pytest
import torch

from creativity_fast import attribution as A
from creativity_fast.denoisers import ELSDenoiser
from creativity_fast.ops import patch_posterior_mean
from creativity_fast.samplers import initial_noise, sample_ddim
from creativity_fast.schedules import PatchSchedule, karras_sigmas


def _data(N=10, C=1, H=16, W=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(N, C, H, W, generator=g, dtype=torch.float64) * 2 - 1


def _mosaic(data):
    """Left half (cols 0..7) = image 3 read two columns to the right; right half = image 7 as is."""
    s = data[7].clone()
    s[:, :, :8] = data[3][:, :, 2:10]
    return s[None]


@pytest.mark.parametrize("P", [3, 5])
def test_two_image_mosaic_is_attributed_with_offsets_and_regions(P):
    data = _data()
    sample = _mosaic(data)
    att = A.attribute(sample, data, P, flat_tol=0.0, match_tol=0.02)  # exact copies only
    m = (P - 1) // 2
    label, offset = att["label"][0], att["offset"][0]
    # A window inside the left half matches image 3 at offset (0, 2), except in the edge
    # columns (zero boundary: an edge column may only use its own column, docs/theory.md §3.3).
    left = torch.zeros(16, 16, dtype=torch.bool)
    left[:, m:8 - m] = True
    right = torch.zeros(16, 16, dtype=torch.bool)
    right[:, 8 + m:] = True  # the right edge columns are at their own place: offset 0 is admissible
    assert (label[left] == 3).all() and (offset[left] == torch.tensor([0, 2])).all()
    assert (label[right] == 7).all() and (offset[right] == 0).all()
    assert (label[~left & ~right] == A.NOVEL).all()  # windows across the seam match nothing (random data)
    regions = att["regions"][0]
    assert [(g["image"], g["offset"], g["size"]) for g in regions] == [(7, [0, 0], 16 * (8 - m)), (3, [0, 2], 16 * (8 - 2 * m))]
    per = A.sample_summaries(att, sample, data)[0]
    assert per["n_sources"] == 2 and per["shares"] == [[7, 16 * (8 - m)], [3, 16 * (8 - 2 * m)]]
    assert per["largest_region"] == {"image": 7, "offset": [0, 0], "size": 16 * (8 - m), "max_abs_diff": 0.0}
    assert per["novel"] == pytest.approx(1 - (16 * (16 - 3 * m)) / 256)


def test_nearest_patches_match_the_operator_argmax():
    data, samples = _data(7, C=2, H=9, W=8), _data(3, C=2, H=9, W=8, seed=1)
    for P, boundary, keys in [(3, "zeros", "all"), (5, "circular", "all"), (3, "circular", "valid"), (11, "zeros", "all")]:
        near = A.nearest_patches(samples, data, P, boundary=boundary, keys=keys, top=3, budget=4000)
        want = patch_posterior_mean(samples, data, 1.0, P, mode="els", boundary=boundary, keys=keys,
                                    return_stats=True, backend="reference").argmax
        assert torch.equal(near["image"][..., 0], want[..., 0]) and torch.equal(near["location"][..., 0], want[..., 1])
        assert (near["distance"].diff(dim=-1) >= 0).all()
        ids = near["image"].sort(-1).values
        assert (ids.diff(dim=-1) > 0).all()  # distinct images


def test_a_training_image_is_one_source_except_common_pixels():
    data = _data(12)
    data[:, :, :5, :5] = -1.0  # a constant corner in every image: common, never credited
    att = A.attribute(data[4:5], data, 5)
    label = att["label"][0]
    assert set(label.unique().tolist()) == {4, A.COMMON}
    assert (label[:3, :3] == A.COMMON).all()
    assert (att["offset"][0][label == 4] == 0).all()
    per = A.sample_summaries(att, data[4:5], data)[0]
    assert per["n_sources"] == 1 and per["top_sources"][0]["image"] == 4 and per["novel"] == 0
    assert per["largest_region"]["max_abs_diff"] == 0.0


def test_constant_background_is_common_by_either_rule():
    data = _data(8)
    data[:, :, :, :6] = -1.0  # a blank left part in every image
    sample = data[2:3].clone()
    for flat_tol in (0.1, 0.0):  # the flat rule, or (flat_tol=0) the margin rule alone: every image ties
        label = A.attribute(sample, data, 3, flat_tol=flat_tol)["label"][0]
        assert (label[:, :5] == A.COMMON).all()
        assert (label[:, 7:] == 2).all()
        assert A.sample_summaries({"label": label[None], "regions": [A.connected_regions(label, torch.zeros(16, 16, 2, dtype=torch.long))]},
                                  sample, data)[0]["n_sources"] == 1


def test_permuting_the_training_set_permutes_the_attribution():
    data = _data()
    sample = torch.cat([_mosaic(data), data[5:6]])
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    inverse = torch.argsort(perm)
    att, att_p = A.attribute(sample, data, 3), A.attribute(sample, data[perm], 3)
    credited = att["label"] >= 0
    assert torch.equal(att_p["label"] >= 0, credited)
    assert torch.equal(perm[att_p["label"][credited]], att["label"][credited])
    assert torch.equal(att_p["label"][credited], inverse[att["label"][credited]])
    assert torch.equal(att_p["offset"], att["offset"])


def test_exposure_counts_and_top_share():
    data = _data()
    sample = torch.cat([_mosaic(data), data[3:4]])
    att = A.attribute(sample, data, 3, match_tol=0.02)
    exp = A.exposure(att, 10)
    assert exp["n_samples"].tolist() == [0, 0, 0, 2, 0, 0, 0, 1, 0, 0]
    assert exp["pixels"][3] == 16 * 6 + 256 and exp["pixels"][7] == 16 * 7
    assert exp["largest_region"][3] == 256 and exp["largest_region"][7] == 16 * 7
    s = exp["summary"]
    assert [e["image"] for e in s["most_exposed"]] == [3, 7]
    assert s["top1pct_share"]["k"] == 1 and s["top1pct_share"]["share"] == pytest.approx(352 / 464)
    assert s["top1pct_share"]["uniform"] == pytest.approx(0.1)
    assert s["top1pct_share"]["chance_95"][0] <= s["top1pct_share"]["chance_mean"] <= 1
    json.dumps(A.run_summary(att, sample, data))  # JSON-ready


def test_agreement_with_the_recorded_provenance_of_a_machine_run():
    """Nearest-patch attribution at the last step's P recovers the sampler's own provenance."""
    data = _data(16, H=10, W=10, seed=4)
    # The recorded argmax was decided at the last step's query (noise sigma_last); the last
    # sigma (0.01) is below the margin, so the decisive pixels of the final image agree.
    sigmas = karras_sigmas(12, sigma_min=0.01, sigma_max=10.0).double()
    schedule = PatchSchedule(sigmas, [7] * 4 + [5] * 4 + [3] * 4)
    machine = ELSDenoiser(data, P=schedule, backend="reference", record_stats=True)
    z, gens = initial_noise(range(8), data.shape[1:], float(sigmas[0]), dtype=torch.float64)
    out = sample_ddim(machine, z, sigmas, generator=gens, progress=False)
    att = A.attribute(out, data, schedule.sizes[-1])
    agree = A.agreement(att, machine.last_stats.argmax)
    assert agree["image"]["n"] >= 30
    assert agree["image"]["fraction"] >= 0.95 and agree["image_and_location"]["fraction"] >= 0.95


def test_agreement_over_all_pixels_counts_identical_patches_as_the_same_patch():
    """Known answers: a copy of image 5 against its own provenance, then against a twin image."""
    data = _data(6, H=9, W=7, seed=2)
    data[2] = data[5]  # image 2 is an exact twin of image 5: every patch tied
    sample = data[5:6].clone()
    att = A.attribute(sample, data, 3, flat_tol=0.0)
    H, W = 9, 7
    loc = torch.arange(H * W).reshape(1, H, W)
    assert bool((att["source"][..., 0] == 2).all())  # ties go to the lower id
    own = torch.stack([torch.full((1, H, W), 2), loc], -1)
    twin = torch.stack([torch.full((1, H, W), 5), loc], -1)  # the recorder preferred the other twin
    a = A.agreement(att, own, data)["all_pixels"]
    assert a["image_and_location"]["fraction"] == 1 and a["patch_content"]["fraction"] == 1
    b = A.agreement(att, twin, data)["all_pixels"]
    assert b["image"]["fraction"] == 0 and b["image_and_location"]["count"] == 0
    assert b["patch_content"]["fraction"] == 1  # same values, so the same evidence
    wrong = torch.stack([torch.full((1, H, W), 0), loc], -1)  # a different image entirely
    c = A.agreement(att, wrong, data)["all_pixels"]["patch_content"]
    assert c["count"] == 0 and c["per_sample"] == [0.0]
    # The verdict: credited pixels must name the recorded image; the twin's pixels are all
    # common (two images tie), consistent with either twin as the recorded source.
    att_c = A.attribute(sample, data, 3)
    assert bool((att_c["label"] == A.COMMON).all())
    assert A.agreement(att_c, twin, data, sample)["all_pixels"]["verdict"]["fraction"] == 1
    solo = data[1:2].clone()  # image 1 has no twin: credited (non-flat pixels), not common
    att_s = A.attribute(solo, data, 3)
    assert bool((att_s["label"] == 1).all())  # random values: every window is decisive
    right = torch.stack([torch.full((1, H, W), 1), loc], -1)
    assert A.agreement(att_s, right, data, solo)["all_pixels"]["verdict"]["fraction"] == 1
    v = A.agreement(att_s, wrong, data, solo)["all_pixels"]["verdict"]
    assert v["count"] == 0  # every pixel is credited, to another image than the recorded one
    # Without data there is no content check; two samples give a by-sample interval.
    att2 = A.attribute(torch.cat([sample, data[1:2]]), data, 3, flat_tol=0.0)
    prov2 = torch.cat([own, torch.stack([torch.full((1, H, W), 1), loc], -1)])
    d = A.agreement(att2, prov2)["all_pixels"]
    assert "patch_content" not in d and d["image_and_location"]["fraction"] == 1
    assert d["image_and_location"]["ci95_by_sample"] == [1.0, 1.0]


def test_bad_arguments_name_themselves():
    data = _data(4)
    with pytest.raises(ValueError, match="P_attr"):
        A.attribute(data[:1], data, 4)
    with pytest.raises(ValueError, match="common_k"):
        A.attribute(data[:1], data, 3, common_k=1)
    with pytest.raises(ValueError, match="margin"):
        A.attribute(data[:1], data, 3, margin=-1)
    with pytest.raises(ValueError, match="samples"):
        A.attribute(data[0], data, 3)
    with pytest.raises(ValueError, match="n_train"):
        A.exposure(A.attribute(data[3:4], data, 3), 2)
    with pytest.raises(ValueError, match="provenance"):
        A.agreement(A.attribute(data[:1], data, 3), torch.zeros(1, 3, 3, 2, dtype=torch.long))


def test_attribute_command_writes_json_and_pictures(tmp_path, capsys):
    from creativity_fast.cli import main

    run = tmp_path / "run"
    assert main(["sample", "--limit", "40", "--steps", "4", "--seeds", "0-1", "--patch-schedule", "3",
                 "--out", str(run), "--no-progress"]) == 0
    assert main(["attribute", str(run / "samples.npz"), "--P-attr", "5", "--out", str(tmp_path / "att")]) == 0
    printed = capsys.readouterr().out
    assert "distinct sources per sample" in printed and "agreement with the recorded provenance at P=3" in printed
    result = json.loads((tmp_path / "att" / "attribution.json").read_text())
    assert result["params"]["P_attr"] == 5 and len(result["per_sample"]) == 2
    assert result["exposure"]["n_train"] == 40 and result["agreement_with_recorded_provenance"]["P"] == 3
    for name in ("attribution.png", "exposure.png"):
        assert (tmp_path / "att" / name).stat().st_size > 0
    assert main(["analyze", str(run / "samples.npz"), "--no-heldout", "--P-attr", "5", "--out", str(tmp_path / "an")]) == 0
    assert "attribution (P_attr=5)" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "an" / "samples_metrics.json").read_text())
    assert metrics["summary"]["attribution"]["P_attr"] == 5
    assert main(["attribute", str(run / "samples.npz"), "--P-attr", "4"]) == 2
    assert "P_attr" in capsys.readouterr().err
