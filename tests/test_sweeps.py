"""Sweeps: every sweep file composes, jobs run in parallel with their share of the cores (and a GPU each),
a failed job is recorded while the rest finish, Optuna survives a failed trial, SLURM gets the right sbatch."""

from __future__ import annotations

import csv
import itertools
import json
import re
from pathlib import Path

import pytest
import submitit
import torch
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnlab import launch, study
from cnnlab.config import CONF_DIR
from cnnlab.launch import available_cpus, claim_gpu, gpu_for_job, parallel_jobs, threads_per_job
from cnnlab.run import build
from cnnlab.runtime import job_dirname
from conftest import TINY_OVERRIDES, compose_config, run_cli

SWEEPS = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))
CHAPTER6_MODELS = {
    "lenet",
    "lenet_maxpool",
    "lenet_relu",
    "lenet_relu_maxpool",
    "lenet_k3",
    "lenet_k7",
    "lenet_wide",
    "lenet_deep",
    "lenet_fc4",
    "lenet_improved",
    "lenet_bn",
}


def grid_jobs(params: dict[str, str]) -> list[list[str]]:
    """The jobs of a basic-sweeper grid, as Hydra expands ``hydra.sweeper.params``."""
    parsed = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    axes = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line]
        for o in parsed
    ]  # a plain value (experiment: fashion_frontier) is in every job
    return [list(job) for job in itertools.product(*axes)]


def sweep_dir_of(log_dir: Path) -> Path:
    sweeps = list((log_dir / "multirun").iterdir())
    assert len(sweeps) == 1, sweeps
    return sweeps[0]


def job_metrics(sweep_dir: Path) -> dict[int, dict]:
    """metrics.json of every job, by job number (the folder name starts with it)."""
    return {int(p.parent.name.split("_")[0]): json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")}


SEARCHES = [name for name in SWEEPS if "/hydra/sweeper: optuna" in (CONF_DIR / "sweep" / f"{name}.yaml").read_text()]


@pytest.mark.parametrize("name", SEARCHES)  # a grid's every job takes a training step in test_every_config
def test_every_sweep_composes_and_its_jobs_build(name, tiny_cfg):
    cfg = tiny_cfg(f"sweep={name}")
    params = cfg.hydra.sweeper.params
    assert params, f"sweep={name} sweeps nothing"
    if "Optuna" in cfg.hydra.sweeper._target_:
        assert cfg.hydra.sweeper.direction == "maximize" and cfg.hydra.sweeper.storage == (
            f"sqlite:///{cfg.hydra.sweep.dir}/optuna.db"  # the study lives in the sweep dir: a stopped one continues
        )
        space, fixed = study.search_space([f"{key}={value}" for key, value in params.items()])
        first = [f"{key}={getattr(d, 'choices', [getattr(d, 'low', None)])[0]}" for key, d in space.items()]
        last = [f"{key}={getattr(d, 'choices', [getattr(d, 'high', None)])[-1]}" for key, d in space.items()]
        jobs = [study.trial_overrides(dict(o.split("=", 1) for o in job), fixed) for job in (first, last)]
    else:
        jobs = grid_jobs(dict(params))
        jobs = [jobs[0], jobs[-1]]
    for job in jobs:
        datamodule, module, trainer = build(tiny_cfg(f"sweep={name}", *job))
        assert module.net(__import__("torch").rand(2, 1, 28, 28)).shape == (2, 10)


def test_chapter6_is_every_variant_with_the_seeds_learning_rates(tiny_cfg):
    cfg = tiny_cfg("sweep=chapter6")
    jobs = grid_jobs(dict(cfg.hydra.sweeper.params))
    assert {job[0].removeprefix("model=") for job in jobs} == CHAPTER6_MODELS
    assert CHAPTER6_MODELS == {p.stem for p in (CONF_DIR / "model").glob("*.yaml")}
    rates = {model: tiny_cfg("sweep=chapter6", f"model={model}").optimizer.lr for model in CHAPTER6_MODELS}
    relu = {"lenet_improved", "lenet_deep", "lenet_relu", "lenet_relu_maxpool"}
    assert {rates.pop(model) for model in relu} == {0.1} and set(rates.values()) == {0.9}
    assert tiny_cfg("sweep=chapter6", "model=lenet_improved", "optimizer.lr=0.5").optimizer.lr == 0.5


def test_lr_epochs_is_a_grid_of_rates_and_lengths(tiny_cfg):
    jobs = grid_jobs(dict(tiny_cfg("sweep=lr_epochs").hydra.sweeper.params))
    assert len(jobs) == 12 and len({job[0] for job in jobs}) == 4 and len({job[1] for job in jobs}) == 3


@pytest.mark.parametrize(
    ("n_jobs", "cpus", "parallel", "threads"),
    [(-1, 16, 16, 1), (-2, 16, 15, 1), (4, 16, 4, 4), (3, 16, 3, 5), (2, 2, 2, 1), (8, 2, 8, 1), (1, 8, 1, 8)],
)
def test_parallel_jobs_share_the_cores(n_jobs, cpus, parallel, threads):
    assert parallel_jobs(n_jobs, cpus) == parallel
    assert threads_per_job(cpus, parallel) == threads


def test_job_i_prefers_gpu_i_mod_k_and_takes_a_free_one_when_it_is_busy(tmp_path):
    assert [gpu_for_job(i, 4) for i in range(10)] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert [gpu_for_job(i, 1) for i in range(3)] == [0, 0, 0]
    held = [claim_gpu(i, 4, tmp_path) for i in range(4)]  # four jobs at once on a 4-GPU box: one GPU each
    assert [gpu for gpu, _ in held] == [0, 1, 2, 3]
    assert claim_gpu(5, 4, tmp_path) == (1, None)  # a fifth parallel job shares its preferred GPU
    held[2][1].close()  # job 2 ends; job 6 would go to GPU 2 anyway, job 5 finds GPU 2 free
    gpu, lock = claim_gpu(5, 4, tmp_path)
    assert gpu == 2 and lock is not None


def test_jobs_per_gpu_lets_k_jobs_share_each_gpu_spread_evenly(tmp_path, tiny_cfg, monkeypatch):
    held = [claim_gpu(i, 2, tmp_path, slots=2) for i in range(4)]  # 2 GPUs x 2 slots: 4 jobs at once
    assert [gpu for gpu, _ in held] == [0, 1, 0, 1] and all(lock is not None for _, lock in held)
    assert claim_gpu(4, 2, tmp_path, slots=2) == (0, None)  # every slot taken: shares its preferred GPU
    held[3][1].close()
    assert claim_gpu(6, 2, tmp_path, slots=2)[0] == 1  # a slot of GPU 1 is free again

    cfg = tiny_cfg("hydra/launcher=joblib", "hydra.launcher.jobs_per_gpu=3", "hydra.launcher.n_jobs=6")
    launcher = instantiate(cfg.hydra.launcher)  # joblib gets its own settings, not jobs_per_gpu
    assert launcher.joblib["n_jobs"] == 6 and "jobs_per_gpu" not in launcher.joblib
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # a stubbed 2-GPU machine
    gpus, locks = [], []
    for job in range(6):
        trainer = OmegaConf.create({"accelerator": "gpu", "devices": 1})
        devices, lock = launch.gpu_slot(trainer, job, tmp_path / "sweep", cfg.hydra.launcher.jobs_per_gpu)
        gpus.append(devices[0])
        locks.append(lock)
    assert sorted(gpus) == [0, 0, 0, 1, 1, 1] and all(lock is not None for lock in locks)
    for lock in locks:
        lock.close()


def test_a_parallel_job_is_pinned_to_its_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    for job, trainer, expected in [
        (6, {"accelerator": "auto", "devices": 1}, [2]),
        (6, {"accelerator": "gpu", "devices": 1}, [2]),
        (6, {"accelerator": "cpu", "devices": 1}, 1),
        (6, {"accelerator": "gpu", "devices": 2}, 2),
    ]:
        devices, lock = launch.gpu_slot(OmegaConf.create(trainer), job, tmp_path / str(job) / trainer["accelerator"])
        assert devices == expected and (lock is not None) == isinstance(expected, list)
        if lock is not None:
            lock.close()


def test_job_dir_names_fit_the_file_system_and_stay_apart():
    short = "model=lenet_k3,optimizer.lr=0.1"
    assert job_dirname(short) == short
    assert (
        job_dirname("optimizer.lr=0.03855871074880703,data.data_dir=/a/b") == "optimizer.lr=0.03856,data.data_dir=_a_b"
    )
    long_a = ",".join(f"model.option_{i}=value_{i}" for i in range(30))
    long_b = long_a.replace("value_29", "value_X")
    assert len(job_dirname(long_a)) <= 200 and job_dirname(long_a) != job_dirname(long_b)
    assert job_dirname(long_a).startswith("option_0=value_0,")


def test_slurm_launcher_composes_to_the_right_sbatch_script(tmp_path, monkeypatch):
    captured = {}

    class Submitted(Exception):
        """Stops the launch where sbatch would be called."""

    def fake_sbatch(executor, command):
        captured["script"] = executor._make_submission_file_text(command, "uid")
        raise Submitted

    monkeypatch.setattr(submitit.slurm.slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # "srun" found
    monkeypatch.setattr(submitit.slurm.slurm.SlurmExecutor, "_submit_command", fake_sbatch)
    cfg = compose_config(
        [
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.gpus_per_node=2",
            "hydra.launcher.tasks_per_node=2",
            "hydra.launcher.timeout_min=90",
            "hydra.launcher.array_parallelism=2",
            "hydra.launcher.setup=[source .venv/bin/activate]",
            "trainer=ddp",
        ],
        tmp_path,
    )
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=print, config=cfg)
    with pytest.raises(Submitted):
        launcher.launch([[f"model={m}"] for m in ("lenet", "lenet_k3", "lenet_k7", "lenet_bn")], initial_job_idx=0)
    script = captured["script"]
    for line in [
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --time=90",
        "#SBATCH --array=0-3%2",  # 4 jobs, 2 at a time
        "#SBATCH --nodes=1",
        "source .venv/bin/activate",
    ]:
        assert line in script, (line, script)
    assert f"{cfg.hydra.sweep.dir}/.submitit/" in script
    assert cfg.trainer.devices == -1 and cfg.trainer.num_nodes == 1  # DDP over the job's GPUs, one per task


@pytest.mark.slow
def test_sweep_through_joblib_runs_four_jobs_in_parallel_and_reports_them(tmp_path, tiny_data_dir):
    log_dir = tmp_path / "logs"
    result = run_cli(
        "cnnlab.train",
        "-m",
        "sweep=lr_epochs",  # found from any working directory; narrowed to a 2x2 grid on the command line
        "optimizer.lr=0.1,0.9",
        "trainer.max_epochs=1,2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *TINY_OVERRIDES,
        f"paths.data_dir={tiny_data_dir}",
        f"paths.log_dir={log_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = sweep_dir_of(log_dir)
    metrics = job_metrics(sweep_dir)
    assert sorted(metrics) == [0, 1, 2, 3] and all(m["test_acc"] is not None for m in metrics.values())
    assert sorted(m["epochs"] for m in metrics.values()) == [1, 1, 2, 2]
    threads = threads_per_job(available_cpus(), 2)
    for job_dir in (p.parent for p in sweep_dir.glob("*/metrics.json")):
        assert "lr=" in job_dir.name and "max_epochs=" in job_dir.name  # named for its overrides (shortened)
        assert f"torch threads: {threads} (" in (job_dir / "train.log").read_text()
        events = EventAccumulator(str(job_dir)).Reload()
        assert {"hp/test_acc", "hp/val_acc"} <= set(events.Tags()["scalars"])  # a row in the HPARAMS tab
    with open(sweep_dir / "report.csv") as f:  # written when the sweep ended
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    assert [float(r["val_acc"]) for r in rows] == sorted((float(r["val_acc"]) for r in rows), reverse=True)
    assert (sweep_dir / "report.png").stat().st_size > 10_000
    assert (sweep_dir / "report.md").read_text().count("| ok |") == 4
    progress = [line for line in result.stdout.splitlines() if re.match(r"\[\d/4\] ", line)]  # one per finished job
    assert sorted(line[:5] for line in progress) == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"], result.stdout[-3000:]
    assert all("optimizer.lr=" in line and "trainer.max_epochs=" in line and "test acc" in line for line in progress)
    assert "best configuration (by validation accuracy): " in result.stdout
    assert f"report: {sweep_dir / 'report.md'}" in result.stdout


@pytest.mark.slow
def test_a_failed_job_is_recorded_and_the_rest_of_the_sweep_runs(tmp_path, tiny_data_dir):
    log_dir = tmp_path / "logs"
    result = run_cli(
        "cnnlab.train",
        "-m",
        "optimizer.momentum=0.0,-1.0,0.5",  # the second job crashes in fit: SGD refuses a negative momentum
        *TINY_OVERRIDES,
        f"paths.data_dir={tiny_data_dir}",
        f"paths.log_dir={log_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 3, result.stderr[-3000:]  # the others ran; the status says one failed
    sweep_dir = sweep_dir_of(log_dir)
    assert result.stderr.strip().splitlines()[-1] == (
        f"cnnlab: 1 of 3 jobs failed (1_optimizer.momentum=-1.0): exit status 3; errors in {sweep_dir}/report.md.")
    metrics = job_metrics(sweep_dir)
    assert [metrics[i].get("status", "ok") for i in range(3)] == ["ok", "failed", "ok"]
    assert "momentum" in metrics[1]["error"] and metrics[1]["test_acc"] is None
    assert metrics[0]["test_acc"] is not None and metrics[2]["test_acc"] is not None
    # one process ran all three (the basic launcher): job 2's start-up counts from its own start, not the process's
    assert 0 < metrics[2]["startup_s"] < metrics[0]["wall_s"], (metrics[0], metrics[2])
    failed_dir = next(sweep_dir.glob("1_*"))
    assert "Traceback" in (failed_dir / "train.log").read_text()
    report = (sweep_dir / "report.md").read_text()
    assert "1 failed or incomplete" in report and "| failed |" in report and "momentum" in report


@pytest.mark.slow
def test_optuna_search_goes_on_after_a_failed_trial(tmp_path, tiny_data_dir):
    log_dir = tmp_path / "logs"
    result = run_cli(
        "cnnlab.train",
        "-m",
        "sweep=optuna",
        "hydra.sweeper.n_trials=3",
        "model.kernel_sizes=choice(5,40)",  # a 40x40 kernel does not fit: those trials fail
        *TINY_OVERRIDES,
        f"paths.data_dir={tiny_data_dir}",
        f"paths.log_dir={log_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 3, result.stderr[-3000:]  # the search went on; its status says trials failed
    sweep_dir = sweep_dir_of(log_dir)
    metrics = job_metrics(sweep_dir)
    kernels = {
        int(p.parent.parent.name.split("_")[0]): "model.kernel_sizes=40" in yaml.safe_load(p.read_text())
        for p in sweep_dir.glob("*/.hydra/overrides.yaml")
    }
    assert len(metrics) == 3 and any(kernels.values()) and not all(kernels.values())
    assert all((m.get("status") == "failed") == kernels[i] for i, m in metrics.items())
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_params"]["model.kernel_sizes"] == 5


def test_a_sweep_in_which_no_job_completed_says_so_as_an_error(tmp_path, tiny_data_dir):
    result = run_cli("cnnlab.train", "-m", "optimizer.momentum=-1.0,-2.0", *TINY_OVERRIDES,
                     f"paths.data_dir={tiny_data_dir}", f"paths.log_dir={tmp_path / 'logs'}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 4 and "Traceback" not in result.stderr.split("job failed")[0], result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("cnnlab: error: no job of the sweep completed (2 failed: 0_optimizer.momentum=-1.0, "
                           "1_optimizer.momentum=-2.0); their errors are in "), line  # fmt: skip


def test_a_jobs_per_gpu_below_one_is_refused_before_any_job(tmp_path, tiny_data_dir):
    result = run_cli("cnnlab.train", "-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.jobs_per_gpu=0",
                     *TINY_OVERRIDES, f"paths.data_dir={tiny_data_dir}", f"paths.log_dir={tmp_path / 'logs'}",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().endswith("cnnlab: error: hydra.launcher.jobs_per_gpu=0 must be an integer >= 1 "
                                          "(the jobs that share one GPU; 1: a GPU per job).")  # fmt: skip
    assert not list((tmp_path / "logs").rglob("metrics.json"))
