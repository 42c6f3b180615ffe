"""Denoisers driven by the samplers: memorization, the black/white toy, conditioning, the Gaussian machine."""

import pytest
import torch

import creativity_fast as cf
from creativity_fast.data.synthetic import black_white_toy
from creativity_fast.denoisers import ELSDenoiser, GaussianDenoiser, IdealDenoiser, PatchMachine
from creativity_fast.registry import make_denoiser
from creativity_fast.samplers import initial_noise, sample_ddim, sample_euler_maruyama
from creativity_fast.schedules import PatchSchedule, cosine_vp_sigmas


def tiny_data(N=6, C=1, H=6, W=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(N, C, H, W, generator=gen) * 2 - 1).double()


def test_ideal_sampling_ends_on_training_images():
    data = tiny_data()
    sigmas = cosine_vp_sigmas(30).double()
    z, gens = initial_noise(range(8), data.shape[1:], float(sigmas[0]), dtype=torch.float64)
    out = sample_euler_maruyama(IdealDenoiser(data, backend="reference"), z, sigmas, generator=gens, progress=False)
    dist = torch.cdist(out.reshape(8, -1), data.reshape(len(data), -1))
    assert float(dist.min(1).values.max()) < 1e-6


def test_black_white_toy_circular_els_ends_binary():
    toy = black_white_toy(H=8, W=8)
    sigmas = cosine_vp_sigmas(100)  # the last nonzero sigma (0.016) must resolve every pixel
    z, gens = initial_noise(range(6), toy.images.shape[1:], float(sigmas[0]))
    machine = ELSDenoiser(toy.images, P=3, boundary="circular", backend="reference")
    out = sample_ddim(machine, z, sigmas, generator=gens, progress=False)
    assert torch.allclose(out.abs(), torch.ones_like(out), atol=1e-5)
    # patch mosaics: not every sample is one of the two training images
    uniform = (out.reshape(6, -1).std(1) < 1e-3)
    assert not bool(uniform.all())


def test_class_conditional_machine_uses_only_that_class():
    data = tiny_data(N=6)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    z = torch.randn(3, *data.shape[1:], dtype=torch.float64)
    cond = IdealDenoiser(data, labels=labels, class_label=1, backend="reference")
    want = cf.patch_posterior_mean(z, data[2:4], 0.7, 1, mode="ideal", backend="reference")
    torch.testing.assert_close(cond(z, 0.7), want)
    # per-sample labels override; each sample matches its own class
    machine = ELSDenoiser(data, P=3, labels=labels, backend="reference")
    out = machine(z, 0.7, class_labels=torch.tensor([2, 0, 2]))
    for b, c in enumerate([2, 0, 2]):
        one = cf.patch_posterior_mean(z[b:b + 1], data[labels == c], 0.7, 3, backend="reference")
        torch.testing.assert_close(out[b:b + 1], one)
    with pytest.raises(ValueError, match="class_label 7"):
        IdealDenoiser(data, labels=labels, class_label=7)


def test_provenance_reports_ids_in_the_full_training_set():
    data = tiny_data(N=6)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    machine = ELSDenoiser(data, P=3, labels=labels, class_label=2, backend="reference", record_stats=True)
    machine(torch.randn(2, *data.shape[1:], dtype=torch.float64), 0.3)
    mu = machine.last_stats.argmax[..., 0]
    assert set(mu.unique().tolist()) <= {4, 5}


def test_patch_schedule_changes_p_per_step():
    data = tiny_data()
    sigmas = cosine_vp_sigmas(4).double()
    schedule = PatchSchedule(sigmas, [7, 5, 3, 1])
    seen = []
    machine = ELSDenoiser(data, P=schedule, backend="reference")
    original = machine.patch_size
    machine.patch_size = lambda s: seen.append(original(s)) or seen[-1]
    z, gens = initial_noise([0], data.shape[1:], float(sigmas[0]), dtype=torch.float64)
    sample_ddim(machine, z, sigmas, generator=gens, progress=False)
    assert seen == [7, 5, 3, 1]


def test_gaussian_machine_is_the_wiener_filter():
    data = tiny_data(N=40, H=3, W=3, seed=3)
    x = data.reshape(40, -1)
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / 40
    z = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    sigma = 0.6
    want = mean + (cov @ torch.linalg.inv(cov + sigma ** 2 * torch.eye(9, dtype=torch.float64)) @ (z.reshape(4, -1) - mean).T).T
    got = GaussianDenoiser(data)(z, sigma)
    torch.testing.assert_close(got.reshape(4, -1), want, rtol=1e-9, atol=1e-9)


def test_make_denoiser_rejects_unknown_machines():
    with pytest.raises(ValueError, match="machine must be one of"):
        make_denoiser("unet", tiny_data())
    with pytest.raises(ValueError, match="P must be an odd"):
        PatchMachine(tiny_data(), "els", 4)
