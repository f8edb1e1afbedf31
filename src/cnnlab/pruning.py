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
import os
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from cnnlab.runtime import is_multirun

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("cnnlab.pruning")

SWEEPER = "hydra_plugins.cnnlab_plugins.plugins.OptunaSweeper"
PRUNED_TRIAL = "CNNLAB_PRUNED_TRIAL"


class TrialPruning(Callback):
    """Report ``val/acc`` to the trial after every validation (its step: the epoch, counted from 0, as Optuna's own
    Lightning callback counts it); stop training after an epoch the pruner prunes."""

    def __init__(self, trial: optuna.Trial | None) -> None:
        self.trial = trial  # None on the ranks other than 0: they take rank 0's answer
        self.pruned_after: int | None = None  # the epochs trained when pruned

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero and self.trial is not None:
            accuracy = trainer.callback_metrics.get("val/acc")
            if accuracy is not None:
                self.trial.report(float(accuracy), step=trainer.current_epoch)
                last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
                prune = not last and self.trial.should_prune()  # after the last epoch stopping saves nothing
        prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            self.pruned_after = trainer.current_epoch + 1
            trainer.should_stop = True
            log.info("pruned after epoch %d: val acc below what the pruner keeps", self.pruned_after)


def trial_pruning() -> TrialPruning | None:
    """The callback for this job when it is a trial of a pruned cnnlab search; None otherwise (costs nothing).

    The DDP ranks that Lightning starts are single runs of the job: ``PRUNED_TRIAL`` in their environment (set by
    process 0, inherited) tells them to take part in every decision.
    """
    from cnnlab.rundir import is_rank_zero

    if not is_multirun():
        return TrialPruning(None) if os.environ.get(PRUNED_TRIAL) and not is_rank_zero() else None
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.sweeper
    if str(sweeper.get("_target_", "")) != SWEEPER or str(sweeper.get("pruner") or "none") == "none":
        return None
    if not is_rank_zero():  # a SLURM task of a DDP job: rank 0 asks the pruner
        return TrialPruning(None)
    os.environ[PRUNED_TRIAL] = "1"  # the job's environment is restored when it ends (cnnlab.launch)
    return TrialPruning(job_trial(sweeper, int(hydra_cfg.job.num)))


def job_trial(sweeper: Any, number: int) -> optuna.Trial:
    """Trial ``number`` of the search's study, or its trial in the pruning study beside a multi-objective one."""
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
    return optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))
