"""One job's path: its context decided once (``cnnlab.job``), the composed config left as Hydra made it, process 0
alone writing the run dir, the DDP ranks started as this job, and each parallel trial with its share of the cores."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from cnnlab import launch
from cnnlab.environment import PRUNED_TRIAL, RANK_VARIABLES
from cnnlab.job import job_context
from cnnlab.plan import JobPlan
from cnnlab.run import build_module
from cnnlab.vocab import RunFiles
from test_search import search


def failed_job(folder: Path) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (folder / RunFiles.METRICS).write_text(json.dumps({"status": "failed", "error": "RuntimeError: boom"}))
    return folder


def test_the_job_runs_a_copy_of_the_config_with_its_plan_and_leaves_the_composed_one_alone(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    composed = OmegaConf.to_yaml(cfg)
    plan = JobPlan("resume", tmp_path / "elsewhere", ckpt_path=str(tmp_path / "elsewhere" / RunFiles.LAST))
    with job_context(cfg, plan) as ctx:
        assert ctx.cfg.paths.output_dir == str(tmp_path / "elsewhere") and ctx.cfg.ckpt_path == plan.ckpt_path
        assert ctx.rank_zero and ctx.fingerprint and ctx.identity["optimizer.lr"] == cfg.optimizer.lr
        assert (tmp_path / "elsewhere" / RunFiles.LOCK).is_file()  # taken for this process
    assert OmegaConf.to_yaml(cfg) == composed  # nothing changed behind the reader's back


@pytest.mark.parametrize("variable", RANK_VARIABLES)
def test_only_process_0_sets_a_failed_attempt_aside(variable, tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg()
    job = failed_job(tmp_path / "job")
    monkeypatch.setenv(variable, "1")  # a SLURM task or DDP rank other than 0 of the job run again
    with job_context(cfg, JobPlan("run", job, set_aside_failed=True)) as ctx:
        assert not ctx.rank_zero
    assert not list(job.glob(f"{RunFiles.FAILED_ATTEMPT}*")) and (job / RunFiles.METRICS).is_file()
    monkeypatch.delenv(variable)
    with job_context(cfg, JobPlan("run", job, set_aside_failed=True)):
        pass
    (kept,) = job.glob(f"{RunFiles.FAILED_ATTEMPT}*")
    assert (kept / RunFiles.METRICS).is_file() and not (job / RunFiles.METRICS).exists()


def test_ddp_ranks_start_as_this_job_from_the_checkpoint_process_0_resolved(tiny_cfg, tmp_path, monkeypatch):
    tiny_cfg()  # HydraConfig as in a run
    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "model=lenet,lenet_k3", "ckpt_path=last"])
    before = HydraConfig.get().run.dir
    resolved = str(tmp_path / "run" / RunFiles.LAST)
    with launch.ddp_ranks_start_as_this_job(["model=lenet_k3", "ckpt_path=last"], tmp_path / "run", resolved, True):
        # Lightning reruns sys.argv[1:] with hydra.run.dir=<HydraConfig's run.dir> for each rank
        assert sys.argv[1:] == ["model=lenet_k3", f"ckpt_path={resolved}"]  # never "last" again
        assert HydraConfig.get().run.dir == str(tmp_path / "run")
        assert os.environ[PRUNED_TRIAL] == "1"
    assert sys.argv[1:] == ["-m", "model=lenet,lenet_k3", "ckpt_path=last"] and HydraConfig.get().run.dir == before
    assert PRUNED_TRIAL not in os.environ


def test_accuracy_metrics_do_not_read_the_labels_back_each_step(tiny_cfg):
    module = build_module(tiny_cfg())
    # torchmetrics' argument checks call torch.unique(target): a host sync per update on a GPU
    assert not any(m.validate_args for m in (module.train_acc, module.val_acc, module.test_acc))


@pytest.mark.slow
def test_a_parallel_search_gives_each_trial_the_cores_of_its_share_of_the_trials_in_flight(tmp_path, tiny_data_dir):
    """joblib runs one trial at a time here (hydra.sweeper.n_jobs=1): it gets every core, whatever joblib's own
    n_jobs (-1: one worker per core) would have said."""
    result, sweep_dir = search(tmp_path, tiny_data_dir, "hydra.sweeper.n_trials=1", "hydra/launcher=joblib")
    assert result.returncode == 0, result.stderr[-3000:]
    cpus = launch.available_cpus()
    (log,) = sweep_dir.glob(f"0_*/{RunFiles.LOG}")
    assert f"torch threads: {cpus} ({cpus} cores / 1 jobs in flight)" in log.read_text()
