"""Watching a sweep: the job count of a grid or a search, and the line printed when a job finishes."""

from __future__ import annotations

import json
import os
import time

import pytest
from omegaconf import OmegaConf

from cnnlab.rundir import RunRecord
from cnnlab.sweepspace import swept_keys
from cnnlab.watch import SweepProgress, progress_line, sweep_size

BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def sweep_config(params: dict, task: list[str], target: str = BASIC, **sweeper) -> OmegaConf:
    return OmegaConf.create(
        {"hydra": {"sweeper": {"_target_": target, "params": params, **sweeper}, "overrides": {"task": task}}}
    )


@pytest.mark.parametrize(
    ("params", "task", "size"),
    [
        ({"model": "lenet,lenet_k3,lenet_k7"}, ["sweep=chapter6"], 3),
        ({"model": "lenet,lenet_k3,lenet_k7"}, ["sweep=chapter6", "seed=1,2,3"], 9),
        ({"optimizer.lr": "0.1,0.3,0.9,2.0", "trainer.max_epochs": "5,10,20"}, ["trainer.max_epochs=5,10"], 8),
        ({}, ["model=lenet,lenet_relu", "optimizer.lr=0.1,0.9", "data.batch_size=64"], 4),
    ],
)
def test_the_sweep_size_is_the_grid_hydra_runs(params, task, size):
    assert sweep_size(sweep_config(params, task)) == size


def test_an_optuna_search_counts_its_trials_and_shows_its_search_space():
    config = sweep_config({"optimizer.lr": "tag(log, interval(0.001, 1.0))", "model.pool": "choice(avg, max)"},
                          ["sweep=optuna", "seed=3"], target="x.OptunaSweeper", n_trials=7)  # fmt: skip
    assert sweep_size(config) == 7
    assert swept_keys(config) == {"optimizer.lr", "model.pool"}


def test_a_progress_line_says_the_result_and_the_time_left():
    line = progress_line(3, 11, "model=lenet_k3", RunRecord(test_acc=0.8012, wall_s=82.4), 240.0, 3)
    assert line == "[3/11] model=lenet_k3: test acc 0.801, 82 s (sweep 4 min, about 11 min left)"
    failed = RunRecord(status="failed", error="SGD: invalid momentum\nmore", wall_s=1.0)
    expected = "[11/11] x=1: failed (SGD: invalid momentum), 1 s (sweep 30 s)"
    assert progress_line(11, 11, "x=1", failed, 30.0, 1) == expected
    assert progress_line(2, None, "x=1", RunRecord(test_acc=0.5), 10.0, 0) == "[2] x=1: test acc 0.500 (sweep 10 s)"
    pruned = RunRecord(status="pruned", epochs=1, val_acc=0.1023, wall_s=4.0)
    expected = "[4/8] x=2: pruned after 1 epoch, val acc 0.102, 4 s (sweep 20 s, about 20 s left)"
    assert progress_line(4, 8, "x=2", pruned, 20.0, 4) == expected


def test_jobs_that_finished_before_a_resume_are_counted_and_reruns_printed(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    for name in ("0_model=lenet", "1_model=lenet_k3", "2_model=lenet_k7"):
        (sweep_dir / name / ".hydra").mkdir(parents=True)
        (sweep_dir / name / ".hydra" / "overrides.yaml").write_text(f"- model={name.split('=')[1]}\n")
    (sweep_dir / "0_model=lenet" / "metrics.json").write_text(json.dumps({"test_acc": 0.8, "wall_s": 5}))
    failed_before = sweep_dir / "2_model=lenet_k7" / "metrics.json"  # the job runs again: its old result is not new
    failed_before.write_text(json.dumps({"status": "failed", "error": "x", "test_acc": None}))
    os.utime(failed_before, (time.time() - 3600, time.time() - 3600))
    config = sweep_config({}, ["model=lenet,lenet_k3,lenet_k7"])
    config.hydra.sweep = {"dir": str(sweep_dir)}
    progress = SweepProgress()
    progress.on_multirun_start(config)
    (sweep_dir / "1_model=lenet_k3" / "metrics.json").write_text(json.dumps({"test_acc": 0.79, "wall_s": 6}))
    progress._report_new()
    failed_before.write_text(json.dumps({"test_acc": 0.81, "wall_s": 7}))  # its rerun finished
    progress.on_multirun_end(config)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (sweep ")[0] for line in lines] == [
        "[2/3] 1_model=lenet_k3: test acc 0.790, 6 s",  # named as its job dir and TensorBoard run are
        "[3/3] 2_model=lenet_k7: test acc 0.810, 7 s",
    ]
