"""Networks of other parametrisations as denoisers, and a machine as a diffusers-style model (docs/theory.md §11).

The conversion checks need only torch; the diffusers checks skip without diffusers.
"""

import json
import math
import sys

import numpy as np
import pytest
import torch

from creativity_fast.adapters import (DiffusersStyleModel, DiffusersUNetDenoiser, EDMDenoiser, KDiffusionDenoiser,
                                      detect_network_kind)
from creativity_fast.denoisers import ELSDenoiser
from creativity_fast.samplers import sample_ddim, sample_heun
from creativity_fast.schedules import (abar_to_sigma, ddpm_linear_alphas_cumprod, discrete_sigma_to_t, discrete_sigmas,
                                       discrete_t_to_sigma, edm_preconditioning, eps_to_x0, sigma_to_abar, v_to_x0,
                                       x0_to_eps, x0_to_v)


def _data(n=6, size=9, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, 3, 3, generator=g, dtype=torch.float64)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear").tanh().to(dtype)


ABAR = ddpm_linear_alphas_cumprod()  # DDPM linear betas 1e-4..0.02, 1000 steps


# --------------------------------------------------------------------------- #
# the shared formulas, against hand computations
# --------------------------------------------------------------------------- #

def test_ddpm_linear_schedule_by_hand():
    betas = [1e-4 + i / 999 * (0.02 - 1e-4) for i in range(1000)]
    prod, expected = 1.0, []
    for b in betas:
        prod *= 1.0 - b
        expected.append(prod)
    assert torch.allclose(ABAR, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    sig = discrete_sigmas(ABAR)
    assert torch.allclose(sig, ((1 - ABAR) / ABAR).sqrt(), rtol=1e-14, atol=0)
    assert torch.allclose(sig, abar_to_sigma(ABAR)) and torch.allclose(sigma_to_abar(sig), ABAR)
    with pytest.raises(ValueError, match="decreasing"):
        discrete_sigmas(ABAR.flip(0))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        discrete_sigmas(torch.tensor([1.0, 0.5]))


def _kdiffusion_sigma_to_t(sigma, sigmas):
    """k-diffusion's DiscreteSchedule.sigma_to_t algorithm (cumsum/argmax form), written out."""
    log_sigmas = sigmas.log()
    log_sigma = sigma.log()
    dists = log_sigma - log_sigmas[:, None]
    low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = ((low - log_sigma) / (low - high)).clamp(0, 1)
    return (1 - w) * low_idx + w * high_idx


def test_sigma_to_t_interpolates_log_sigma_between_timesteps():
    sig = discrete_sigmas(ABAR)
    g = torch.Generator().manual_seed(0)
    # random sigmas inside the table, the table's own values, and both ends beyond it
    queries = torch.cat([torch.exp(torch.empty(200, dtype=torch.float64).uniform_(math.log(0.011), math.log(150),
                                                                                  generator=g)),
                         sig[[0, 1, 17, 500, 998, 999]], torch.tensor([1e-4, 0.0099, 158.0, 1e6], dtype=torch.float64)])
    t = discrete_sigma_to_t(queries, sig)
    # by hand: find i with sig[i] <= s <= sig[i+1], t = i + (log s - log sig[i]) / (log sig[i+1] - log sig[i])
    for s, ti in zip(queries.tolist(), t.tolist()):
        if s <= sig[0]:
            assert ti == 0.0
            continue
        if s >= sig[-1]:
            assert ti == 999.0
            continue
        i = max(k for k in range(999) if sig[k] <= s)
        want = i + (math.log(s) - math.log(sig[i])) / (math.log(sig[i + 1]) - math.log(sig[i]))
        assert ti == pytest.approx(want, abs=1e-9)
    assert torch.allclose(t, _kdiffusion_sigma_to_t(queries, sig), atol=1e-9)
    assert discrete_sigma_to_t(0.0, sig) == 0.0  # sigma = 0 clamps to t = 0
    assert torch.equal(discrete_sigma_to_t(sig[[3, 250]], sig), torch.tensor([3.0, 250.0], dtype=torch.float64))
    # the inverse
    tt = torch.tensor([0.0, 0.25, 3.5, 998.9, 999.0], dtype=torch.float64)
    assert torch.allclose(discrete_sigma_to_t(discrete_t_to_sigma(tt, sig), sig), tt, atol=1e-9)
    assert discrete_t_to_sigma(2.5, sig) == pytest.approx(math.sqrt(sig[2] * sig[3]), rel=1e-12)
    with pytest.raises(ValueError, match="t must be"):
        discrete_t_to_sigma(1000.0, sig)


def test_eps_v_and_edm_formulas_by_hand():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.05, 1.3, 40.0], dtype=torch.float64)
    s4 = sigma[:, None, None, None]
    z = x0 + s4 * eps
    abar = 1 / (1 + s4 ** 2)
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    assert torch.allclose(xt, abar.sqrt() * z)  # docs/theory.md §2: z = x_t / sqrt(abar)
    assert torch.allclose(eps_to_x0(z, sigma, eps), x0, atol=1e-12)
    assert torch.allclose(x0_to_eps(z, sigma, x0), eps, atol=1e-12)
    assert torch.allclose((xt - (1 - abar).sqrt() * eps) / abar.sqrt(), x0, atol=1e-12)
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    assert torch.allclose(v_to_x0(z, sigma, v), abar.sqrt() * xt - (1 - abar).sqrt() * v, atol=1e-12)
    assert torch.allclose(v_to_x0(z, sigma, v), x0, atol=1e-12)
    assert torch.allclose(x0_to_v(z, sigma, x0), v, atol=1e-12)
    assert torch.allclose(eps_to_x0(z[:1], 0.05, eps[:1]), x0[:1], atol=1e-12)  # a float sigma
    for sd in (0.5, 1.0):
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, sd)
        for k, s in enumerate(sigma.tolist()):
            assert c_skip[k].item() == pytest.approx(sd ** 2 / (s ** 2 + sd ** 2), rel=1e-14)
            assert c_out[k].item() == pytest.approx(s * sd / math.sqrt(s ** 2 + sd ** 2), rel=1e-14)
            assert c_in[k].item() == pytest.approx(1 / math.sqrt(s ** 2 + sd ** 2), rel=1e-14)
            assert c_noise[k].item() == pytest.approx(math.log(s) / 4, rel=1e-14)
    assert edm_preconditioning(2.0)[0] == pytest.approx(0.25 / 4.25)


# --------------------------------------------------------------------------- #
# adapters on stub networks (no diffusers needed)
# --------------------------------------------------------------------------- #

class _StubUNet(torch.nn.Module):
    """``f(x_t, t) = 0.7 x_t + t / 1000`` with a float32 parameter; records its inputs; returns ``.sample``."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.7))
        self.calls = []

    def forward(self, x, t, class_labels=None):
        self.calls.append((x.clone(), t.clone(), class_labels))

        class Out:
            pass
        out = Out()
        out.sample = self.w * x + t[:, None, None, None] / 1000
        return out


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_unet_adapter_on_a_stub(prediction):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(5, 1, 6, 6, generator=g, dtype=torch.float64) * 3
    sigma = torch.tensor([0.02, 0.5, 3.0, 80.0, 200.0], dtype=torch.float64)
    net = _StubUNet()
    den = DiffusersUNetDenoiser(net, ABAR.float(), prediction_type=prediction, batch_size=2)
    x0 = den(z, sigma)
    assert x0.dtype == torch.float64 and x0.shape == z.shape and len(net.calls) == 3  # batches 2, 2, 1
    xs = torch.cat([c[0] for c in net.calls])
    ts = torch.cat([c[1] for c in net.calls])
    assert xs.dtype == torch.float32 and ts.dtype == torch.float32
    # by hand
    table = ((1 - ABAR.float().double()) / ABAR.float().double()).sqrt()
    want_t = _kdiffusion_sigma_to_t(sigma, table)
    assert torch.allclose(ts.double(), want_t, atol=1e-3) and ts[-1].item() == 999.0  # clamped
    s4 = sigma[:, None, None, None]
    abar = 1 / (1 + s4 ** 2)
    xt = abar.sqrt() * z
    assert torch.allclose(xs.double(), xt, rtol=1e-6, atol=1e-6)
    pred = 0.7 * xs.double() + ts.double()[:, None, None, None] / 1000
    want = {"epsilon": z - s4 * pred,
            "v_prediction": abar.sqrt() * xt - (1 - abar).sqrt() * pred,
            "sample": pred}[prediction]
    assert torch.allclose(x0, want, rtol=1e-6, atol=1e-5)
    clipped = DiffusersUNetDenoiser(net, ABAR, prediction_type=prediction, clip=(-1, 1))(z, sigma)
    assert torch.allclose(clipped, want.clamp(-1, 1), rtol=1e-6, atol=1e-5)
    assert den(z[:1], 1.5).shape == (1, 1, 6, 6)  # a float sigma
    with pytest.raises(ValueError, match="sigma"):
        den(z, torch.zeros(5))
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusersUNetDenoiser(net, ABAR, prediction_type="x0")


def test_kdiffusion_and_edm_adapters_on_stubs():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 2, 5, 5, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 2.0, 9.0], dtype=torch.float64)
    seen = []

    def model(x, s, class_labels=None):
        seen.append((s.clone(), class_labels))
        return x / (1 + s[:, None, None, None] ** 2)  # the exact denoiser of N(0, I) data

    den = KDiffusionDenoiser(model, batch_size=3)
    assert torch.equal(den(z, sigma), z / (1 + sigma[:, None, None, None] ** 2))
    assert [s.tolist() for s, _ in seen] == [[0.1, 1.0, 2.0], [9.0]]
    den(z, sigma, class_labels=torch.tensor([1, 2, 3, 4]))
    assert seen[-1][1].tolist() == [4] and seen[-2][1].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="shape"):
        KDiffusionDenoiser(lambda x, s: x[:, :1])(z, sigma)

    def F(x, c_noise):
        return torch.tanh(x) * torch.exp(c_noise)[:, None, None, None]

    for sd in (0.5, 1.3):
        x0 = EDMDenoiser(F, sigma_data=sd)(z, sigma)
        s4 = sigma[:, None, None, None]
        c_skip, c_out = sd ** 2 / (s4 ** 2 + sd ** 2), s4 * sd / (s4 ** 2 + sd ** 2).sqrt()
        c_in, c_noise = 1 / (s4 ** 2 + sd ** 2).sqrt(), s4.log() / 4
        assert torch.allclose(x0, c_skip * z + c_out * torch.tanh(c_in * z) * c_noise.exp(), atol=1e-13)
    with pytest.raises(ValueError, match="sigma_data"):
        EDMDenoiser(F, sigma_data=0.0)


def test_project_networks_stay_network_denoisers(tmp_path):
    from creativity_fast.adapters import load_denoiser
    from creativity_fast.nets import ConvResNet, NetworkDenoiser, save_network
    net = ConvResNet(width=4, depth=2)
    path = save_network(tmp_path / "m.pt", net)
    assert detect_network_kind(path) == "checkpoint"
    den, info = load_denoiser(path, clip=None, batch_size=7)
    assert isinstance(den, NetworkDenoiser) and den.clip is None and den.batch_size == 7
    assert info["path"] == str(path) and info["config"]["arch"] == "resnet"
    z = torch.randn(2, 1, 8, 8)
    assert torch.equal(den(z, 2.0), NetworkDenoiser(net, clip=None)(z, 2.0))
    with pytest.raises(FileNotFoundError):
        detect_network_kind(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither"):
        detect_network_kind(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ValueError, match="UNet2DConditionModel"):
        detect_network_kind(tmp_path / "other")


def test_core_does_not_import_diffusers():
    import subprocess
    code = ("import sys, creativity_fast, creativity_fast.adapters, creativity_fast.cli, creativity_fast.commands.compare;"
            "print('diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- #
# k-diffusion samplers' calling contract: a replica of three loops
# --------------------------------------------------------------------------- #

def _to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def kd_sample_euler(model, x, sigmas, extra_args=None):
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        x = x + _to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


def kd_sample_heun(model, x, sigmas, extra_args=None):
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = _to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = _to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
            x = x + (d + d_2) / 2 * dt
    return x


def kd_sample_dpmpp_2m(model, x, sigmas, extra_args=None):
    """DPM-Solver++(2M) in k-diffusion's form: log-sigma time t = -log sigma, one model call per step."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        ratio = sigmas[i + 1] / sigmas[i]  # = exp(-h)
        if old_denoised is None or sigmas[i + 1] == 0:
            x = ratio * x - torch.expm1(-h) * denoised
        else:
            r = (t - (-sigmas[i - 1].log())) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = ratio * x - torch.expm1(-h) * denoised_d
        old_denoised = denoised
    return x


SIGMAS = torch.tensor([6.0, 2.5, 1.1, 0.5, 0.2, 0.0], dtype=torch.float64)


def test_kdiffusion_sampler_loops_run_the_machines_unchanged():
    data = _data()
    machine = ELSDenoiser(data, P=3, backend="reference")
    g = torch.Generator().manual_seed(4)
    z = SIGMAS[0] * torch.randn(2, 1, 9, 9, generator=g, dtype=torch.float64)
    euler = kd_sample_euler(machine, z, SIGMAS)
    assert torch.allclose(euler, sample_ddim(machine, z, SIGMAS, progress=False), atol=1e-12)
    heun = kd_sample_heun(machine, z, SIGMAS)
    assert torch.allclose(heun, sample_heun(machine, z, SIGMAS, progress=False), atol=1e-12)
    dpm = kd_sample_dpmpp_2m(machine, z, SIGMAS)
    assert dpm.shape == z.shape and bool(torch.isfinite(dpm).all()) and dpm.abs().max() <= 1 + 1e-9
    # DPM-Solver++(2M)'s first step and its step to 0 are DDIM steps: on two steps it is DDIM
    two = SIGMAS[[0, 2, 5]]
    assert torch.allclose(kd_sample_dpmpp_2m(machine, z, two), sample_ddim(machine, z, two, progress=False),
                          atol=1e-12)
    # the wrapped k-diffusion form of a machine is the machine
    assert torch.allclose(kd_sample_euler(KDiffusionDenoiser(machine), z, SIGMAS), euler, atol=0)


# --------------------------------------------------------------------------- #
# diffusers
# --------------------------------------------------------------------------- #

def _tiny_unet(seed=0, size=28):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))


@pytest.mark.parametrize("table", ["float32", "float64"])
def test_ddim_scheduler_driving_a_machine_reproduces_sample_ddim(table):
    diffusers = pytest.importorskip("diffusers")
    data = _data(n=50, size=12)
    machine = ELSDenoiser(data, P=5)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                        beta_schedule="linear", clip_sample=False, set_alpha_to_one=True,
                                        steps_offset=0, prediction_type="epsilon")
    if table == "float64":
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    scheduler.set_timesteps(8)
    model = DiffusersStyleModel(machine, scheduler, sample_size=12, in_channels=1)
    assert model.config.num_train_timesteps == 1000 and model.config.in_channels == 1
    # the project sampler's sigmas: the scheduler's timesteps' sigmas, then 0
    abar = scheduler.alphas_cumprod.double()
    sigmas = torch.cat([abar_to_sigma(abar[scheduler.timesteps]), torch.zeros(1, dtype=torch.float64)])
    g = torch.Generator().manual_seed(5)
    z = sigmas[0] * torch.randn(3, 1, 12, 12, generator=g, dtype=torch.float64)
    want = sample_ddim(machine, z, sigmas, progress=False)
    x = abar[scheduler.timesteps[0]].sqrt() * z  # x_T = sqrt(abar_T) z_T
    for t in scheduler.timesteps:
        eps = model(x, t)
        assert torch.equal(model(x, t, return_dict=True).sample, eps)
        x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    err = (x - want).abs().max().item()
    assert err < (1e-5 if table == "float32" else 1e-9), err


def test_diffusers_style_model_inverts_the_unet_adapter():
    """Machine -> eps model -> denoiser is the machine again (at integer and fractional timesteps)."""
    data = _data()
    machine = ELSDenoiser(data, P=3, backend="reference")
    for prediction in ("epsilon", "v_prediction", "sample"):
        model = DiffusersStyleModel(machine, ABAR, prediction_type=prediction)
        back = DiffusersUNetDenoiser(model, ABAR, prediction_type=prediction)
        z = 2.0 * torch.randn(2, 1, 9, 9, dtype=torch.float64)
        sig = discrete_sigmas(ABAR)
        for sigma in (float(sig[400]), 1.234):
            assert torch.allclose(back(z, sigma), machine(z, torch.full((2,), sigma, dtype=torch.float64)),
                                  atol=1e-9)
    with pytest.raises(ValueError, match="out of range"):
        model(z, 1000)


def test_real_unet_adapter_matches_the_hand_conversion():
    unet = _tiny_unet(size=28)
    x = torch.randn(2, 1, 28, 28)
    assert unet(x, torch.tensor([3.5, 10.25])).sample.shape == (2, 1, 28, 28)  # 28 -> 14 -> 28, float t
    den = DiffusersUNetDenoiser(unet, ABAR)
    z = torch.randn(2, 1, 28, 28) * 4
    sigma = torch.tensor([0.7, 30.0])
    t = discrete_sigma_to_t(sigma.double(), discrete_sigmas(ABAR))
    abar = 1 / (1 + sigma.double() ** 2)
    xt = (abar.sqrt()[:, None, None, None] * z.double()).float()
    with torch.no_grad():
        eps = unet(xt, t.float()).sample.double()
    want = z.double() - sigma.double()[:, None, None, None] * eps
    assert torch.allclose(den(z, sigma).double(), want, atol=1e-4)


@pytest.fixture(scope="module")
def diffusers_folders(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    root = tmp_path_factory.mktemp("diffusers")
    unet = _tiny_unet(seed=1, size=28)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(root / "pipe")
    v_sched = diffusers.DDPMScheduler(prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2")
    diffusers.DDPMPipeline(unet=unet, scheduler=v_sched).save_pretrained(root / "pipe_v")
    unet.save_pretrained(root / "bare")
    unet.save_pretrained(root / "bare_bin", safe_serialization=False)  # a torch .bin file, loaded weights-only
    return root, unet


def test_diffusers_folders_are_detected_and_loaded(diffusers_folders):
    from creativity_fast.adapters import load_denoiser
    root, unet = diffusers_folders
    assert detect_network_kind(root / "pipe") == "diffusers_pipeline"
    assert detect_network_kind(root / "bare") == "diffusers_unet"
    assert list((root / "bare").glob("*.safetensors"))
    z = torch.randn(2, 1, 28, 28)
    want = DiffusersUNetDenoiser(unet, ABAR, clip=(-1, 1))(z, torch.tensor([0.5, 5.0]))
    assert not list((root / "bare_bin").glob("*.safetensors"))
    for name in ("pipe", "bare", "bare_bin"):
        den, info = load_denoiser(root / name)
        assert isinstance(den, DiffusersUNetDenoiser) and den.prediction_type == "epsilon"
        assert torch.allclose(den.alphas_cumprod, ABAR.float().double())  # DDPMScheduler's float32 table
        assert (den(z, torch.tensor([0.5, 5.0])) - want).abs().max() < 1e-4
        assert info["config"]["padding"] == "zeros" and info["config"]["channels"] == 1
        json.dumps(info)  # goes into compare.json
    assert "default" in load_denoiser(root / "bare")[1]["config"]["scheduler_source"]
    den_v, info_v = load_denoiser(root / "pipe_v")
    assert den_v.prediction_type == "v_prediction" and info_v["config"]["scheduler"]["beta_schedule"] == \
        "squaredcos_cap_v2"


def test_compare_and_calibrate_take_a_diffusers_folder(diffusers_folders, tmp_path, capsys):
    from creativity_fast.cli import main
    root, _ = diffusers_folders
    common = ["--limit", "12", "--steps", "3", "--seeds", "0-1", "--no-progress", "--backend", "reference"]
    for name in ("pipe", "bare"):
        out = tmp_path / f"cmp_{name}"
        assert main(["compare", "--net", str(root / name), *common, "--machine", "els,ideal",
                     "--patch-schedule", "5", "--clip", "--out", str(out)]) == 0
        res = json.loads((out / "compare.json").read_text())
        assert set(res["median_r"]) == {"els", "ideal"} and res["n_seeds"] == 2
        assert res["settings"]["net"] == str(root / name)
        assert res["settings"]["net_config"]["arch"] == "diffusers.UNet2DModel"
        assert res["settings"]["boundary"] == "zeros"
        samples = np.load(out / "compare_samples.npz", allow_pickle=False)
        assert samples["samples_network"].shape == (2, 1, 28, 28)
        assert np.abs(samples["samples_network"]).max() <= 1.0  # --clip: the untrained UNet's x0 clipped
        assert res["settings"]["net_clip"] is True
    assert "median r" in capsys.readouterr().out
    cal = tmp_path / "cal"
    assert main(["calibrate", "--net", str(root / "pipe"), *common, "--candidates", "3,5", "--out", str(cal)]) == 0
    obj = json.loads((cal / "calibration.json").read_text())
    assert len(obj["patch_sizes"]) == 3 and set(obj["patch_sizes"]) <= {3, 5}
    # a folder that is not a diffusers model is a one-line error
    (tmp_path / "junk").mkdir()
    assert main(["compare", "--net", str(tmp_path / "junk"), *common, "--out", str(tmp_path / "j")]) == 2
    assert "neither a diffusers pipeline" in capsys.readouterr().err


def test_a_diffusers_folder_without_diffusers_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from creativity_fast.cli import main
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 28}))
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if it were not installed
    assert main(["compare", "--net", str(folder), "--limit", "4", "--steps", "1", "--seeds", "0",
                 "--no-progress", "--out", str(tmp_path / "o")]) == 2
    assert "creativity_fast[diffusers]" in capsys.readouterr().err

