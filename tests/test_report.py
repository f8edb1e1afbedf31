"""``python -m cnnlab.report DIR``: one row per run (finished, failed or killed), best first, a CSV and a picture."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from cnnlab.report import load_runs, main, read_curves, run_labels, write_report


def fake_run(
    root: Path,
    name: str,
    model: str,
    overrides: str,
    metrics: dict | None,
    curve: list[float] | None = None,
) -> Path:
    """A run dir as a sweep job leaves it: .hydra/ record, metrics.json (None: killed), TensorBoard events."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("\n".join(f"- {o}" for o in overrides.split(",")) + "\n")
    (run / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n"
        "  run:\n    dir: ${paths.log_dir}/x\n"  # interpolations that cannot resolve here must not matter
        f"  runtime:\n    choices:\n      model: {model}\n"
        f"  job:\n    override_dirname: {overrides}\n"
    )
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    if curve:
        with SummaryWriter(str(run)) as writer:
            for epoch, acc in enumerate(curve):
                writer.add_scalar("val/acc", acc, epoch * 10)
                writer.add_scalar("train/loss_epoch", 1.0 - acc, epoch * 10)
    return run


def finished(test_acc: float, params: int = 61_706) -> dict:
    return {
        "test_acc": test_acc,
        "val_acc": test_acc + 0.01,
        "train_acc": test_acc + 0.02,
        "train_loss": 0.4,
        "examples_per_sec": 7400.0,
        "startup_s": 3.0,
        "params": params,
        "epochs": 3,
        "wall_s": 70.0,
    }


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "2025-01-01_00-00-00_000000"
    fake_run(root, "0_model=lenet", "lenet", "model=lenet", finished(0.78), [0.6, 0.7, 0.77])
    fake_run(root, "1_model=lenet_maxpool", "lenet_maxpool", "model=lenet_maxpool", finished(0.83), [0.7, 0.8, 0.82])
    failed = {"test_acc": None, "params": None, "wall_s": 1.0, "status": "failed", "error": "ValueError: bad | lr"}
    fake_run(root, "2_model=lenet_k7", "lenet_k7", "model=lenet_k7", failed)
    fake_run(root, "3_model=lenet_bn", "lenet_bn", "model=lenet_bn", None)  # killed: no metrics.json
    fake_run(root, "4_model=lenet_wide", "lenet_wide", "model=lenet_wide", finished(0.81, 180_000), [0.75, 0.8, 0.81])
    return root


def test_report_lists_every_run_best_first_with_failures_last(sweep_dir):
    rows = write_report(sweep_dir)
    assert [r["model"] for r in rows] == ["lenet_maxpool", "lenet_wide", "lenet", "lenet_k7", "lenet_bn"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed", "incomplete"]
    with open(sweep_dir / "report.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == [r["model"] for r in rows]
    assert table[0]["overrides"] == "model=lenet_maxpool" and float(table[0]["test_acc"]) == 0.83
    assert table[1]["params"] == "180000" and table[3]["error"] == "ValueError: bad | lr"
    report = (sweep_dir / "report.md").read_text()
    assert "5 runs, 2 failed or incomplete" in report
    assert (
        "| 1 | lenet_maxpool | model=lenet_maxpool | 61,706 | 0.830 | 0.840 | 0.850 | 0.400 | 7,400 | 70 | ok |"
        in report
    )
    assert "ValueError: bad \\| lr" in report  # a pipe in an error does not break the table
    png = (sweep_dir / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


def test_report_reads_the_training_curves(sweep_dir):
    curves = read_curves(sweep_dir / "1_model=lenet_maxpool")
    assert curves["val/acc"] == pytest.approx([0.7, 0.8, 0.82])
    assert curves["train/loss_epoch"] == pytest.approx([0.3, 0.2, 0.18])
    assert read_curves(sweep_dir / "3_model=lenet_bn") == {}


def test_a_log_root_reports_the_runs_of_every_sweep_and_single_run(sweep_dir, tmp_path):
    fake_run(tmp_path / "lenet-fashion_mnist", "2025-01-02_00-00-00_000000", "lenet", "", finished(0.8))
    assert len(load_runs(tmp_path)) == 6


def test_labels_name_the_model_and_what_varies():
    rows = [
        {"model": "lenet", "run": "0", "overrides": "model.conv_channels=[8,24],optimizer.lr=0.123456789,seed=1"},
        {"model": "lenet", "run": "1", "overrides": "model.conv_channels=[6,16],optimizer.lr=0.3,seed=1"},
    ]
    assert run_labels(rows) == ["lenet conv_channels=[8,24] lr=0.1235", "lenet conv_channels=[6,16] lr=0.3"]


def test_cli_prints_the_table_and_refuses_a_folder_without_runs(sweep_dir, tmp_path, capsys):
    assert main([str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| # | model | overrides | params | test acc |") and out.count("\n| ") >= 6
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "cnnlab: error:" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no runs under" in capsys.readouterr().err
