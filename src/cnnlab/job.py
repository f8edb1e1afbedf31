"""One job's context, computed once before it runs: its rank, its run dir (taken for this process), its threads, its
devices, its trial in a pruned search, its identity, and the config it runs. ``cnnlab.run.run_job`` then runs it.

``job_context`` decides and prepares everything in this order, and undoes it when the job ends:

1. its rank: process 0 of a job (DDP ranks, SLURM tasks) is the one that writes the run dir;
2. the run dir is taken by process 0 (``rundir.hold``): a second driver is refused, and ``ckpt_path=last`` of a
   later run never picks a run that is still training;
3. a failed attempt is set aside (a sweep's job run again), or the dir Hydra made for this command is folded into
   the run it resumes (process 0 only);
4. a parallel sweep's job gets its share of the cores and a GPU slot of its own (``cnnlab.launch``);
5. a pruned search's job finds its trial (``cnnlab.pruning``);
6. the job's config: the composed one (left as Hydra made it) copied, with the plan's run dir and checkpoint and the
   job's devices, a search's trial without the callbacks it has no use for (``hydra.sweeper.trial_callbacks``), and
   its fingerprint (``cnnlab.fingerprint``);
7. a job whose trainer starts DDP ranks has them start as this job (``launch.ddp_ranks_start_as_this_job``: the one
   place that changes ``sys.argv``, HydraConfig and the environment, because Lightning reads them).
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from cnnlab import environment
from cnnlab.errors import ConfigError
from cnnlab.fingerprint import fingerprint_of, identity
from cnnlab.plan import JobPlan
from cnnlab.rundir import fold_into, hold, set_aside_failed_attempt
from cnnlab.runtime import is_multirun
from cnnlab.vocab import SweepFiles

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("cnnlab.job")


@dataclass
class JobContext:
    """What one job is and has, decided once (``job_context``): everything ``run_job`` needs besides the config."""

    plan: JobPlan
    cfg: DictConfig  # the config this job runs (a copy of the composed one: run dir, checkpoint, devices set)
    rank_zero: bool  # the process that writes the run dir
    fingerprint: str  # of what decides the result (cnnlab.fingerprint)
    identity: dict[str, Any] = field(default_factory=dict)  # the settings the fingerprint was made of
    threads: int | None = None  # torch threads this job set (None: the process's as they were)
    devices: Any = None  # trainer.devices: as composed, or the GPU slot a parallel job took
    pruned: bool = False  # a job (or a DDP rank of a job) of a pruned search: it takes part in every decision
    trial: optuna.Trial | None = None  # process 0's trial of that search; None on the other ranks
    floor: float | None = None  # process 0's: the accuracy below which its trial is pruned (hydra.sweeper.prune_below)
    requeue_on_usr2: bool = False  # submitit runs it: SLURM's SIGUSR2 saves a checkpoint, then submitit requeues


def job_fingerprint(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    """The fingerprint of a composed config and the settings it was made of."""
    settings = identity(cfg)
    return fingerprint_of(settings), settings


@contextmanager
def job_context(cfg: DictConfig, plan: JobPlan) -> Iterator[JobContext]:
    """Decide and prepare the job (the steps of this module's docstring, in order) for as long as it runs."""
    from cnnlab import launch  # torch is imported when a job runs, not to plan it

    multirun = is_multirun()
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    with ExitStack() as job:
        rank_zero = environment.is_rank_zero()  # 1
        if rank_zero:  # 2
            job.callback(hold(plan.output_dir, "driven").close)
        if plan.set_aside_failed and rank_zero:  # 3
            kept = set_aside_failed_attempt(plan.output_dir)
            log.info("job %s failed before: running it again from scratch (the failed attempt is in %s)",
                     plan.output_dir.name, kept.name)  # fmt: skip
        elif plan.action == "resume" and multirun:
            log.info("job %s was interrupted: resuming from %s", plan.output_dir.name, plan.ckpt_path)
        if plan.fold_from is not None:
            log.info("resuming into %s", plan.output_dir)
            if rank_zero and hydra_cfg is not None:
                fold_into(plan.fold_from, plan.output_dir)

        threads, devices = None, cfg.trainer.get("devices")  # 4
        if multirun and "Joblib" in str(hydra_cfg.launcher.get("_target_", "")):
            if launch.runs_several_processes(cfg.trainer):
                raise ConfigError(
                    "trainer=ddp/ddp_cpu starts processes of its own, which joblib's workers cannot host; run DDP "
                    "jobs with the sequential launcher (no hydra/launcher override) or hydra/launcher=slurm."
                )
            cpus, parallel = launch.available_cpus(), jobs_in_flight(hydra_cfg)
            threads = launch.threads_per_job(cpus, parallel)
            launch.set_threads(threads, f"{cpus} cores / {parallel} jobs in flight")
            slots = max(1, int(hydra_cfg.launcher.get("jobs_per_gpu", 1)))
            lock_dir = Path(hydra_cfg.sweep.dir) / SweepFiles.GPU_LOCKS
            devices, gpu_lock = launch.gpu_slot(cfg.trainer, int(hydra_cfg.job.num), lock_dir, slots)
            if gpu_lock is not None:
                job.callback(gpu_lock.close)
        elif multirun and environment.slurm_cpus():
            threads = environment.slurm_cpus()
            launch.set_threads(threads, "SLURM_CPUS_PER_TASK")

        pruned, trial, floor = environment.ddp_rank_of_pruned_trial(), None, None  # 5
        if multirun:
            from cnnlab.pruning import job_trial, pruned_search

            if pruned_search(hydra_cfg.sweeper):
                pruned = True
                if rank_zero:
                    trial, floor = job_trial(hydra_cfg.sweeper, int(hydra_cfg.job.num))

        job_cfg = copy.deepcopy(cfg)  # 6
        with open_dict(job_cfg):
            job_cfg.ckpt_path = plan.ckpt_path
            job_cfg.paths.output_dir = str(plan.output_dir)
            job_cfg.trainer.devices = devices
            off = [n for n in (trial_callbacks_off(hydra_cfg) if multirun else [])
                   if job_cfg.get("callbacks") and job_cfg.callbacks.get(n) is not None]  # fmt: skip
            for name in off:
                job_cfg.callbacks[name] = None
        fingerprint, settings = job_fingerprint(job_cfg)

        if rank_zero and launch.runs_several_processes(cfg.trainer):  # 7
            # the other ranks go without the same callbacks (a checkpoint on one rank only would wait for the others)
            overrides = [*hydra_cfg.overrides.task, *(f"callbacks.{n}=null" for n in off)] if multirun else sys.argv[1:]
            job.enter_context(launch.ddp_ranks_start_as_this_job(overrides, plan.output_dir, plan.ckpt_path, pruned))
        yield JobContext(plan=plan, cfg=job_cfg, rank_zero=rank_zero, fingerprint=fingerprint, identity=settings,
                         threads=threads, devices=devices, pruned=pruned, trial=trial, floor=floor,
                         requeue_on_usr2=environment.under_submitit())  # fmt: skip


def trial_callbacks_off(hydra_cfg: DictConfig | None) -> list[str]:
    """The callbacks a trial of cnnlab's Optuna search goes without (``hydra.sweeper.trial_callbacks``: false)."""
    from cnnlab.pruning import SWEEPER

    if hydra_cfg is None or str(hydra_cfg.sweeper.get("_target_", "")) != SWEEPER:
        return []
    return [str(name) for name, on in (hydra_cfg.sweeper.get("trial_callbacks") or {}).items() if not on]


def jobs_in_flight(hydra_cfg: DictConfig) -> int:
    """How many jobs of this sweep run at once on this machine under joblib: the trials in flight of an Optuna
    search (it hands joblib one job at a time per slot), else joblib's own ``n_jobs``."""
    from cnnlab import launch
    from cnnlab.pruning import SWEEPER
    from cnnlab.study import trials_in_flight

    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    if str(hydra_cfg.sweeper.get("_target_", "")) == SWEEPER:
        return trials_in_flight(hydra_cfg.sweeper, launcher)
    return launch.parallel_jobs(int(hydra_cfg.launcher.n_jobs), launch.available_cpus())
