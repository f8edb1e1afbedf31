"""``python -m cnnlab.report DIR``: one row per run (finished, failed or killed), best validation accuracy first,
a CSV and a picture; the overrides every run shares once above a table; tags, and a filter on them."""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from cnnlab.plot import read_curves
from cnnlab.report import main, write_report
from cnnlab.runs import aggregate_seeds, load_runs, run_labels
from conftest import run_cli


def fake_run(
    root: Path,
    name: str,
    model: str,
    overrides: str,
    metrics: dict | None,
    curve: list[float] | None = None,
    seed: int | None = None,
    config_tags: list[str] | None = None,
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
    if seed is not None or config_tags is not None:  # the composed config; an unresolvable interpolation is fine
        tags = f"tags: [{','.join(config_tags)}]\n" if config_tags is not None else ""
        (run / ".hydra" / "config.yaml").write_text(f"seed: {seed}\n{tags}paths:\n  log_dir: ${{oc.env:NO_SUCH_VAR}}\n")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    if curve:
        with SummaryWriter(str(run)) as writer:
            for epoch, acc in enumerate(curve):
                writer.add_scalar("val/acc", acc, epoch * 10)
                writer.add_scalar("train/loss_epoch", 1.0 - acc, epoch * 10)
    return run


def finished(test_acc: float, params: int = 61_706, wall_s: float = 70.0) -> dict:
    return {
        "test_acc": test_acc,
        "val_acc": test_acc + 0.01,
        "train_acc": test_acc + 0.02,
        "train_loss": 0.4,
        "examples_per_sec": 7400.0,
        "startup_s": 3.0,
        "params": params,
        "epochs": 3,
        "wall_s": wall_s,
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
        "| 1 | lenet_maxpool | model=lenet_maxpool |  | 61,706 |  | 0.840 | 0.830 | 0.850 | 0.400 | 7,400 | 70 | ok |"
        in report
    )
    assert "ValueError: bad \\| lr" in report  # a pipe in an error does not break the table
    assert "| 70 | ok |  |  | 1_model=lenet_maxpool |" in report  # the run by its dir: as TensorBoard names it
    png = (sweep_dir / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


def test_report_reads_the_training_curves(sweep_dir):
    curves = read_curves(sweep_dir / "1_model=lenet_maxpool")
    assert curves["val/acc"] == pytest.approx({1: 0.7, 2: 0.8, 3: 0.82})  # by epoch (these events have no epochs)
    assert curves["train/loss_epoch"] == pytest.approx({1: 0.3, 2: 0.2, 3: 0.18})
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
    assert out.startswith("| # | model | overrides | tags | params | macs | val acc | test acc |")
    assert out.count("\n| ") >= 6
    assert "best configuration (by validation accuracy): lenet_maxpool: val acc 0.840, test acc 0.830" in out
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "cnnlab: error:" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no runs under" in capsys.readouterr().err


SEED_ACCS = {"model=lenet": [0.80, 0.83, 0.81], "model=lenet_maxpool,optimizer.lr=0.1": [0.85, 0.88, 0.84]}


@pytest.fixture
def seeds_dir(tmp_path: Path) -> Path:
    """3 seeds of 2 configurations (the seed override first, middle or last), and a 4th seed that failed."""
    root = tmp_path / "multirun" / "2025-01-03_00-00-00_000000"
    job = 0
    for overrides, accs in SEED_ACCS.items():
        model = overrides.split(",")[0].removeprefix("model=")
        for seed, acc in enumerate(accs, 1):
            items = overrides.split(",")
            items.insert(seed % (len(items) + 1), f"seed={seed}")
            metrics = finished(acc, wall_s=60.0 + 10 * seed)
            fake_run(root, f"{job}", model, ",".join(items), metrics, [acc - 0.1, acc], seed=seed)
            job += 1
    failed = {"test_acc": None, "params": None, "wall_s": 1.0, "status": "failed", "error": "RuntimeError: NaN"}
    fake_run(root, f"{job}", "lenet", "model=lenet,seed=4", failed, seed=4)
    return root


def test_seeds_of_a_configuration_are_one_row_with_mean_and_std(seeds_dir):
    rows = write_report(seeds_dir)
    assert len(rows) == 7 and sorted(r["seed"] for r in rows) == [1, 1, 2, 2, 3, 3, 4]
    with open(seeds_dir / "report_configs.csv") as f:
        configs = list(csv.DictReader(f))
    assert [(c["model"], c["overrides"], c["n"], c["failed"]) for c in configs] == [
        ("lenet_maxpool", "model=lenet_maxpool,optimizer.lr=0.1", "3", "0"),  # best mean first
        ("lenet", "model=lenet", "3", "1"),
    ]
    for config, accs in zip(configs, reversed(SEED_ACCS.values()), strict=True):
        assert float(config["test_acc_mean"]) == pytest.approx(statistics.mean(accs))
        assert float(config["test_acc_std"]) == pytest.approx(statistics.stdev(accs))
        assert float(config["val_acc_mean"]) == pytest.approx(statistics.mean(accs) + 0.01)
        assert float(config["wall_s_mean"]) == pytest.approx(80.0)
        assert sorted(config["seeds"].split(";")) == ["1", "2", "3"]  # the finished seeds, best first
    assert len(configs[1]["runs"].split(";")) == 4  # the failed seed is listed, not counted


def test_the_report_leads_with_the_configurations(seeds_dir, tmp_path):
    write_report(seeds_dir)
    report = (seeds_dir / "report.md").read_text()
    assert "7 runs, 1 failed or incomplete, 2 configurations" in report
    configs_at, runs_at = report.index("## Configurations (mean ± std over seeds)"), report.index("## Runs")
    assert configs_at < runs_at
    accs = SEED_ACCS["model=lenet_maxpool,optimizer.lr=0.1"]
    val, test = (f"{statistics.mean(accs) + d:.3f} ± {statistics.stdev(accs):.3f}" for d in (0.01, 0.0))
    best = f"| 1 | lenet_maxpool | model=lenet_maxpool,optimizer.lr=0.1 |  | 3 | {val} | "
    assert re.search(re.escape(best) + r"\[0\.\d{3}, 0\.\d{3}\] \| " + re.escape(f"{test} |"), report)  # its CI
    assert report.index(best) < runs_at and report.count("| ok |") == 6
    assert report.index("| 1 | lenet_maxpool | model=lenet_maxpool,optimizer.lr=0.1,seed=2 |") > runs_at
    png = (seeds_dir / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    per_run = tmp_path / "per_run"  # the same 7 runs, no two of one configuration: a bar each, a taller picture
    for i, row in enumerate(load_runs(seeds_dir)):
        fake_run(per_run, str(i), row["model"], f"{row['overrides']},optimizer.momentum={i}", finished(0.8))
    write_report(per_run)
    assert png_height(seeds_dir / "report.png") < png_height(per_run / "report.png")


def png_height(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[20:24], "big")  # from the PNG's IHDR chunk


def test_one_seed_shows_no_std_and_single_runs_group_by_their_config_seed(tmp_path):
    root = tmp_path / "logs" / "lenet-fashion_mnist"
    fake_run(root, "2025-01-02_00-00-00_000000", "lenet", "", finished(0.80), seed=7)  # single runs: no overrides
    fake_run(root, "2025-01-02_00-01-00_000000", "lenet", "", finished(0.84), seed=8)
    fake_run(root, "2025-01-02_00-02-00_000000", "lenet_k7", "model=lenet_k7", finished(0.75), seed=7)
    fake_run(root, "2025-01-02_00-03-00_000000", "lenet_bn", "model=lenet_bn", None, seed=7)  # killed
    configs = aggregate_seeds(load_runs(tmp_path / "logs"))
    assert [(c["model"], c["n"], c["seeds"]) for c in configs] == [
        ("lenet", 2, "8;7"),
        ("lenet_k7", 1, "7"),
        ("lenet_bn", 0, ""),  # no finished run: listed last
    ]
    assert configs[0]["test_acc_std"] == pytest.approx(statistics.stdev([0.80, 0.84]))
    assert configs[1]["test_acc_std"] is None and configs[2]["test_acc_mean"] is None
    write_report(tmp_path / "logs")
    report = (tmp_path / "logs" / "report.md").read_text()
    assert "| 2 | lenet_k7 | model=lenet_k7 |  | 1 | 0.760 |  | 0.750 | 70 | 61,706 |" in report  # no CI of 1 seed
    assert "| 3 | lenet_bn | model=lenet_bn |  | 0 |  |  |  |  |" in report
    with open(tmp_path / "logs" / "report_configs.csv") as f:
        assert [c["test_acc_std"] for c in csv.DictReader(f)][1:] == ["", ""]


def scored(val_acc: float | None, test_acc: float, tags: list[str] | None = None) -> dict:
    """A finished run's metrics with its own validation accuracy (and tags, as train.py writes them)."""
    metrics = {**finished(test_acc), "val_acc": val_acc}
    return metrics if tags is None else {**metrics, "tags": tags}


def test_runs_and_configurations_rank_by_validation_accuracy_not_test(tmp_path):
    root = tmp_path / "multirun" / "2025-01-04_00-00-00_000000"
    fake_run(root, "0", "lenet", "model=lenet", scored(0.80, 0.90))  # best test, worse val: second
    fake_run(root, "1", "lenet_wide", "model=lenet_wide", scored(0.88, 0.85))
    fake_run(root, "2", "lenet_bn", "model=lenet_bn", scored(None, 0.95))  # no val acc: last
    rows = write_report(root)
    assert [r["model"] for r in rows] == ["lenet_wide", "lenet", "lenet_bn"]
    with open(root / "report.csv") as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["lenet_wide", "lenet", "lenet_bn"]
    with open(root / "report_configs.csv") as f:
        assert [c["model"] for c in csv.DictReader(f)] == ["lenet_wide", "lenet", "lenet_bn"]
    report = (root / "report.md").read_text()
    runs = report[report.index("## Runs") :]
    assert runs.index("| 1 | lenet_wide | model=lenet_wide |") < runs.index("| 2 | lenet | model=lenet |")
    assert "| 3 | lenet_bn | model=lenet_bn |  | 61,706 |  |  | 0.950 |" in runs
    assert "| 1 | lenet_wide | model=lenet_wide |  | 1 | 0.880 | 0.850 |" in report  # the configurations
    assert "best configuration (by validation accuracy): lenet_wide: val acc 0.880, test acc 0.850 (n=1)" in report


def test_the_best_configuration_is_the_one_with_the_best_mean_validation_accuracy(tmp_path):
    root = tmp_path / "multirun" / "2025-01-05_00-00-00_000000"
    accs = {"optimizer.lr=0.1": [(0.90, 0.80), (0.86, 0.80)], "optimizer.lr=0.01": [(0.85, 0.90), (0.85, 0.90)]}
    for lr, seeds in accs.items():
        for seed, (val, test) in enumerate(seeds, 1):
            fake_run(root, f"{lr}_{seed}", "lenet", f"{lr},seed={seed}", scored(val, test), seed=seed)
    configs = aggregate_seeds(load_runs(root))
    assert [c["overrides"] for c in configs] == ["optimizer.lr=0.1", "optimizer.lr=0.01"]
    write_report(root)
    std = statistics.stdev([0.90, 0.86])
    best = f"best configuration (by validation accuracy): lenet lr=0.1: val acc 0.880 ± {std:.3f}, test acc 0.800"
    assert best in (root / "report.md").read_text()


def test_overrides_every_run_shares_are_written_once_above_the_table(tmp_path):
    root = tmp_path / "multirun" / "2025-01-06_00-00-00_000000"
    shared = "experiment=fashion_frontier,trainer.max_epochs=3"
    for i, (lr, seed) in enumerate([("0.1", 1), ("0.1", 2), ("0.01", 1)]):
        overrides = f"experiment=fashion_frontier,optimizer.lr={lr},seed={seed},trainer.max_epochs=3"
        fake_run(root, str(i), "lenet", overrides, scored(0.8 + i / 100, 0.8), seed=seed)
    rows = write_report(root)
    report = (root / "report.md").read_text()
    configs_at, runs_at = report.index("## Configurations"), report.index("## Runs")
    configs_part, runs_part = report[configs_at:runs_at], report[runs_at:]
    for part, what, column in ((configs_part, "configurations", "configuration"), (runs_part, "runs", "overrides")):
        line = f"All {what}: experiment=fashion_frontier trainer.max_epochs=3\n"
        assert part.count("experiment=fashion_frontier") == 1 and part.count("max_epochs") == 1
        assert part.index(line) < part.index(f"| # | model | {column} |")
    assert "| 1 | lenet | optimizer.lr=0.01,seed=1 |" in runs_part  # only what differs between the runs
    assert "| 2 | lenet | optimizer.lr=0.1,seed=2 |" in runs_part
    assert "| 1 | lenet | optimizer.lr=0.01 |  | 1 | 0.820 |" in configs_part  # the seed is grouped away
    assert "| 2 | lenet | optimizer.lr=0.1 |  | 2 | 0.805 ± 0.007 |" in configs_part
    with open(root / "report.csv") as f:  # the CSV keeps every override
        assert [r["overrides"] for r in csv.DictReader(f)] == [r["overrides"] for r in rows]
    assert all(r["overrides"].startswith(shared.split(",")[0]) for r in rows)


@pytest.fixture
def tagged_dir(tmp_path: Path) -> Path:
    """Runs tagged [ablation, frontier], [frontier], untagged (from before tags), and a failed ablation run."""
    root = tmp_path / "logs"
    fake_run(root, "0", "lenet", "model=lenet", scored(0.85, 0.84, ["ablation", "frontier"]))
    fake_run(root, "1", "lenet_wide", "model=lenet_wide", scored(0.87, 0.86, ["frontier"]))
    fake_run(root, "2", "lenet_bn", "model=lenet_bn", finished(0.80))  # no "tags" key: an older run
    failed = {"test_acc": None, "val_acc": None, "params": None, "status": "failed", "error": "RuntimeError: NaN"}
    fake_run(root, "3", "lenet_k7", "model=lenet_k7", failed, config_tags=["ablation"])  # its tags: its config's
    return root


def test_tags_are_a_column_of_the_report_and_its_csvs(tagged_dir):
    rows = write_report(tagged_dir)
    assert [(r["model"], r["tags"]) for r in rows] == [
        ("lenet_wide", "frontier"),
        ("lenet", "ablation,frontier"),
        ("lenet_bn", ""),
        ("lenet_k7", "ablation"),
    ]
    with open(tagged_dir / "report.csv") as f:
        assert [r["tags"] for r in csv.DictReader(f)] == ["frontier", "ablation,frontier", "", "ablation"]
    with open(tagged_dir / "report_configs.csv") as f:
        assert [c["tags"] for c in csv.DictReader(f)] == ["frontier", "ablation,frontier", "", "ablation"]
    report = (tagged_dir / "report.md").read_text()
    assert "| 2 | lenet | model=lenet | ablation,frontier | 61,706 |  | 0.850 | 0.840 |" in report
    assert "| 3 | lenet_bn | model=lenet_bn |  | 61,706 |" in report


def test_a_tag_filter_keeps_the_runs_that_carry_any_of_its_tags(tagged_dir, capsys):
    assert main([str(tagged_dir), "tags=ablation"]) == 0
    out = capsys.readouterr().out
    with open(tagged_dir / "report.csv") as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["lenet", "lenet_k7"]
    assert "lenet_wide" not in out and "lenet_bn" not in out
    assert "2 runs tagged ablation, 1 failed or incomplete" in (tagged_dir / "report.md").read_text()
    assert main(["tags=[ablation,frontier]", str(tagged_dir)]) == 0  # any of them; in either order
    with open(tagged_dir / "report.csv") as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["lenet_wide", "lenet", "lenet_k7"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([str(tagged_dir), "model=lenet"])  # not a filter the report knows
    assert stop.value.code == 2 and "unknown filter model=" in capsys.readouterr().err


def test_a_tag_filter_that_keeps_no_run_is_one_clear_error(tagged_dir):
    result = run_cli("cnnlab.report", str(tagged_dir), "tags=[smoke,nightly]", cwd=tagged_dir, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("cnnlab: error: no run under") and len(result.stderr.strip().splitlines()) == 1
    assert "smoke, nightly" in result.stderr and "the tags found there: ablation, frontier" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_metrics_json_that_is_not_json_is_named_and_the_other_runs_reported(tmp_path):
    root = tmp_path / "sweep"
    fake_run(root, "0_model=lenet", "lenet", "model=lenet", finished(0.78))
    fake_run(root, "1_model=lenet_k3", "lenet_k3", "model=lenet_k3", finished(0.80))
    (root / "1_model=lenet_k3" / "metrics.json").write_text('{"test_acc": 0.8')  # cut short by hand
    result = run_cli("cnnlab.report", str(root), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    named = [line for line in result.stderr.splitlines() if "1_model=lenet_k3/metrics.json" in line]
    assert len(named) == 1 and "not valid JSON" in named[0], result.stderr
    rows = list(csv.DictReader(open(root / "report.csv")))
    assert [(r["model"], r["status"]) for r in rows] == [("lenet", "ok"), ("lenet_k3", "unreadable")]


@pytest.mark.parametrize(
    ("best", "second", "p", "verdict"),
    [([0.80, 0.81, 0.82], [0.70, 0.71, 0.72], 0.0002552167494419235, "larger than the noise"),
     ([0.80, 0.83, 0.82], [0.81, 0.79, 0.82], 0.46760475460940054, "within the noise")],
)  # fmt: skip
def test_the_best_against_the_runner_up_is_welchs_t_test_with_each_mean_s_95_ci(tmp_path, best, second, p, verdict):
    # p: scipy.stats.ttest_ind(best, second, equal_var=False).pvalue; 4.3026...: scipy.stats.t.ppf(0.975, 2)
    root = tmp_path / "multirun" / "2025-01-06_00-00-00_000000"
    for lr, accs in (("0.1", best), ("0.01", second)):
        for seed, acc in enumerate(accs, 1):
            fake_run(root, f"{lr}_{seed}", "lenet", f"optimizer.lr={lr},seed={seed}", scored(acc, acc), seed=seed)
    write_report(root)
    report = (root / "report.md").read_text()
    assert f"Welch's t-test p = {p:.3g}, the difference is {verdict}" in report
    assert "gives p < 0.05; CI: the 95% confidence interval of the mean." in report
    half = 4.302652729749462 * statistics.stdev(best) / 3**0.5
    mean = statistics.mean(best)
    assert f"| [{mean - half:.3f}, {mean + half:.3f}] |" in report.split("## Runs")[0]
    with open(root / "report_configs.csv") as f:
        assert float(next(csv.DictReader(f))["val_acc_ci95"]) == pytest.approx(half)


def test_one_seed_per_configuration_has_no_interval_and_no_test(tmp_path):
    root = tmp_path / "multirun" / "2025-01-07_00-00-00_000000"
    fake_run(root, "0", "lenet", "model=lenet", scored(0.80, 0.80))
    fake_run(root, "1", "lenet_bn", "model=lenet_bn", scored(0.85, 0.85))
    write_report(root)
    report = (root / "report.md").read_text()
    assert "95% CI" not in report and "Welch" not in report


def identified(test_acc: float, settings: dict, **extra) -> dict:
    """A finished run's metrics as runs write them now: with the fingerprint of its settings and the settings."""
    from cnnlab.fingerprint import fingerprint_of

    return {**finished(test_acc), "fingerprint": fingerprint_of(settings), "identity": settings, **extra}


LENET = {"model._target_": "cnnlab.models.LeNet", "model.activation": "sigmoid", "optimizer.lr": 0.9}


def test_runs_of_one_seed_are_repeats_not_seeds(tmp_path):
    root = tmp_path / "logs" / "lenet-fashion_mnist"
    for i, (seed, acc) in enumerate([(42, 0.80), (42, 0.82), (7, 0.78)]):
        fake_run(root, f"2025-01-0{i + 1}_00-00-00_000000", "lenet", "", identified(acc, LENET), seed=seed)
    (config,) = aggregate_seeds(load_runs(tmp_path / "logs"))
    assert (config["n"], config["repeats"]) == (2, 1)  # seeds 42 and 7; the second seed-42 run repeats the first
    assert config["test_acc_mean"] == pytest.approx(statistics.mean([0.81, 0.78]))  # seed 42: its repeats' mean
    assert config["val_accs"] == pytest.approx([0.82, 0.79])
    two_repeats = tmp_path / "repeats"
    for i in range(2):  # the same seed twice is no sample of the spread: no std, no interval
        fake_run(two_repeats, str(i), "lenet", "", identified(0.80 + i / 100, LENET), seed=42)
    (config,) = aggregate_seeds(load_runs(two_repeats))
    assert (config["n"], config["repeats"], config["val_acc_std"], config["val_acc_ci95"]) == (1, 1, None, None)
    write_report(two_repeats)
    report = (two_repeats / "report.md").read_text()
    assert "| repeats |" in report and "95% CI" not in report


def test_configurations_differ_by_fingerprint_and_are_named_by_what_differs(tmp_path):
    root = tmp_path / "logs"
    relu = {**LENET, "model.activation": "relu"}
    fake_run(root, "a", "lenet_relu", "model=lenet_relu", identified(0.80, {**relu, "optimizer.lr": 0.1}), seed=42)
    fake_run(root, "b", "lenet_relu", "model=lenet_relu", identified(0.10, {**relu, "optimizer.lr": 0.9}), seed=42)
    fake_run(root, "c", "lenet", "model=lenet", identified(0.75, LENET), seed=42)
    configs = aggregate_seeds(load_runs(root))
    assert [(c["model"], c["configuration"], c["n"]) for c in configs] == [
        ("lenet_relu", "optimizer.lr=0.1", 1),  # the same model and command line: two experiments, by their lr
        ("lenet", "optimizer.lr=0.9", 1),  # model.activation is said by the model's choice (its own column)
        ("lenet_relu", "optimizer.lr=0.9", 1),
    ]
    write_report(root)
    report = (root / "report.md").read_text()
    assert "| # | model | configuration | tags | n |" in report
    assert "| 1 | lenet_relu | optimizer.lr=0.1 |  | 1 |" in report
    assert "| 3 | lenet_relu | optimizer.lr=0.9 |" in report
    assert "written before runs had fingerprints" not in report
    with open(root / "report_configs.csv") as f:
        assert [c["fingerprint"] for c in csv.DictReader(f)] == [c["fingerprint"] for c in configs]


def test_runs_from_before_fingerprints_are_grouped_as_then_and_the_report_says_so_once(tmp_path):
    root = tmp_path / "logs"
    fake_run(root, "old1", "lenet", "model=lenet", finished(0.80), seed=1)
    fake_run(root, "old2", "lenet", "model=lenet", finished(0.82), seed=2)
    fake_run(root, "new", "lenet", "model=lenet", identified(0.70, LENET), seed=1)
    configs = aggregate_seeds(load_runs(root))
    assert sorted((c["n"], bool(c["fingerprint"])) for c in configs) == [(1, True), (2, False)]
    write_report(root)
    report = (root / "report.md").read_text()
    assert report.count("2 of these runs were written before runs had fingerprints") == 1


def test_a_failed_attempt_set_aside_is_not_a_run(tmp_path):
    root = tmp_path / "sweep"
    job = fake_run(root, "0_model=lenet", "lenet", "model=lenet", identified(0.8, LENET))
    fake_run(job, "failed-attempt-1", "", "model=lenet", {"status": "failed", "error": "RuntimeError: NaN"})
    rows = write_report(root)
    assert [(r["run"], r["status"]) for r in rows] == [("0_model=lenet", "ok")]
    report = (root / "report.md").read_text()
    summary = report.split("\n")[2]
    assert summary.startswith("1 runs, 1 configurations") and "failed" not in summary, summary


LOCAL = """# @package _global_
data: {{verify_md5: false, download: false, val_size: 20, batch_size: 16, system_dir: /nonexistent, data_dir: {data}}}
trainer: {{max_epochs: 1, limit_train_batches: 2, limit_val_batches: 1, limit_test_batches: 1,
          enable_progress_bar: false, enable_model_summary: false}}
callbacks: {{model_graph: null, activation_images: null, misclassified_images: null}}
paths: {{log_dir: {logs}}}
"""


@pytest.mark.slow
def test_the_chapter6_job_and_a_plain_run_of_its_model_are_two_configurations(tmp_path, tiny_data_dir):
    """Same model, same command line (``model=lenet_relu``; the rest in this machine's conf/local), other learning
    rates (sweeps/chapter6.yaml sets 0.1 for lenet_relu): two experiments, not two seeds of one."""
    (tmp_path / "conf" / "local").mkdir(parents=True)
    local = LOCAL.format(data=tiny_data_dir, logs=tmp_path / "logs")
    (tmp_path / "conf" / "local" / "default.yaml").write_text(local)
    for command in (["-m", "sweep=chapter6"], []):
        result = run_cli("cnnlab.train", "--config-dir", str(tmp_path / "conf"), *command, "model=lenet_relu",
                         cwd=tmp_path)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    rows = load_runs(tmp_path / "logs")
    assert [r["overrides"] for r in rows] == ["model=lenet_relu"] * 2  # the command lines cannot tell them apart
    configs = aggregate_seeds(rows)
    assert sorted((c["model"], c["configuration"], c["n"]) for c in configs) == [
        ("lenet_relu", "optimizer.lr=0.1", 1), ("lenet_relu", "optimizer.lr=0.9", 1)]  # fmt: skip
    assert main([str(tmp_path / "logs")]) == 0
    assert "Welch" not in (tmp_path / "logs" / "report.md").read_text()  # no seeds to compare
