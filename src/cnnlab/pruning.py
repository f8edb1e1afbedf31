"""A search's job reports to its trial and stops when the pruner says so (``hydra.sweeper.pruner``).

The job finds its trial through the study's storage and its job number (the trial's number: ``cnnlab.sweeper``
numbers the jobs so), never through the sweeper's memory: it works in the sweep's process (basic launcher), in a
joblib worker and on another machine (SLURM). After each validation, process 0 reports the validation accuracy and
asks the pruner; every DDP rank gets its answer, and all stop after the same epoch. A pruned run keeps its
``last.ckpt`` and is not tested; its record says ``pruned`` with the epochs it ran (``cnnlab.run``).

(Optuna's own Lightning callback, in optuna-integration, is written for the ``lightning`` package, not
``pytorch_lightning``, and reports to the study itself, which a multi-objective study refuses.)
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from cnnlab.callbacks import CheckpointedMetrics
from cnnlab.study import REPORTED_AT
from cnnlab.vocab import Tag

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("cnnlab.pruning")

SWEEPER = "hydra_plugins.cnnlab_plugins.plugins.OptunaSweeper"


class TrialPruning(Callback):
    """Report ``val/acc`` to the trial after every validation (its step: the epoch, counted from 0, as Optuna's own
    Lightning callback counts it); stop training after an epoch the pruner prunes."""

    def __init__(self, trial: optuna.Trial | None, floor: float | None = None) -> None:
        self.trial = trial  # None on the ranks other than 0: they take rank 0's answer
        self.floor = floor  # hydra.sweeper.prune_below: an accuracy below it prunes, whatever the pruner says
        self.pruned_after: int | None = None  # the epochs trained when pruned

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A trial resumed from an epoch's end (its process killed after it reported, or before) asks again about the
        last epoch its checkpoint holds: a pruned trial stays pruned after the same epoch, as if never killed."""
        if trainer.current_epoch == 0:
            return
        kept = next((c.metrics for c in trainer.callbacks if isinstance(c, CheckpointedMetrics)), {})
        self.decide(trainer, kept.get(Tag.VAL_ACC), trainer.current_epoch - 1)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        accuracy = trainer.callback_metrics.get(Tag.VAL_ACC)
        self.decide(trainer, None if accuracy is None else float(accuracy), trainer.current_epoch)

    def decide(self, trainer: pl.Trainer, accuracy: float | None, epoch: int) -> None:
        """Report ``accuracy`` at ``epoch`` (a step already reported keeps its value), ask the pruner (process 0),
        and stop every rank after that epoch when it prunes."""
        prune = False
        if trainer.is_global_zero and self.trial is not None and accuracy is not None:
            with warnings.catch_warnings():  # Optuna's note that a step reported before keeps its first value
                warnings.simplefilter("ignore", UserWarning)
                self.trial.report(accuracy, step=epoch)
            # when: the search's best-so-far curve counts the report from then (cnnlab.anytime); a resumed trial's
            # repeated report keeps its first time, as it keeps its first value
            when = f"{REPORTED_AT}{epoch}"
            if when not in self.trial.user_attrs:
                self.trial.set_user_attr(when, time.time())
            last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
            below = self.floor is not None and not accuracy >= self.floor  # NaN too
            prune = not last and (below or self.trial.should_prune())  # after the last epoch stopping saves nothing
            if prune:
                why = f"below hydra.sweeper.prune_below={self.floor:g}" if below else "below what the pruner keeps"
                log.info("pruned after epoch %d: val acc %.4f %s", epoch + 1, accuracy, why)
        prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            self.pruned_after = epoch + 1
            trainer.should_stop = True


def pruning_callback(trial: optuna.Trial | None, takes_part: bool,
                     floor: float | None = None) -> TrialPruning | None:  # fmt: skip
    """The callback for a job of a pruned search (``cnnlab.job.JobContext``): process 0 with its ``trial`` (and the
    search's ``prune_below``), another DDP rank with none (it takes rank 0's answer); None for every other job (it
    costs nothing)."""
    return TrialPruning(trial, floor) if takes_part else None


def pruned_search(hydra_sweeper: Any) -> bool:
    """Whether the sweep is a cnnlab Optuna search with a pruner (its jobs report after every epoch)."""
    return str(hydra_sweeper.get("_target_", "")) == SWEEPER and str(hydra_sweeper.get("pruner") or "none") != "none"


def job_trial(sweeper: Any, number: int) -> tuple[optuna.Trial, float | None]:
    """Trial ``number`` of the search's study, or its trial in the pruning study beside a multi-objective one; and
    the accuracy below which it is pruned (``hydra.sweeper.prune_below``)."""
    import optuna

    from cnnlab import study as studies

    search = studies.settings(sweeper)
    storage = studies.open_storage(search.storage)
    main = optuna.load_study(study_name=search.study_name, storage=storage)
    if search.pruning_study_name != search.study_name:
        number = main.get_trials(deepcopy=False)[number].user_attrs[studies.PRUNING_TRIAL_ATTR]
    study = optuna.load_study(study_name=search.pruning_study_name, storage=storage,
                              pruner=studies.build_pruner(search))  # fmt: skip
    study_id = storage.get_study_id_from_name(study.study_name)
    return optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number)), search.prune_below
