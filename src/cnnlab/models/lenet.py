"""The LeNet family as one plain ``nn.Module`` built from a declarative spec.

``LeNet()`` with no arguments is the seeds' LeNet-5 (61,706 parameters). Every variant the chapter and its
exercises ask about is the same class with other arguments: kernel sizes, channels, activation, pooling,
extra conv or FC layers, padding/stride, batch norm, dropout.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from cnnlab.models.walk import LayerRow, layer_rows
from cnnlab.shapes import ACTIVATION_CLASSES, POOLING_CLASSES, per_block, plan_layers

# The layer classes behind the spec's names (cnnlab.shapes lists the names, so a spec is checked without torch).
ACTIVATIONS: dict[str, type[nn.Module]] = {name: getattr(nn, cls) for name, cls in ACTIVATION_CLASSES.items()}
POOLINGS: dict[str, type[nn.Module] | None] = {name: cls and getattr(nn, cls) for name, cls in POOLING_CLASSES.items()}


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
        kernels = per_block(kernel_sizes, n_blocks, "kernel_sizes")
        pads = per_block(paddings, n_blocks, "paddings")
        steps = per_block(strides, n_blocks, "strides")
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
