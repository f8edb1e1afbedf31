"""Every shipped config runs: each choice of each config group under ``conf/`` and each job of each sweep file in
``sweeps/``, through the real entry point (``python -m cnnlab.train -m ...``), for one tiny training step each
(one batch of training, validation and test on tiny data), as lightning-hydra-template tests its experiments.

Composing or building a config is not enough: a node that keeps another class's schema fields, or a ``null`` where
code expects a mapping, composes and builds, then fails at the first step. Each group's choices run as one multirun
(Hydra's basic launcher: the jobs in one process, one after another, each a real job with its record); each job must
end ``ok`` with a test accuracy. What this machine lacks is skipped with the reason: a GPU for ``trainer=gpu`` and
``trainer=ddp``; MNIST comes from tiny IDX files the fixtures write, as Fashion-MNIST does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from cnnlab.config import CONF_DIR
from cnnlab.vocab import RunFiles, Status
from conftest import TINY_OVERRIDES, run_cli
from test_sweeps import grid_jobs

# The groups the issue names; every folder of conf/ with choices is run (a new group is run without a change here).
NAMED_GROUPS = {"model", "data", "optimizer", "scheduler", "trainer", "logger", "callbacks", "experiment", "ablation",
                "debug"}  # fmt: skip
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "sweep")
                and any(p.glob("*.yaml")))  # fmt: skip
SWEEPS = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))
NEEDS_A_GPU = {("trainer", "gpu"), ("trainer", "ddp")}
# Groups whose every choice is a job of a sweep file run below, in the setting it is made for (the ablation's steps
# over experiment=fashion_frontier, the models with the chapter's learning rates): not run twice (asserted).
RUN_BY_A_SWEEP = {"model": "chapter6", "ablation": "frontier"}
# Choices another test runs through the entry point for real: not run twice.
RUN_ELSEWHERE = {("trainer", "ddp_cpu"): "tests/test_ddp.py: two gloo ranks, a run, its resume and a sweep"}
IMAGES = ("activation_images", "kernel_images", "confusion_matrix", "misclassified_images", "model_graph")
CHECKPOINTS = ("model_checkpoint", "last_checkpoint", "step_checkpoint")
# One batch of each split, tiny data. A group's own choices set their keys first; these come last on the command line.
ONE_STEP = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    *(o for o in TINY_OVERRIDES if not o.startswith("trainer=")),  # the trainer group is one of those run
]
# Their own tests run them; callbacks=default runs them here (the callbacks group): elsewhere they only take time.
LIGHT = [f"callbacks.{name}=null" for name in (*IMAGES, *CHECKPOINTS)]


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def run_multirun(tmp_path: Path, data_dir: Path, *overrides: str, timeout: float = 400) -> tuple[Path, list[dict]]:
    """``python -m cnnlab.train -m *overrides`` on the tiny data; the sweep dir and its jobs' records, by job number.
    Fails with the command's output when it fails, or naming each job that did not end ok with a test accuracy."""
    sweep_dir = tmp_path / "sweep"
    result = run_cli("cnnlab.train", "-m", *overrides, f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}",
                     f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=timeout)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    found = sweep_dir.glob(f"*/{RunFiles.METRICS}")
    records = {int(p.parent.name.split("_")[0]): json.loads(p.read_text()) for p in found}
    bad = {num: (r["status"], (r.get("error") or "")[:300]) for num, r in records.items()
           if r["status"] != Status.OK or r["test_acc"] is None}  # fmt: skip
    assert not bad, bad
    return sweep_dir, [records[num] for num in sorted(records)]


def job_overrides(sweep_dir: Path) -> list[list[str]]:
    """Each job's own overrides (``.hydra/overrides.yaml``), by job number."""
    jobs = sorted(sweep_dir.glob(f"*/{RunFiles.OVERRIDES}"), key=lambda p: int(p.parent.parent.name.split("_")[0]))
    return [yaml.safe_load(p.read_text()) for p in jobs]


def test_every_named_group_is_run():
    assert NAMED_GROUPS <= set(GROUPS), NAMED_GROUPS - set(GROUPS)
    for group, sweep in RUN_BY_A_SWEEP.items():  # each choice is a job of the sweep file that runs it
        params = yaml.safe_load((CONF_DIR / "sweep" / f"{sweep}.yaml").read_text())["hydra"]["sweeper"]["params"]
        assert set(str(params[group]).split(",")) == set(choices(group)), (group, sweep)
    from test_ddp import DDP_OVERRIDES

    assert "trainer=ddp_cpu" in DDP_OVERRIDES  # RUN_ELSEWHERE


@pytest.mark.slow
@pytest.mark.parametrize("group", [g for g in GROUPS if g not in RUN_BY_A_SWEEP])
def test_every_choice_of_a_group_takes_a_training_step(group, tmp_path, tiny_data_dir):
    runnable = [c for c in choices(group) if (group, c) not in NEEDS_A_GPU and (group, c) not in RUN_ELSEWHERE]
    extra = [] if group == "callbacks" else LIGHT  # callbacks=default: every image callback, for real
    sweep_dir, records = run_multirun(tmp_path, tiny_data_dir, f"{group}={','.join(runnable)}", *ONE_STEP, *extra)
    assert len(records) == len(runnable)  # a job per choice, each with its record
    ran = [next(o.split("=", 1)[1] for o in job if o.startswith(f"{group}=")) for job in job_overrides(sweep_dir)]
    assert ran == runnable
    assert all(r["fingerprint"] and r["identity"] for r in records)
    if group in ("optimizer", "scheduler", "experiment"):  # each choice is another experiment
        assert len({r["fingerprint"] for r in records}) == len(runnable), [r["fingerprint"] for r in records]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="trainer=gpu and trainer=ddp need a CUDA GPU (none here)")
@pytest.mark.parametrize("choice", sorted(c for g, c in NEEDS_A_GPU))
def test_the_gpu_trainers_take_a_training_step(choice, tmp_path, tiny_data_dir):
    _, (record,) = run_multirun(tmp_path, tiny_data_dir, f"trainer={choice}", *ONE_STEP, *LIGHT)
    assert record["status"] == Status.OK and record["test_acc"] is not None


def sweep_run_overrides(name: str) -> list[str]:
    """What a sweep file's test adds: its Optuna searches run 2 trials (every trial is a job like the others; the
    space's ends are composed by test_sweeps), the frontier ablation one seed of three (the seeds change only
    ``seed``: asserted by the test)."""
    if name in ("optuna", "search"):
        return ["hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1"]
    if name == "frontier":
        return ["seed=1"]
    return []


@pytest.mark.slow
@pytest.mark.parametrize("name", SWEEPS)
def test_every_job_of_a_sweep_file_takes_a_training_step(name, tmp_path, tiny_data_dir):
    sweep_file = yaml.safe_load((CONF_DIR / "sweep" / f"{name}.yaml").read_text())
    params = sweep_file["hydra"]["sweeper"]["params"]
    step = [o for o in ONE_STEP if o.split("=", 1)[0] not in params]  # a key the sweep varies keeps its values
    if "trainer.max_epochs" in params:  # each job keeps its epochs, and stops after its first step all the same
        step.append("trainer.max_steps=1")
    sweep_dir, records = run_multirun(tmp_path, tiny_data_dir, f"sweep={name}", *sweep_run_overrides(name), *step,
                                      *LIGHT)  # fmt: skip
    if "n_trials" in str(sweep_run_overrides(name)):
        assert len(records) == 2
        return
    jobs = grid_jobs({k: str(v) for k, v in params.items()})
    if name == "chapter6":  # every model, each another experiment
        assert len({r["fingerprint"] for r in records}) == len(records)
    if name == "frontier":  # the file's grid is every step x seeds 1, 2, 3: here every step, seed 1
        steps = {tuple(sorted(o for o in job if o.split("=", 1)[0] in params and not o.startswith("seed=")))
                 for job in job_overrides(sweep_dir)}  # fmt: skip
        assert steps == {tuple(sorted(o for o in job if not o.startswith("seed="))) for job in jobs}
        assert len(jobs) == 3 * len(records)
        assert len({r["fingerprint"] for r in records}) == len(records)  # each step removes a technique
        return
    assert len(records) == len(jobs)
    ran = [sorted(o for o in job if o.split("=", 1)[0] in params) for job in job_overrides(sweep_dir)]
    assert ran == [sorted(job) for job in jobs]
