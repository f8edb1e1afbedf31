"""One run, once its config is valid: build the data, the LightningModule and the Trainer, fit, test, write the
record. ``cnnlab.train`` imports this (torch, Lightning) only after the config passed its checks.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from cnnlab.callbacks import ExamplesPerSecond
from cnnlab.config import as_dict
from cnnlab.console import config_log, log_config, print_header, print_summary
from cnnlab.errors import RunInterrupted
from cnnlab.guards import interruptions_reported
from cnnlab.hparams import metric_values, run_hparams, write_run_summaries
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
    if not loggers:  # logger=none: the learning rate has nowhere to go (Lightning's monitor refuses to start)
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
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
    pruning = next((c for c in trainer.callbacks if isinstance(c, TrialPruning)), None)
    tags = [str(tag) for tag in cfg.tags or []]
    macs = sum(row.mult_adds for row in module.net.walk())  # on the CPU, before training moves the network
    try:
        with interruptions_reported(trainer):  # a checkpoint holds tensors and plain data: weights_only loading
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
            fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
            pruned = pruning is not None and pruning.pruned_after is not None
            test_results = [] if pruned else trainer.test(module, datamodule=datamodule, verbose=False)
    except Exception as err:
        stopped = RunRecord(status=Status.INTERRUPTED if isinstance(err, RunInterrupted) else Status.FAILED,
                            epochs=trainer.current_epoch, tags=tags, wall_s=time.time() - plan.started_at,
                            params=sum(p.numel() for p in module.net.parameters()), macs=macs)  # fmt: skip
        if trainer.is_global_zero:
            try:  # the HPARAMS tab shows how it ended too
                log_final(cfg, trainer, stopped, macs, "failed")
            except Exception as logging_err:  # the run's own error is the one to report
                log.warning("the loggers could not record the stopped run: %s", logging_err)
            if isinstance(err, RunInterrupted):  # resumable: a re-run of its sweep resumes it from last.ckpt
                write_record(cfg.paths.output_dir, stopped)
        raise

    record = final_record(trainer, module, fit_metrics, test_results, wall_s=time.time() - plan.started_at)
    record.tags, record.macs = tags, macs
    if pruned:  # stopped by the search's pruner: its epochs, no test
        record.status, record.epochs = Status.PRUNED, pruning.pruned_after
    if trainer.is_global_zero:
        log_final(cfg, trainer, record, macs, "success")
        write_record(cfg.paths.output_dir, record)
        config_log.info("metrics: %s", json.dumps(record.as_json()))
        print_summary(cfg, record)
    return record


def log_final(cfg: DictConfig, trainer: pl.Trainer, record: RunRecord, macs: int, status: str) -> None:
    """The run's knobs and final metrics to every logger: TensorBoard's HPARAMS tab (the run's knobs, the config in
    its TEXT tab: ``cnnlab.hparams``); CSV and MLflow get the knobs as params and the metrics as metrics."""
    metrics = metric_values(record, macs)
    for logger in trainer.loggers:
        if not isinstance(logger, pl.loggers.TensorBoardLogger):
            logger.log_hyperparams(run_hparams(cfg))
        logger.log_metrics(metrics, step=trainer.global_step)
        logger.finalize(status)
        if isinstance(logger, pl.loggers.TensorBoardLogger):  # its own event file, after the logger's is closed
            write_run_summaries(logger.log_dir, cfg, trainer.global_step)


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
