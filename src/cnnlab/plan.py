"""One plan per job: what it does (skip, resume, run), where it writes and when it started, decided once.

``plan_job`` reads the run dir and the config and decides; nothing changes on disk. ``started`` carries the plan
out, always in this order:

1. the run dir is taken for this process (``rundir.hold``: a second driver is refused), for a resumed run or a
   sweep job;
2. a failed attempt is set aside, or the dir Hydra made for this command is folded into the resumed run's dir;
3. the config gets the plan's ``ckpt_path`` and ``paths.output_dir``;
4. a sweep job gets its threads and its GPU (``trainer.devices``), and its DDP ranks start as single runs of it
   (``cnnlab.launch.sweep_job``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from cnnlab.errors import ConfigError
from cnnlab.rundir import (
    LAST,
    RunRecord,
    fold_into,
    hold,
    is_rank_zero,
    job_state,
    read_record,
    run_dir_of,
    runs_with_checkpoint,
    set_aside_failed_attempt,
)
from cnnlab.runtime import is_multirun

log = logging.getLogger("cnnlab.plan")

_jobs_started = 0  # jobs planned in this process (the basic launcher runs a whole sweep in one)


@dataclass
class JobPlan:
    """What one job does: ``skip`` (it finished before), ``resume`` (from ``ckpt_path``) or ``run``."""

    action: str
    output_dir: Path
    ckpt_path: str | None = None
    finished: RunRecord | None = None  # skip: the result it had
    set_aside_failed: bool = False  # run: an earlier failed attempt is moved into failed-attempt-N/ first
    fold_from: Path | None = None  # resume a single run: the dir Hydra made for this command, folded into it
    started_at: float = field(default_factory=time.time)  # wall_s counts from here
    startup_from: float = field(default_factory=time.time)  # startup_s from here: the process start for its first job


def job_start_time() -> float:
    """When this job started: the process start for a process's first job (imports are part of its start-up),
    else now (a later job of a sequential sweep does not count the jobs before it)."""
    global _jobs_started
    _jobs_started += 1
    return psutil.Process().create_time() if _jobs_started == 1 else time.time()


def plan_job(cfg: DictConfig) -> JobPlan:
    """Decide what this job does from its run dir and ``ckpt_path`` (``last``: the newest run of ``run_name``)."""
    output_dir, ckpt_path = Path(cfg.paths.output_dir), cfg.get("ckpt_path")
    plan = JobPlan("run", output_dir, startup_from=job_start_time())
    if is_multirun() and not ckpt_path:  # a sweep re-run in its dir: each job picks up where it stopped
        state = job_state(output_dir)
        if state == "finished":
            return replace(plan, action="skip", finished=read_record(output_dir))
        if state == "interrupted":
            return replace(plan, action="resume", ckpt_path=str(output_dir / LAST))
        return replace(plan, set_aside_failed=state == "failed")
    if str(ckpt_path) == "last":
        ckpt_path = str(newest_last_checkpoint(Path(cfg.paths.log_dir), cfg.run_name))
    if not ckpt_path:
        return plan
    checkpoint = Path(str(ckpt_path)).expanduser()
    if is_multirun() or checkpoint.resolve().parent.name != "checkpoints":
        return replace(plan, action="resume", ckpt_path=str(ckpt_path))
    run_dir = run_dir_of(checkpoint)  # a resumed run writes into its own run dir: TensorBoard shows one run
    fold_from = output_dir if run_dir != output_dir.resolve() else None  # (DDP ranks start in the run dir)
    return replace(plan, action="resume", output_dir=run_dir, ckpt_path=str(ckpt_path), fold_from=fold_from)


def newest_last_checkpoint(log_dir: Path, run_name: str) -> Path:
    """``ckpt_path=last``: ``<log_dir>/<run_name>/<newest run>/checkpoints/last.ckpt``.

    DDP ranks that Lightning starts later resolve ``last`` again, in the run dir rank 0 chose: the same answer.
    """
    runs = runs_with_checkpoint(log_dir, run_name)
    if not runs:
        raise ConfigError(
            f"ckpt_path=last: no run of {run_name} under {log_dir} has a {LAST}; give the checkpoint's path "
            f"(ckpt_path=<run dir>/{LAST}) or the run_name=... and paths.log_dir=... of the run to resume."
        )
    log.info("ckpt_path=last: resuming %s, the newest of %d runs of %s", runs[-1], len(runs), run_name)
    return runs[-1] / LAST


@contextmanager
def started(cfg: DictConfig, plan: JobPlan) -> Iterator[JobPlan]:
    """Carry out ``plan`` (the steps of this module's docstring, in order) for as long as the job runs."""
    from cnnlab.launch import sweep_job  # torch: imported once the job runs, not to plan it

    with ExitStack() as job:
        if (plan.action == "resume" or is_multirun()) and is_rank_zero():
            job.callback(hold(plan.output_dir, "driven").close)
        if plan.set_aside_failed:
            kept = set_aside_failed_attempt(plan.output_dir)
            log.info("job %s failed before: running it again from scratch (the failed attempt is in %s)",
                     plan.output_dir.name, kept.name)  # fmt: skip
        elif plan.action == "resume" and is_multirun():
            log.info("job %s was interrupted: resuming from %s", plan.output_dir.name, plan.ckpt_path)
        if plan.fold_from is not None:
            log.info("resuming into %s", plan.output_dir)
            if is_rank_zero() and HydraConfig.initialized():
                fold_into(plan.fold_from, plan.output_dir)
                hydra_cfg = HydraConfig.get()
                with read_write(hydra_cfg), open_dict(hydra_cfg):  # DDP ranks that Lightning starts run there too
                    hydra_cfg.run.dir = hydra_cfg.runtime.output_dir = str(plan.output_dir)
        with open_dict(cfg):
            cfg.ckpt_path = plan.ckpt_path
            cfg.paths.output_dir = str(plan.output_dir)
        job.enter_context(sweep_job(cfg))
        yield plan


def skipped(plan: JobPlan) -> RunRecord:
    """A job that finished before: its files untouched, its result returned."""
    record = plan.finished or RunRecord()
    acc = f"{record.test_acc:.3f}" if isinstance(record.test_acc, float) else record.test_acc
    log.info("job %s finished before (test acc %s): skipped, its files untouched", plan.output_dir.name, acc)
    return record
