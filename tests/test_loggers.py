"""logger=csv, logger=mlflow, logger=many: a tiny run, read back with each tool's own reader.

mlflow is the ``mlflow`` extra (``make test`` installs it): without it these tests fail, they do not skip.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient

from cnnlab.config import CONF_DIR
from cnnlab.train import train
from conftest import compose_config


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def mlflow_client(tmp_path: Path) -> MlflowClient:
    """The store of logger=mlflow: one SQLite database under the log root (tiny_cfg's is tmp_path/logs)."""
    return MlflowClient(f"sqlite:///{tmp_path / 'logs' / 'mlflow.db'}")


def test_csv_logger_writes_metrics_csv_in_the_run_dir(tiny_cfg, tmp_path, one_torch_thread):
    metrics = train(tiny_cfg("logger=csv", "trainer.max_epochs=2"))
    run_dir = tmp_path / "run"
    rows = csv_rows(run_dir)
    val_rows = [row for row in rows if row.get("val/acc")]
    assert sorted(int(row["epoch"]) for row in val_rows) == [0, 1], val_rows
    assert float(val_rows[-1]["val/acc"]) == pytest.approx(metrics["val_acc"])
    assert any(row.get("train/loss_step") for row in rows) and any(row.get("test/acc") for row in rows)
    final = [row for row in rows if row.get("hp/test_acc")]  # the run's final metrics, as TensorBoard's HPARAMS
    assert len(final) == 1 and float(final[0]["hp/test_acc"]) == pytest.approx(metrics["test_acc"])
    assert "activation:" in (run_dir / "csv" / "hparams.yaml").read_text()  # the config, as nested YAML
    assert not list(run_dir.glob("**/version_*")), "no version folder: the run dir is the version"


def test_mlflow_logger_records_params_metrics_and_tags(tiny_cfg, tmp_path, monkeypatch, one_torch_thread):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the store lives under the log root, not in the working directory
    cfg = tiny_cfg("logger=mlflow", "trainer.max_epochs=2", "model=lenet_relu", "tags=[smoke,frontier]")
    metrics = train(cfg)
    assert not list(elsewhere.iterdir()), "nothing (./mlruns, ./mlartifacts) is written into the working directory"

    client = mlflow_client(tmp_path)
    experiment = client.get_experiment_by_name("cnnlab")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "lenet_relu-fashion_mnist" and run.info.status == "FINISHED"
    params = run.data.params  # the run's knobs, by override key (cnnlab.hparams)
    assert params["model"] == "lenet_relu" and params["model.activation"] == cfg.model.activation == "relu"
    assert params["optimizer.lr"] == str(cfg.optimizer.lr) and params["seed"] == "42"
    assert not [key for key in params if "_target_" in key or key.startswith(("callbacks", "paths"))], params
    assert {"val/acc", "test/acc", "hp/test_acc", "hp/val_acc", "hp/macs", "hp/status"} <= set(run.data.metrics)
    assert run.data.metrics["hp/test_acc"] == pytest.approx(metrics["test_acc"])
    assert run.data.metrics["hp/val_acc"] == pytest.approx(metrics["val_acc"])
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2  # one a validation epoch
    assert run.data.tags["smoke"] == run.data.tags["frontier"] == "true"


def test_many_loggers_write_all_three(tiny_cfg, tmp_path, one_torch_thread):
    train(tiny_cfg("logger=many", "tags=[both]"))
    run_dir = tmp_path / "run"
    assert list(run_dir.glob("events.out.tfevents.*")), "TensorBoard events in the run dir"
    assert any(row.get("val/acc") for row in csv_rows(run_dir))
    client = mlflow_client(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("cnnlab").experiment_id])
    assert "val/acc" in run.data.metrics and run.data.tags["both"] == "true"


def test_an_unknown_logger_is_refused_listing_the_loggers(tmp_path):
    with pytest.raises(ConfigCompositionException) as raised:
        compose_config(["logger=no_such_logger"], tmp_path)
    message = str(raised.value)
    assert "Could not find 'logger/no_such_logger'" in message
    choices = {path.stem for path in (CONF_DIR / "logger").glob("*.yaml")}
    assert {"csv", "mlflow", "many", "tensorboard", "none"} <= choices
    assert all(choice in message for choice in choices), message


def test_logger_none_trains_with_a_schedule_and_writes_no_events(tiny_cfg, tmp_path, one_torch_thread):
    metrics = train(tiny_cfg("logger=none", "scheduler=onecycle"))  # the lr monitor had nowhere to log: it refused
    assert metrics["status"] == "ok" and metrics["test_acc"] is not None
    assert not list((tmp_path / "run").rglob("events.out.tfevents.*"))
