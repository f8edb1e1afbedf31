"""Test a checkpoint: ``python -m cnnlab.eval ckpt_path=PATH [data overrides]``.

The network and the data config come back from the checkpoint (plain data, loaded with ``weights_only=True``);
a data override on the command line (``data.data_dir=...``, ``paths.data_dir=...``, ``data=mnist``) replaces
the checkpoint's value. The result is added to ``metrics.json`` in the checkpoint's run dir, under ``eval``,
keeping the training keys.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from torch import nn

from cnnlab.config import CONF_DIR, as_dict
from cnnlab.errors import ConfigError, exit_on_user_error
from cnnlab.module import ClassifierModule
from cnnlab.rundir import add_eval, run_dir_of
from cnnlab.schemas import check_overrides
from cnnlab.vocab import Tag

log = logging.getLogger("cnnlab.eval")


class CheckpointError(ConfigError):
    """A ``ckpt_path`` that is missing or is not a checkpoint written by ``cnnlab.train``."""


def read_checkpoint(path: str | Path | None) -> dict[str, Any]:
    """The checkpoint at ``path`` as plain data, checked to be a cnnlab one (a model spec with a ``_target_``)."""
    if not path:
        raise CheckpointError("ckpt_path is not set; give a checkpoint: ckpt_path=logs/<run>/checkpoints/last.ckpt.")
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={path} is not a file; give a .ckpt from a run's checkpoints/ folder.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load fails in many ways (zip, pickle, EOF) on a file that is no checkpoint
        raise CheckpointError(
            f"ckpt_path={path} is not a cnnlab checkpoint: PyTorch cannot load it as plain data "
            f"({type(err).__name__}); give a .ckpt written by cnnlab.train."
        ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    model = hparams.get("model") if isinstance(hparams, dict) else None
    if (
        not isinstance(model, dict)
        or "_target_" not in model
        or "optimizer" not in hparams
        or "state_dict" not in checkpoint
    ):
        raise CheckpointError(
            f"ckpt_path={path} is not a cnnlab checkpoint: it has no state_dict and hyper_parameters.model spec "
            f"(cnnlab.train writes them)."
        )
    try:
        model_class = get_class(model["_target_"])
    except Exception:  # an unknown module or class name
        model_class = None
    if not (isinstance(model_class, type) and issubclass(model_class, nn.Module)):
        raise CheckpointError(f"ckpt_path={path}: its model _target_ {model['_target_']!r} is not a network class.")
    return checkpoint


def load_classifier(path: str | Path, tta: bool | None = None) -> tuple[ClassifierModule, dict[str, Any]]:
    """The trained ``ClassifierModule`` (eval mode, CPU, not compiled) and the checkpoint it came from.

    ``tta``: average the predictions for each image and its mirror image; None keeps the training run's setting.
    """
    checkpoint = read_checkpoint(path)
    if tta is not None and not isinstance(tta, bool):
        raise ConfigError(f"tta={tta!r} must be true or false (or null: as the run was trained).")
    settings: dict[str, Any] = {"compile": False} if tta is None else {"compile": False, "tta": tta}
    try:
        module = ClassifierModule.load_from_checkpoint(
            Path(path).expanduser(), map_location="cpu", weights_only=True, **settings
        )
    except (RuntimeError, TypeError, KeyError) as err:  # weights or settings that do not fit this cnnlab
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"ckpt_path={path}: its network cannot be rebuilt from it ({first_line}).") from None
    return module.eval(), checkpoint


def overridden_data_keys(overrides: list[str]) -> set[str] | None:
    """The ``data`` keys set on the command line; None when the whole group is chosen (``data=mnist``)."""
    keys: set[str] = set()
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key == "data":
            return None
        if key.startswith("data."):
            keys.add(key.split(".")[1])
        if key in ("paths.data_dir", "paths.root_dir"):  # data.data_dir interpolates them
            keys.add("data_dir")
    return keys


def data_config(cfg: DictConfig, checkpoint: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The data module's config: the checkpoint's, with the keys given on the command line taken from ``cfg``."""
    composed = as_dict(cfg.data)
    saved = checkpoint.get("datamodule_hyper_parameters")
    keys = overridden_data_keys(overrides)
    if keys is None or not isinstance(saved, dict):
        return composed
    return {"_target_": composed["_target_"], **saved, **{k: composed[k] for k in keys if k in composed}}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test ``cfg.ckpt_path`` on its test set; record and return the result."""
    module, checkpoint = load_classifier(cfg.ckpt_path, tta=cfg.get("tta"))
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    datamodule = instantiate(data_config(cfg, checkpoint, overrides))
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    tested = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    ckpt = Path(cfg.ckpt_path).expanduser().resolve()
    run_dir = run_dir_of(ckpt)
    result = {
        "test_acc": tested[Tag.TEST_ACC],
        "test_loss": tested[Tag.TEST_LOSS],
        "tta": bool(module.hparams.tta),
        "data": datamodule.hparams.name,
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
    }
    if trainer.is_global_zero:
        key = str(ckpt.relative_to(run_dir))
        written = add_eval(run_dir, key, result)
        acc, loss = result["test_acc"], result["test_loss"]
        log.info("%s: test_acc %.4f, test_loss %.4f (%s) -> %s", key, acc, loss, result["data"], written)
    return result


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Hydra entry point: evaluate, return the test accuracy; a user mistake exits 2 with one line."""
    with exit_on_user_error():
        return evaluate(cfg)["test_acc"]


def cli() -> None:
    """``python -m cnnlab.eval``: the overrides checked as ``cnnlab.train`` checks them (``tta=off`` is refused:
    true, false or null), then compose and evaluate."""
    with exit_on_user_error():
        check_overrides(sys.argv[1:], CONF_DIR, nullable=("tta",))
    main()


if __name__ == "__main__":
    cli()
