"""Where the Hydra configs live (cnnlab's own and a user's ``--config-dir``), and config helpers shared by the entry
points."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# An installed package carries its configs in cnnlab/conf (the build copies them there: setup.py); an editable
# install reads conf/ at the top of the checkout, beside src/.
_PACKAGED = Path(__file__).resolve().parent / "conf"
CONF_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[2] / "conf"

# Hydra's flags that choose where configs come from, each followed by its value (``--config-dir=X`` works too).
CONFIG_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


def config_flags(argv: list[str]) -> list[str]:
    """The config-source flags of a command line with their values (``--config-dir myconf``), in order: what a
    command started again for the same job (a DDP rank, a resumed sweep) must be given as well."""
    kept, args = [], iter(argv)
    for arg in args:
        flag, eq, _ = arg.partition("=")
        if flag in CONFIG_FLAGS:
            kept += [arg] if eq else [arg, next(args, "")]
    return kept


def user_config_dirs(argv: list[str]) -> list[Path]:
    """The folders given with ``--config-dir``/``-cd``: a user's configs, added to cnnlab's groups."""
    dirs, args = [], iter(argv)
    for arg in args:
        flag, eq, value = arg.partition("=")
        if flag in ("--config-dir", "-cd"):
            dirs.append(Path(value if eq else next(args, "")).expanduser())
    return dirs


def check_config_dirs(argv: list[str]) -> None:
    """A ``--config-dir`` that is not a folder: one line naming it (Hydra prints a warning and exits 0)."""
    from cnnlab.errors import ConfigError

    for folder in user_config_dirs(argv):
        if not folder.is_dir():
            what = "is a file" if folder.exists() else "does not exist"
            raise ConfigError(
                f"--config-dir {folder} {what}; give the folder that holds your config groups (e.g. myconf, with "
                f"myconf/model/mynet.yaml), relative to {Path.cwd()} or absolute."
            )


def input_shape(data: DictConfig | dict[str, Any]) -> tuple[int, int, int]:
    """One example's shape (channels, height, width) for the data config ``data``."""
    return int(data["in_channels"]), int(data["image_size"]), int(data["image_size"])


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
