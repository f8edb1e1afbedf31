"""TensorBoard images at the end of training: activations, kernels, confusion matrix, mistakes, model graph."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnlab.images import (
    ActivationImages,
    ConfusionMatrixFigure,
    KernelImages,
    MisclassifiedImages,
    ModelGraph,
    confusion_figure,
    kernel_grid,
    most_confident_mistakes,
)
from cnnlab.train import train
from conftest import TINY_OVERRIDES, compose_config, write_idx_set


def tiny_run(folder: Path, *overrides: str) -> EventAccumulator:
    """Train a tiny run (trainer=debug) in ``folder``/run and read back its TensorBoard events."""
    data_dir = folder / "data"
    write_idx_set(data_dir / "FashionMNIST" / "raw")
    train(compose_config([*TINY_OVERRIDES, f"paths.data_dir={data_dir}", *overrides], folder))
    GlobalHydra.instance().clear()
    return EventAccumulator(str(folder / "run"), size_guidance={"images": 0}).Reload()


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> EventAccumulator:
    return tiny_run(tmp_path_factory.mktemp("images"))


def test_training_logs_every_image_tab_by_default(default_run):
    tags = set(default_run.Tags()["images"])
    # the seeds' exercise 6.6.4: a pullover and a coat (the tiny test set holds both classes)
    for name in ("Pullover", "Coat"):
        assert {f"activations/{name}/input", f"activations/{name}/act1", f"activations/{name}/act2"} <= tags, tags
    assert {"kernels/conv1", "test/confusion_matrix", "test/misclassified"} <= tags, tags
    assert default_run.Tags()["graph"] is True
    # block 1: 6 channels of 28x28 as 3x2 (2 px padding), enlarged 4x; block 2: 16 channels of 10x10 as 4x4
    act1, act2 = default_run.Images("activations/Coat/act1")[-1], default_run.Images("activations/Coat/act2")[-1]
    assert (act1.width, act1.height) == ((3 * 30 + 2) * 4, (2 * 30 + 2) * 4)
    assert (act2.width, act2.height) == ((4 * 12 + 2) * 4, (4 * 12 + 2) * 4)
    kernels = default_run.Images("kernels/conv1")[-1]
    assert (kernels.width, kernels.height) == ((6 * 6 + 1) * 8, 7 * 8)  # six 5x5 kernels, 1 px apart, 8x


def test_image_callbacks_follow_their_config(tmp_path):
    events = tiny_run(
        tmp_path,
        "callbacks.confusion_matrix=null",
        "callbacks.model_graph=null",
        "callbacks.activation_images.class_indices=[7]",
        "callbacks.activation_images.layers=[pool2]",
        "callbacks.kernel_images.layer=conv2",
    )
    tags = set(events.Tags()["images"])
    assert tags == {"activations/Sneaker/input", "activations/Sneaker/pool2", "kernels/conv2", "test/misclassified"}
    assert events.Tags()["graph"] is False


class CountingNet(torch.nn.Module):
    """A network that counts the batches it is asked to classify."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.calls = torch.nn.Conv2d(1, 2, 3), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv1(x).flatten(1)[:, :2]


@pytest.mark.parametrize(
    "callback", [ActivationImages(), KernelImages(), ConfusionMatrixFigure(), MisclassifiedImages(), ModelGraph()]
)
def test_callbacks_do_nothing_without_a_tensorboard_logger(callback):
    test_set = (torch.rand(8, 1, 5, 5), torch.randint(0, 2, (8,)))
    datamodule = SimpleNamespace(test_set=test_set, classes=["a", "b"])
    trainer = SimpleNamespace(loggers=[], datamodule=datamodule, global_step=0, global_rank=0)
    net = CountingNet()
    module = SimpleNamespace(net=net, device=torch.device("cpu"), __call__=net)
    callback.on_fit_end(trainer, module)
    assert net.calls == 0, f"{type(callback).__name__} ran the network with no TensorBoard logger to show it"


def test_confusion_figure_names_classes_and_per_class_accuracy():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    figure = confusion_figure(preds, labels, ["cat", "dog", "owl"])
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat  75.0%", "dog  50.0%", "owl  100.0%"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "owl"]
    assert [t.get_text() for t in ax.texts] == ["3", "1", "0", "0", "1", "1", "0", "0", "2"]
    assert "accuracy 75.0%" in ax.get_title()


def test_most_confident_mistakes_come_first():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05]])
    labels = torch.tensor([0, 0, 1, 0, 1])
    assert most_confident_mistakes(probs, labels, 10).tolist() == [4, 1, 3, 2]
    assert most_confident_mistakes(probs, labels, 2).tolist() == [4, 1]
    assert most_confident_mistakes(probs, torch.tensor([0, 1, 0, 1, 0]), 5).tolist() == []


def test_kernel_grid_is_red_positive_blue_negative_white_zero_grey_between():
    weight = torch.tensor([[[[1.0, 0.0, -1.0]]], [[[0.5, 0.5, 0.5]]]])  # two 1x3 kernels
    grid = kernel_grid(weight, scale=1)
    assert grid.shape == (3, 3, 9)  # side by side, 1 px of padding around each
    red, white, blue, grey = grid[:, 1, 1], grid[:, 1, 2], grid[:, 1, 3], grid[:, 0, 0]
    assert red[0] > 0.3 > red[2] and blue[2] > 0.3 > blue[0]
    assert white.min() > 0.9 and torch.allclose(grey, torch.full((3,), 128 / 255), atol=0.01)
    assert grid[1, 1, 5] > red[1]  # one colour scale for all kernels: 0.5 is a paler red than 1
