"""Job setup for sweeps: torch threads per parallel job, one GPU per job, DDP ranks inside a sweep job.

Hydra's launchers start the jobs; this module makes each job a good neighbour. A parallel (joblib) job takes
its share of the cores and a GPU of its own, and a DDP job of a multirun has its other ranks start as single runs
of that one job. (A crashed job's record: ``cnnlab.rundir.record_failure``.)
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from cnnlab.errors import ConfigError
from cnnlab.runtime import is_multirun

log = logging.getLogger("cnnlab.launch")

def available_cpus() -> int:
    """The cores this process may run on (its affinity mask, which taskset, cgroups and SLURM narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallel_jobs(n_jobs: int, cpus: int) -> int:
    """How many jobs joblib runs at once for ``n_jobs``: as given, or counted from the cores (-1 all, -2 all but 1)."""
    return max(1, cpus + 1 + n_jobs) if n_jobs < 0 else max(1, n_jobs)


def threads_per_job(cpus: int, parallel: int) -> int:
    """Torch threads for each of ``parallel`` jobs sharing ``cpus`` cores, so they do not fight over them."""
    return max(1, cpus // parallel)


def gpu_for_job(job_num: int, n_gpus: int) -> int:
    """The GPU job ``job_num`` of a sweep prefers: job i -> GPU i mod k."""
    return job_num % n_gpus


def claim_gpu(job_num: int, n_gpus: int, lock_dir: Path, slots: int = 1) -> tuple[int, IO[str] | None]:
    """Take a free slot of GPU i mod k, or of the next GPU with one; the lock lasts while the file is open.

    Each GPU has ``slots`` places (``hydra.launcher.jobs_per_gpu``), filled one round over all GPUs at a time so
    that the jobs spread evenly. joblib hands the next job to whichever worker is free, so i mod k alone can put
    two jobs on one GPU while another idles. With every slot taken, the job shares its preferred GPU.
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    preferred = gpu_for_job(job_num, n_gpus)
    for slot in range(slots):
        for offset in range(n_gpus):
            gpu = (preferred + offset) % n_gpus
            handle = open(lock_dir / f"gpu{gpu}-slot{slot}.lock", "w")  # held open: the lock lasts as the file
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return gpu, handle
    return preferred, None


def runs_several_processes(trainer_cfg: DictConfig) -> bool:
    """Whether the trainer config starts DDP processes of its own (a ddp strategy or several devices)."""
    strategy = trainer_cfg.get("strategy") or ""
    name = strategy if isinstance(strategy, str) else str(strategy.get("_target_", ""))
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, str):
        devices = -1 if devices == "auto" and trainer_cfg.get("accelerator") in ("gpu", "cuda") else 1
    several = (devices == -1 or devices > 1) if isinstance(devices, int) else len(devices) > 1
    return "ddp" in name.lower() or several


@contextmanager
def sweep_job(cfg: DictConfig) -> Iterator[None]:
    """Set up one job of a multirun (nothing for a single run): threads, its GPU, how DDP ranks start."""
    if not is_multirun():
        yield
        return
    hydra_cfg = HydraConfig.get()
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    with ExitStack() as cleanup:
        if "Joblib" in launcher:
            if runs_several_processes(cfg.trainer):
                raise ConfigError(
                    "trainer=ddp/ddp_cpu starts processes of its own, which joblib's workers cannot host; run DDP "
                    "jobs with the sequential launcher (no hydra/launcher override) or hydra/launcher=slurm."
                )
            cpus = available_cpus()
            parallel = parallel_jobs(int(hydra_cfg.launcher.n_jobs), cpus)
            set_threads(threads_per_job(cpus, parallel), f"{cpus} cores / {parallel} parallel jobs")
            slots = max(1, int(hydra_cfg.launcher.get("jobs_per_gpu", 1)))
            pin_gpu(cfg, hydra_cfg.job.num, Path(hydra_cfg.sweep.dir) / ".gpu-locks", cleanup, slots)
        elif os.environ.get("SLURM_CPUS_PER_TASK"):
            set_threads(int(os.environ["SLURM_CPUS_PER_TASK"]), "SLURM_CPUS_PER_TASK")
        cleanup.enter_context(relaunch_as_single_run(hydra_cfg, cfg.get("ckpt_path")))
        yield


def set_threads(threads: int, why: str) -> None:
    """Give this job ``threads`` torch threads (and the same for OpenMP in any process it starts)."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    log.info("torch threads: %d (%s)", threads, why)


def pin_gpu(cfg: DictConfig, job_num: int, lock_dir: Path, cleanup: ExitStack, slots: int = 1) -> None:
    """Run a one-device GPU job on a GPU slot of its own (``trainer.devices=[i]``), when this machine has GPUs."""
    n_gpus = torch.cuda.device_count()
    if n_gpus == 0 or cfg.trainer.get("accelerator") not in ("auto", "gpu", "cuda") or cfg.trainer.devices != 1:
        return
    gpu, lock = claim_gpu(job_num, n_gpus, lock_dir, slots)
    if lock is not None:
        cleanup.callback(lock.close)
    cfg.trainer.devices = [gpu]
    log.info("job %d runs on GPU %d of %d (%d jobs per GPU)", job_num, gpu, n_gpus, slots)


@contextmanager
def relaunch_as_single_run(hydra_cfg: DictConfig, ckpt_path: str | None = None) -> Iterator[None]:
    """Make this job's DDP ranks start as single runs of this one job, in its folder.

    Lightning starts the other ranks by rerunning ``sys.argv`` plus ``hydra.run.dir=<run dir>``; in a multirun
    that argv is the whole sweep (hydra #2070), and ``hydra.run.dir`` is not the job's folder. Afterwards the
    process group and the variables Lightning set (``LOCAL_RANK``, ``MASTER_PORT``, ...) go, so that the next
    job of the sweep starts ranks of its own instead of taking itself for one. A job resumed from its checkpoint
    (``ckpt_path``, set by ``cnnlab.resume``) has its ranks resume from it too.
    """
    saved_argv, saved_env = sys.argv[:], dict(os.environ)
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith("ckpt_path=")]
    sys.argv = [sys.argv[0], *overrides, *([f"ckpt_path={ckpt_path}"] if ckpt_path else [])]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
