"""The seeds' ``for layer in net: X = layer(X)`` walk: each top-level layer's output shape for one example, its
parameters and multiply-adds. Plain torch (no Lightning, no Hydra): ``LeNet.walk()`` and ``cnnlab.inspect`` both
use it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import conv_flop_count, mm_flop


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

    Multiply-adds are half the FLOPs of torch's own formulas (``torch.utils.flop_counter``'s ``conv_flop_count`` and
    ``mm_flop``) for every convolution and linear layer, counted in the top-level layer that holds it: the work that
    dominates a CNN; activations, pooling and normalisation count as 0. (The formulas without ``FlopCounterMode``,
    which imports ``torch._dynamo`` when it starts counting: most of a second for ``python -m cnnlab.inspect``.)
    """
    shapes: dict[str, tuple[int, ...]] = {}
    flops: dict[str, int] = {}
    children = dict(net.named_children())

    def record(name: str, output: torch.Tensor) -> None:  # a hook returning a value would replace the output
        shapes.setdefault(name, tuple(output.shape))

    def count(name: str, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        if isinstance(layer, nn.Conv2d):
            work = conv_flop_count(list(x.shape), list(layer.weight.shape), list(output.shape))
        else:  # nn.Linear: a matrix product of the flattened input with the transposed weight
            work = mm_flop((x.numel() // x.shape[-1], layer.in_features), (layer.in_features, layer.out_features))
        flops[name] = flops.get(name, 0) + work

    hooks = [
        child.register_forward_hook(lambda _m, _i, out, name=name: record(name, out))
        for name, child in children.items()
    ]
    for path, layer in net.named_modules():
        if isinstance(layer, nn.Conv2d | nn.Linear) and path:
            top = path.split(".", 1)[0]
            hooks.append(layer.register_forward_hook(lambda m, i, out, top=top: count(top, m, i, out)))
    was_training = net.training
    net.eval()  # batch norm cannot normalise a single training example
    try:
        with torch.no_grad():
            net(torch.zeros(1, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    return [
        LayerRow(
            name=name,
            kind=type(children[name]).__name__,
            shape=shape,
            params=sum(p.numel() for p in children[name].parameters()),
            mult_adds=flops.get(name, 0) // 2,
        )
        for name, shape in shapes.items()  # insertion order: the order the layers ran
    ]
