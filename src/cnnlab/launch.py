"""A sweep's job as a good neighbour: its share of the cores, a GPU slot of its own, and the DDP ranks it starts.

``cnnlab.job.job_context`` calls these once per job, in order; each returns what it decided (threads, devices) rather
than changing the config. The one function here that changes process state behind Lightning's back,
``ddp_ranks_start_as_this_job``, says what and why, and undoes it when the job ends. Torch is imported only when a
job runs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig, open_dict, read_write

from cnnlab.config import config_flags
from cnnlab.environment import PRUNED_TRIAL

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
            handle = open(lock_dir / f"gpu{gpu}-slot{slot}.lock", "w")  # noqa: SIM115 (held open: the lock)
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


def set_threads(threads: int, why: str) -> None:
    """Give this job ``threads`` torch threads (a process-wide setting: each job of a process sets its own)."""
    import torch

    torch.set_num_threads(threads)
    log.info("torch threads: %d (%s)", threads, why)


def gpu_slot(trainer_cfg: DictConfig, job_num: int, lock_dir: Path, slots: int = 1) -> tuple[Any, IO[str] | None]:
    """The devices of a one-device GPU job of a parallel sweep: a GPU slot of its own (``[i]``) and the lock that
    holds it; the trainer's own ``devices`` (and no lock) on a machine without GPUs or for other jobs."""
    import torch

    devices = trainer_cfg.get("devices")
    n_gpus = torch.cuda.device_count()
    if n_gpus == 0 or trainer_cfg.get("accelerator") not in ("auto", "gpu", "cuda") or devices != 1:
        return devices, None
    gpu, lock = claim_gpu(job_num, n_gpus, lock_dir, slots)
    log.info("job %d runs on GPU %d of %d (%d jobs per GPU)", job_num, gpu, n_gpus, slots)
    return [gpu], lock


@contextmanager
def ddp_ranks_start_as_this_job(overrides: list[str], run_dir: Path, ckpt_path: str | None,
                                pruned_trial: bool) -> Iterator[None]:  # fmt: skip
    """Make the DDP ranks Lightning starts for this job run this one job, in its run dir, from its checkpoint.

    Lightning starts the other ranks by rerunning ``sys.argv`` plus ``hydra.run.dir=<HydraConfig's run.dir>``
    (``_hydra_subprocess_cmd``); it has no other way in. So, for as long as the job runs:

    - ``sys.argv`` is this job's overrides (in a multirun it is the whole sweep: hydra #2070), with ``ckpt_path`` the
      checkpoint rank 0 resolved (``ckpt_path=last`` resolved again in a rank could pick another run), after the
      command's own ``--config-dir`` (a user's configs);
    - HydraConfig's ``run.dir`` is the job's run dir (a sweep job's, or the run a resumed single run writes into);
    - ``CNNLAB_PRUNED_TRIAL=1`` tells the ranks of a pruned search's trial to take part in each pruning decision.

    Afterwards all three are restored, the variables Lightning set (``LOCAL_RANK``, ``MASTER_PORT``, ...) go and the
    process group is destroyed, so that the next job of a sweep starts ranks of its own.
    """
    import torch
    from hydra.core.hydra_config import HydraConfig

    saved_argv, saved_env = sys.argv[:], dict(os.environ)
    kept = [o for o in overrides if not o.startswith("ckpt_path=")]
    sys.argv = [sys.argv[0], *config_flags(saved_argv[1:]), *kept, *([f"ckpt_path={ckpt_path}"] if ckpt_path else [])]
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    saved_run_dir = hydra_cfg.run.dir if hydra_cfg is not None else None
    if hydra_cfg is not None:
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.run.dir = str(run_dir)
    if pruned_trial:
        os.environ[PRUNED_TRIAL] = "1"
    try:
        yield
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        if hydra_cfg is not None:
            with read_write(hydra_cfg), open_dict(hydra_cfg):
                hydra_cfg.run.dir = saved_run_dir
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
