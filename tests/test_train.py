"""End to end: ``python -m cnnlab.train`` on tiny data leaves TensorBoard events, metrics.json and last.ckpt."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnlab.rundir import RESULT_KEYS
from cnnlab.train import train
from conftest import TINY_OVERRIDES, run_cli

METRIC_KEYS = {*RESULT_KEYS, "status", "tags"}  # the run record's keys (cnnlab.rundir.RunRecord)


def only_run_dir(log_dir: Path) -> Path:
    runs = [p.parent for p in log_dir.rglob("metrics.json")]
    assert len(runs) == 1, runs
    return runs[0]


def test_cli_trains_logs_checkpoints_and_resumes_with_ckpt_path_last(tmp_path, tiny_data_dir):
    elsewhere = tmp_path / "some" / "where"  # any working directory: the log root is ./logs under it
    elsewhere.mkdir(parents=True)
    overrides = [*TINY_OVERRIDES, f"paths.data_dir={tiny_data_dir}", "model=lenet_maxpool"]
    result = run_cli("cnnlab.train", *overrides, "trainer.max_epochs=2", cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(elsewhere / "logs")
    assert run_dir.parent.name == "lenet_maxpool-fashion_mnist"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics) and metrics["epochs"] == 2 and metrics["params"] == 61_706
    assert 0.0 <= metrics["test_acc"] <= 1.0 and metrics["examples_per_sec"] > 0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run_dir / "checkpoints").glob("best-*.ckpt"))) == 1
    events = EventAccumulator(str(run_dir)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss_step", "train/acc", "val/acc", "test/acc", "train/examples_per_sec"} <= tags, tags
    assert any(tag.startswith("lr-") for tag in tags), tags
    assert "_target_: cnnlab.models.LeNet" not in result.stdout  # the config: in the run's log, not on the screen
    assert "_target_: cnnlab.models.LeNet" in (run_dir / "train.log").read_text()
    assert result.stdout.startswith("cnnlab: lenet_maxpool-fashion_mnist on fashion_mnist, 61,706 parameters")

    resumed = run_cli("cnnlab.train", *overrides, "trainer.max_epochs=3", "ckpt_path=last", cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"ckpt_path=last: resuming {run_dir}, the newest of 1 runs of lenet_maxpool-fashion_mnist" in resumed.stdout
    assert list(run_dir.parent.iterdir()) == [run_dir]  # no second, empty run dir
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 3
    log = (run_dir / "train.log").read_text()
    assert log.count("metrics: ") == 2 and "resuming into" in log  # the resuming command's log, appended
    assert len(list((run_dir / ".hydra").glob("resumed-*/overrides.yaml"))) == 1


def test_resume_from_last_checkpoint_continues_the_epochs(tiny_cfg, tmp_path):
    first = train(tiny_cfg("trainer.max_epochs=1"))
    assert first["epochs"] == 1
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 5 and "net.conv1.weight" in state["state_dict"]  # 5 batches an epoch
    resumed = train(tiny_cfg("trainer.max_epochs=3", f"ckpt_path={last}"))
    assert resumed["epochs"] == 3
    assert torch.load(last, weights_only=True)["global_step"] == 3 * 5  # trainer=debug: 5 batches an epoch


def test_train_returns_learned_metrics(tiny_cfg):
    metrics = train(
        tiny_cfg(
            "model=lenet_relu",
            "optimizer=adam",
            "optimizer.lr=0.01",
            "trainer.max_epochs=8",
            "trainer.limit_train_batches=null",
            "trainer.limit_val_batches=null",
            "trainer.limit_test_batches=null",
        )
    )
    # the tiny images encode the label in their brightness: a working pipeline learns it
    assert metrics["test_acc"] > 0.5, metrics
