"""One run, once its config is valid: build the data, the LightningModule and the Trainer, fit, test, write the
record. ``cnnlab.train`` imports this (torch, Lightning) only after the config passed its checks.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from cnnlab.callbacks import ExamplesPerSecond
from cnnlab.config import as_dict
from cnnlab.console import config_log, log_config, print_header, print_summary
from cnnlab.errors import RunInterrupted
from cnnlab.guards import interruptions_reported
from cnnlab.models.walk import layer_rows
from cnnlab.module import ClassifierModule
from cnnlab.plan import JobPlan
from cnnlab.pruning import TrialPruning, trial_pruning
from cnnlab.rundir import RunRecord, Status, write_record
from cnnlab.signatures import kept_schemas_warning
from cnnlab.validate import validate_for_the_run

log = logging.getLogger("cnnlab.run")


def build(cfg: DictConfig) -> tuple[pl.LightningDataModule, ClassifierModule, pl.Trainer]:
    """Instantiate the data module, the LightningModule and the Trainer (with callbacks and loggers)."""
    datamodule = instantiate(cfg.data)
    module = ClassifierModule(
        model=as_dict(cfg.model),
        optimizer=as_dict(cfg.optimizer),
        scheduler=as_dict(cfg.scheduler) or None,
        init=cfg.init,
        compile=cfg.compile,
        channels_last=cfg.channels_last,
        label_smoothing=cfg.label_smoothing,
        tta=cfg.tta,
    )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    callbacks = [c for c in callbacks if c is not None]  # a switched-off callback (ema=null) builds None
    pruning = trial_pruning()  # a trial of a pruned search reports to it after every epoch
    if pruning is not None:
        callbacks.append(pruning)
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg]
    # Without a terminal (nohup, SLURM, a log file) a progress bar only leaves its last frame: the epoch lines
    # (callbacks.epoch_lines) say the same, one line per epoch.
    progress_bar = bool(cfg.trainer.get("enable_progress_bar", True)) and sys.stdout.isatty()
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, enable_progress_bar=progress_bar)
    return datamodule, module, trainer


def fit_and_test(cfg: DictConfig, plan: JobPlan) -> RunRecord:
    """Build, fit, test; the record goes into the run dir (process 0)."""
    validate_for_the_run(cfg)
    kept_schemas_warning()
    log_config(cfg)  # the run's log; the terminal only with extras.print_config=true
    if cfg.seed is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, module, trainer = build(cfg)
    speed = next((c for c in trainer.callbacks if isinstance(c, ExamplesPerSecond)), None)
    if speed is not None:
        speed.job_start = plan.startup_from
    print_header(cfg, module, trainer)
    input_shape = (cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
    macs = sum(row.mult_adds for row in layer_rows(module.net, input_shape))  # before fit: the net is on the CPU
    pruning = next((c for c in trainer.callbacks if isinstance(c, TrialPruning)), None)
    tags = [str(tag) for tag in cfg.tags or []]
    try:
        with interruptions_reported(trainer):  # a checkpoint holds tensors and plain data: weights_only loading
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
            fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
            pruned = pruning is not None and pruning.pruned_after is not None
            test_results = [] if pruned else trainer.test(module, datamodule=datamodule, verbose=False)
    except RunInterrupted:
        if trainer.is_global_zero:  # resumable: a re-run of its sweep resumes it from last.ckpt
            stopped = RunRecord(status=Status.INTERRUPTED, epochs=trainer.current_epoch, tags=tags,
                                wall_s=time.time() - plan.started_at)  # fmt: skip
            write_record(cfg.paths.output_dir, stopped)
        raise

    record = final_record(trainer, module, fit_metrics, test_results, wall_s=time.time() - plan.started_at)
    record.tags, record.macs = tags, macs
    if pruned:  # stopped by the search's pruner: its epochs, no test
        record.status, record.epochs = Status.PRUNED, pruning.pruned_after
    if trainer.is_global_zero:
        hp_metrics = {f"hp/{k}": getattr(record, k) for k in ("test_acc", "val_acc") if getattr(record, k) is not None}
        for logger in trainer.loggers:  # the HPARAMS tab: the whole config with the run's final metrics
            if isinstance(logger, pl.loggers.TensorBoardLogger):
                logger.log_hyperparams(run_hparams(cfg), hp_metrics)
            else:  # CSV, MLflow: log_hyperparams takes the params only, the final metrics go in as metrics
                logger.log_hyperparams(run_hparams(cfg))
                logger.log_metrics(hp_metrics, step=trainer.global_step)
            logger.finalize("success")
        write_record(cfg.paths.output_dir, record)
        config_log.info("metrics: %s", json.dumps(record.as_json()))
        print_summary(cfg, record)
    return record


def final_record(
    trainer: pl.Trainer,
    module: ClassifierModule,
    logged: dict[str, float],
    test_results: list[dict],
    wall_s: float,
) -> RunRecord:
    """The run's record, as written to ``metrics.json``."""
    speed = next((c for c in trainer.callbacks if isinstance(c, ExamplesPerSecond)), None)
    return RunRecord(
        test_acc=test_results[0].get("test/acc") if test_results else None,
        val_acc=logged.get("val/acc"),
        train_acc=logged.get("train/acc"),
        train_loss=logged.get("train/loss_epoch"),
        examples_per_sec=speed.examples_per_sec if speed else None,
        startup_s=speed.startup_s if speed else None,
        params=sum(p.numel() for p in module.net.parameters()),
        epochs=trainer.current_epoch,
        wall_s=wall_s,
    )


def run_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The composed config for TensorBoard's HPARAMS tab (the logger flattens it to ``model/activation`` keys)."""
    return {key: as_dict(value) if isinstance(value, DictConfig) else value
            for key, value in cfg.items() if key not in ("paths", "hydra")}  # fmt: skip
