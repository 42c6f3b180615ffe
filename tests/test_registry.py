"""The one machine registry: declared options, errors for anything else, sharded forms, class names."""

import pytest
import torch

import creativity_fast as cf
from creativity_fast import registry
from creativity_fast.attention import AELSDenoiser, AttentionPrior
from creativity_fast.classes import TrainingClasses, class_indices, resolve_class_label
from creativity_fast.commands import common
from creativity_fast.denoisers import by_patch_size


def tiny(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 5, 4, generator=g, dtype=torch.float64) * 2 - 1


def test_every_machine_declares_its_options_and_rejects_others():
    data = tiny()
    for name in registry.machine_names():
        entry = registry.get_machine(name)
        assert entry.options, name
        with pytest.raises(ValueError, match=rf"machine '{name}' does not take the option 'backnd'"):
            registry.make_denoiser(name, data, backnd="reference")  # misspelt: an error, never ignored
        if registry.is_shardable(name):
            with pytest.raises(ValueError, match=rf"machine '{name}' does not take the option 'backnd'"):
                registry.make_sharded_denoiser(name, data, offset=0, backnd="reference")


def test_patch_options_only_where_they_apply():
    data = tiny()
    with pytest.raises(ValueError, match="'ideal' does not take the option 'P'"):
        registry.make_denoiser("ideal", data, P=3)
    with pytest.raises(ValueError, match="'local' does not take the option 'keys'"):
        registry.make_denoiser("local", data, P=3, keys="valid")
    with pytest.raises(ValueError, match="'gaussian' does not take the option 'boundary'"):
        registry.make_denoiser("gaussian", data, boundary="zeros")
    assert registry.applicable("gaussian", P=3, boundary="zeros", labels=None) == {"labels": None}


def test_factories_must_declare_their_options():
    def swallowing(data, **kwargs):
        return None

    with pytest.raises(TypeError, match="must declare its options"):
        registry.register_machine("swallowing", swallowing)
    assert "swallowing" not in registry.machine_names()


def test_user_machines_register_and_build():
    def scaled(data, *, factor: float = 1.0):
        return lambda z, sigma, class_labels=None: z * factor

    try:
        registry.register_machine("scaled_test", scaled)
        assert registry.get_machine("scaled_test").options == ("factor",)
        assert not registry.is_shardable("scaled_test")
        m = registry.make_denoiser("scaled_test", tiny(), factor=2.0)
        assert torch.equal(m(torch.ones(1, 1, 2, 2), 1.0), torch.full((1, 1, 2, 2), 2.0))
        with pytest.raises(ValueError, match="does not take the option 'factr'"):
            registry.make_denoiser("scaled_test", tiny(), factr=2.0)
    finally:
        registry._MACHINES.pop("scaled_test", None)


def test_camel_case_machines_are_classes():
    data = tiny()
    for name, cls, mode in (("ideal", cf.IdealDenoiser, "ideal"), ("local", cf.LocalDenoiser, "local"),
                            ("els", cf.ELSDenoiser, "els")):
        m = registry.make_denoiser(name, data)
        assert isinstance(m, cls) and isinstance(m, cf.PatchMachine) and m.mode == mode
    assert isinstance(registry.make_denoiser("aels", data, P=3), AELSDenoiser)


def test_command_options_cannot_be_set_through_opt():
    with pytest.raises(ValueError, match="--opt boundary=...: set it with the command's own flag"):
        common.machine_kwargs("els", {"boundary": "circular"})
    with pytest.raises(ValueError, match="--opt key_logw=...: a tensor option"):
        common.machine_kwargs("els", {"key_logw": "x"})
    kwargs = common.machine_kwargs("aels", {"lam": 2.0}, P=3, boundary="zeros", labels=None)
    assert kwargs == {"lam": 2.0, "P": 3, "boundary": "zeros", "labels": None}
    assert "aels: lam, gamma" in common.machine_option_summary()


def test_aels_is_composed_of_an_els_machine_and_its_prior():
    data = tiny()
    aels = AELSDenoiser(data, 3, lam=2.0, gamma=0.0, backend="reference")
    assert isinstance(aels.els, cf.ELSDenoiser) and aels.els.key_logw is aels.prior
    assert isinstance(aels.prior, AttentionPrior) and aels.lam == 2.0
    z = torch.randn(2, 1, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    prior = aels.prior(3)
    direct = cf.ELSDenoiser(data, 3, key_logw=prior, backend="reference")(z, 0.6)
    assert torch.equal(aels(z, 0.6), direct)
    with pytest.raises(ValueError, match="els must use the prior"):
        AELSDenoiser.from_parts(cf.ELSDenoiser(data, 3), aels.prior)


def test_by_patch_size_groups_samples_in_ascending_size():
    sigma = torch.tensor([2.0, 0.1, 2.0, 0.5])
    groups = by_patch_size(lambda s: 7 if s > 1 else 3, sigma, torch.arange(4))
    assert [(P, idx.tolist()) for P, idx in groups] == [(3, [1, 3]), (7, [0, 2])]
    groups = by_patch_size(lambda s: 5, sigma, torch.tensor([3, 1]))
    assert [(P, idx.tolist()) for P, idx in groups] == [(5, [3, 1])]


def test_one_class_helper_for_machines_datasets_and_the_cli():
    labels = torch.tensor([0, 2, 0, 1])
    data = tiny(4)
    classes = TrainingClasses(data, labels)
    assert classes.indices(0).tolist() == [0, 2]
    assert torch.equal(classes.subset(2), data[1:2])
    assert classes.global_ids(0, torch.tensor([1])).tolist() == [2]
    assert [(c, r.tolist()) for c, r in classes.groups(3, torch.tensor([1, 0, 1]))] == [(0, [1]), (1, [0, 2])]
    with pytest.raises(ValueError, match=r"class_label 5 has no training images; labels present: \[0, 1, 2\]"):
        TrainingClasses(data, labels, class_label=5)
    with pytest.raises(ValueError, match="needs the training labels"):
        TrainingClasses(data, None, class_label=0)
    with pytest.raises(ValueError, match="label 7 has no training images"):
        class_indices(labels, 7, argument="label")
    assert resolve_class_label("Bag", ["Shirt", "Bag"]) == 1 and resolve_class_label("3") == 3
    with pytest.raises(ValueError, match="neither a label nor a class name"):
        resolve_class_label("Hat", ["Shirt", "Bag"], argument="--class")
