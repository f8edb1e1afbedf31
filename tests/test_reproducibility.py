"""Reproducible and isolated runs: the same seed gives the same metrics; runs started together never share a dir."""

from __future__ import annotations

import json
import os

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import forked_cli
from cnnlab.train import train
from conftest import TINY_OVERRIDES, compose_config

TIMING_KEYS = {"wall_s", "examples_per_sec", "startup_s", "train_s"}  # the only metrics that differ in repeats


def learned(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


@pytest.fixture(autouse=True)
def deterministic_flag_undone(one_torch_thread):
    """The deterministic flag is process-wide: undo it afterwards (and run on one thread, as tiny runs are fastest)."""
    yield
    torch.use_deterministic_algorithms(False)


def test_same_seed_and_deterministic_twice_at_once_give_identical_metrics_in_separate_runs(tmp_path, tiny_data_dir):
    """Two CLI runs started together with default run dirs: separate dirs and TensorBoard runs, equal results."""
    args = [*TINY_OVERRIDES, f"paths.data_dir={tiny_data_dir}", "trainer.max_epochs=2", "seed=0"]
    args += ["trainer.deterministic=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    errors = [tmp_path / f"stderr-{i}.log" for i in range(2)]
    procs = [forked_cli.start("cnnlab.train", args, str(tmp_path), env, os.devnull, str(err)) for err in errors]
    try:
        for proc in procs:
            proc.wait(timeout=240)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in procs] == [0, 0], errors[0].read_text()[-3000:] + errors[1].read_text()[-3000:]

    run_dirs = sorted(p.parent for p in (tmp_path / "logs").rglob("metrics.json"))
    assert len(run_dirs) == 2 and run_dirs[0].parent == run_dirs[1].parent  # lenet-fashion_mnist/<two dirs>
    events = [sorted(d.glob("events.out.tfevents.*")) for d in run_dirs]
    assert events[0] and events[1] and not set(events[0]) & set(events[1])

    first, second = (json.loads((d / "metrics.json").read_text()) for d in run_dirs)
    assert learned(first) == learned(second)
    curves = [[e.value for e in EventAccumulator(str(d)).Reload().Scalars("train/loss_step")] for d in run_dirs]
    assert len(curves[0]) == 10 and curves[0] == curves[1]

    other_seed = train(compose_config([*args, "seed=1"], tmp_path / "seed1"))
    assert other_seed["train_loss"] != first["train_loss"], "the seed changes nothing: the check above proves nothing"


def test_runs_started_in_the_same_second_get_separate_dirs(tmp_path):
    """Hydra's default ``%H-%M-%S`` dirs collide within a second; cnnlab's run dir has microseconds."""
    for _ in range(5):  # two resolutions of the run dir almost always fall in the same second; retry if not
        first = compose_config([], tmp_path).hydra.run.dir
        second = compose_config([], tmp_path).hydra.run.dir
        if first[:-7] == second[:-7]:  # equal up to the microseconds: the same second
            break
    assert first[:-7] == second[:-7], "could not start two runs within one second"
    assert first != second
