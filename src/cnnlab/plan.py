"""One plan per job: what it does (skip, resume, run), where it writes and when it started, decided once.

``plan_job`` reads the run dir and the config and decides; nothing changes on disk. ``cnnlab.job.job_context``
carries the plan out. Light: no torch, so a job that is skipped or refused costs nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil
from omegaconf import DictConfig

from cnnlab.errors import ConfigError
from cnnlab.rundir import LAST, RunRecord, is_held, job_state, read_record, run_dir_of, runs_with_checkpoint
from cnnlab.runtime import is_multirun
from cnnlab.vocab import JobState

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
        if state == JobState.FINISHED:
            return replace(plan, action="skip", finished=read_record(output_dir))
        if state == JobState.INTERRUPTED:
            return replace(plan, action="resume", ckpt_path=str(output_dir / LAST))
        return replace(plan, set_aside_failed=state == JobState.FAILED)
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
    """``ckpt_path=last``: ``<log_dir>/<run_name>/<newest run>/checkpoints/last.ckpt`` of the runs that no live process
    drives (a run still training is left alone). Resolved once, by process 0: the DDP ranks it starts get the path.
    """
    runs = runs_with_checkpoint(log_dir, run_name)
    running = [run for run in runs if is_held(run)]
    idle = [run for run in runs if run not in running]
    if not idle:
        still = f" ({len(running)} still running: {', '.join(r.name for r in running)})" if running else ""
        raise ConfigError(
            f"ckpt_path=last: no run of {run_name} under {log_dir} has a {LAST} to resume{still}; give the "
            f"checkpoint's path (ckpt_path=<run dir>/{LAST}) or the run_name=... and paths.log_dir=... of the run."
        )
    also = f"; {', '.join(r.name for r in running)} still running, left alone" if running else ""
    log.info("ckpt_path=last: resuming %s, the newest of %d runs of %s%s", idle[-1], len(runs), run_name, also)
    return idle[-1] / LAST


def skipped(plan: JobPlan) -> RunRecord:
    """A job that finished before: its files untouched, its result returned."""
    record = plan.finished or RunRecord()
    acc = f"{record.test_acc:.3f}" if isinstance(record.test_acc, float) else record.test_acc
    log.info("job %s finished before (test acc %s): skipped, its files untouched", plan.output_dir.name, acc)
    return record
