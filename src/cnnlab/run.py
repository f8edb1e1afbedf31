"""One job, once its config is valid and its context decided (``cnnlab.job``), read top to bottom in ``run_job``:
build the data, the model and the trainer -> fit -> test -> record. ``cnnlab.train`` imports this (torch, Lightning)
only after the config passed its checks.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from cnnlab.callbacks import CheckpointedMetrics, ExamplesPerSecond
from cnnlab.config import as_dict
from cnnlab.console import config_log, log_config, print_header, print_summary
from cnnlab.cost import network_macs
from cnnlab.errors import RunInterrupted
from cnnlab.guards import InterruptCheckpoint, interruptions_reported
from cnnlab.hparams import metric_values, run_hparams, write_run_summaries
from cnnlab.job import JobContext
from cnnlab.module import ClassifierModule
from cnnlab.pruning import TrialPruning, pruning_callback
from cnnlab.rundir import RunRecord, write_record
from cnnlab.signatures import kept_schemas_warning
from cnnlab.validate import validate_for_the_run
from cnnlab.vocab import Status, Tag

log = logging.getLogger("cnnlab.run")


def run_job(ctx: JobContext) -> RunRecord:
    """Build, fit, test, record: the whole job, in order. Its record goes into the run dir (process 0)."""
    cfg = ctx.cfg
    validate_for_the_run(cfg)  # the checks that need torch: the GPU asked for, the checkpoint to resume
    kept_schemas_warning()
    log_config(cfg)  # the run's log; the terminal only with extras.print_config=true
    if cfg.seed is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build_data(cfg)
    module = build_module(cfg)
    trainer = build_trainer(cfg, ctx)
    print_header(cfg, module, trainer)
    macs = network_macs(module.net, cfg.data)  # on the CPU, before training
    pruning = next((c for c in trainer.callbacks if isinstance(c, TrialPruning)), None)
    try:
        with interruptions_reported(trainer):  # a checkpoint holds tensors and plain data: weights_only loading
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
            fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
            pruned = pruning is not None and pruning.pruned_after is not None
            test_results = [] if pruned else trainer.test(module, datamodule=datamodule, verbose=False)
    except Exception as err:
        record_stopped(ctx, trainer, module, macs, err)
        raise

    record = final_record(ctx, trainer, module, fit_metrics, test_results, macs)
    if pruned:  # stopped by the search's pruner: its epochs, no test
        record.status, record.epochs = Status.PRUNED, pruning.pruned_after
    if ctx.rank_zero:
        log_final(cfg, trainer, record, macs, "success")
        write_record(cfg.paths.output_dir, record)
        config_log.info("metrics: %s", json.dumps(record.as_json()))
        print_summary(cfg, record)
    return record


def build(cfg: DictConfig) -> tuple[pl.LightningDataModule, ClassifierModule, pl.Trainer]:
    """The data module, the LightningModule and the Trainer of a composed config, outside any job (tests, notebooks)."""
    return build_data(cfg), build_module(cfg), build_trainer(cfg, None)


def build_data(cfg: DictConfig) -> pl.LightningDataModule:
    return instantiate(cfg.data)


def build_module(cfg: DictConfig) -> ClassifierModule:
    """The LightningModule: the network, its optimizer and schedule, and the run settings, all as plain data."""
    return ClassifierModule(
        model=as_dict(cfg.model),
        optimizer=as_dict(cfg.optimizer),
        scheduler=as_dict(cfg.get("scheduler")) or None,
        init=cfg.init,
        compile=cfg.compile,
        channels_last=cfg.channels_last,
        label_smoothing=cfg.label_smoothing,
        tta=cfg.tta,
    )


def build_trainer(cfg: DictConfig, ctx: JobContext | None) -> pl.Trainer:
    """The Trainer with its callbacks and loggers; a pruned search's job reports to its trial."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    callbacks = [c for c in callbacks if c is not None]  # a switched-off callback (ema=null) builds None
    for saver in (c for c in callbacks if isinstance(c, InterruptCheckpoint)):
        saver.requeue_on_usr2 = ctx is not None and ctx.requeue_on_usr2  # submitit's job: SIGUSR2 saves, requeues
    callbacks.append(CheckpointedMetrics())  # the record's metrics in every checkpoint: a late resume keeps them
    pruning = pruning_callback(ctx.trial, ctx.pruned, ctx.floor) if ctx is not None else None
    if pruning is not None:
        callbacks.append(pruning)
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg]
    if not loggers:  # logger=none: the learning rate has nowhere to go (Lightning's monitor refuses to start)
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    speed = next((c for c in callbacks if isinstance(c, ExamplesPerSecond)), None)
    if speed is not None and ctx is not None:
        speed.job_start = ctx.plan.startup_from
    # Without a terminal (nohup, SLURM, a log file) a progress bar only leaves its last frame: the epoch lines
    # (callbacks.epoch_lines) say the same, one line per epoch.
    progress_bar = bool(cfg.trainer.get("enable_progress_bar", True)) and sys.stdout.isatty()
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, enable_progress_bar=progress_bar)


def record_stopped(ctx: JobContext, trainer: pl.Trainer, module: ClassifierModule, macs: int,
                   err: Exception) -> None:  # fmt: skip
    """A job stopped by a signal or an error: the loggers say how it ended; an interrupted one writes its record
    (a re-run of its sweep resumes it). A failed one's record is written by the entry point (``cnnlab.train``)."""
    if not ctx.rank_zero:
        return
    interrupted = isinstance(err, RunInterrupted)
    stopped = RunRecord(status=Status.INTERRUPTED if interrupted else Status.FAILED, epochs=trainer.current_epoch,
                        tags=[str(tag) for tag in ctx.cfg.tags or []], wall_s=time.time() - ctx.plan.started_at,
                        params=sum(p.numel() for p in module.net.parameters()), macs=macs,
                        fingerprint=ctx.fingerprint, identity=ctx.identity)  # fmt: skip
    try:  # the HPARAMS tab shows how it ended too
        log_final(ctx.cfg, trainer, stopped, macs, "failed")
    except Exception as logging_err:  # the run's own error is the one to report
        log.warning("the loggers could not record the stopped run: %s", logging_err)
    if interrupted:
        write_record(ctx.cfg.paths.output_dir, stopped)


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


def final_record(ctx: JobContext, trainer: pl.Trainer, module: ClassifierModule, logged: dict[str, float],
                 test_results: list[dict], macs: int) -> RunRecord:  # fmt: skip
    """The run's record, as written to ``metrics.json``: the metrics of the run's last epoch, those this process
    logged or, when it trained no epoch (resumed after its last), those its checkpoint kept."""
    speed = next((c for c in trainer.callbacks if isinstance(c, ExamplesPerSecond)), None)
    kept = next((c.metrics for c in trainer.callbacks if isinstance(c, CheckpointedMetrics)), {})
    logged = {**kept, **logged}
    return RunRecord(
        test_acc=test_results[0].get(Tag.TEST_ACC) if test_results else None,
        val_acc=logged.get(Tag.VAL_ACC),
        train_acc=logged.get(Tag.TRAIN_ACC),
        train_loss=logged.get(Tag.TRAIN_LOSS_EPOCH),
        examples_per_sec=speed.examples_per_sec if speed else None,
        startup_s=speed.startup_s if speed else None,
        train_s=speed.train_s if speed else None,
        params=sum(p.numel() for p in module.net.parameters()),
        macs=macs,
        epochs=trainer.current_epoch,
        wall_s=time.time() - ctx.plan.started_at,
        tags=[str(tag) for tag in ctx.cfg.tags or []],
        fingerprint=ctx.fingerprint,
        identity=ctx.identity,
    )
