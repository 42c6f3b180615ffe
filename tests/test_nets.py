"""Reference networks (docs/theory.md §6): shapes, receptive field, padding, the VP -> sigma-space wrapper,
checkpoints (weights_only, clear errors) and the training loop (loss falls, exact resume)."""

import fractions
import json
import math
from pathlib import Path

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
    torch.manual_seed(0)  # default initialisation; seeded: the ratio is 0.03-0.09 over seeds 0-5, not order-dependent
    net = ConvResNet(channels=1, width=8, depth=8, norm="group").eval()
    x = torch.randn(1, 1, 41, 41, requires_grad=True)
    net(x, torch.tensor([0.5]))[0, 0, 20, 20].backward()
    g = x.grad[0, 0].abs()
    inside = g[12:29, 12:29].sum() / 17 ** 2
    outside = (g.sum() - g[12:29, 12:29].sum()) / (41 ** 2 - 17 ** 2)
    assert 0 < outside < 0.1 * inside  # per pixel, far weaker outside the 17x17 window


@pytest.mark.parametrize("arch", ["resnet", "unet"])
def test_circular_networks_commute_with_cyclic_shifts(arch):
    cfg = dict(arch=arch, channels=2, width=8, padding="circular")
    if arch == "resnet":
        cfg["depth"] = 3
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
    assert straight.step == 12 and straight.resumed_from == 0  # a fresh run starts at step 0

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


# --------------------------------------------------------------------------- #
# the paper's networks: options, class conditioning, presets, exact resume
# --------------------------------------------------------------------------- #

from creativity_fast.nets import PAPER_ARCHITECTURES, check_class_labels, default_network_path, paper_network_config
from creativity_fast.training import PRESETS, learning_rate, preset_config


def _paper_net(arch, width=8, num_classes=None, seed=0):
    torch.manual_seed(seed)
    return build_network(paper_network_config(arch, width=width, num_classes=num_classes))


@pytest.mark.parametrize("arch", ["resnet", "unet"])
def test_class_embedding_changes_the_output_and_gets_gradients(arch):
    # randomised: the zero-initialised second convolution of each block would hide the embedding at step 0
    net = _randomize(_paper_net(arch, num_classes=10)).train()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([0.3, 0.3])
    with torch.no_grad():
        a = net(x, t, torch.tensor([0, 0]))
        b = net(x, t, torch.tensor([3, 3]))
    assert (a - b).abs().max() > 1e-4
    # the same image with two labels in one batch: each row uses its own label
    with torch.no_grad():
        mixed = net(x[:1].expand(2, -1, -1, -1), t, torch.tensor([0, 3]))
    torch.testing.assert_close(mixed[0], a[0]), torch.testing.assert_close(mixed[1], b[0])
    net(x, t, torch.tensor([1, 4])).square().sum().backward()
    grad = net.class_embed.weight.grad
    assert grad[[1, 4]].abs().sum(1).min() > 0          # the used labels' rows learn
    assert grad[[0, 2, 3, 5]].abs().sum() == 0           # the others do not


def test_class_label_rule_conditional_needs_labels_unconditional_refuses_them():
    cond, uncond = _paper_net("resnet", num_classes=10), _paper_net("resnet")
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    with pytest.raises(ValueError, match="class-conditional .*required"):
        cond(x, t)
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, t, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        cond(x, t, torch.tensor([1, 10]))
    with pytest.raises(ValueError, match="integers"):
        cond(x, t, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="3 values for a batch of 2"):
        cond(x, t, torch.tensor([1, 2, 3]))
    # the denoiser applies the same rule, before any work; one label is broadcast to the batch
    den = NetworkDenoiser(cond, clip=None)
    assert den.class_conditional and den.num_classes == 10 and not NetworkDenoiser(uncond).class_conditional
    with pytest.raises(ValueError, match="class-conditional"):
        den(x, 1.0)
    with pytest.raises(ValueError, match="unconditional"):
        NetworkDenoiser(uncond)(x, 1.0, class_labels=torch.tensor([0, 1]))
    torch.testing.assert_close(den(x, 1.0, class_labels=torch.tensor([7, 7])), den(x, 1.0, class_labels=7))
    # batching in the denoiser keeps each row's label
    small = NetworkDenoiser(cond, clip=None, batch_size=1)
    y = torch.tensor([2, 5])
    torch.testing.assert_close(small(x, 1.0, class_labels=y), den(x, 1.0, class_labels=y))
    assert check_class_labels(torch.tensor([3]), 5, 4).tolist() == [3, 3, 3, 3]


@pytest.mark.parametrize("arch", ["resnet", "unet"])
def test_norm_none_has_no_normalisation_layers(arch):
    norm_types = (torch.nn.GroupNorm, torch.nn.BatchNorm2d, torch.nn.LayerNorm, torch.nn.InstanceNorm2d)
    net = _paper_net(arch, num_classes=10)
    assert not [m for m in net.modules() if isinstance(m, norm_types)]
    assert [m for m in build_network({"arch": arch}).modules() if isinstance(m, torch.nn.GroupNorm)]


@pytest.mark.parametrize("embedding", ["add", "film"])
def test_paper_resnet_receptive_field_is_17_by_impulse(embedding):
    """An impulse at the centre changes the output exactly in a 17x17 window (and the gradient agrees)."""
    cfg = dict(paper_network_config("resnet", width=4, num_classes=3), embedding=embedding)
    net = _randomize(build_network(cfg), seed=1)
    x, t, y = torch.randn(1, 1, 41, 41), torch.tensor([0.5]), torch.tensor([2])
    bump = x.clone()
    bump[0, 0, 20, 20] += 1.0
    with torch.no_grad():
        changed = (net(bump, t, y) - net(x, t, y))[0, 0].abs() > 0
    rows, cols = changed.nonzero().unbind(1)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (12, 28, 12, 28)  # 17 = 28 - 12 + 1
    assert changed[12:29, 12:29].float().mean() > 0.9   # filled, not just the corners
    x.requires_grad_(True)
    net(x, t, y)[0, 0, 20, 20].backward()
    rows, cols = (x.grad[0, 0] != 0).nonzero().unbind(1)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (12, 28, 12, 28)


@pytest.mark.parametrize("size", [28, 32])
def test_paper_unet_shapes_pooling_and_transposed_convs(size):
    net = _randomize(_paper_net("unet", width=4, num_classes=10))
    assert isinstance(net.upsample2, torch.nn.ConvTranspose2d) and net.down == "max"
    assert (net.down1.conv1.out_channels, net.mid.conv1.out_channels) == (4, 16)  # 64/128/256 scaled
    with torch.no_grad():
        out = net(torch.randn(3, 1, size, size), torch.rand(3), torch.tensor([0, 5, 9]))
    assert out.shape == (3, 1, size, size) and torch.isfinite(out).all()
    # unlike the ResNet's 17x17, the centre output depends on every input pixel at these sizes
    x = torch.randn(1, 1, size, size, requires_grad=True)
    net(x, torch.tensor([0.5]), torch.tensor([1]))[0, 0, size // 2, size // 2].backward()
    assert (x.grad[0, 0] != 0).all()


def test_old_defaults_rebuild_old_configs_and_the_shipped_checkpoint_loads():
    old = {"arch": "resnet", "channels": 1, "width": 32, "depth": 8, "padding": "zeros", "temb_dim": 32}
    net = build_network(old)
    assert (net.norm, net.activation, net.embedding, net.num_classes) == ("group", "silu", "film", None)
    unet = build_network({"arch": "unet", "width": 4})
    assert (unet.mults, unet.down, unet.up) == ((1, 2, 2), "avg", "nearest") and not hasattr(unet, "upsample2")
    path = default_network_path()
    if not path.is_file():
        pytest.skip("the shipped checkpoint is absent in this checkout")
    shipped, info = load_network()
    assert info["config"] == old and shipped.num_classes is None
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    out = NetworkDenoiser(shipped)(x, torch.tensor([0.5, 5.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_new_options_get_clear_errors():
    with pytest.raises(ValueError, match="activation"):
        ConvResNet(activation="gelu")
    with pytest.raises(ValueError, match="embedding"):
        ConvResNet(embedding="concat")
    with pytest.raises(ValueError, match="num_classes"):
        ConvResNet(num_classes=0)
    with pytest.raises(ValueError, match="mults"):
        SmallUNet(mults=(1, 2))
    with pytest.raises(ValueError, match="down"):
        SmallUNet(down="stride")
    with pytest.raises(ValueError, match="up"):
        SmallUNet(up="bilinear")
    with pytest.raises(ValueError, match="does not take: depth"):
        build_network({"arch": "unet", "depth": 3})
    with pytest.raises(ValueError, match="does not take: widht"):
        build_network({"arch": "resnet", "widht": 3})
    with pytest.raises(ValueError, match="preset"):
        preset_config("papr")
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="sgd").check()
    with pytest.raises(ValueError, match="lr_decay"):
        TrainConfig(lr_decay=1.5).check()
    with pytest.raises(ValueError, match="activation"):
        TrainConfig(activation="tanh").check()
    with pytest.raises(ValueError, match="needs labels"):
        train(_tiny_data(), "unused", TrainConfig(num_classes=3), progress=False)
    with pytest.raises(ValueError, match="only used by class-conditional"):
        train(_tiny_data(), "unused", TrainConfig(), labels=torch.zeros(16, dtype=torch.long), progress=False)


def test_paper_preset_values():
    assert PRESETS["paper"] == dict(optimizer="adam", lr=1e-4, batch_size=128, lr_schedule="exponential",
                                    lr_decay=0.999965, warmup=0, weight_decay=0.0, ema_decay=0.0, grad_clip=0.0)
    r = preset_config("paper", "resnet")
    assert (r.width, r.depth, r.norm, r.activation, r.embedding, r.num_classes) == (256, 8, "none", "relu", "add", None)
    assert build_network(r.network_config(1)).receptive_field == 17
    u = preset_config("paper", "unet", width=16, num_classes=10)
    assert (u.width, u.mults, u.down, u.up, u.num_classes) == (16, (1, 2, 4), "max", "transpose", 10)
    assert PAPER_ARCHITECTURES["unet"]["width"] * 4 == 256
    # lr x 0.999965 per step, from the first step
    assert learning_rate(r, 0) == 1e-4
    assert math.isclose(learning_rate(r, 1000), 1e-4 * 0.999965 ** 1000, rel_tol=1e-12)
    # the default preset is the TrainConfig defaults
    assert preset_config("default") == TrainConfig()


def _labels(n=16, k=3):
    return torch.arange(n) % k


def test_paper_recipe_class_conditional_resume_is_exact(tmp_path):
    """N steps straight == N/2, stop, resume N/2: identical weights and optimiser state (Adam, no EMA)."""
    data, labels = _tiny_data(), _labels()
    cfg = preset_config("paper", "resnet", width=8, depth=4, batch_size=8, steps=10, num_classes=3,
                        checkpoint_every=100, log_every=5, seed=2)
    train(data, tmp_path / "a", cfg, labels=labels, progress=False)
    half = preset_config("paper", "resnet", width=8, depth=4, batch_size=8, steps=5, num_classes=3,
                         checkpoint_every=100, log_every=5, seed=2)
    first = train(data, tmp_path / "b", half, labels=labels, progress=False)
    second = train(data, tmp_path / "b", cfg, labels=labels, progress=False)
    assert (first.step, second.resumed_from, second.step) == (5, 5, 10)
    a = load_checkpoint(tmp_path / "a" / LAST_CHECKPOINT)
    b = load_checkpoint(tmp_path / "b" / LAST_CHECKPOINT)
    assert "ema_state_dict" not in a and a["train_config"]["optimizer"] == "adam"
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
    assert torch.equal(a["state_dict"]["class_embed.weight"], b["state_dict"]["class_embed.weight"])
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"] \
        == pytest.approx(1e-4 * 0.999965 ** 9)
    # without EMA, model.pt holds the trained weights; it loads as a class-conditional denoiser
    net, info = load_network(tmp_path / "a" / MODEL_FILE)
    assert info["config"]["num_classes"] == 3 and info["train_config"]["lr_schedule"] == "exponential"
    for name, value in net.state_dict().items():
        assert torch.equal(value, a["state_dict"][name])
    assert NetworkDenoiser(net)(torch.randn(2, 1, 8, 8), 1.0, class_labels=torch.tensor([0, 2])).shape == (2, 1, 8, 8)
    # the labels matter: other labels give other weights
    train(data, tmp_path / "c", cfg, labels=labels.flip(0), progress=False)
    c = load_checkpoint(tmp_path / "c" / LAST_CHECKPOINT)
    assert not torch.equal(a["state_dict"]["conv_in.weight"], c["state_dict"]["conv_in.weight"])
    # the recipe cannot change on resume
    with pytest.raises(ValueError, match="settings differ"):
        train(data, tmp_path / "b", preset_config("default", width=8, depth=4, batch_size=8, steps=12, seed=2,
                                                  num_classes=3, norm="none", activation="relu", embedding="add"),
              labels=labels, progress=False)


def test_train_cli_paper_preset_class_conditional_resize(tmp_path, capsys):
    from creativity_fast.cli import main
    out = tmp_path / "paper"
    args = ["train", "--preset", "paper", "--class-conditional", "--resize", "32", "--limit", "16", "--width", "4",
            "--batch-size", "4", "--log-every", "1", "--out", str(out), "--no-progress", "--threads", "1"]
    assert main(args + ["--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "checkpoint step 2/2" in printed and "finished at step 2/2" in printed
    net, info = load_network(out / MODEL_FILE)
    assert info["config"]["num_classes"] == 10 and info["config"]["activation"] == "relu"
    assert info["image_shape"] == [1, 32, 32] and info["data"]["resize"] == 32 and info["data"]["preset"] == "paper"
    assert info["data"]["class_names"][0] == "T-shirt/top" and info["train_config"]["lr"] == 1e-4
    assert main(args + ["--steps", "3"]) == 0       # the same command resumes
    assert "resuming from" in capsys.readouterr().out
    assert load_checkpoint(out / LAST_CHECKPOINT)["step"] == 3


def test_loss_curve_png_from_a_training_log(tmp_path):
    from creativity_fast.figures import plot_training_log
    log = tmp_path / LOG_FILE
    log.write_text("".join(json.dumps(dict(step=s, loss=1.0 / s)) + "\n" for s in range(5, 50, 5)) + '{"step": 5')
    png = plot_training_log(log, tmp_path / "loss.png", batch_size=4, n_train=16, title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no logged steps"):
        plot_training_log(empty, tmp_path / "x.png")


def test_gpu_training_script_parses_and_uses_the_paper_preset():
    import subprocess
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_paper_gpu.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for needle in ("--preset paper", "--width 256", "--class-conditional", "--resize 32", "--device cuda",
                   "--time-limit", '"$OUT'):
        assert needle in text, needle


@pytest.mark.parametrize("folder, arch", [("fmnist32_resnet_cc", "resnet"), ("fmnist32_unet_cc", "unet")])
def test_shipped_paper_networks_load_safely_as_the_papers_recipe(folder, arch):
    """results/paper_nets: each checkpoint loads with weights_only, is the paper's architecture
    (no normalisation, ReLU, additive class-conditional embeddings), predicts eps of the input's
    shape for 32x32 class-conditional input, and its README row, log and loss plot are there."""
    root = Path(__file__).resolve().parents[1] / "results" / "paper_nets"
    path = root / folder / "model.pt"
    assert path.stat().st_size < 5_000_000                        # small enough to ship
    torch.load(path, weights_only=True, map_location="cpu")      # no pickled code needed
    net, info = load_network(path)
    cfg = info["config"]
    assert (cfg["arch"], cfg["norm"], cfg["activation"], cfg["embedding"], cfg["num_classes"]) == \
        (arch, "none", "relu", "add", 10)
    den = NetworkDenoiser(net)
    z = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x0 = den(z, 1.0, class_labels=torch.tensor([0, 9]))
    assert x0.shape == z.shape and torch.isfinite(x0).all()
    with pytest.raises(ValueError):
        den(z, 1.0)                                               # a class-conditional network needs labels
    steps = [json.loads(line)["step"] for line in (root / folder / "training_log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and (root / folder / "loss.png").stat().st_size > 1000
    assert f"`{folder}`" in (root / "README.md").read_text() and f"| {steps[-1]:,} |" in (root / "README.md").read_text()
