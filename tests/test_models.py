"""The LeNet family: the seeds' shapes and parameter counts, every named config builds and trains a step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from cnnlab.config import CONF_DIR
from cnnlab.errors import ModelSpecError
from cnnlab.models import LeNet

MODEL_NAMES = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))

# The seeds' walk of LeNet-5 on one 28x28 image (003, exercise 6.6.1).
LENET_WALK = [
    ("Conv2d", (1, 6, 28, 28)),
    ("Sigmoid", (1, 6, 28, 28)),
    ("AvgPool2d", (1, 6, 14, 14)),
    ("Conv2d", (1, 16, 10, 10)),
    ("Sigmoid", (1, 16, 10, 10)),
    ("AvgPool2d", (1, 16, 5, 5)),
    ("Flatten", (1, 400)),
    ("Linear", (1, 120)),
    ("Sigmoid", (1, 120)),
    ("Linear", (1, 84)),
    ("Sigmoid", (1, 84)),
    ("Linear", (1, 10)),
]
# The seeds' exercise 6.6.3 network.
IMPROVED_WALK = [
    ("Conv2d", (1, 6, 30, 30)),
    ("ReLU", (1, 6, 30, 30)),
    ("AvgPool2d", (1, 6, 15, 15)),
    ("Conv2d", (1, 10, 13, 13)),
    ("ReLU", (1, 10, 13, 13)),
    ("AvgPool2d", (1, 10, 6, 6)),
    ("Conv2d", (1, 16, 4, 4)),
    ("ReLU", (1, 16, 4, 4)),
    ("AvgPool2d", (1, 16, 2, 2)),
    ("Flatten", (1, 64)),
    ("Linear", (1, 120)),
    ("ReLU", (1, 120)),
    ("Linear", (1, 84)),
    ("ReLU", (1, 84)),
    ("Linear", (1, 20)),
    ("ReLU", (1, 20)),
    ("Linear", (1, 10)),
]


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def build_named(name: str, tiny_cfg) -> LeNet:
    return instantiate(tiny_cfg(f"model={name}").model)


def test_lenet_matches_the_seeds_table(tiny_cfg):
    net = build_named("lenet", tiny_cfg)
    assert n_params(net) == 61_706
    assert [(layer.kind, layer.shape) for layer in net.walk()] == LENET_WALK


def test_lenet_improved_matches_exercise_6_6_3(tiny_cfg):
    net = build_named("lenet_improved", tiny_cfg)
    assert [(layer.kind, layer.shape) for layer in net.walk()] == IMPROVED_WALK
    # the seeds' nn.Sequential, counted by hand: convs 60+550+1456, FCs 7800+10164+1700+210
    assert n_params(net) == 60 + 550 + 1456 + 7800 + 10164 + 1700 + 210


def test_plain_lenet_is_the_seeds_lenet_without_hydra():
    assert n_params(LeNet()) == 61_706


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_named_model_builds_and_trains_a_step(name, tiny_cfg):
    net = build_named(name, tiny_cfg)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))


def test_variants_differ_where_their_names_say(tiny_cfg):
    kinds = {name: {layer.kind for layer in build_named(name, tiny_cfg).walk()} for name in MODEL_NAMES}
    assert "MaxPool2d" in kinds["lenet_maxpool"] and "AvgPool2d" not in kinds["lenet_maxpool"]
    assert "ReLU" in kinds["lenet_relu"] and "Sigmoid" not in kinds["lenet_relu"]
    assert "BatchNorm2d" in kinds["lenet_bn"]
    deep = [layer for layer in build_named("lenet_deep", tiny_cfg).walk() if layer.kind == "Conv2d"]
    assert len(deep) == 3
    k7 = build_named("lenet_k7", tiny_cfg)
    assert k7.conv1.kernel_size == (7, 7)


@pytest.mark.parametrize("kernel", [1, 3, 5, 7, 9])
def test_flatten_size_is_inferred_for_any_kernel_that_fits(kernel):
    net = LeNet(kernel_sizes=kernel, paddings=0)
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_command_line_style_overrides_change_the_network(tiny_cfg):
    net = instantiate(tiny_cfg("model.activation=tanh", "model.conv_channels=[4,8]", "model.fc_sizes=[32]").model)
    assert net.conv1.out_channels == 4 and net.conv2.out_channels == 8
    assert isinstance(net.act1, torch.nn.Tanh)
    assert [layer.shape for layer in net.walk()][-1] == (1, 10) and net.fc1.out_features == 32


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"kernel_sizes": [5, 15]}, ["conv2", "15x15", "14x14"]),
        ({"activation": "swish2"}, ["model.activation", "relu"]),
        ({"pool": "median"}, ["model.pool", "max"]),
        ({"conv_channels": [6, 16, 32, 64], "paddings": 0}, ["conv", "larger than its input"]),
        ({"kernel_sizes": [5, 5, 5]}, ["model.kernel_sizes", "3 entries"]),
    ],
)
def test_impossible_specs_name_the_layer_and_sizes(kwargs, words):
    with pytest.raises(ModelSpecError) as info:
        LeNet(**kwargs)
    assert all(word in str(info.value) for word in words), str(info.value)


@pytest.mark.parametrize(("optimizer", "scheduler"), [("adam", "cosine"), ("adamw", "onecycle"), ("sgd", "none")])
def test_the_optimizer_state_is_plain_data_that_loads_weights_only(optimizer, scheduler, tiny_cfg, tmp_path):
    """Hydra hands an optimizer OmegaConf lists (Adam's betas) unless told to convert; torch 2.7 kept them in its
    param_groups, and a run's checkpoint then refused to load with weights_only=True (the resume of an interrupted
    search failed on the floor release). The optimizer and scheduler state must be plain data on any torch."""
    from omegaconf import DictConfig, ListConfig

    from cnnlab.run import build_module

    module = build_module(tiny_cfg(f"optimizer={optimizer}", f"scheduler={scheduler}", "trainer.max_epochs=2"))
    module.trainer = SimpleNamespace(max_epochs=2, estimated_stepping_batches=10)  # what the schedule reads
    configured = module.configure_optimizers()
    if isinstance(configured, dict):
        optim, schedulers = configured["optimizer"], [configured["lr_scheduler"]["scheduler"]]
    else:
        optim, schedulers = configured, []
    state = {"optimizer": optim.state_dict(), "schedulers": [s.state_dict() for s in schedulers]}

    def omegaconf_in(value):
        if isinstance(value, ListConfig | DictConfig):
            return True
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else []
        return any(omegaconf_in(v) for v in items)

    assert not omegaconf_in(state)
    torch.save(state, tmp_path / "state.pt")
    torch.load(tmp_path / "state.pt", weights_only=True)
