"""Where the Hydra configs live, and config helpers shared by the entry points."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# conf/ sits at the project root, beside src/ (the package is installed in editable mode).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def as_dict(node: DictConfig | None) -> dict[str, Any]:
    """A resolved config node as plain Python containers (safe to pickle, log and checkpoint)."""
    if node is None:
        return {}
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]


def config_yaml(cfg: DictConfig) -> str:
    """The composed run config as resolved YAML, without Hydra's own node (the run's log, TensorBoard's TEXT tab)."""
    run_keys = [key for key in cfg if key != "hydra"]  # the hydra node is present only in composed test configs
    return OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, run_keys), resolve=True)


def _register_schemas() -> None:
    from cnnlab.schemas import register  # the schemas import Lightning and the models: only when configs compose

    register()


_register_schemas()
