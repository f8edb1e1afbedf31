"""``hydra/launcher=slurm`` on a real one-node SLURM cluster (scripts/local-slurm.sh): the cluster runs a batch
job, a sweep, a preempted job that is requeued and finishes from its checkpoint, and a 2-task DDP job."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY_OVERRIDES, run_cli, write_idx_set
from test_ddp import DDP_OVERRIDES, whole_test_set_accuracy

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

# CPU jobs of one core and little memory, so that the one node runs two at once.
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]


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


def only_sweep(log_dir: Path) -> Path:
    (sweep,) = (log_dir / "multirun").iterdir()
    return sweep


def slurm_sweep(tmp_path: Path, data_dir: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``cnnlab.train -m overrides`` through the SLURM launcher, to its end; its output and its sweep dir."""
    log_dir = tmp_path / "logs"
    command = ["-m", *SLURM, *overrides, f"paths.data_dir={data_dir}", f"paths.log_dir={log_dir}"]
    result = run_cli("cnnlab.train", *command, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, only_sweep(log_dir)


def test_a_sweep_runs_as_a_slurm_job_array_quietly(tmp_path, tiny_data_dir):
    result, sweep = slurm_sweep(tmp_path, tiny_data_dir, "optimizer.lr=0.1,0.5", *TINY_OVERRIDES)
    metrics = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(metrics) == 2 and all(m["test_acc"] is not None for m in metrics)
    with open(sweep / "report.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok", "ok"]
    assert len(list(sweep.glob(".submitit/*/*_log.out"))) == 2  # the jobs ran under SLURM, logs beside the sweep
    output = result.stdout + result.stderr
    assert "Bypassing sacct error" not in output and "accounting storage is disabled" not in output


def test_a_preempted_job_is_requeued_and_finishes_from_its_checkpoint(tmp_path):
    data_dir = tmp_path / "data"
    write_idx_set(data_dir / "FashionMNIST" / "raw", n_train=1000 + 20)  # 125 steps an epoch: time to signal it
    log_dir = tmp_path / "logs"
    overrides = [
        *SLURM,
        *TINY_OVERRIDES,
        "trainer.limit_train_batches=null",
        "trainer.max_epochs=2",
        "data.batch_size=8",
        "callbacks.step_checkpoint.every_n_train_steps=10",
        "hydra.launcher.timeout_min=30",  # far from its time limit, so submitit takes the signal for preemption
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={log_dir}",
    ]
    with open(tmp_path / "sweep.log", "w") as out:
        sweep_proc = subprocess.Popen(
            [sys.executable, "-m", "cnnlab.train", "-m", "optimizer.lr=0.1", *overrides],
            cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while not list(log_dir.glob("multirun/*/0_*/checkpoints/last.ckpt")):  # training, step 10 saved
            assert sweep_proc.poll() is None and time.monotonic() < deadline, (tmp_path / "sweep.log").read_text()
            time.sleep(0.1)
        sweep = only_sweep(log_dir)
        (job_id,) = [p.name for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)  # what SLURM sends first
        assert sweep_proc.wait(timeout=240) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        if sweep_proc.poll() is None:
            sweep_proc.kill()
            sweep_proc.wait()

    (job_dir,) = [p for p in sweep.iterdir() if p.name.startswith("0_")]
    job_log = "".join(p.read_text() for p in (sweep / ".submitit" / job_id).glob("*_log.*"))
    assert "SLURM says the job ends soon" in job_log and "this job is preempted" in job_log
    assert f"Requeued job {job_id}" in job_log
    assert f"job {job_dir.name} was interrupted: resuming from" in (job_dir / "train.log").read_text()
    metrics = json.loads((job_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["test_acc"] is not None
    steps = [e.step for e in EventAccumulator(str(job_dir)).Reload().Scalars("train/loss_step")]
    assert min(steps) < 10 and max(steps) >= 2 * 125 - 50, steps  # one TensorBoard run holds all the steps
    assert not list(sweep.glob("*/failed-attempt-*"))


def test_a_two_task_ddp_job_tests_on_the_whole_test_set(tmp_path, tiny_data_dir):
    two_tasks = "hydra.launcher.tasks_per_node=2"  # two processes, both started by SLURM: Lightning's SLURM env
    _, sweep = slurm_sweep(tmp_path, tiny_data_dir, "optimizer.lr=0.1", two_tasks, *DDP_OVERRIDES)
    job_logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in job_logs and "GLOBAL_RANK: 1, MEMBER: 2/2" in job_logs
    (metrics_file,) = sweep.glob("*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["test_acc"] == pytest.approx(
        whole_test_set_accuracy(metrics_file.parent / "checkpoints" / "last.ckpt", tiny_data_dir)
    )


def test_a_pruned_search_keeps_two_trials_in_flight_on_the_cluster(tmp_path, tiny_data_dir):
    import optuna

    search = ["sweep=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2", "hydra.sweeper.pruner=threshold",
              "hydra.sweeper.pruner_args={lower: 0.99}", "trainer.max_epochs=3", "optimizer=sgd", "optimizer.lr=0.1",
              "model.activation=relu", "model.conv_channels=[6,16]"]  # fmt: skip  (0.99: a tiny-data trial is pruned)
    _, sweep = slurm_sweep(tmp_path, tiny_data_dir, *search, *TINY_OVERRIDES)
    study = optuna.load_study(study_name="lenet", storage=f"sqlite:///{sweep}/optuna.db")
    states = [t.state for t in study.trials]
    assert len(states) == 3 and optuna.trial.TrialState.PRUNED in states
    assert all(s in (optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE) for s in states)
    records = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert sorted(r["status"] for r in records) == sorted(s.name.lower().replace("complete", "ok") for s in states)
    assert len(list(sweep.glob(".submitit/*/*_log.out"))) == 3  # one SLURM job per trial, each reported from there
    (start0, end0), (start1, end1) = (((job / ".hydra" / "config.yaml").stat().st_mtime,
                                       (job / "metrics.json").stat().st_mtime)
                                      for job in sorted(sweep.glob("[01]_*")))  # fmt: skip
    assert start1 < end0 and start0 < end1  # trials 0 and 1 ran at once
