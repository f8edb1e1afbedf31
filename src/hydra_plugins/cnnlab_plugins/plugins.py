"""cnnlab's Hydra plugins (Hydra takes plugins only from the ``hydra_plugins`` package): Hydra's sweeper and
launchers, made to survive: an Optuna study that continues, GPUs shared by joblib jobs, quiet SLURM polling.

- ``OptunaSweeper``: Hydra's Optuna sweeper with the study kept in the sweep dir (``sweeps/optuna.yaml``: SQLite).
  Re-running the sweep in its dir continues the study: finished trials are not repeated, a trial that was
  running when the sweep stopped runs again in its own job dir (resuming from its ``last.ckpt``), and only the
  trials still missing from ``hydra.sweeper.n_trials`` are asked for.
- ``JoblibLauncher``: Hydra's joblib launcher with ``jobs_per_gpu``, the number of parallel jobs that share one GPU
  (read by ``cnnlab.launch`` in each job, which pins the job to a GPU with a free slot).
- ``SlurmLauncher``: submitit's SLURM launcher without the warnings of every poll of a cluster that keeps no
  accounting (``sacct`` fails there; submitit then goes by the jobs' result files).
"""

import functools
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as HydraJoblibLauncher
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as HydraOptunaSweeper
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as HydraSlurmLauncher

if TYPE_CHECKING:  # Hydra imports every plugin module when it starts: optuna only when a sweep uses it
    import optuna
    from optuna.trial import FrozenTrial

log = logging.getLogger("cnnlab.plugins")


class OptunaSweeper(HydraOptunaSweeper):
    """Hydra's Optuna sweeper whose study, kept in persistent storage, is continued when the sweep runs again."""

    def sweep(self, arguments: list[str]) -> None:
        import optuna
        from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
        from optuna.trial import TrialState

        impl = self.sweeper
        if impl.storage and str(impl.storage).startswith("sqlite:///"):
            Path(str(impl.sweep_dir)).mkdir(parents=True, exist_ok=True)  # the study's file lives there
        study = optuna.create_study(
            study_name=impl.study_name, storage=impl.storage, directions=impl._get_directions(), load_if_exists=True
        )
        stopped = [t for t in study.trials if t.state == TrialState.RUNNING]
        if study.trials:
            log.info("study %s holds %d trials (%d stopped while running): continuing it", study.study_name,
                     len(study.trials), len(stopped))  # fmt: skip
        if stopped:
            impl._process_searchspace_config()
            _, fixed = create_params_from_overrides(impl._parse_sweeper_params_config() + list(arguments))
            for trial in stopped:
                rerun_trial(study, trial, fixed, impl.launcher)
        impl.job_idx = len(study.trials)  # job numbers follow trial numbers: each trial keeps its job dir
        impl.n_trials = max(0, impl.n_trials - len(study.trials))
        if impl.n_trials == 0:
            log.info("the study has its %d trials: nothing left to run", len(study.trials))
        impl.sweep(arguments)


def rerun_trial(study: "optuna.Study", trial: "FrozenTrial", fixed: dict[str, Any], launcher: Any) -> None:
    """Run a trial that a stopped sweep left running, with its parameters, in its own job dir; tell the study."""
    from optuna.trial import TrialState

    overrides = [f"{name}={value}" for name, value in {**trial.params, **fixed}.items()]
    log.info("trial %d was running when the sweep stopped: running it again (%s)", trial.number, " ".join(overrides))
    (result,) = launcher.launch([overrides], initial_job_idx=trial.number)
    value = result.return_value if result.status == JobStatus.COMPLETED else None
    if value is None:
        study.tell(trial.number, state=TrialState.FAIL)
    else:
        study.tell(trial.number, float(value))


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
    config and takes a free slot of a GPU (``cnnlab.launch.pin_gpu``).
    """

    def __init__(self, jobs_per_gpu: int = 1, **joblib_kwargs: Any) -> None:
        if not isinstance(jobs_per_gpu, int) or jobs_per_gpu < 1:
            print(f"cnnlab: error: hydra.launcher.jobs_per_gpu={jobs_per_gpu!r} must be an integer >= 1 (the jobs "
                  f"that share one GPU; 1: a GPU per job).", file=sys.stderr)  # fmt: skip
            raise SystemExit(2)
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
