"""cnnlab's Hydra plugins (Hydra takes plugins only from the ``hydra_plugins`` package): an Optuna sweeper, and
Hydra's launchers made to survive: GPUs shared by joblib jobs, quiet SLURM polling.

- ``OptunaSweeper`` (``hydra/sweeper=optuna``): cnnlab's search on current Optuna (``cnnlab.sweeper``): trials in
  flight, pruning, accuracy against cost, the study in the sweep dir. Re-running the sweep in its dir continues the
  study: finished and pruned trials are not repeated, a trial that was running when the sweep stopped runs again in
  its own job dir (resuming from its ``last.ckpt``), and only the trials still missing from
  ``hydra.sweeper.n_trials`` are asked for.
- ``JoblibLauncher``: Hydra's joblib launcher with ``jobs_per_gpu``, the number of parallel jobs that share one GPU
  (read by ``cnnlab.launch`` in each job, which pins the job to a GPU with a free slot).
- ``SlurmLauncher``: submitit's SLURM launcher without the warnings of every poll of a cluster that keeps no
  accounting (``sacct`` fails there; submitit then goes by the jobs' result files).
"""

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as HydraJoblibLauncher
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as HydraSlurmLauncher
from omegaconf import MISSING, DictConfig

from cnnlab.study import LIGHT_TRIAL

log = logging.getLogger("cnnlab.plugins")


class OptunaSweeper(Sweeper):
    """cnnlab's Optuna search (``cnnlab.sweeper``): trials in flight, pruned after any epoch, one objective or
    accuracy against cost, the study kept in the sweep dir so that a stopped search continues."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.config_loader = hydra_context.config_loader  # to check the search space before any trial
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        from cnnlab.sweeper import sweep  # optuna: imported when a search runs, not at Hydra's plugin scan

        sweep(self.config.hydra.sweeper, self.config, self.launcher, arguments, self.config_loader)


@dataclass
class OptunaSweeperConf:
    """``hydra/sweeper=optuna``: the settings of ``sweeps/optuna.yaml`` (``hydra/sweeper/sampler``: tpe, random,
    grid, nsgaii)."""

    _target_: str = f"{OptunaSweeper.__module__}.{OptunaSweeper.__qualname__}"
    # Hydra would build the nested sampler (its _target_) before the sweeper sees it, and Optuna's grid sampler
    # cannot be built without the search space: cnnlab.sweeper.build_sampler builds it from this node.
    _recursive_: bool = False
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    sampler: Any = MISSING
    direction: str = "maximize"  # of the validation accuracy, the first objective
    objectives: list[str] = field(default_factory=lambda: ["val_acc"])  # then macs and/or params, minimised
    pruner: str = "none"  # median, percentile, hyperband, successive_halving, threshold, patient or none
    pruner_args: Any = None  # the pruner's arguments by Optuna's names: {n_startup_trials: 4, n_warmup_steps: 1}
    storage: Any = None  # null: in memory (no pruning, no resume)
    study_name: str | None = None
    n_trials: int = 20
    n_jobs: int = 1  # trials in flight at once (with a parallel launcher: joblib, SLURM)
    params: dict[str, str] | None = None  # the search space, in Hydra's override syntax
    budget_s: float | None = None  # wall time: no trial starts after it, those in flight finish (null: none)
    cheap_first: bool = True  # the trials the sampler draws blind (TPE's startup trials) run cheapest first
    # each trial TPE draws (after its blind ones): the cheapest of this many of its proposals (1: its own choice)
    cheapest_of: int = 3
    # with a pruner: a trial whose validation accuracy after an epoch is below this is pruned then, whatever the
    # pruner says (no better than guessing: chance on ten classes is 0.10); null: the pruner alone decides
    prune_below: float | None = 0.15
    # What a trial does beyond training, validating and testing a complete trial: each callback named here is off in
    # a trial (false) or as in a single run (true), e.g. hydra.sweeper.trial_callbacks.confusion_matrix=true.
    trial_callbacks: dict[str, bool] = field(default_factory=lambda: dict(LIGHT_TRIAL))


SAMPLERS = {  # hydra/sweeper/sampler=<name>: Optuna's samplers, seeded (hydra.sweeper.sampler.seed)
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": None, "multivariate": False, "constant_liar": False},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
    "grid": {"_target_": "optuna.samplers.GridSampler", "seed": None},
    "nsgaii": {"_target_": "optuna.samplers.NSGAIISampler", "seed": None, "population_size": 50},
}


def store_sweeper() -> None:
    store = ConfigStore.instance()
    store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="cnnlab")
    for name, node in SAMPLERS.items():
        store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="cnnlab")


class QuietSacctPolls(logging.Filter):
    """Drop submitit's "Bypassing sacct error" warning, logged on every poll where SLURM keeps no accounting."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Bypassing sacct error" not in record.getMessage()


@functools.cache
def quiet_sacct_watcher() -> Any:
    """submitit's SLURM job watcher with ``sacct``'s stderr kept from the terminal (built when first needed, so
    that Hydra's plugin scan at every start does not import submitit)."""
    from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

    class QuietSacctWatcher(SlurmInfoWatcher):
        def _make_command(self) -> list[str] | None:
            command = super()._make_command()
            return command and ["sh", "-c", '"$0" "$@" 2>/dev/null', *command]

    return QuietSacctWatcher(delay_s=SlurmJob.watcher._delay_s)


class SlurmLauncher(HydraSlurmLauncher):
    """Hydra's submitit SLURM launcher, quiet on clusters without accounting: submitit polls ``sacct``, which
    there prints "Slurm accounting storage is disabled" and fails; submitit then goes by the jobs' result files."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.slurm.slurm import SlurmJob

        SlurmJob.watcher = quiet_sacct_watcher()
        submitit_log = logging.getLogger("submitit")
        if not any(isinstance(f, QuietSacctPolls) for f in submitit_log.filters):
            submitit_log.addFilter(QuietSacctPolls())
        return super().launch(job_overrides, initial_job_idx)


class JoblibLauncher(HydraJoblibLauncher):
    """Hydra's joblib launcher with ``jobs_per_gpu``: how many of its parallel jobs share one GPU.

    The launcher checks it before any job starts (joblib itself has no use for it); each job reads it from its Hydra
    config and takes a free slot of a GPU (``cnnlab.launch.gpu_slot``).
    """

    def __init__(self, jobs_per_gpu: int = 1, **joblib_kwargs: Any) -> None:
        if not isinstance(jobs_per_gpu, int) or jobs_per_gpu < 1:
            from cnnlab.errors import refuse

            refuse(f"hydra.launcher.jobs_per_gpu={jobs_per_gpu!r} must be an integer >= 1 (the jobs that share one "
                   f"GPU; 1: a GPU per job).")
        self.jobs_per_gpu = jobs_per_gpu
        super().__init__(**joblib_kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        if self.jobs_per_gpu > 1:
            log.info("joblib: %d jobs share each GPU", self.jobs_per_gpu)
        return super().launch(job_overrides, initial_job_idx)


@dataclass
class JoblibLauncherConf(JobLibLauncherConf):
    """``hydra/launcher=joblib``: Hydra's settings (``n_jobs``, ...), this launcher, and ``jobs_per_gpu``."""

    _target_: str = f"{JoblibLauncher.__module__}.{JoblibLauncher.__qualname__}"
    jobs_per_gpu: int = 1  # parallel jobs that share one GPU (a LeNet job uses a sliver of one)


def store_joblib_launcher() -> None:
    """``hydra/launcher=joblib`` is this launcher with ``jobs_per_gpu``, in place of the joblib plugin's entry."""
    ConfigStore.instance().store(group="hydra/launcher", name="joblib", node=JoblibLauncherConf, provider="cnnlab")


class JoblibLauncherEntry(SearchPathPlugin):
    """Stores cnnlab's ``hydra/launcher=joblib`` after Hydra's plugin scan, before any config is composed.

    The scan runs every plugin module again, the joblib plugin's config (which stores its own ``joblib``) included,
    in an order that depends on where the packages are installed; whichever runs last would win. Hydra calls the
    search-path plugins once the scan is done, so this entry is the one composed, whatever the install.
    """

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        store_joblib_launcher()


store_joblib_launcher()
store_sweeper()
