"""The paired-patch machine (PELS, docs/theory.md §3.7): its parts, its registry entry and the CLI.

The operator itself is tested in ``test_paired.py``; here: the machine's step is the
operator with the partners of ``patch_argmax_attention`` (query partners on ``z`` or on
the step's ELS estimate, training partners within each training image, centre = the
training set's mean patch), ``beta = 0`` is ELS, the training partners are cached, the
options reach the machine from the registry and the command line. The sharded form is
tested in ``test_distributed.py``.
"""

import json

import numpy as np
import pytest
import torch

import creativity_fast as cf
from creativity_fast import registry
from creativity_fast.attention import clear_attention_cache, training_partners
from creativity_fast.cli import main
from creativity_fast.ops import mean_patch
from creativity_fast.paired import PELSDenoiser
from creativity_fast.samplers import sample_ddim


def tiny(N=6, C=1, H=7, W=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = torch.rand(N, C, H, W, generator=g, dtype=torch.float64) * 2 - 1
    z = data[:3] + 0.7 * torch.randn(3, C, H, W, generator=g, dtype=torch.float64)
    return data, z


def expected_step(data, z, sigma, P, *, beta, Pa, exclude, P2, attend_on, boundary="zeros", backend="reference"):
    """The machine's step written from its definition (docs/theory.md §3.7)."""
    center = mean_patch(data, Pa)
    source = z if attend_on == "z" else cf.patch_posterior_mean(z, data, sigma, P, boundary=boundary,
                                                                 backend=backend)
    q = cf.patch_argmax_attention(source, Pa, exclude=exclude, center=center, backend=backend)
    k = cf.patch_argmax_attention(data, Pa, exclude=exclude, center=center, backend=backend)
    return cf.paired_patch_posterior_mean(z, data, sigma, P, q, k, beta=beta, P2=P2, boundary=boundary,
                                          backend=backend)


@pytest.mark.parametrize("attend_on", ["z", "x0"])
@pytest.mark.parametrize("boundary", ["zeros", "circular"])
def test_step_is_the_operator_with_attention_partners(attend_on, boundary):
    data, z = tiny()
    sigma = torch.tensor([0.3, 0.8, 2.0], dtype=torch.float64)
    machine = PELSDenoiser(data, 3, beta=1.5, attention_P=5, exclude=4, P2=5, attend_on=attend_on,
                           boundary=boundary, backend="reference")
    want = expected_step(data, z, sigma, 3, beta=1.5, Pa=5, exclude=4, P2=5, attend_on=attend_on,
                         boundary=boundary)
    torch.testing.assert_close(machine(z, sigma), want, rtol=0, atol=1e-12)
    els = cf.ELSDenoiser(data, 3, boundary=boundary, backend="reference")(z, sigma)
    assert (machine(z, sigma) - els).abs().max() > 1e-3  # the partner term acts


def test_attend_on_changes_the_partners():
    data, z = tiny(seed=3)
    a = PELSDenoiser(data, 3, beta=2.0, attend_on="z", backend="reference")(z, 0.9)
    b = PELSDenoiser(data, 3, beta=2.0, attend_on="x0", backend="reference")(z, 0.9)
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("attend_on", ["z", "x0"])
def test_beta_zero_is_els(attend_on):
    data, z = tiny()
    for backend in ("reference", "auto"):
        pels = PELSDenoiser(data, 3, beta=0.0, attend_on=attend_on, backend=backend, record_stats=True)
        els = cf.ELSDenoiser(data, 3, backend=backend, record_stats=True)
        assert torch.equal(pels(z, 0.6), els(z, 0.6))
        assert torch.equal(pels.last_stats.argmax, els.last_stats.argmax)


def test_defaults_follow_the_patch_schedule():
    """P2 and the attention patch default to the step's P (a schedule gives several in one batch)."""
    data, z = tiny()
    sigma = torch.tensor([0.2, 0.5, 3.0], dtype=torch.float64)
    schedule = lambda s: 3 if s < 1 else 5  # noqa: E731
    got = PELSDenoiser(data, schedule, backend="reference")(z, sigma)
    for P, rows in ((3, [0, 1]), (5, [2])):
        want = expected_step(data, z[rows], sigma[rows], P, beta=1.0, Pa=P, exclude=P, P2=P, attend_on="z")
        torch.testing.assert_close(got[rows], want, rtol=0, atol=1e-12)


def test_kernel_and_reference_machines_agree():
    data, z = tiny(N=9)
    for attend_on in ("z", "x0"):
        a = PELSDenoiser(data, 3, beta=1.0, attend_on=attend_on, backend="reference")(z, 0.5)
        b = PELSDenoiser(data, 3, beta=1.0, attend_on=attend_on)(z, 0.5)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_class_conditional_uses_the_class_images_and_their_partners():
    data, z = tiny(N=8)
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    machine = PELSDenoiser(data, 3, beta=1.0, labels=labels, class_label=1, backend="reference")
    keep = labels == 1
    center = mean_patch(data, 3)  # the whole set's centre, as for AELS
    q = cf.patch_argmax_attention(z, 3, center=center, backend="reference")
    k = cf.patch_argmax_attention(data, 3, center=center, backend="reference")[keep]
    want = cf.paired_patch_posterior_mean(z, data[keep], 0.4, 3, q, k, beta=1.0, backend="reference")
    torch.testing.assert_close(machine(z, 0.4), want, rtol=0, atol=1e-12)


def test_training_partners_are_cached_per_attention_patch_and_exclusion():
    clear_attention_cache()
    data, _ = tiny()
    a = training_partners(data, 3)
    assert training_partners(data, 3) is a
    b = training_partners(data, 3, exclude=1)
    assert b is not a and not torch.equal(a, b)
    assert torch.equal(a, cf.patch_argmax_attention(data, 3, backend="reference"))
    assert training_partners(data, 5) is not a


def test_bad_options_raise():
    data, _ = tiny()
    with pytest.raises(ValueError, match="attend_on must be one of 'z', 'x0'"):
        PELSDenoiser(data, 3, attend_on="y")
    with pytest.raises(ValueError, match="beta must be a finite float >= 0"):
        PELSDenoiser(data, 3, beta=-1)
    with pytest.raises(ValueError, match="P2 must be an odd positive int"):
        PELSDenoiser(data, 3, P2=2)
    with pytest.raises(ValueError, match="does not take the option 'lam'"):
        registry.make_denoiser("pels", data, lam=1.0)


def test_registry_entry_and_sampling():
    data, z = tiny()
    entry = registry.get_machine("pels")
    assert {"beta", "attention_P", "exclude", "attend_on", "P2"} <= set(entry.options)
    assert registry.is_shardable("pels")
    machine = registry.make_denoiser("pels", data.float(), P=3, beta=0.5, attend_on="x0")
    assert isinstance(machine, PELSDenoiser) and machine.beta == 0.5 and machine.attend_on == "x0"
    out = sample_ddim(machine, z.float() * 2, torch.tensor([2.0, 0.6, 0.0]), progress=False)
    assert out.shape == z.shape and bool(torch.isfinite(out).all())


def test_cli_pels_options_change_the_samples(tmp_path):
    common = ["sample", "--limit", "20", "--steps", "3", "--seeds", "0-1", "--patch-schedule", "3", "--no-progress"]

    def samples(name, *args):
        out = tmp_path / name
        assert main(common + list(args) + ["--out", str(out)]) == 0
        return np.load(out / "samples.npz")

    els = samples("els", "--machine", "els")["samples"]
    off = samples("off", "--machine", "pels", "--opt", "beta=0")["samples"]
    on = samples("on", "--machine", "pels", "--opt", "beta=2", "--opt", "attend_on=x0")
    np.testing.assert_array_equal(off, els)
    assert np.abs(on["samples"] - off).max() > 1e-3
    assert json.loads(str(on["settings"]))["machine_opts"] == ["beta=2", "attend_on=x0"]
