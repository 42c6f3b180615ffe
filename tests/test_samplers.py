"""Tests for creativity_fast.schedules and creativity_fast.samplers (docs/theory.md §5)."""

import math

import pytest
import torch

from creativity_fast.samplers import (
    SAMPLERS,
    ancestral_step,
    get_sampler,
    initial_noise,
    randn_per_sample,
    sample_ddim,
    sample_euler_maruyama,
    sample_heun,
)
from creativity_fast.schedules import (
    PATCH_SCHEDULE_ALIASES,
    PUBLISHED_PATCH_SCHEDULES,
    PatchSchedule,
    abar_to_sigma,
    cosine_vp_sigmas,
    karras_sigmas,
    patch_sizes_for_steps,
    published_patch_schedule,
    published_schedule_names,
    sigma_to_abar,
    sigma_to_t,
    t_to_sigma,
)

# (sampler, keyword arguments) pairs covering every sampler and the ancestral DDIM.
ALL_SAMPLERS = [
    ("ddim", {}),
    ("ddim", {"eta": 1.0}),
    ("euler_maruyama", {}),
    ("heun", {}),
]
STOCHASTIC = [("euler_maruyama", {}), ("ddim", {"eta": 1.0}), ("ddim", {"eta": 0.5})]


def gaussian_denoiser(var):
    """Exact posterior mean for data ~ N(0, var I): x0_hat = var / (var + sigma^2) z."""

    def denoiser(z, sigma):
        assert sigma.shape == (z.shape[0],)
        return z * (var / (var + sigma**2)).view(-1, *([1] * (z.dim() - 1)))

    return denoiser


# --------------------------------------------------------------------------- #
# noise schedules
# --------------------------------------------------------------------------- #

def test_karras_endpoints_and_monotone():
    s = karras_sigmas(10, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    assert s.shape == (11,)
    assert s[0].item() == pytest.approx(80.0, rel=1e-6)
    assert s[-2].item() == pytest.approx(0.002, rel=1e-5)
    assert s[-1].item() == 0.0
    assert bool((s[1:] < s[:-1]).all())
    # Eq. (5) at an interior point
    i, n, rho = 3, 10, 7.0
    expected = (80.0 ** (1 / rho) + i / (n - 1) * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    assert s[i].item() == pytest.approx(expected, rel=1e-6)
    assert karras_sigmas(1).tolist() == [80.0, 0.0]


def test_cosine_vp_schedule():
    n = 20
    s = cosine_vp_sigmas(n, dtype=torch.float64)
    assert s.shape == (n + 1,)
    assert s[-1].item() == 0.0
    assert bool((s[1:] < s[:-1]).all())
    # t = 1: abar = cos^2(pi / 2.016), sigma = sqrt((1 - abar) / abar) = tan(pi / 2.016) = 80.2099...
    abar1 = math.cos(math.pi / 2.016) ** 2
    expected = math.sqrt((1 - abar1) / abar1)
    assert expected == pytest.approx(80.2099357, rel=1e-7)
    assert s[0].item() == pytest.approx(expected, rel=1e-12)
    # every entry is the VP -> VE conversion of abar(t_i), t_i = i / n, from t = 1 down
    for k, t in enumerate([1 - j / n for j in range(n + 1)]):
        abar = math.cos(math.pi * t / 2.016) ** 2
        assert s[k].item() == pytest.approx(math.sqrt((1 - abar) / abar), rel=1e-9, abs=1e-12)


def test_vp_ve_conversions():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    sigma = t_to_sigma(t)
    assert torch.allclose(sigma_to_abar(sigma), torch.cos(math.pi * t / 2.016) ** 2, atol=1e-12)
    assert torch.allclose(sigma_to_t(sigma), t, atol=1e-12)
    abar = torch.tensor([1.0, 0.5, 0.1, 1e-4], dtype=torch.float64)
    assert torch.allclose(sigma_to_abar(abar_to_sigma(abar)), abar, rtol=1e-12)
    assert abar_to_sigma(0.5) == pytest.approx(1.0)
    assert sigma_to_t(t_to_sigma(0.3)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="abar"):
        abar_to_sigma(0.0)
    with pytest.raises(ValueError, match="sigma"):
        sigma_to_abar(-1.0)


def test_schedule_bad_arguments():
    with pytest.raises(ValueError, match="n"):
        karras_sigmas(0)
    with pytest.raises(ValueError, match="sigma_min"):
        karras_sigmas(5, sigma_min=10.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="s must be > 2"):
        cosine_vp_sigmas(5, s=2.0)


# --------------------------------------------------------------------------- #
# patch-size schedules
# --------------------------------------------------------------------------- #

def test_published_schedule_reversed_into_sampling_order():
    for name, low_to_high in PUBLISHED_PATCH_SCHEDULES.items():
        sizes = patch_sizes_for_steps(name, 20)
        assert sizes == low_to_high[::-1]
    assert patch_sizes_for_steps("mnist", 20)[0] == 15 and patch_sizes_for_steps("mnist", 20)[-1] == 3
    assert patch_sizes_for_steps("Fashion-MNIST", 20)[0] == 17


# A few entries of each published schedule (Kamb & Ganguli 2025; 20 steps, low -> high noise),
# typed in from the published lists: (index, P) pairs plus the total, so a shifted or mistyped
# entry anywhere fails.
PUBLISHED_PINS = {
    "mnist_resnet_zeros": ({0: 3, 4: 5, 13: 11, 14: 13, 19: 15}, 192),
    "mnist_resnet_circular": ({0: 3, 7: 9, 13: 11, 14: 9, 17: 7, 19: 3}, 144),
    "mnist_unet_zeros": ({0: 3, 2: 3, 11: 11, 15: 21, 18: 25, 19: 27}, 242),
    "fashion_mnist_resnet_zeros": ({0: 3, 4: 7, 9: 11, 12: 13, 18: 17, 19: 17}, 208),
    "fashion_mnist_unet_zeros": ({0: 3, 7: 9, 8: 11, 14: 21, 15: 23, 19: 25}, 266),
    "cifar10_resnet_zeros": ({0: 3, 3: 3, 4: 5, 12: 9, 16: 15, 19: 17}, 174),
    "cifar10_resnet_circular": ({0: 3, 7: 5, 8: 7, 15: 13, 17: 15, 19: 15}, 164),
    "cifar10_unet_zeros": ({0: 3, 11: 7, 15: 13, 18: 17, 19: 25}, 172),
    "celeba_resnet_zeros": ({0: 3, 2: 3, 3: 5, 9: 7, 17: 15, 18: 19, 19: 19}, 174),
    "celeba_unet_zeros": ({0: 3, 6: 3, 7: 5, 12: 7, 17: 13, 18: 19, 19: 27}, 146),
}


def test_the_ten_published_schedules_are_pinned():
    assert sorted(PUBLISHED_PATCH_SCHEDULES) == sorted(PUBLISHED_PINS)
    for name, (pins, total) in PUBLISHED_PINS.items():
        low_to_high = PUBLISHED_PATCH_SCHEDULES[name]
        assert len(low_to_high) == 20 and sum(low_to_high) == total, name
        for i, p in pins.items():
            assert low_to_high[i] == p, (name, i)
        # selectable by name (any case, '-' for '_'), in sampling order (highest noise first)
        assert patch_sizes_for_steps(name, 20) == low_to_high[::-1]
        assert patch_sizes_for_steps(name.upper().replace("_", "-"), 20) == low_to_high[::-1]
        assert PatchSchedule(cosine_vp_sigmas(20), name).sizes == low_to_high[::-1]


def test_short_schedule_names_are_aliases():
    assert PATCH_SCHEDULE_ALIASES == {"mnist": "mnist_resnet_zeros", "fashion_mnist": "fashion_mnist_resnet_zeros"}
    assert patch_sizes_for_steps("mnist", 20) == patch_sizes_for_steps("mnist_resnet_zeros", 20)
    assert patch_sizes_for_steps("fashion_mnist", 13) == patch_sizes_for_steps("fashion_mnist_resnet_zeros", 13)
    assert published_patch_schedule("cifar10") is None
    assert "celeba_unet_zeros" in published_schedule_names() and "mnist" in published_schedule_names()


@pytest.mark.parametrize("name", sorted(PUBLISHED_PATCH_SCHEDULES))
@pytest.mark.parametrize("n_steps", [1, 7, 10, 40])
def test_published_schedule_resampled(name, n_steps):
    sizes = patch_sizes_for_steps(name, n_steps)
    assert len(sizes) == n_steps
    assert all(p % 2 == 1 and p > 0 for p in sizes)
    published = PUBLISHED_PATCH_SCHEDULES[name][::-1]
    if all(a >= b for a, b in zip(published, published[1:])):  # the circular ones are not monotone
        assert all(a >= b for a, b in zip(sizes, sizes[1:])), sizes  # non-increasing in sampling order
    assert set(sizes) <= set(published)
    if n_steps >= 20:  # the ends of the trajectory keep the ends of the published schedule
        assert sizes[0] == published[0] and sizes[-1] == published[-1]
    else:  # fewer steps: the first step takes the entry whose interval holds its middle
        assert sizes[0] == published[(20 // n_steps) // 2]


def test_resampling_nearest_by_relative_position():
    published = PUBLISHED_PATCH_SCHEDULES["mnist_resnet_zeros"][::-1]
    # the middle of step j of 10 lies on the boundary of steps 2j and 2j+1 of 20: the later one
    assert patch_sizes_for_steps("mnist", 10) == published[1::2]
    assert patch_sizes_for_steps("mnist", 5) == [published[k] for k in (2, 6, 10, 14, 18)]
    # 40 steps: each published entry twice
    assert patch_sizes_for_steps("mnist", 40) == [p for p in published for _ in range(2)]


def test_patch_sizes_other_specs():
    assert patch_sizes_for_steps(7, 4) == [7, 7, 7, 7]
    assert patch_sizes_for_steps([9, 7, 5, 3], 4) == [9, 7, 5, 3]
    assert patch_sizes_for_steps("9, 7,5,3", 4) == [9, 7, 5, 3]
    assert patch_sizes_for_steps("5", 3) == [5, 5, 5]
    with pytest.raises(ValueError, match="odd"):
        patch_sizes_for_steps(4, 3)
    with pytest.raises(ValueError, match=r"spec\[1\]"):
        patch_sizes_for_steps([3, 6, 3], 3)
    with pytest.raises(ValueError, match="n_steps"):
        patch_sizes_for_steps([3, 3], 3)
    with pytest.raises(ValueError, match="published"):
        patch_sizes_for_steps("cifar", 3)
    with pytest.raises(ValueError, match="odd"):
        patch_sizes_for_steps(-3, 3)
    with pytest.raises(TypeError, match="spec"):
        patch_sizes_for_steps(3.0, 3)


def test_patch_schedule_lookup():
    sigmas = karras_sigmas(4)
    sched = PatchSchedule(sigmas, [9, 7, 5, 3])
    for i in range(4):
        assert sched(float(sigmas[i])) == [9, 7, 5, 3][i]
    # Heun's second evaluation at sigma_next uses the next step's P
    for i in range(3):
        assert sched(float(sigmas[i + 1])) == [9, 7, 5, 3][i + 1]
    assert sched(0.0) == 3
    assert sched(float(sigmas[3]) / 10) == 3  # below the last nonzero sigma
    assert sched(1e6) == 9
    # nearest in log space: the geometric midpoint splits two steps
    mid = math.sqrt(float(sigmas[0]) * float(sigmas[1]))
    assert sched(mid * 1.01) == 9 and sched(mid / 1.01) == 7
    # a [B] tensor with one common value, as samplers pass it
    assert sched(torch.full((5,), float(sigmas[2]))) == 5
    with pytest.raises(ValueError, match="sigma"):
        sched(torch.tensor([1.0, 2.0]))
    assert PatchSchedule(cosine_vp_sigmas(20), "mnist").sizes == PUBLISHED_PATCH_SCHEDULES["mnist_resnet_zeros"][::-1]


def test_patch_schedule_drives_heun():
    sigmas = karras_sigmas(4)
    sched = PatchSchedule(sigmas, [9, 7, 5, 3])
    seen = []

    def denoiser(z, sigma):
        seen.append((float(sigma[0]), sched(sigma)))
        return torch.zeros_like(z)

    sample_heun(denoiser, torch.ones(2, 1, 3, 3), sigmas, progress=False)
    assert [p for _, p in seen] == [9, 7, 7, 5, 5, 3, 3]


# --------------------------------------------------------------------------- #
# samplers
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("name,kwargs", ALL_SAMPLERS)
def test_one_point_data_set_ends_on_it(name, kwargs):
    target = torch.linspace(-1, 1, 12).view(1, 3, 2, 2)

    def denoiser(z, sigma):
        return target.expand_as(z).clone()

    sigmas = karras_sigmas(6)
    z, gens = initial_noise([0, 1, 2], (3, 2, 2), sigmas[0])
    out = get_sampler(name)(denoiser, z, sigmas, generator=gens, progress=False, **kwargs)
    assert torch.equal(out, target.expand(3, -1, -1, -1))


def test_ddim_deterministic_closed_form_on_gaussian():
    var = 0.25
    den = gaussian_denoiser(var)
    sigmas = karras_sigmas(8, dtype=torch.float64)
    z = sigmas[0] * torch.randn(16, 1, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.manual_seed(0)
    a = sample_ddim(den, z, sigmas, progress=False)
    torch.manual_seed(1)
    b = sample_ddim(den, z, sigmas, generator=torch.Generator().manual_seed(9), progress=False)
    assert torch.equal(a, b)  # eta = 0 consumes no randomness
    # z' = x0 + (s'/s)(z - x0) with x0 = var/(var+s^2) z  =>  z' = z (var + s' s) / (var + s^2)
    factor = 1.0
    s = sigmas.tolist()
    for i in range(len(s) - 2):
        factor *= (var + s[i + 1] * s[i]) / (var + s[i] ** 2)
    factor *= var / (var + s[-2] ** 2)
    assert torch.allclose(a, z * factor, rtol=1e-10, atol=0)


@pytest.mark.parametrize("name,kwargs", ALL_SAMPLERS)
def test_gaussian_sample_variance(name, kwargs):
    # data ~ N(0, 0.25 I); 20000 x 4 values -> std error of the variance ~0.5%.
    # Discretisation bias at 200 cosine steps is <= 3%; a sampler with wrong noise
    # (none, doubled, or a wrong drift) is off by far more than the 6% tolerance.
    var = 0.25
    sigmas = cosine_vp_sigmas(200)
    g = torch.Generator().manual_seed(123)
    z = sigmas[0] * torch.randn(20000, 1, 2, 2, generator=g)
    out = get_sampler(name)(gaussian_denoiser(var), z, sigmas, generator=g, progress=False, **kwargs)
    assert out.var().item() / var == pytest.approx(1.0, abs=0.06)
    assert abs(out.mean().item()) < 0.02


def test_stochastic_samplers_need_noise():
    # Without the sqrt(sigma^2 - sigma'^2) xi term Euler-Maruyama would collapse the variance.
    var = 0.25
    sigmas = cosine_vp_sigmas(50)
    g = torch.Generator().manual_seed(0)
    z = sigmas[0] * torch.randn(4000, 1, 2, 2, generator=g)
    a = sample_euler_maruyama(gaussian_denoiser(var), z, sigmas, generator=torch.Generator().manual_seed(1),
                              progress=False)
    b = sample_euler_maruyama(gaussian_denoiser(var), z, sigmas, generator=torch.Generator().manual_seed(2),
                              progress=False)
    assert not torch.allclose(a, b)
    # most of the final variance comes from the injected noise, not from z_T
    corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
    assert corr < 0.5


def test_heun_more_accurate_than_ddim():
    var = 0.25
    den = gaussian_denoiser(var)
    errors = {}
    for n in (10, 20, 40):
        sigmas = karras_sigmas(n, dtype=torch.float64)
        z = sigmas[0] * torch.randn(32, 1, 2, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        s_max, s_last = float(sigmas[0]), float(sigmas[-2])
        log = {}
        for name in ("ddim", "heun"):
            get_sampler(name)(den, z, sigmas, progress=False, callback=lambda d, name=name: log.__setitem__(
                (name, d["i"]), d["z"]))
            # exact probability-flow ODE solution at the last nonzero sigma
            exact = z * math.sqrt((var + s_last**2) / (var + s_max**2))
            got = log[(name, n - 2)]
            errors[name, n] = ((got - exact).abs().max() / exact.abs().max()).item()
    for n in (20, 40):
        assert errors["heun", n] < errors["ddim", n] / 3
    # orders of convergence: first for DDIM, second for Heun
    assert 1.6 < errors["ddim", 20] / errors["ddim", 40] < 2.4
    assert errors["heun", 20] / errors["heun", 40] > 3.5
    assert errors["heun", 10] / errors["heun", 20] > 3.5


@pytest.mark.parametrize("name,kwargs", STOCHASTIC)
def test_per_sample_generators_batch_independent(name, kwargs):
    sigmas = karras_sigmas(5)
    den = gaussian_denoiser(0.25)
    seeds = [11, 22, 33, 44]
    z, gens = initial_noise(seeds, (1, 3, 3), sigmas[0])
    batch = get_sampler(name)(den, z, sigmas, generator=gens, progress=False, **kwargs)
    z1, gens1 = initial_noise([33], (1, 3, 3), sigmas[0])
    assert torch.equal(z1[0], z[2])
    alone = get_sampler(name)(den, z1, sigmas, generator=gens1, progress=False, **kwargs)
    assert torch.allclose(alone[0], batch[2], rtol=1e-6, atol=1e-6)
    # a different seed gives a different sample (the noise is actually used)
    assert not torch.allclose(batch[0], batch[1])


def test_randn_per_sample():
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    x = randn_per_sample((3, 2, 4), gens, "cpu", torch.float32)
    assert x.shape == (3, 2, 4)
    assert torch.equal(x[1], torch.randn(2, 4, generator=torch.Generator().manual_seed(2)))
    y = randn_per_sample((3, 2, 4), torch.Generator().manual_seed(7), "cpu", torch.float32)
    assert torch.equal(y, torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(7)))
    with pytest.raises(ValueError, match="generator"):
        randn_per_sample((2, 4), gens, "cpu", torch.float32)


def test_initial_noise():
    z, gens = initial_noise([3, 4], (1, 2, 2), 80.0, dtype=torch.float64)
    assert z.shape == (2, 1, 2, 2) and z.dtype == torch.float64 and len(gens) == 2
    expected = 80.0 * torch.randn(1, 2, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(z[1], expected)
    with pytest.raises(TypeError, match="seeds"):
        initial_noise(4, (1, 2, 2), 80.0)
    with pytest.raises(ValueError, match="shape_chw"):
        initial_noise([1], (2, 2), 80.0)
    with pytest.raises(ValueError, match="sigma_max"):
        initial_noise([1], (1, 2, 2), 0.0)


def test_ancestral_step_formula():
    s, s_next = 2.0, 1.0
    down, up = ancestral_step(s, s_next, eta=1.0)
    # posterior q(z'|z, x0): variance s'^2 (s^2 - s'^2) / s^2, mean coefficient s'^2 / s^2
    assert up**2 == pytest.approx(s_next**2 * (s**2 - s_next**2) / s**2)
    assert down / s == pytest.approx(s_next**2 / s**2)
    assert down**2 + up**2 == pytest.approx(s_next**2)
    assert ancestral_step(s, s_next, eta=0.0) == (s_next, 0.0)


@pytest.mark.parametrize("name,kwargs", ALL_SAMPLERS)
def test_callback_once_per_step_and_denoiser_contract(name, kwargs):
    sigmas = karras_sigmas(5)
    calls, infos = [], []

    def denoiser(z, sigma, *, scale):
        assert isinstance(sigma, torch.Tensor) and sigma.shape == (z.shape[0],)
        assert sigma.dtype == z.dtype
        calls.append(float(sigma[0]))
        return scale * z

    z = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    out = get_sampler(name)(denoiser, z, sigmas, callback=infos.append, progress=False,
                            extra_args={"scale": 0.5}, generator=torch.Generator().manual_seed(0), **kwargs)
    assert [d["i"] for d in infos] == list(range(5))
    assert [d["sigma"] for d in infos] == pytest.approx(sigmas[:-1].tolist())
    assert [d["sigma_next"] for d in infos] == pytest.approx(sigmas[1:].tolist())
    assert set(infos[0]) == {"i", "sigma", "sigma_next", "z", "x0_hat"}
    assert torch.equal(infos[-1]["z"], out) and torch.equal(infos[-1]["x0_hat"], out)
    assert len(calls) == (9 if name == "heun" else 5)


def test_registry():
    assert set(SAMPLERS) == {"ddim", "euler_maruyama", "heun"}
    assert get_sampler("heun") is sample_heun
    assert get_sampler("Euler-Maruyama") is sample_euler_maruyama
    with pytest.raises(ValueError, match="ddim.*euler_maruyama.*heun"):
        get_sampler("dpm")


@pytest.mark.parametrize("name,kwargs", ALL_SAMPLERS)
def test_bad_arguments(name, kwargs):
    sampler = get_sampler(name)
    den = gaussian_denoiser(0.25)
    z = torch.randn(2, 1, 2, 2)
    with pytest.raises(ValueError, match="sigmas"):
        sampler(den, z, torch.tensor([]), progress=False, **kwargs)
    with pytest.raises(ValueError, match="sigmas"):
        sampler(den, z, torch.tensor([80.0]), progress=False, **kwargs)
    with pytest.raises(ValueError, match="sigmas"):
        sampler(den, z, torch.tensor([1.0, 2.0, 0.0]), progress=False, **kwargs)
    with pytest.raises(ValueError, match="sigmas"):
        sampler(den, z, torch.tensor([2.0, 2.0, 0.0]), progress=False, **kwargs)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    with pytest.raises(ValueError, match="generator"):
        sampler(den, z, karras_sigmas(3), generator=gens, progress=False, **kwargs)
    with pytest.raises(TypeError, match="generator"):
        sampler(den, z, karras_sigmas(3), generator=5, progress=False, **kwargs)
    with pytest.raises(TypeError, match="denoiser"):
        sampler(None, z, karras_sigmas(3), progress=False, **kwargs)
    with pytest.raises(ValueError, match="z"):
        sampler(den, torch.full((2, 1, 2, 2), float("nan")), karras_sigmas(3), progress=False, **kwargs)
    with pytest.raises(ValueError, match="denoiser"):
        sampler(lambda z, s: z[:1], z, karras_sigmas(3), progress=False, **kwargs)


def test_bad_eta():
    with pytest.raises(ValueError, match="eta"):
        sample_ddim(gaussian_denoiser(1.0), torch.randn(1, 1, 2, 2), karras_sigmas(3), eta=-1.0, progress=False)


def test_partial_trajectory_keeps_last_sigma():
    # sigmas may stop above 0 (e.g. to hand over to another sampler): the state stays at sigma = 1
    var = 0.25
    sigmas = torch.tensor([10.0, 5.0, 1.0], dtype=torch.float64)
    z = 10.0 * torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sample_ddim(gaussian_denoiser(var), z, sigmas, progress=False)
    factor = (var + 5.0 * 10.0) / (var + 100.0) * (var + 1.0 * 5.0) / (var + 25.0)
    assert torch.allclose(out, z * factor, rtol=1e-12, atol=0)
