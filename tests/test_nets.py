"""Reference networks (docs/theory.md §6): shapes, receptive field, padding, the VP -> sigma-space wrapper,
checkpoints (weights_only, clear errors) and the training loop (loss falls, exact resume)."""

import fractions
import json
import math

import pytest
import torch

from creativity_fast.nets import (ConvResNet, NetworkDenoiser, SmallUNet, build_network, load_checkpoint,
                                  load_network, network_config, save_network, vp_noise)
from creativity_fast.schedules import sigma_to_abar, sigma_to_t
from creativity_fast.training import LAST_CHECKPOINT, LOG_FILE, MODEL_FILE, TrainConfig, train


def _randomize(net, seed=0):
    """Give zero-initialised layers random weights so every path carries signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return net.eval()


@pytest.mark.parametrize("depth", [2, 3, 8])
def test_resnet_receptive_field_is_2_depth_plus_1(depth):
    net = _randomize(ConvResNet(channels=1, width=4, depth=depth, norm="none"))
    assert net.receptive_field == 2 * depth + 1
    x = torch.randn(1, 1, 41, 41, requires_grad=True)
    net(x, torch.tensor([0.5]))[0, 0, 20, 20].backward()
    support = (x.grad[0, 0].abs() > 0).nonzero()
    rows, cols = support[:, 0], support[:, 1]
    m = depth
    assert rows.min() == 20 - m and rows.max() == 20 + m
    assert cols.min() == 20 - m and cols.max() == 20 + m


def test_groupnorm_couples_distant_pixels_only_through_statistics():
    net = ConvResNet(channels=1, width=8, depth=8, norm="group").eval()  # default initialisation
    x = torch.randn(1, 1, 41, 41, requires_grad=True)
    net(x, torch.tensor([0.5]))[0, 0, 20, 20].backward()
    g = x.grad[0, 0].abs()
    inside = g[12:29, 12:29].sum() / 17 ** 2
    outside = (g.sum() - g[12:29, 12:29].sum()) / (41 ** 2 - 17 ** 2)
    assert 0 < outside < 0.1 * inside  # per pixel, far weaker outside the 17x17 window


@pytest.mark.parametrize("arch", ["resnet", "unet"])
def test_circular_networks_commute_with_cyclic_shifts(arch):
    cfg = dict(arch=arch, channels=2, width=8, depth=3, padding="circular")
    net = _randomize(build_network(cfg))
    x = torch.randn(2, 2, 12, 12)
    t = torch.tensor([0.3, 0.8])
    # the UNet pools by 2 twice: shifts by multiples of 4 commute exactly
    shift = (4, 8) if arch == "unet" else (3, 5)
    with torch.no_grad():
        a = torch.roll(net(x, t), shift, dims=(2, 3))
        b = net(torch.roll(x, shift, dims=(2, 3)), t)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_unet_shapes_and_zero_padding_breaks_equivariance_at_the_border():
    net = _randomize(SmallUNet(channels=1, width=4))
    assert net(torch.randn(3, 1, 28, 28), torch.rand(3)).shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 1, 10, 10), torch.rand(1))
    res = _randomize(ConvResNet(width=4, depth=2, padding="zeros"))
    x = torch.randn(1, 1, 10, 10)
    with torch.no_grad():
        assert not torch.allclose(torch.roll(res(x, torch.rand(1)), 3, 3), res(torch.roll(x, 3, 3), torch.rand(1)))


def test_bad_configs_get_clear_errors():
    with pytest.raises(ValueError, match="padding"):
        ConvResNet(padding="reflect")
    with pytest.raises(ValueError, match="depth"):
        ConvResNet(depth=1)
    with pytest.raises(ValueError, match="arch"):
        build_network({"arch": "vit"})


class _ExactEps(torch.nn.Module):
    """The exact eps-predictor of a one-image data set, in VP coordinates on the cosine schedule."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, xt, t):
        abar = (torch.cos(math.pi * t.double() / 2.016) ** 2)[:, None, None, None]
        return ((xt.double() - abar.sqrt() * self.x0) / (1 - abar).sqrt()).float()


def test_network_denoiser_converts_vp_eps_to_sigma_space_x0():
    x0 = torch.rand(1, 1, 6, 6) * 2 - 1
    den = NetworkDenoiser(_ExactEps(x0))
    z = torch.randn(4, 1, 6, 6) * 3
    sigma = torch.tensor([0.05, 0.5, 3.0, 40.0])
    torch.testing.assert_close(den(z, sigma), x0.expand(4, -1, -1, -1), atol=2e-4 * 40, rtol=1e-4)
    torch.testing.assert_close(den(z[:1], 0.7), x0, atol=1e-4, rtol=1e-4)
    # the network sees x_t = sqrt(abar) z and t = sigma_to_t(sigma)
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, xt, t):
            seen["xt"], seen["t"] = xt, t
            return torch.zeros_like(xt)

    out = NetworkDenoiser(Spy(), clip=None)(z, sigma)
    torch.testing.assert_close(out, z)  # eps_hat = 0 -> x0_hat = z
    torch.testing.assert_close(NetworkDenoiser(Spy())(z, sigma), z.clamp(-1, 1))  # clipped to the data range
    torch.testing.assert_close(seen["t"], sigma_to_t(sigma).float())
    torch.testing.assert_close(seen["xt"], z * sigma_to_abar(sigma).sqrt()[:, None, None, None])
    with pytest.raises(ValueError, match="sigma"):
        den(z, 0.0)
    with pytest.raises(ValueError, match="unconditional"):
        den(z, 1.0, class_labels=torch.zeros(4))


def test_vp_noise_matches_sigma_space():
    x0, eps = torch.randn(3, 1, 5, 5), torch.randn(3, 1, 5, 5)
    t = torch.tensor([0.1, 0.5, 0.9])
    xt = vp_noise(x0, t, eps)
    sigma = torch.tan(math.pi * t / 2.016)
    abar = sigma_to_abar(sigma)[:, None, None, None]
    torch.testing.assert_close(xt / abar.sqrt(), x0 + sigma[:, None, None, None] * eps, atol=1e-4, rtol=1e-4)


def test_checkpoint_round_trip_and_errors(tmp_path):
    net = _randomize(ConvResNet(width=8, depth=3, padding="circular"))
    path = save_network(tmp_path / "net.pt", net, meta={"note": "test"})
    loaded, info = load_network(path)
    assert info["config"] == network_config(net) and info["note"] == "test"
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), net(x, t))
    with pytest.raises(FileNotFoundError):
        load_network(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="cannot read"):
        load_network(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not a creativity_fast network checkpoint"):
        load_network(other)
    # a pickle that would run code is refused by weights_only=True
    evil = tmp_path / "evil.pt"
    torch.save({"format": "creativity_fast.net", "payload": fractions.Fraction(1, 3)}, evil)
    with pytest.raises(ValueError, match="weights_only"):
        load_network(evil)
    bad = tmp_path / "bad.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["width"] = 16
    torch.save(ckpt, bad)
    with pytest.raises(ValueError, match="do not match"):
        load_network(bad)


def _tiny_data(n=16, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth-ish blobs so there is structure to learn
    base = torch.randn(n, 1, size // 2, size // 2, generator=g)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear").tanh()


TINY = dict(width=8, depth=2, batch_size=16, lr=3e-3, warmup=5, ema_decay=0.9, log_every=5)


def test_training_loss_falls_on_a_tiny_set(tmp_path):
    torch.manual_seed(0)
    res = train(_tiny_data(), tmp_path / "run", TrainConfig(steps=80, checkpoint_every=40, **TINY), progress=False)
    losses = [loss for _, loss in res.losses]
    assert res.step == 80 and len(losses) == 16
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:2]) / 2
    for name in (LAST_CHECKPOINT, MODEL_FILE, LOG_FILE):
        assert (tmp_path / "run" / name).is_file()
    lines = [json.loads(l) for l in (tmp_path / "run" / LOG_FILE).read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(5, 81, 5))
    net, info = load_network(tmp_path / "run" / MODEL_FILE)  # the EMA weights, usable as a denoiser
    assert info["step"] == 80 and info["n_train"] == 16
    assert NetworkDenoiser(net)(torch.randn(2, 1, 8, 8), 1.0).shape == (2, 1, 8, 8)


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    data = _tiny_data()
    cfg = TrainConfig(steps=12, checkpoint_every=100, seed=3, **TINY)
    straight = train(data, tmp_path / "a", cfg, progress=False)

    def interrupt(step, loss):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data, tmp_path / "b", cfg, progress=False, callback=interrupt)
    assert load_checkpoint(tmp_path / "b" / LAST_CHECKPOINT)["step"] == 7  # saved on the interrupt
    resumed = train(data, tmp_path / "b", cfg, progress=False)
    assert resumed.resumed_from == 7 and resumed.step == 12
    a = load_checkpoint(tmp_path / "a" / LAST_CHECKPOINT)
    b = load_checkpoint(tmp_path / "b" / LAST_CHECKPOINT)
    for key in ("state_dict", "ema_state_dict"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / LOG_FILE).read_text().splitlines()]
    assert steps == [5, 10, 12]
    # settings that change the network or the data order cannot be resumed
    with pytest.raises(ValueError, match="settings differ"):
        train(data, tmp_path / "b", TrainConfig(steps=14, **dict(TINY, width=16)), progress=False)
    # raising --steps trains on
    longer = train(data, tmp_path / "b", TrainConfig(steps=14, checkpoint_every=100, seed=3, **TINY), progress=False)
    assert longer.resumed_from == 12 and longer.step == 14


def test_train_cli_and_time_limit(tmp_path, capsys):
    from creativity_fast.cli import main
    out = tmp_path / "cli"
    args = ["train", "--limit", "16", "--width", "4", "--depth", "2", "--batch-size", "4", "--log-every", "1",
            "--out", str(out), "--no-progress", "--threads", "1"]
    assert main(args + ["--steps", "3"]) == 0
    assert "finished at step 3/3" in capsys.readouterr().out
    net, info = load_network(out / MODEL_FILE)
    assert info["config"]["width"] == 4 and info["data"]["name"].startswith("fashion_mnist")
    assert main(args + ["--steps", "5", "--time-limit", "0"]) == 0
    assert "stopped" in capsys.readouterr().out
    assert main(["train", "--limit", "16", "--steps", "0", "--out", str(out)]) == 2
