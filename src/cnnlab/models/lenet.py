"""The LeNet family as one plain ``nn.Module`` built from a declarative spec.

``LeNet()`` with no arguments is the seeds' LeNet-5 (61,706 parameters). Every variant the chapter and its
exercises ask about is the same class with other arguments: kernel sizes, channels, activation, pooling,
extra conv or FC layers, padding/stride, batch norm, dropout.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from cnnlab.errors import ModelSpecError
from cnnlab.models.walk import LayerRow, layer_rows
from cnnlab.ops import conv_output_shape

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}
POOLINGS: dict[str, type[nn.Module] | None] = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d, "none": None}


def _per_block(value: int | Sequence[int], n_blocks: int, field: str) -> list[int]:
    """Broadcast one int to every conv block, or check a list has one entry per block."""
    if isinstance(value, int):
        return [value] * n_blocks
    values = [int(v) for v in value]
    if len(values) != n_blocks:
        raise ModelSpecError(
            f"model.{field} has {len(values)} entries but model.conv_channels has {n_blocks} blocks; "
            f"give one value per conv block (or a single int for all)."
        )
    return values


def plan_layers(
    conv_channels: Sequence[int], kernel_sizes: int | Sequence[int], paddings: int | Sequence[int],
    strides: int | Sequence[int], activation: str, pool: str, pool_size: int, pool_stride: int | None,
    fc_sizes: Sequence[int], dropout: float, in_channels: int, image_size: int, num_classes: int, **_: object,
) -> list[tuple[int, int]]:  # fmt: skip
    """(channels, side) after every conv block of a LeNet spec (``LeNet``'s arguments, which hold the defaults; any
    others ignored), every rule of the spec checked before anything is built: ``cnnlab.validate`` and ``LeNet``
    itself call this, and nothing else checks a spec.

    Raises ``ModelSpecError`` naming the setting, the layer and the sizes.
    """
    if activation not in ACTIVATIONS:
        raise ModelSpecError(f"model.activation={activation!r} is not known; choose one of {sorted(ACTIVATIONS)}.")
    if not 0.0 <= dropout < 1.0:
        raise ModelSpecError(f"model.dropout={dropout} must be in [0, 1).")
    if num_classes < 2 or in_channels < 1 or image_size < 1 or any(h < 1 for h in fc_sizes):
        raise ModelSpecError(
            f"model.num_classes={num_classes} must be >= 2, in_channels={in_channels} and "
            f"image_size={image_size} >= 1, and every model.fc_sizes entry ({list(fc_sizes)}) >= 1."
        )
    n_blocks = len(conv_channels)
    kernels = _per_block(kernel_sizes, n_blocks, "kernel_sizes")
    pads = _per_block(paddings, n_blocks, "paddings")
    steps = _per_block(strides, n_blocks, "strides")
    if pool not in POOLINGS:
        raise ModelSpecError(f"model.pool={pool!r} is not a pooling kind; choose one of {sorted(POOLINGS)}.")
    pool_stride = pool_size if pool_stride is None else pool_stride
    side, shapes = image_size, []
    for i, (channels, k, p, s) in enumerate(zip(conv_channels, kernels, pads, steps, strict=True), start=1):
        if channels < 1 or k < 1 or s < 1 or p < 0:
            raise ModelSpecError(
                f"conv{i}: channels={channels}, kernel={k}, stride={s} must be >= 1 and padding={p} >= 0."
            )
        if k > side + 2 * p:
            raise ModelSpecError(
                f"conv{i}: kernel {k}x{k} is larger than its input {side}x{side} (padding {p}); "
                f"use a smaller model.kernel_sizes, more model.paddings, or fewer conv blocks."
            )
        side = conv_output_shape(side, k, p, s)[0]
        if POOLINGS[pool] is not None:
            if pool_size > side:
                raise ModelSpecError(
                    f"pool{i}: pooling window {pool_size}x{pool_size} is larger than its input "
                    f"{side}x{side}; use a smaller model.pool_size, model.pool=none, or fewer conv blocks."
                )
            side = conv_output_shape(side, pool_size, 0, pool_stride)[0]
        shapes.append((channels, side))
    return shapes


class LeNet(nn.Sequential):
    """LeNet-style CNN: conv blocks (conv, [bn], activation, [pool]), flatten, FC layers, class scores.

    A flat ``nn.Sequential`` with named layers (``conv1``, ``act1``, ``pool1``, ..., ``fc1``, ...), so the
    seeds' ``for layer in net: X = layer(X)`` walk works as written.
    """

    def __init__(
        self,
        conv_channels: Sequence[int] = (6, 16),
        kernel_sizes: int | Sequence[int] = 5,
        paddings: int | Sequence[int] = (2, 0),
        strides: int | Sequence[int] = 1,
        activation: str = "sigmoid",
        pool: str = "avg",
        pool_size: int = 2,
        pool_stride: int | None = 2,
        fc_sizes: Sequence[int] = (120, 84),
        batch_norm: bool = False,
        dropout: float = 0.0,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
    ) -> None:
        conv_channels = [int(c) for c in conv_channels]
        shapes = plan_layers(
            conv_channels, kernel_sizes, paddings, strides, activation, pool, pool_size, pool_stride, fc_sizes,
            dropout, in_channels, image_size, num_classes,
        )  # fmt: skip
        n_blocks = len(conv_channels)
        kernels = _per_block(kernel_sizes, n_blocks, "kernel_sizes")
        pads = _per_block(paddings, n_blocks, "paddings")
        steps = _per_block(strides, n_blocks, "strides")
        act, pool_cls = ACTIVATIONS[activation], POOLINGS[pool]

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels_in = in_channels
        for i, (channels, k, p, s) in enumerate(zip(conv_channels, kernels, pads, steps, strict=True), start=1):
            layers[f"conv{i}"] = nn.Conv2d(channels_in, channels, kernel_size=k, padding=p, stride=s)
            if batch_norm:
                layers[f"bn{i}"] = nn.BatchNorm2d(channels)
            layers[f"act{i}"] = act()
            if pool_cls is not None:
                layers[f"pool{i}"] = pool_cls(
                    kernel_size=pool_size, stride=pool_size if pool_stride is None else pool_stride
                )
            channels_in = channels
        layers["flatten"] = nn.Flatten()
        features = shapes[-1][0] * shapes[-1][1] ** 2 if shapes else in_channels * image_size**2
        for j, hidden in enumerate(fc_sizes, start=1):
            layers[f"fc{j}"] = nn.Linear(features, hidden)
            if batch_norm:
                layers[f"fc_bn{j}"] = nn.BatchNorm1d(hidden)
            layers[f"fc_act{j}"] = act()
            if dropout > 0:
                layers[f"dropout{j}"] = nn.Dropout(dropout)
            features = hidden
        layers[f"fc{len(fc_sizes) + 1}"] = nn.Linear(features, num_classes)
        super().__init__(layers)
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes

    def walk(self) -> list[LayerRow]:
        """The seeds' layer-by-layer walk for one example: each layer's name, type, output shape, parameters and
        multiply-adds (``cnnlab.models.walk``, as ``python -m cnnlab.inspect`` prints it)."""
        return layer_rows(self, (self.in_channels, self.image_size, self.image_size))
