"""The CNN + one self-attention layer networks (docs/attention.md): shapes, config and checkpoint round
trip, top-1 attention reads exactly one key per query, straight-through gradients, and the attention
layer as the only difference from the CNN baseline."""

import pytest
import torch

from creativity_fast.nets import (ConvResNet, NetworkDenoiser, SelfAttention, build_network, load_network,
                                  network_config, save_network)
from creativity_fast.reference import _outside_exclusion
from creativity_fast.training import MODEL_FILE, TrainConfig, train


def _randomize(net, seed=0, scale=0.3):
    """Random weights everywhere (the attention output projection starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return net.eval()


def _config(attention=None, exclude=0, **kw):
    cfg = dict(arch="resnet", channels=1, width=8, depth=3, norm="none")
    cfg.update(kw)
    if attention is not None:
        cfg.update(attention=attention, attention_exclude=exclude)
    return cfg


@pytest.mark.parametrize("mode", ["soft", "top1"])
@pytest.mark.parametrize("C,H,W,exclude", [(1, 5, 7, 0), (3, 6, 4, 2), (1, 1, 1, 0)])
def test_shapes_and_weight_rows(mode, C, H, W, exclude):
    net = _randomize(build_network(_config(mode, exclude, channels=C, norm="group")))
    x, t = torch.randn(2, C, H, W), torch.rand(2)
    assert net(x, t).shape == (2, C, H, W)
    h = torch.randn(2, 8, H, W)
    a = net.attn.weights(h)
    assert a.shape == (2, H * W, H * W)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, H * W))
    if exclude:  # keys closer than `exclude` get no weight
        assert (a[:, ~_outside_exclusion(H, W, exclude, "cpu")] == 0).all()


@pytest.mark.parametrize("mode", ["soft", "top1"])
def test_config_and_checkpoint_round_trip(tmp_path, mode):
    net = _randomize(build_network(_config(mode, 2, padding="circular")))
    cfg = network_config(net)
    assert cfg["attention"] == mode and cfg["attention_exclude"] == 2
    assert network_config(build_network(cfg)) == cfg
    loaded, info = load_network(save_network(tmp_path / "net.pt", net))
    assert info["config"] == cfg and loaded.attn.mode == mode
    x, t = torch.randn(3, 1, 6, 5), torch.rand(3)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), net(x, t))
    # the plain CNN's config has no attention keys (old checkpoints and configs rebuild unchanged)
    plain = network_config(build_network(_config()))
    assert "attention" not in plain and build_network(plain).attn is None


def test_top1_forward_reads_exactly_one_key_per_query():
    torch.manual_seed(0)
    layer = _randomize(SelfAttention(6, "top1", norm="none", exclude=2), scale=0.5)
    h = torch.randn(3, 6, 5, 7)
    s, v = layer.scores(h)
    a = layer.weights(h)
    idx = s.argmax(-1)                                     # [B, HW]
    assert ((a != 0).sum(-1) == 1).all()                   # one key per query ...
    assert torch.equal(a.gather(-1, idx[..., None]), torch.ones(3, 35, 1))  # ... with weight exactly 1
    # the chosen key lies outside the exclusion radius
    assert _outside_exclusion(5, 7, 2, "cpu").gather(1, idx[0][:, None]).all()
    # the output is the residual plus the projected value of that one key
    picked = v.gather(1, idx[..., None].expand(-1, -1, 6)).transpose(1, 2).reshape(3, 6, 5, 7)
    torch.testing.assert_close(layer(h), h + layer.proj(picked), rtol=0, atol=1e-6)
    # the soft layer on the same weights spreads over many keys (so the check above can fail)
    soft = SelfAttention(6, "soft", norm="none", exclude=2)
    soft.load_state_dict(layer.state_dict())
    assert ((soft.weights(h) > 0).sum(-1) > 1).all()


def test_straight_through_gradient_is_the_soft_layers():
    """d/ds of a loss through top-1 weights equals the soft layer's (forward hard, backward soft)."""
    torch.manual_seed(1)
    top1, soft = SelfAttention(4, "top1", norm="none"), SelfAttention(4, "soft", norm="none")
    s = torch.randn(2, 9, 9, dtype=torch.float64)
    v, g = torch.randn(2, 9, 4, dtype=torch.float64), torch.randn(2, 9, 4, dtype=torch.float64)
    grads = []
    for layer in (top1, soft):
        s_ = s.clone().requires_grad_(True)
        ((layer._weights(s_) @ v) * g).sum().backward()
        grads.append(s_.grad)
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().max() > 1e-3


def test_gradients_reach_the_query_and_key_projections_of_top1():
    net = _randomize(build_network(_config("top1", 1)))
    x, t = torch.randn(2, 1, 6, 6), torch.rand(2)
    net(x, t).square().sum().backward()
    qkv = net.attn.qkv.weight.grad.reshape(3, 8, -1)       # rows: query, key, value projections
    for i, name in enumerate(("query", "key", "value")):
        assert qkv[i].abs().max() > 1e-6, name
    assert net.conv_in.weight.grad.abs().max() > 0


@pytest.mark.parametrize("mode", ["soft", "top1"])
def test_the_attention_layer_is_the_only_difference_from_the_cnn(mode):
    torch.manual_seed(5)
    base = build_network(_config(norm="group"))
    torch.manual_seed(5)
    attn = build_network(_config(mode, 2, norm="group"))
    b, a = base.state_dict(), attn.state_dict()
    extra = sorted(set(a) - set(b))
    assert set(b) <= set(a) and extra and all(k.startswith("attn.") for k in extra)
    for k in b:  # same shapes, and the same initial values under one seed
        assert torch.equal(a[k], b[k]), k
    assert base.receptive_field == attn.receptive_field and attn.width == base.width
    n_attn = sum(p.numel() for p in attn.attn.parameters())
    assert sum(p.numel() for p in attn.parameters()) == sum(p.numel() for p in base.parameters()) + n_attn
    # the output projection starts at zero: at initialisation the network is its baseline
    x, t = torch.randn(2, 1, 6, 5), torch.rand(2)
    with torch.no_grad():
        assert torch.equal(attn(x, t), base(x, t))


def test_attention_reaches_beyond_the_receptive_field():
    """One output pixel depends on pixels far outside the CNN's receptive field only with attention."""
    for attention in (None, "soft", "top1"):
        net = _randomize(build_network(_config(attention, 0, depth=2)))
        x = torch.randn(1, 1, 15, 15, requires_grad=True)
        net(x, torch.tensor([0.5]))[0, 0, 0, 0].backward()
        far = x.grad[0, 0, 8:, 8:].abs().sum()
        assert (far > 0) == (attention is not None), attention


def test_bad_attention_options_get_clear_errors():
    with pytest.raises(ValueError, match="attention must be"):
        ConvResNet(attention="hard")
    with pytest.raises(ValueError, match="attention_exclude"):
        ConvResNet(attention="soft", attention_exclude=-1)
    with pytest.raises(ValueError, match="keys a unet does not take: attention"):
        build_network(dict(arch="unet", attention="soft"))
    with pytest.raises(ValueError, match="attention_exclude=3 needs an attention layer"):
        TrainConfig(attention_exclude=3).check()
    with pytest.raises(ValueError, match="attention is an option of the resnet"):
        TrainConfig(arch="unet", attention="soft").check()
    net = build_network(_config("top1", 4))
    with pytest.raises(ValueError, match="attention_exclude=4 leaves some query"):
        net(torch.randn(1, 1, 5, 5), torch.rand(1))


def test_training_and_cli_with_attention(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(8, 1, 6, 6, generator=g).tanh()
    cfg = TrainConfig(width=4, depth=2, batch_size=4, steps=3, warmup=1, log_every=1, attention="top1",
                      attention_exclude=2)
    train(data, tmp_path / "run", cfg, progress=False)
    net, info = load_network(tmp_path / "run" / MODEL_FILE)
    assert info["config"]["attention"] == "top1" and info["config"]["attention_exclude"] == 2
    assert NetworkDenoiser(net)(torch.randn(2, 1, 6, 6), 1.0).shape == (2, 1, 6, 6)
    with pytest.raises(ValueError, match="settings differ"):  # a resume must keep the attention layer
        train(data, tmp_path / "run", TrainConfig(**dict(vars(cfg), attention="soft", steps=4)), progress=False)
    from creativity_fast.cli import main
    out = tmp_path / "cli"
    assert main(["train", "--limit", "8", "--width", "4", "--depth", "2", "--batch-size", "4", "--steps", "2",
                 "--attention", "soft", "--attention-exclude", "3", "--out", str(out), "--no-progress",
                 "--threads", "1"]) == 0
    assert "finished at step 2/2" in capsys.readouterr().out
    assert load_network(out / MODEL_FILE)[1]["config"]["attention"] == "soft"


def test_attention_experiment_script_runs_and_grows_without_resampling(tmp_path):
    """scripts/attention_experiment.py on a tiny setting: tables, figures, and a larger --samples reuses
    the seeds already sampled (the 512-sample command resumes)."""
    import importlib.util
    import json
    from pathlib import Path

    import numpy as np

    from creativity_fast import io

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("attention_experiment", root / "scripts" / "attention_experiment.py")
    exp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exp)
    nets = tmp_path / "nets"
    for kind, attention in (("cnn", None), ("top1", "top1")):
        torch.manual_seed(0)
        save_network(nets / f"{kind}_seed0" / "model.pt", _randomize(build_network(
            _config(attention, 5, depth=2)), scale=0.05))
    (nets / "soft_seed0").mkdir()
    (nets / "soft_seed0" / "model.pt").write_bytes(b"")
    (nets / "soft_seed0" / "last.pt").write_bytes(b"")  # a run in progress: skipped
    out = tmp_path / "out"
    argv = ["--out", str(out), "--nets", str(nets), "--n-train", "8", "--n-heldout", "4", "--betas", "0,1",
            "--attend-on", "z", "--steps", "2", "--batch-size", "3", "--backend", "reference", "--no-progress"]
    assert exp.main(argv + ["--samples", "3"]) == 0
    table = json.loads((out / "table.json").read_text())
    rows = [r["row"] for r in table["consistency"]]
    assert rows == ["CNN s0", "CNN+top-1 attn s0", "IS", "ELS(P=9)", "AELS(lam=1, gamma=0)", "PELS(beta=1, on=z)"]
    assert "PELS(beta=1, on=z) | CNN s0" in table["agreement"]["median_r"]
    assert "PELS(beta=1, on=z) vs ELS(P=9) | CNN+top-1 attn s0" in table["agreement"]["pels_minus_els"]
    for name in ("table.md", "samples.png", "tradeoff.png"):
        assert (out / name).stat().st_size > 0
    # mark the stored samples: a rerun that resampled them (deterministically) would erase the mark
    path = out / "samples_pels_beta_1_on_z.npz"
    arrays = io.load_npz(path)
    arrays["samples"] = np.full_like(arrays["samples"], 0.123)
    io.save_npz(path, **arrays)
    assert exp.main(argv + ["--samples", "5"]) == 0
    after = io.load_npz(path)
    assert after["seeds"].tolist() == [0, 1, 2, 3, 4]
    assert (after["samples"][:3] == np.float32(0.123)).all() and not (after["samples"][3:] == np.float32(0.123)).all()
    assert json.loads((out / "table.json").read_text())["consistency"][0]["n"] == 5
