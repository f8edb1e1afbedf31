"""The local one-node SLURM cluster (scripts/local-slurm.sh) runs a batch job to its end."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}


def job_state(job_id: str) -> str | None:
    """The job's state as squeue reports it; None once the controller has forgotten the job."""
    result = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    state = result.stdout.strip()
    return state if result.returncode == 0 and state else None


def test_sbatch_job_runs_to_completion(slurm_cluster, tmp_path: Path):
    hello = tmp_path / "hello.txt"
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--chdir={tmp_path}",
            f"--output={tmp_path / 'slurm-%j.out'}",
            "--wrap",
            f"echo hello > {hello}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    assert job_id.isdigit(), submitted.stdout

    deadline = time.monotonic() + 30
    state = job_state(job_id)
    while state not in FINISHED and not (state is None and hello.exists()):
        assert time.monotonic() < deadline, f"job {job_id} not finished after 30 s (state {state})"
        time.sleep(0.2)
        state = job_state(job_id)

    log = tmp_path / f"slurm-{job_id}.out"
    assert state in (None, "COMPLETED"), f"job {job_id} ended {state}: {log.read_text() if log.exists() else ''}"
    assert hello.read_text() == "hello\n"
