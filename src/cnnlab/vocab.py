"""The words cnnlab writes on disk, each defined once: how a run ended, what a re-run does with a job, the file
names of a run dir and of a sweep dir, and the metric tags of the logs. Everyone else imports them from here.

Light on purpose (standard library only): the report, ``cnnlab.resume`` and the notebook API read them without torch.
"""

from __future__ import annotations

from enum import Enum


class Word(str, Enum):
    """A string enum that prints and formats as its value (``f"{Status.OK}"`` is ``ok``), as JSON holds it."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Status(Word):
    """How a run ended, as ``metrics.json`` says (``status``); the last two are the report's, never written."""

    OK = "ok"  # trained and tested
    FAILED = "failed"  # crashed or refused (its error is in the record): a re-run of the sweep runs it again
    INTERRUPTED = "interrupted"  # stopped by a signal after saving last.ckpt: a re-run resumes it
    PRUNED = "pruned"  # stopped by a search's pruner after an epoch (last.ckpt kept, not tested): a re-run skips it
    INCOMPLETE = "incomplete"  # a job dir without a record: killed, or still running (the report's word)
    UNREADABLE = "unreadable"  # a record that cannot be read (the report's word; the file is named)

    @property
    def code(self) -> int:
        """The number TensorBoard's ``hp/status`` holds: fixed per status, whatever the order above."""
        return STATUS_CODES[self]


# hp/status in every run's HPARAMS: a code once given is never reused or renumbered (old runs keep their meaning).
STATUS_CODES = {Status.OK: 0, Status.FAILED: 1, Status.INTERRUPTED: 2, Status.PRUNED: 3, Status.INCOMPLETE: 4,
                Status.UNREADABLE: 5}  # fmt: skip
FINISHED = (Status.OK, Status.PRUNED)  # a run that ended as it should: a re-run skips it


class JobState(Word):
    """What a re-run of a sweep does with one of its jobs (``cnnlab.rundir.job_state``)."""

    FINISHED = "finished"  # ended ok or pruned: skipped, its files untouched
    FAILED = "failed"  # its failed attempt is set aside, then it runs from scratch
    INTERRUPTED = "interrupted"  # it resumes from its last.ckpt
    NEW = "new"  # it runs


class RunFiles:
    """The files of a run dir (one run, or one job of a sweep)."""

    METRICS = "metrics.json"  # the run record (cnnlab.rundir.RunRecord)
    CHECKPOINTS = "checkpoints"
    LAST = "checkpoints/last.ckpt"  # the newest checkpoint, to resume from
    LOCK = ".lock"  # held by the process that drives the dir
    RECORD_LOCK = ".metrics.lock"  # held while metrics.json is read and rewritten (a run's end, cnnlab.eval)
    FAILED_ATTEMPT = "failed-attempt-"  # failed-attempt-N/: an attempt that failed, set aside when the job ran again
    HYDRA = ".hydra"  # Hydra's record of the job: config.yaml, hydra.yaml, overrides.yaml
    CONFIG = ".hydra/config.yaml"
    HYDRA_RECORD = ".hydra/hydra.yaml"
    OVERRIDES = ".hydra/overrides.yaml"
    LOG = "train.log"
    EVENTS = "events.out.tfevents.*"  # TensorBoard's event files (a glob)


class SweepFiles:
    """The files of a sweep dir, beside its job dirs."""

    RECORD = "multirun.yaml"  # how the sweep was started: its config and overrides (Hydra's file)
    STUDY = "optuna.db"  # an Optuna search's study (sweeps/optuna.yaml, sweeps/search.yaml name it in storage)
    BEST = "optimization_results.yaml"  # an Optuna search's best parameters, as Hydra's Optuna sweeper wrote them
    GPU_LOCKS = ".gpu-locks"  # the GPU slots of parallel jobs
    REPORT = "report.md"
    REPORT_RUNS = "report.csv"
    REPORT_CONFIGS = "report_configs.csv"
    REPORT_PICTURE = "report.png"
    REPORTS = (REPORT, REPORT_RUNS, REPORT_CONFIGS, REPORT_PICTURE)


class Tag:
    """The metric tags the LightningModule and the callbacks log (TensorBoard, CSV, MLflow, ``callback_metrics``).

    ``conf/callbacks/default.yaml`` monitors ``val/acc`` by name (a test checks that it is ``VAL_ACC``)."""

    TRAIN_LOSS = "train/loss"  # per step; Lightning adds _step and _epoch to a metric logged both ways
    TRAIN_LOSS_EPOCH = "train/loss_epoch"
    TRAIN_ACC = "train/acc"
    VAL_ACC = "val/acc"  # the selection metric: sweeps maximise it, the best checkpoint follows it
    VAL_LOSS = "val/loss"
    TEST_ACC = "test/acc"
    TEST_LOSS = "test/loss"
    EXAMPLES_PER_SEC = "train/examples_per_sec"
    EPOCH = "epoch"  # Lightning logs the epoch beside every metric: a step's epoch

    @staticmethod
    def of(stage: str, metric: str) -> str:
        """``val/acc`` for ``("val", "acc")``: the evaluation stages log their loss and accuracy so."""
        return f"{stage}/{metric}"
