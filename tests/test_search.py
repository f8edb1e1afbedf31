"""cnnlab's Optuna search: the search space, pruning (the study, the record, a resume), trials kept in flight, the
Pareto front of a 2-objective search, and one-line errors for bad settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from cnnlab import study as studies
from cnnlab.errors import ConfigError
from cnnlab.report import main as main_report
from conftest import TINY_OVERRIDES, run_cli

optuna.logging.set_verbosity(optuna.logging.WARNING)


# fixed beside sweep=optuna's space: every trial learns (none diverges), only what a test sweeps varies
FIXED = ["optimizer=sgd", "optimizer.lr=0.1", "data.batch_size=16", "model.conv_channels=[6,16]",
         "model.activation=relu", "model.pool=avg"]  # fmt: skip


def search(tmp_path: Path, data_dir: Path, *overrides: str, sweep_dir: Path | None = None):
    """``cnnlab.train -m sweep=optuna`` on tiny data; its output and its sweep dir."""
    sweep_dir = sweep_dir or tmp_path / "sweep"
    result = run_cli("cnnlab.train", "-m", "sweep=optuna", *FIXED,
                     *TINY_OVERRIDES, *overrides, f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path / 'logs'}",
                     f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)  # fmt: skip
    return result, sweep_dir


def load(sweep_dir: Path, name: str = "lenet") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir}/optuna.db")


def records(sweep_dir: Path) -> dict[int, dict]:
    return {int(p.parent.name.split("_")[0]): json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")}


def test_the_search_space_keeps_hydras_optuna_syntax():
    space, fixed = studies.search_space([
        "optimizer=choice(sgd, adam)", "optimizer.lr=tag(log, interval(0.001, 1.0))",
        "data.batch_size=range(64, 257, 64)", "model.dropout=interval(0.0, 0.5)", "trainer.max_epochs=3",
        "model.pool=choice(avg, max)", "model.pool=max",
    ])  # fmt: skip
    assert space == {
        "optimizer": CategoricalDistribution(["sgd", "adam"]),
        "optimizer.lr": FloatDistribution(0.001, 1.0, log=True),
        "data.batch_size": IntDistribution(64, 256, step=64),  # range's stop excluded, as in a Hydra grid
        "model.dropout": FloatDistribution(0.0, 0.5),
    }
    assert fixed == {"trainer.max_epochs": "3", "model.pool": "max"}  # the later override of a key wins
    grid = studies.grid_choices({"data.batch_size": space["data.batch_size"]})
    assert grid == {"data.batch_size": [64, 128, 192, 256]}
    with pytest.raises(ConfigError, match=r"cannot be parsed: optimizer.lr=interval\(1.0, 0.1\)"):
        studies.search_space(["optimizer.lr=interval(1.0, 0.1)"])


@pytest.mark.slow
def test_a_trial_under_the_threshold_is_pruned_after_its_first_epoch_and_not_run_again(tmp_path, tiny_data_dir):
    overrides = ["hydra.sweeper.n_trials=2", "trainer.max_epochs=3", "hydra.sweeper.pruner=threshold",
                 "hydra.sweeper.pruner_args={lower: 1.01}"]  # fmt: skip  (no accuracy reaches 1.01)
    result, sweep_dir = search(tmp_path, tiny_data_dir, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(sweep_dir)
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [0] for t in study.trials)  # one report: after the first epoch
    for number, record in records(sweep_dir).items():
        assert record["status"] == "pruned" and record["epochs"] == 1 and record["test_acc"] is None, number
        assert record["macs"] > 0 and record["params"] > 0
        job = next(sweep_dir.glob(f"{number}_*"))
        assert (job / "checkpoints" / "last.ckpt").is_file()
    report = (sweep_dir / "report.md").read_text()
    assert "2 pruned (stopped early by the search's pruner)" in report and "failed" not in report.split("\n")[2]
    assert "| pruned |" in report and "2 trials: 0 complete, 2 pruned, 0 failed." in report

    # a sweep stopped with a trial running: that trial runs again in its own job dir, the pruned ones do not
    trial = study.ask({"optimizer.lr": FloatDistribution(0.0003, 1.0, log=True), "data.batch_size":
                       CategoricalDistribution([64, 128, 256, 512]), "model.activation": CategoricalDistribution(
                       ["sigmoid", "relu", "tanh", "gelu"]), "model.pool": CategoricalDistribution(["avg", "max"])})
    pruned_files = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("[01]_*/metrics.json")}
    result, _ = search(tmp_path, tiny_data_dir, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"trial {trial.number} was running when the sweep stopped: running it again" in result.stdout
    assert "[W " not in result.stderr and "[I " not in result.stderr  # Optuna's own log lines stay out
    assert [t.state for t in load(sweep_dir).trials] == [TrialState.PRUNED] * 3  # 3 trials: none asked anew
    assert {p: p.stat().st_mtime_ns for p in pruned_files} == pruned_files
    assert records(sweep_dir)[2]["status"] == "pruned"


@pytest.mark.slow
def test_a_trial_that_trained_its_last_epoch_completes_whatever_the_pruner_says(tmp_path, tiny_data_dir):
    overrides = ["hydra.sweeper.n_trials=1", "trainer.max_epochs=1", "hydra.sweeper.pruner=threshold",
                 "hydra.sweeper.pruner_args={lower: 1.01}"]  # fmt: skip
    result, sweep_dir = search(tmp_path, tiny_data_dir, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    (trial,) = load(sweep_dir).trials
    assert trial.state == TrialState.COMPLETE and list(trial.intermediate_values) == [0]  # reported, not pruned
    (record,) = records(sweep_dir).values()
    assert record["status"] == "ok" and record["test_acc"] is not None


def job_times(sweep_dir: Path) -> dict[int, tuple[float, float]]:
    """Each job's start (its Hydra record written) and end (its metrics.json written), by job number."""
    times = {}
    for job in sweep_dir.glob("[0-9]*_*"):
        times[int(job.name.split("_")[0])] = ((job / ".hydra" / "config.yaml").stat().st_mtime,
                                              (job / "metrics.json").stat().st_mtime)  # fmt: skip
    return times


@pytest.mark.slow
def test_with_two_jobs_the_next_trial_starts_when_a_short_one_ends(tmp_path, tiny_data_dir):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    study = optuna.create_study(study_name="lenet", storage=f"sqlite:///{sweep_dir}/optuna.db", direction="maximize")
    for epochs in (150, 1, 1, 1):  # trial 0 is long: trials 2 and 3 start while it trains
        study.enqueue_trial({"trainer.max_epochs": epochs})
    overrides = ["hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib",
                 "hydra.launcher.n_jobs=2", "trainer.max_epochs=choice(1,150)"]  # fmt: skip
    result, _ = search(tmp_path, tiny_data_dir, *overrides, sweep_dir=sweep_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [t.params["trainer.max_epochs"] for t in load(sweep_dir).trials] == [150, 1, 1, 1]
    times = job_times(sweep_dir)
    assert times[2][0] < times[0][1] and times[3][0] < times[0][1], times  # batches of 2 would wait for trial 0


@pytest.mark.slow
def test_a_two_objective_search_reports_its_pareto_front(tmp_path, tiny_data_dir):
    overrides = ["hydra.sweeper.n_trials=5", "hydra.sweeper.objectives=[val_acc,macs]", "hydra/sweeper/sampler=random",
                 "hydra.sweeper.sampler.seed=3", "model.conv_channels=choice([2,4],[6,16],[16,32])",
                 "hydra.sweeper.pruner=median"]  # fmt: skip
    result, sweep_dir = search(tmp_path, tiny_data_dir, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(sweep_dir)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 5  # median pruning reports to the study beside it: no trial is refused
    assert len(load(sweep_dir, "lenet-pruning").trials) == 5
    report = (sweep_dir / "report.md").read_text()
    table = report.split("### Pareto front")[1]
    rows = [line.split(" | ") for line in table.splitlines() if re.match(r"\| \d+ \|", line)]
    front = [study.trials[int(r[0].strip("| "))] for r in rows]
    assert [(float(r[2]), int(r[3].replace(",", ""))) for r in rows] == [
        (pytest.approx(t.values[0], abs=5e-4), int(t.values[1])) for t in front]  # fmt: skip
    assert len(front) == len(study.best_trials)
    for best in front:  # no trial is as good in both and better in one
        acc, macs = best.values
        assert not any(t.values[0] >= acc and t.values[1] <= macs and (t.values[0] > acc or t.values[1] < macs)
                       for t in complete)  # fmt: skip
    assert (sweep_dir / "pareto.png").stat().st_size > 10_000 and "![Pareto front](pareto.png)" in report
    assert (sweep_dir / "optuna-history.png").is_file() and "optimisation history" in report


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hydra.sweeper.pruner=medain", "hydra.sweeper.pruner=medain is not one of none, median, percentile"),
        ("hydra.sweeper.objectives=[val_acc,flops]", "hydra.sweeper.objectives=['val_acc', 'flops']: the first is "),
        ("hydra.sweeper.pruner_args={n_warmup: 1}", "hydra.sweeper.pruner_args: n_warmup is not an argument of "
                                                    "hydra.sweeper.pruner=median (MedianPruner: n_startup_trials"),
        ("hydra.sweeper.objectives=[val_acc,macs]", "hydra.sweeper.pruner=hyperband cannot prune a search of several"),
        ("hydra.sweeper.pruner_args=3", "hydra.sweeper.pruner_args=3: the pruner's arguments by name are wanted"),
        ("optimizer.lr=interval(0.1)", "optimizer.lr=interval(0.1) cannot be parsed: TypeError while evaluating "
                                       "'interval(0.1)': missing a required argument: 'end'"),
        ("optimizer.lr=interval(0.5,0.1)", "the search space cannot be parsed: optimizer.lr=interval(0.5,0.1) (an "
                                           "interval (low, high), low < high)"),
        ("data.batch_size=interval(16.5,64.0)", "the search space: data.batch_size=16.5 must be an integer. The "
                                                "search space gives data.batch_size an interval of decimals"),
        ("optimizer=choice(sgd,adma)", "the search space: optimizer=adma is not a choice of the optimizer group "
                                       "(adam, adamw, sgd, sgd_nesterov)."),
        ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0 must be an integer >= 1 (the trials in all)."),
        ("hydra.sweeper.n_jobs=0", "hydra.sweeper.n_jobs=0 must be an integer >= 1 (the trials in flight at once)."),
        ("hydra.sweeper.pruner_args={n_startup_trials: abc}", "hydra.sweeper.pruner_args.n_startup_trials='abc' must "
                                                              "be an integer (MedianPruner's n_startup_trials)."),
        ("hydra.sweeper.pruner=percentile", "hydra.sweeper.pruner=percentile needs percentile (a number): give "
                                            "'hydra.sweeper.pruner_args={percentile: ...}'."),
        ("hydra.sweeper.pruner_args={percentile: 150.0}", None),  # Optuna's own check of the value: its words
        ("hydra.sweeper.storage=not-a-url", "hydra.sweeper.storage=not-a-url is not a database URL"),
        ("hydra/sweeper/sampler=grid", "hydra/sweeper/sampler=grid takes choice(...) or range(...), not an "
                                       "interval: optimizer.lr; give its values."),
    ],
)
def test_a_bad_search_setting_is_one_line_before_any_trial(tmp_path, tiny_data_dir, override, message):
    pruner = {"objectives=[val_acc,macs]": "hyperband", "percentile: 150": "percentile"}
    pruner = next((name for key, name in pruner.items() if key in override), "median")
    space = ["optimizer.lr=tag(log, interval(0.01, 0.5))"] if "sampler=grid" in override else []
    result, sweep_dir = search(tmp_path, tiny_data_dir, f"hydra.sweeper.pruner={pruner}", *space, override)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.strip().splitlines() if line.startswith("cnnlab: error:")]
    assert line.startswith(f"cnnlab: error: {message or ''}"), line
    if message is None:
        assert "hydra.sweeper.pruner=percentile with hydra.sweeper.pruner_args={'percentile': 150.0}: " in line
        assert "150" in line.split(": ", 2)[2]
    assert not list(sweep_dir.glob("*/metrics.json")) and not list(sweep_dir.glob("[0-9]*"))


def test_a_misspelt_key_of_a_sweep_file_or_a_storage_under_a_file_is_one_line(tmp_path, tiny_data_dir):
    conf = tmp_path / "myconf" / "sweep"
    conf.mkdir(parents=True)
    (conf / "typo.yaml").write_text("# @package _global_\ndefaults:\n  - override /hydra/sweeper: optuna\n"
                                    "hydra:\n  sweeper:\n    params:\n      model.kernel_size: choice(3, 5)\n")
    (tmp_path / "a-file").write_text("not a folder")
    for overrides, message in (
        (["--config-dir", str(tmp_path / "myconf"), "-m", "sweep=typo"],
         "the search space: model.kernel_size is not a model setting; did you mean model.kernel_sizes, "
         "model.pool_size?"),
        (["-m", "sweep=optuna", f"hydra.sweeper.storage=sqlite:///{tmp_path}/a-file/study/optuna.db"],
         f"hydra.sweeper.storage=sqlite:///{tmp_path}/a-file/study/optuna.db: cannot create {tmp_path}/a-file/study "
         f"({tmp_path}/a-file is a file); point it at a writable folder."),
    ):  # fmt: skip
        result = run_cli("cnnlab.train", *overrides, *FIXED[:1], *TINY_OVERRIDES, f"paths.data_dir={tiny_data_dir}",
                         f"paths.log_dir={tmp_path / 'logs'}", cwd=tmp_path)  # fmt: skip
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        (line,) = [line for line in result.stderr.splitlines() if line.startswith("cnnlab: error:")]
        assert line == f"cnnlab: error: {message}", line
    assert not list((tmp_path / "logs").rglob("metrics.json"))


def test_a_pruned_record_is_a_finished_job(tmp_path):
    from cnnlab.rundir import RunRecord, job_state, write_record
    from cnnlab.vocab import Status

    write_record(tmp_path, RunRecord(status=Status.PRUNED, epochs=1, val_acc=0.1))
    assert job_state(tmp_path) == "finished"  # a resumed sweep skips it; the study says PRUNED (tests above)


@pytest.mark.slow
def test_under_ddp_rank_0_asks_and_both_ranks_stop_after_the_same_epoch(tmp_path, tiny_data_dir):
    from test_ddp import DDP_OVERRIDES

    overrides = ["hydra.sweeper.n_trials=1", "hydra.sweeper.pruner=threshold",
                 "hydra.sweeper.pruner_args={lower: 1.01}", *DDP_OVERRIDES, "trainer.max_epochs=3"]  # fmt: skip
    result, sweep_dir = search(tmp_path, tiny_data_dir, *overrides)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (trial,) = load(sweep_dir).trials
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [0]  # one report, from rank 0
    (record,) = records(sweep_dir).values()
    assert record["status"] == "pruned" and record["epochs"] == 1
    log = next(sweep_dir.glob("0_*/train.log")).read_text()
    assert "epoch 2/3" not in log and "Traceback" not in log  # neither rank trained a second epoch


@pytest.mark.parametrize("name", ["tpe", "random", "grid", "nsgaii"])
def test_each_sampler_is_optunas_seeded(name, tiny_cfg):
    from cnnlab.sweeper import build_sampler

    cfg = tiny_cfg("sweep=optuna", f"hydra/sweeper/sampler={name}", "hydra.sweeper.sampler.seed=7")
    space, _ = studies.search_space([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()
                                     if "interval" not in v])  # fmt: skip  (a grid takes no interval)
    sampler, grid_size = build_sampler(cfg.hydra.sweeper.sampler, space)
    classes = {"tpe": "TPESampler", "random": "RandomSampler", "grid": "GridSampler", "nsgaii": "NSGAIISampler"}
    assert isinstance(sampler, getattr(optuna.samplers, classes[name]))
    assert grid_size == (3 * 4 * 4 * 4 * 2 if name == "grid" else None)
    study = optuna.create_study(sampler=sampler, directions=["maximize", "minimize"] if name == "nsgaii" else None)
    first = study.ask(space).params
    again, _ = build_sampler(cfg.hydra.sweeper.sampler, space)
    same = optuna.create_study(sampler=again, directions=["maximize", "minimize"] if name == "nsgaii" else None)
    assert same.ask(space).params == first  # seeded: the same first trial


def test_a_sampler_that_is_not_optunas_is_one_line():
    from cnnlab.sweeper import build_sampler

    with pytest.raises(ConfigError, match=r"sampler._target_=random.Random: one of optuna.samplers' classes"):
        build_sampler({"_target_": "random.Random"}, {})
    with pytest.raises(ConfigError, match=r"hydra.sweeper.sampler: n_startup is not an argument of the sampler"):
        build_sampler({"_target_": "optuna.samplers.TPESampler", "n_startup": 3}, {})


def corrupt(study: Path, how: str) -> None:
    """A study file cut short, overwritten, or another program's SQLite database in its place."""
    import sqlite3

    if how == "truncated":
        study.write_bytes(study.read_bytes()[:3000])
    elif how == "overwritten":
        study.write_text("this is not a database\n" * 50)
    else:
        study.unlink()
        with sqlite3.connect(study) as db:
            db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")


@pytest.mark.slow
def test_a_corrupt_study_is_one_line_for_resume_and_the_report_keeps_the_runs(tmp_path, tiny_data_dir):
    result, sweep_dir = search(tmp_path, tiny_data_dir, "hydra.sweeper.n_trials=1")
    assert result.returncode == 0, result.stderr[-3000:]
    study, record = sweep_dir / "optuna.db", (sweep_dir / "multirun.yaml").read_bytes()
    saved = study.read_bytes()
    for how in ("truncated", "overwritten", "foreign"):
        study.write_bytes(saved)
        corrupt(study, how)
        damaged = study.read_bytes()
        resumed = run_cli("cnnlab.train", "-m", "sweep=optuna", *FIXED, *TINY_OVERRIDES, "hydra.sweeper.n_trials=1",
                          f"paths.data_dir={tiny_data_dir}", f"paths.log_dir={tmp_path / 'logs'}",
                          f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)  # fmt: skip  (what cnnlab.resume runs)
        assert resumed.returncode == 2 and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
        (line,) = [line for line in resumed.stderr.splitlines() if line.startswith("cnnlab: error:")]
        assert line.startswith(f"cnnlab: error: {study} is ") and "move it away" in line, line
        assert ("another program" in line) == (how == "foreign"), line
        assert (sweep_dir / "multirun.yaml").read_bytes() == record and study.read_bytes() == damaged  # untouched
    assert main_report([str(sweep_dir)]) == 0  # the runs' tables, and the study part said to be missing
    report = (sweep_dir / "report.md").read_text()
    assert "The study part is missing: " in report and str(study) in report and "| ok |" in report
    assert (sweep_dir / "report.csv").is_file()
