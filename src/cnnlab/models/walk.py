"""The seeds' ``for layer in net: X = layer(X)`` walk: each top-level layer's output shape for one example, its
parameters and multiply-adds. Plain torch (no Lightning, no Hydra): ``LeNet.walk()`` and ``cnnlab.inspect`` both
use it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class LayerRow:
    """One layer of the walk: name, type, output shape for one example, parameters, multiply-adds."""

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    mult_adds: int


def layer_rows(net: nn.Module, input_shape: Sequence[int]) -> list[LayerRow]:
    """Run one example through ``net`` and describe each of its top-level layers, in the order they ran.

    Multiply-adds come from ``torch.utils.flop_counter`` (half its FLOPs): convolutions and matrix products,
    the work that dominates a CNN; activations and pooling count as 0.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    children = dict(net.named_children())

    def record(name: str, output: torch.Tensor) -> None:  # a hook returning a value would replace the output
        shapes.setdefault(name, tuple(output.shape))

    hooks = [
        child.register_forward_hook(lambda _m, _i, out, name=name: record(name, out))
        for name, child in children.items()
    ]
    was_training = net.training
    net.eval()  # batch norm cannot normalise a single training example
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    flops = counter.get_flop_counts()
    root = type(net).__name__
    return [
        LayerRow(
            name=name,
            kind=type(children[name]).__name__,
            shape=shape,
            params=sum(p.numel() for p in children[name].parameters()),
            mult_adds=sum(flops.get(f"{root}.{name}", {}).values()) // 2,
        )
        for name, shape in shapes.items()  # insertion order: the order the layers ran
    ]
