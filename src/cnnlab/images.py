"""TensorBoard images at the end of training: what the network sees, what it learned, where it fails.

Each callback logs once, when ``trainer.fit`` ends, to the run's TensorBoard logger (no TensorBoard logger:
nothing), from the test set of ``trainer.datamodule`` (its ``test_set`` and ``classes``) and the LightningModule's
network ``pl_module.net``. The confusion matrix and the misclassified grid share one pass over the test set.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure  # figures without pyplot: no display backend involved
from PIL import Image, ImageDraw, ImageFont
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import make_grid

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

KERNEL_COLOURS = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#808080")  # red +, white 0, blue -; grey gaps
PREDICTED_COLOUR, TRUE_COLOUR = "#ff7b72", "#7ee787"  # captions of the misclassified grid
CAPTION_FONT = ImageFont.load_default(size=13)
CAPTION_LINE = 16  # pixels per caption line

# The test-set predictions of a module at a global step, shared by the callbacks that need them.
_predictions: weakref.WeakKeyDictionary[nn.Module, tuple[int, Tensor]] = weakref.WeakKeyDictionary()


TestSet = tuple[Tensor, Tensor, list[str]]  # images, labels, class names


def tensorboard_writer(trainer: pl.Trainer) -> SummaryWriter | None:
    """The run's TensorBoard ``SummaryWriter``, or None when no TensorBoard logger is configured."""
    return next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def held_out_test_set(trainer: pl.Trainer) -> TestSet | None:
    """The test images, labels and class names of the trainer's data module, or None if it has none."""
    datamodule = trainer.datamodule
    test_set = getattr(datamodule, "test_set", None)
    if test_set is None:
        return None
    images, labels = test_set
    classes = list(getattr(datamodule, "classes", None) or [str(i) for i in range(int(labels.max()) + 1)])
    return images, labels, classes


def tag_name(class_name: str) -> str:
    """A class name usable inside a TensorBoard tag ('/' nests tags: 'T-shirt/top' -> 'T-shirt-top')."""
    return class_name.replace("/", "-").replace(" ", "_")


def enlarge(image: Tensor, scale: int) -> Tensor:
    """A [C, H, W] image ``scale`` times larger, pixels kept sharp (nearest neighbour)."""
    return F.interpolate(image[None], scale_factor=scale, mode="nearest")[0] if scale > 1 else image


@torch.no_grad()
def class_probabilities(net: nn.Module, images: Tensor, batch_size: int = 1024) -> Tensor:
    """Class probabilities [N, num_classes] of ``net`` for ``images``, in batches, in eval mode, on CPU.

    A module with ``predict_proba`` (cnnlab's LightningModule) predicts as it tests, test-time augmentation
    included, so the figures show the accuracy of ``metrics.json``. A compiled network runs eagerly here: a few
    batches of new shapes are not worth a recompilation.
    """
    device = next(net.parameters()).device
    predict = getattr(net, "predict_proba", None) or (lambda x: net(x).softmax(dim=-1))
    was_training = net.training
    net.eval()
    with torch.compiler.set_stance("force_eager"):
        probs = torch.cat([predict(batch.to(device)).cpu() for batch in images.split(batch_size)])
    net.train(was_training)
    return probs


def predicted_probabilities(trainer: pl.Trainer, pl_module: pl.LightningModule, images: Tensor) -> Tensor:
    """``class_probabilities`` on the test set, computed once per module and step for all the callbacks."""
    cached = _predictions.get(pl_module)
    if cached is None or cached[0] != trainer.global_step or len(cached[1]) != len(images):
        _predictions[pl_module] = (trainer.global_step, class_probabilities(pl_module, images))
    return _predictions[pl_module][1]


def layer_outputs(net: nn.Module, x: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """The outputs of the named sub-modules of ``net`` for input ``x`` (one forward pass, eval mode)."""
    modules = dict(net.named_modules())
    outputs: dict[str, Tensor] = {}
    hooks = [
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out.detach()))
        for name in names
    ]
    try:
        class_probabilities(net, x)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


class TestSetImages(Callback):
    """Logs to TensorBoard once, when training ends, from the test set: subclasses say what, in ``log_test_images``."""

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer, data = tensorboard_writer(trainer), held_out_test_set(trainer)
        if writer is not None and data is not None:
            self.log_test_images(writer, data, trainer, pl_module)

    def log_test_images(
        self, writer: SummaryWriter, data: TestSet, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        raise NotImplementedError


class ActivationImages(TestSetImages):
    """What the first conv blocks respond to, for chosen test images (the seeds' exercise 6.6.4).

    For the first test image of each class in ``class_indices`` (default: Pullover and Coat), logs the image and
    one grid per layer in ``layers`` (default: the activations of conv blocks 1 and 2), a grey tile per channel
    (6 channels: 3x2, 16: 4x4), each tile stretched to its own range. Tags: ``activations/<class>/<layer>``.
    """

    def __init__(
        self,
        class_indices: Sequence[int] = (2, 4),
        layers: Sequence[str] = ("act1", "act2"),
        scale: int = 4,
    ) -> None:
        self.class_indices, self.layers, self.scale = list(class_indices), list(layers), scale

    def log_test_images(
        self, writer: SummaryWriter, data: TestSet, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        images, labels, classes = data
        net = pl_module.net
        known = dict(net.named_modules())
        layers = [name for name in self.layers if name in known]
        if len(layers) < len(self.layers):
            rank_zero_warn(f"ActivationImages: no layer {sorted(set(self.layers) - set(layers))} in the model; name "
                           f"its layers in callbacks.activation_images.layers (cnnlab inspect lists them), or turn the "
                           f"images off: callbacks.activation_images=null.")  # fmt: skip
        for class_index in self.class_indices:
            found = (labels == class_index).nonzero().flatten()
            if len(found) == 0:
                rank_zero_warn(f"ActivationImages: no test image of class {class_index}; nothing logged for it.")
                continue
            image = images[found[0] : found[0] + 1]
            prefix, step = f"activations/{tag_name(classes[class_index])}", trainer.global_step
            writer.add_image(f"{prefix}/input", enlarge(make_grid(image, normalize=True), self.scale), step)
            for name, out in layer_outputs(net, image, layers).items():
                tiles = out[0].unsqueeze(1).float().cpu()  # one grey tile per channel, in a square-ish grid
                columns = math.ceil(math.sqrt(len(tiles)))
                grid = make_grid(tiles, nrow=columns, normalize=True, scale_each=True, pad_value=1.0)
                writer.add_image(f"{prefix}/{name}", enlarge(grid, self.scale), step)


class KernelImages(Callback):
    """The learned kernels of one conv layer (default ``conv1``) as a grid, one tile per input channel and
    kernel: red is positive, blue negative, white 0 (one colour scale for all)."""

    def __init__(self, layer: str = "conv1", scale: int = 8) -> None:
        self.layer, self.scale = layer, scale

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        conv = dict(pl_module.net.named_modules()).get(self.layer)
        if not isinstance(conv, nn.Conv2d):
            rank_zero_warn(f"KernelImages: the model has no Conv2d layer named {self.layer!r}; name one in "
                           f"callbacks.kernel_images.layer, or turn the images off: callbacks.kernel_images=null.")
            return
        writer.add_image(f"kernels/{self.layer}", kernel_grid(conv.weight, self.scale), trainer.global_step)


def kernel_grid(weight: Tensor, scale: int) -> Tensor:
    """Conv weights [out, in, k_h, k_w] as an RGB grid [3, H, W]: a row per kernel when there are several
    input channels, on a diverging colour map centred on 0, grey between the tiles."""
    weight = weight.detach().float().cpu()
    c_out, c_in = weight.shape[:2]
    tiles = weight.reshape(c_out * c_in, 1, *weight.shape[2:])
    bound = float(weight.abs().max()) or 1.0
    grid = make_grid(tiles, nrow=c_in if c_in > 1 else 8, padding=1, pad_value=float("nan"))[0]
    shade = ((grid + bound) / (2 * bound)).numpy()  # -bound..bound -> 0..1; the NaN padding stays NaN
    rgb = torch.from_numpy(KERNEL_COLOURS(shade)[..., :3]).permute(2, 0, 1).float()
    return enlarge(rgb, scale)


class ConfusionMatrixFigure(TestSetImages):
    """The test-set confusion matrix (torchmetrics), class names on the axes, per-class accuracy on the rows."""

    def log_test_images(
        self, writer: SummaryWriter, data: TestSet, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        images, labels, classes = data
        preds = predicted_probabilities(trainer, pl_module, images).argmax(dim=-1)
        writer.add_figure("test/confusion_matrix", confusion_figure(preds, labels, classes), trainer.global_step)


def confusion_figure(preds: Tensor, labels: Tensor, classes: Sequence[str]) -> Figure:
    """A confusion-matrix figure: counts in the cells, true classes with their accuracy on the rows."""
    # rank 0 alone draws the figure: no waiting for the other DDP ranks
    metric = MulticlassConfusionMatrix(num_classes=len(classes), sync_on_compute=False)
    counts = metric(preds, labels)
    per_class = counts.diag() / counts.sum(dim=1).clamp(min=1)
    fig = Figure(figsize=(10, 8.5), layout="constrained")
    ax = fig.subplots()
    metric.plot(ax=ax, labels=list(classes), cmap="Blues")
    for text in ax.texts:
        text.set_fontsize(10)
    ax.set_yticks(range(len(classes)), [f"{name}  {acc:.1%}" for name, acc in zip(classes, per_class, strict=True)])
    ax.tick_params(axis="y", rotation=0)
    accuracy = float(counts.diag().sum() / counts.sum().clamp(min=1))
    ax.set_title(f"Test set: {int(counts.sum())} images, accuracy {accuracy:.1%} (rows: per-class accuracy)")
    return fig


class MisclassifiedImages(TestSetImages):
    """The most confident mistakes on the test set as a grid, each image captioned with the predicted class and
    its probability (red) over the true class (green)."""

    def __init__(self, count: int = 20, columns: int = 5, scale: int = 5) -> None:
        self.count, self.columns, self.scale = count, columns, scale

    def log_test_images(
        self, writer: SummaryWriter, data: TestSet, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        if self.count < 1:
            return
        images, labels, classes = data
        probs = predicted_probabilities(trainer, pl_module, images)
        confidence, preds = probs.max(dim=-1)
        worst = most_confident_mistakes(probs, labels, self.count).tolist()
        if not worst:
            return
        tiles = [
            captioned(
                images[i],
                [(f"{classes[preds[i]]} {confidence[i]:.0%}", PREDICTED_COLOUR), (classes[labels[i]], TRUE_COLOUR)],
                self.scale,
            )
            for i in worst
        ]
        grid = make_grid(torch.stack(tiles), nrow=self.columns, padding=2, pad_value=1.0)
        writer.add_image("test/misclassified", grid, trainer.global_step)


def most_confident_mistakes(probs: Tensor, labels: Tensor, count: int) -> Tensor:
    """Indices of up to ``count`` misclassified examples, the highest predicted probability first."""
    confidence, preds = probs.max(dim=-1)
    wrong = (preds != labels).nonzero().flatten()
    return wrong[confidence[wrong].argsort(descending=True)][:count]


def captioned(image: Tensor, lines: Sequence[tuple[str, str]], scale: int) -> Tensor:
    """An RGB tile [3, H, W]: ``image`` stretched to its range and enlarged, under its (text, colour) lines."""
    low, high = image.min(), image.max()
    picture = enlarge(((image - low) / (high - low).clamp(min=1e-8)).float().cpu(), scale)
    if picture.shape[0] == 1:
        picture = picture.expand(3, -1, -1)
    band = CAPTION_LINE * len(lines) + 4
    canvas = Image.new("RGB", (picture.shape[2], picture.shape[1] + band))
    canvas.paste(to_pil_image(picture), (0, band))
    draw = ImageDraw.Draw(canvas)
    for row, (text, colour) in enumerate(lines):
        draw.text((3, 2 + CAPTION_LINE * row), text, fill=colour, font=CAPTION_FONT)
    return pil_to_tensor(canvas).float() / 255


class ModelGraph(TestSetImages):
    """The network's graph (traced with one test-sized input) for TensorBoard's GRAPHS tab."""

    def log_test_images(
        self, writer: SummaryWriter, data: TestSet, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> None:
        net, example = pl_module.net, data[0][:1].to(pl_module.device)
        was_training = net.training
        net.eval()
        try:
            # TensorBoard's add_graph traces with torch.jit.trace, which PyTorch now deprecates (FutureWarning);
            # TensorBoard has no other way to draw a graph, and the warning is nothing a user can act on.
            with torch.compiler.set_stance("force_eager"), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=FutureWarning)
                writer.add_graph(net, example)
        except Exception as err:  # tracing is best effort: a picture is not worth failing a finished run
            rank_zero_warn(f"ModelGraph: the model graph could not be traced ({type(err).__name__}: {err}).")
        finally:
            net.train(was_training)
