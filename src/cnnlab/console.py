"""What a run prints: a short header, a line per epoch when no progress bar shows, a summary at the end.

The full config goes to the run's log file (and ``.hydra/``); on the terminal only with ``extras.print_config=true``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback

from cnnlab.config import config_yaml
from cnnlab.rundir import RunRecord
from cnnlab.vocab import Tag

log = logging.getLogger("cnnlab")
config_log = logging.getLogger("cnnlab.config")  # the run's log file only (conf/hydra/job_logging/cnnlab.yaml)


def command_line_overrides() -> list[str]:
    """The overrides this run was started with (a sweep job: its own)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def shown_path(path: str | Path) -> str:
    """A path relative to the working directory when it lies below it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def log_config(cfg: DictConfig) -> None:
    """The composed config: into the run's log; to the terminal too with ``extras.print_config=true``."""
    text = config_yaml(cfg)
    if (cfg.get("extras") or {}).get("print_config"):
        log.info("config:\n%s", text)
    else:
        config_log.info("config:\n%s", text)


def device_of(trainer: pl.Trainer) -> str:
    """The device in words: ``cpu (2 threads)``, ``cuda:0 (NVIDIA H200)``, ``2 x cpu (ddp)``."""
    device = trainer.strategy.root_device
    if device.type == "cuda":
        words = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        threads = torch.get_num_threads()
        words = f"{device.type} ({threads} thread{'s' if threads != 1 else ''})"
    if trainer.world_size > 1:
        words = f"{trainer.world_size} x {device.type} ({type(trainer.strategy).__name__})"
    precision = str(trainer.precision)
    return words if precision in ("32-true", "32") else f"{words}, {precision}"


def epochs_text(epochs: int | None) -> str:
    return "no epoch limit" if epochs in (None, -1) else f"{epochs} epoch{'s' if epochs != 1 else ''}"


def print_header(cfg: DictConfig, module: pl.LightningModule, trainer: pl.Trainer) -> None:
    """Three lines before training: what trains on what, where; the overrides; the run dir."""
    if not trainer.is_global_zero:
        return
    params = sum(p.numel() for p in module.parameters())
    log.info(
        "cnnlab: %s on %s, %s parameters, %s on %s",
        cfg.get("run_name"), cfg.data.get("name"), f"{params:,}", epochs_text(cfg.trainer.get("max_epochs")),
        device_of(trainer),
    )  # fmt: skip
    log.info("  overrides: %s", " ".join(command_line_overrides()) or "none (the defaults)")
    log.info("  run dir:   %s", shown_path(cfg.paths.output_dir))


def print_summary(cfg: DictConfig, record: RunRecord) -> None:
    """After testing: the accuracies, the time, where the run is and how to look at it."""

    def acc(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    log.info(
        "cnnlab: done in %.1f s, %s: test acc %s, val acc %s, train loss %s",
        record.wall_s, epochs_text(record.epochs), acc(record.test_acc), acc(record.val_acc), acc(record.train_loss),
    )  # fmt: skip
    log.info("  run dir:     %s (metrics.json, checkpoints/)", shown_path(cfg.paths.output_dir))
    log.info("  tensorboard: tensorboard --logdir %s", shown_path(cfg.paths.log_dir))


class EpochLines(Callback):
    """One line per epoch (train loss, val acc, examples/s) where no progress bar shows: no terminal, nohup,
    SLURM, a log file. ``when``: auto (only without a terminal), always, never."""

    def __init__(self, when: str = "auto") -> None:
        if when not in ("auto", "always", "never"):
            raise ValueError(f"callbacks.epoch_lines.when={when!r}: choose auto, always or never.")
        self.when = when
        self._pending: int | None = None  # the epoch whose metrics are complete at the next hook

    def _on(self, trainer: pl.Trainer) -> bool:
        if self.when == "auto":
            return not sys.stdout.isatty() and trainer.is_global_zero
        return self.when == "always" and trainer.is_global_zero

    def _report(self, trainer: pl.Trainer) -> None:
        if self._pending is None:
            return
        metrics = trainer.callback_metrics
        parts = [f"epoch {self._pending + 1}/{trainer.max_epochs}"]
        for key, label, fmt in (
            (Tag.TRAIN_LOSS_EPOCH, "train loss", ".4f"),
            (Tag.VAL_ACC, "val acc", ".4f"),
            (Tag.EXAMPLES_PER_SEC, "examples/s", ",.0f"),
        ):
            if key in metrics:
                parts.append(f"{label} {float(metrics[key]):{fmt}}")
        log.info("  ".join(parts))
        self._pending = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The epoch's reduced metrics reach callback_metrics after these hooks: report at the next one.
        if self._on(trainer):
            self._pending = trainer.current_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer)
