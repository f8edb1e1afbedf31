"""What a job's process environment says, read here and nowhere else: its rank (SLURM tasks, DDP ranks), the cores
SLURM gave it, whether submitit runs it, whether it is a DDP rank of a pruned search's trial, and where the notebook
API wants to hear of its results.

The variables are set by others (SLURM, Lightning, submitit) except ``PRUNED_TRIAL``, which a job sets for the DDP
ranks it starts (``cnnlab.launch.ddp_ranks_start_as_this_job``), and ``RESULT_FILE``, which ``cnnlab.api`` sets for
the command it starts. Light: standard library only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RANK_VARIABLES = ("SLURM_PROCID", "LOCAL_RANK", "RANK")  # SLURM's task, Lightning's local and global DDP rank
PRUNED_TRIAL = "CNNLAB_PRUNED_TRIAL"  # "1" in the DDP ranks a pruned trial's process 0 starts
RESULT_FILE = "CNNLAB_RESULT_FILE"  # cnnlab.api: the file a command writes its run dir or sweep dir into


def is_rank_zero() -> bool:
    """Process 0 of a job (SLURM tasks, DDP ranks), or a job of one process: the one that writes its run dir."""
    return all(os.environ.get(var, "0") == "0" for var in RANK_VARIABLES)


def slurm_cpus() -> int | None:
    """The cores SLURM gave this task (``--cpus-per-task``), or None outside SLURM."""
    value = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdigit() else None


def under_submitit() -> bool:
    """Whether submitit runs this process (``hydra/launcher=slurm``): SIGUSR2 then means save and requeue."""
    return "SUBMITIT_EXECUTOR" in os.environ


def ddp_rank_of_pruned_trial() -> bool:
    """Whether this process is a DDP rank started by a pruned trial's process 0 (it takes part in each decision)."""
    return os.environ.get(PRUNED_TRIAL) == "1" and not is_rank_zero()


def result_file() -> str | None:
    """Where ``cnnlab.api`` wants this command's run dir or sweep dir written (None: nobody asked)."""
    return os.environ.get(RESULT_FILE) or None


def tell_the_api(**results: Any) -> None:
    """Write ``results`` (``run_dir=<Path>``, ``sweep_dir=<Path>``, ``walk=[...]``) as JSON into the file ``cnnlab.api``
    named, if it named one: how the API finds the command's results (process 0 only; nothing otherwise). Paths are
    written absolute."""
    target = result_file()
    if target is None or not is_rank_zero():
        return
    data = {key: str(value.resolve()) if isinstance(value, Path) else value for key, value in results.items()}
    Path(target).write_text(json.dumps(data))
