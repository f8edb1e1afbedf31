"""Walk a model layer by layer: ``python -m cnnlab.inspect [overrides]``, e.g. ``model=lenet_improved``.

The seeds' ``for layer in net: X = layer(X)`` loop as a table: each layer's output shape for one example, its
parameters and multiply-adds, then the totals. Takes the same overrides as ``cnnlab.train``; needs no data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.config import CONF_DIR, as_dict
from cnnlab.errors import exit_on_user_error


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


def format_walk(rows: Sequence[LayerRow], title: str) -> str:
    """The walk as an aligned table with totals: parameters and multiply-adds per example."""
    header = ("layer", "type", "output shape", "params", "mult-adds")
    cells = [(r.name, r.kind, str(list(r.shape)), f"{r.params:,}", f"{r.mult_adds:,}") for r in rows]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        left = "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths[:3], strict=True))
        right = "  ".join(cell.rjust(width) for cell, width in zip(row[3:], widths[3:], strict=True))
        return f"{left}  {right}"

    params, mult_adds = sum(r.params for r in rows), sum(r.mult_adds for r in rows)
    return "\n".join(
        [
            title,
            line(header),
            *(line(cells_of_row) for cells_of_row in cells),
            f"parameters: {params:,}",
            f"multiply-adds per example: {mult_adds:,} ({mult_adds / 1e6:.2f} M)",
        ]
    )


def inspect_model(cfg: DictConfig) -> str:
    """Build ``cfg.model`` (no data needed) and return its layer walk for one example of ``cfg.data``'s size."""
    net = instantiate(as_dict(cfg.model))
    input_shape = (cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
    choice = HydraConfig.get().runtime.choices.get("model") if HydraConfig.initialized() else None
    title = f"model: {choice or cfg.model._target_}, input {[1, *input_shape]}"
    return format_walk(layer_rows(net, input_shape), title)


@hydra.main(config_path=str(CONF_DIR), config_name="inspect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: print the walk; a model that cannot be built exits 2 with one line."""
    with exit_on_user_error():
        print(inspect_model(cfg))


if __name__ == "__main__":
    main()
