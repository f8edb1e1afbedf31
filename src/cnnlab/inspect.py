"""Walk a model layer by layer: ``python -m cnnlab.inspect [overrides]``, e.g. ``model=lenet_improved``.

The seeds' ``for layer in net: X = layer(X)`` loop as a table: each layer's output shape for one example, its
parameters and multiply-adds, then the totals. Takes the same overrides as ``cnnlab.train``; needs no data.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cnnlab.config import CONF_DIR, as_dict, input_shape
from cnnlab.environment import tell_the_api
from cnnlab.errors import exit_on_user_error
from cnnlab.models.walk import LayerRow, layer_rows
from cnnlab.schemas import check_overrides
from cnnlab.validate import checked_network


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


def model_walk(cfg: DictConfig) -> tuple[list[LayerRow], str]:
    """Build ``cfg.model`` (no data needed): its layer walk for one example of ``cfg.data``'s size, and a title."""
    net = checked_network(as_dict(cfg.model), cfg.data)  # any nn.Module; one line when it cannot be built or run
    shape = input_shape(cfg.data)
    choice = HydraConfig.get().runtime.choices.get("model") if HydraConfig.initialized() else None
    return layer_rows(net, shape), f"model: {choice or cfg.model._target_}, input {[1, *shape]}"


def inspect_model(cfg: DictConfig) -> str:
    """The layer walk of ``cfg.model`` as the table ``python -m cnnlab.inspect`` prints."""
    rows, title = model_walk(cfg)
    return format_walk(rows, title)


@hydra.main(config_path=str(CONF_DIR), config_name="inspect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: print the walk (and hand its rows to ``cnnlab.api`` when it asks); a model that cannot be
    built exits 2 with one line."""
    with exit_on_user_error():
        rows, title = model_walk(cfg)
        print(format_walk(rows, title))
        tell_the_api(walk=[dataclasses.asdict(row) for row in rows])


def cli() -> None:
    """``python -m cnnlab.inspect``: the overrides checked as ``cnnlab.train`` checks them, then compose and walk."""
    with exit_on_user_error():
        check_overrides(sys.argv[1:], CONF_DIR)
    main()


if __name__ == "__main__":
    cli()
