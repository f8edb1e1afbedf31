"""Searches that find a good network sooner: the best so far against wall time (the report's picture and figures),
light trials (switched-off callbacks, back on when asked), the blind trials cheapest first, each guided trial the
cheapest of TPE's proposals, a floor under the pruner, a wall-time budget that stops the search and a resume that
finishes it, and a reused worker's data set kept in memory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnlab import study as studies
from cnnlab.anytime import Anytime, anytime
from cnnlab.sweeper import CheapestOf
from conftest import TINY_OVERRIDES, run_cli, write_idx_set
from test_search import FIXED, load, records, search

optuna.logging.set_verbosity(optuna.logging.WARNING)

PRUNED = ["hydra.sweeper.pruner=successive_halving", "hydra.sweeper.pruner_args={min_resource:1,reduction_factor:3}"]


def test_the_anytime_figures_follow_the_best_so_far():
    curve = Anytime([(5.0, 0.50, "epoch"), (9.0, 0.40, "pruned"), (12.0, 0.80, "epoch"), (20.0, 0.806, "complete"),
                     (30.0, 0.812, "complete"), (31.0, 0.70, "pruned")])  # fmt: skip
    assert curve.best_so_far == [(5.0, 0.50), (12.0, 0.80), (20.0, 0.806), (30.0, 0.812)]
    assert curve.figures() == {"first_s": 5.0, "within_0.01_s": 20.0, "within_0.005_s": 30.0, "best": 0.812,
                               "last_s": 31.0}  # fmt: skip
    assert "the first result after 5 s, within 0.01 of the best after 20 s" in curve.line()
    assert Anytime([]).figures()["best"] is None and Anytime([]).line() == "No trial has a result yet."


@pytest.mark.slow
def test_a_search_reports_its_best_so_far_against_wall_time_from_every_epoch(tmp_path, tiny_data_dir):
    overrides = ["hydra.sweeper.n_trials=3", "trainer.max_epochs=2", "optimizer.lr=choice(0.01,0.1,0.3)", *PRUNED]
    result, sweep_dir = search(tmp_path, tiny_data_dir, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(sweep_dir)
    curve = anytime(study)
    epochs = [r for r in curve.results if r[2] == "epoch"]
    assert len(epochs) == sum(len(t.intermediate_values) for t in study.trials) >= 3  # each epoch's report, timed
    assert all(0 < seconds < 600 for seconds, _, _ in curve.results)  # since the search started
    ends = sorted(t.datetime_complete.timestamp() - study.user_attrs[studies.STARTED_ATTR] for t in study.trials)
    assert sorted(s for s, _, state in curve.results if state != "epoch") == pytest.approx(ends)
    assert curve.best == max(v for t in study.trials for v in t.intermediate_values.values())
    report = (sweep_dir / "report.md").read_text()
    assert curve.line() in report and "![best so far against wall time](anytime.png)" in report
    assert (sweep_dir / "anytime.png").stat().st_size > 10_000


def image_tags(job: Path) -> set[str]:
    return set(EventAccumulator(str(job), size_guidance={"images": 0}).Reload().Tags()["images"])


@pytest.mark.slow
def test_a_trial_goes_without_images_and_step_checkpoints_unless_a_setting_turns_one_back_on(tmp_path, tiny_data_dir):
    overrides = ["hydra.sweeper.n_trials=2", "optimizer.lr=choice(0.05,0.1)", "trainer.max_epochs=1",
                 "trainer.limit_train_batches=3", "callbacks.step_checkpoint.every_n_train_steps=1"]  # fmt: skip
    light, light_dir = search(tmp_path, tiny_data_dir, *overrides, sweep_dir=tmp_path / "light")
    on = ["hydra.sweeper.trial_callbacks.confusion_matrix=true", "hydra.sweeper.trial_callbacks.step_checkpoint=true"]
    back, back_dir = search(tmp_path, tiny_data_dir, *overrides, *on, sweep_dir=tmp_path / "back")
    assert light.returncode == 0 and back.returncode == 0, light.stderr[-3000:] + back.stderr[-3000:]
    light_jobs, back_jobs = sorted(light_dir.glob("[0-9]_*")), sorted(back_dir.glob("[0-9]_*"))
    assert len(light_jobs) == len(back_jobs) == 2
    for job in light_jobs:
        assert image_tags(job) == set() and EventAccumulator(str(job)).Reload().Tags()["graph"] is False
        assert (job / "checkpoints" / "last.ckpt").is_file()  # at the epoch's end: a stopped search resumes from it
        assert "step_checkpoint: null" in (job / "train.log").read_text()
    for job in back_jobs:
        assert image_tags(job) == {"test/confusion_matrix"}, job
        assert "step_checkpoint: null" not in (job / "train.log").read_text()


@pytest.mark.slow
def test_the_blind_trials_run_cheapest_first(tmp_path, tiny_data_dir):
    overrides = ["hydra.sweeper.n_trials=4", "model.conv_channels=choice([2,4],[6,16],[16,32],[32,64])",
                 "data.batch_size=choice(8,16)", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]  # fmt: skip
    result, sweep_dir = search(tmp_path, tiny_data_dir, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the first 4 trials (the sampler's blind ones) run cheapest first" in result.stdout
    done = records(sweep_dir)
    costs = [done[n]["macs"] * load(sweep_dir).trials[n].params["data.batch_size"] for n in sorted(done)]
    assert costs == sorted(costs) and len(set(costs)) > 1, costs
    # the same search with cheap_first=false: the sampler's own order (here not cheapest first)
    plain, plain_dir = search(tmp_path, tiny_data_dir, *overrides, "hydra.sweeper.cheap_first=false",
                              sweep_dir=tmp_path / "plain")  # fmt: skip
    assert plain.returncode == 0 and "cheapest first" not in plain.stdout, plain.stderr[-3000:]
    plain_done = records(plain_dir)
    plain_costs = [plain_done[n]["macs"] * load(plain_dir).trials[n].params["data.batch_size"] for n in range(4)]
    assert plain_costs != sorted(plain_costs), plain_costs


class Proposing(optuna.samplers.TPESampler):
    """Optuna's multivariate TPE, keeping each point it proposes, by trial."""

    def __init__(self) -> None:
        super().__init__(seed=3, n_startup_trials=4, multivariate=True)
        self.proposed: dict[int, list[dict]] = {}

    def sample_relative(self, study, trial, search_space):
        point = super().sample_relative(study, trial, search_space)
        self.proposed.setdefault(trial.number, []).append(point)
        return point


def test_each_guided_trial_is_the_cheapest_of_k_proposals_and_the_blind_ones_are_the_samplers_own():
    space = {"batch": optuna.distributions.CategoricalDistribution([64, 128, 256, 512]),
             "lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)}  # fmt: skip

    def searched(base: optuna.samplers.BaseSampler, k: int) -> list[dict]:  # the batch costs, the rate scores
        study = optuna.create_study(direction="maximize", sampler=CheapestOf(base, k, lambda p: p["batch"], space, 4))
        for _ in range(20):
            trial = study.ask(space)
            study.tell(trial, -abs(math.log10(trial.params["lr"]) + 2))
        return [t.params for t in study.trials]

    own = searched(optuna.samplers.RandomSampler(seed=3), 1)
    cheapest = searched(optuna.samplers.RandomSampler(seed=3), 3)
    assert own[:4] == cheapest[:4]  # the blind trials: the sampler's draws, untouched
    assert sum(p["batch"] for p in cheapest[4:]) < 0.7 * sum(p["batch"] for p in own[4:]), (own, cheapest)
    tpe = Proposing()  # TPE proposes each point whole (multivariate): the trial runs the cheapest, the first on a tie
    for number, params in enumerate(searched(tpe, 3)[4:], start=4):
        points = tpe.proposed[number]
        assert len(points) == 3 and params == min(points, key=lambda p: p["batch"]), (number, points, params)


@pytest.mark.slow
def test_a_search_takes_the_cheapest_of_tpes_proposals_and_prunes_a_trial_below_the_floor(tmp_path, tiny_data_dir):
    overrides = ["hydra.sweeper.n_trials=4", "+hydra.sweeper.sampler.n_startup_trials=2", "trainer.max_epochs=2",
                 "optimizer.lr=tag(log, interval(0.01, 0.3))", "data.batch_size=choice(8,16,32)",
                 "hydra.sweeper.pruner=median", "hydra.sweeper.pruner_args={n_warmup_steps:5}"]  # fmt: skip
    floored, floored_dir = search(tmp_path, tiny_data_dir, *overrides, "hydra.sweeper.prune_below=0.99",
                                  sweep_dir=tmp_path / "floored")  # fmt: skip
    assert floored.returncode == 0, floored.stderr[-3000:]
    assert "each trial TPE draws once 2 have ended: the cheapest of 3 of its proposals" in floored.stdout
    # the median pruner waits 5 epochs: the floor alone prunes every trial after its first
    assert {n: (r["status"], r["epochs"]) for n, r in records(floored_dir).items()} == {n: ("pruned", 1) for n in
                                                                                          range(4)}  # fmt: skip
    assert "val acc" in floored.stdout and "below hydra.sweeper.prune_below=0.99" in floored.stdout
    plain, plain_dir = search(tmp_path, tiny_data_dir, *overrides, "hydra.sweeper.n_trials=1",
                              "hydra.sweeper.prune_below=null", sweep_dir=tmp_path / "plain")  # fmt: skip
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert [(r["status"], r["epochs"]) for r in records(plain_dir).values()] == [("ok", 2)]


@pytest.mark.slow
def test_a_budget_stops_the_search_the_report_says_so_and_resume_finishes_it(tmp_path, tiny_data_dir):
    # the first trial starts at once and takes longer than the budget (a new interpreter's job imports Lightning)
    overrides = ["hydra.sweeper.n_trials=4", "optimizer.lr=choice(0.05,0.1,0.2,0.3)", "trainer.max_epochs=1",
                 "hydra.sweeper.budget_s=3", "hydra.sweeper.cheap_first=false"]  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    result = run_cli("cnnlab.train", "-m", "sweep=optuna", *FIXED, *TINY_OVERRIDES, *overrides,
                     f"paths.data_dir={tiny_data_dir}", f"paths.log_dir={tmp_path / 'logs'}",
                     f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, fresh=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]  # the search did what it was asked
    assert "the budget of 3 s is spent (hydra.sweeper.budget_s): 1 of 4 trials ran" in result.stdout
    assert len(records(sweep_dir)) == 1  # the trial that started within the budget finished
    report = (sweep_dir / "report.md").read_text()
    assert ("The search stopped at its wall-time budget (hydra.sweeper.budget_s=3): 1 of 4 trials ran. "
            f"`python -m cnnlab.resume {sweep_dir} hydra.sweeper.budget_s=null` runs the rest.") in report
    assert "1 trials: 1 complete, 0 pruned, 0 failed." in report
    resumed = run_cli("cnnlab.resume", str(sweep_dir), "hydra.sweeper.budget_s=null", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(records(sweep_dir)) == [0, 1, 2, 3]
    study = load(sweep_dir)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4 and not study.user_attrs[studies.BUDGET_ATTR]
    report = (sweep_dir / "report.md").read_text()
    assert "wall-time budget" not in report and "4 trials: 4 complete, 0 pruned, 0 failed." in report


@pytest.mark.parametrize(
    ("override", "message"),
    [("hydra.sweeper.budget_s=0", "hydra.sweeper.budget_s=0.0: the search's wall time in seconds (> 0), or null"),
     ("hydra.sweeper.trial_callbacks.confusion_matrx=true", "hydra.sweeper.trial_callbacks.confusion_matrx is not a "
                                                            "callback a search's trial goes without (activation_"),
     ("hydra.sweeper.trial_callbacks.model_graph=maybe", "hydra.sweeper.trial_callbacks.model_graph=maybe: true (as "
                                                         "in a single run) or false."),
     ("hydra.sweeper.cheapest_of=0", "hydra.sweeper.cheapest_of=0: how many of TPE's proposals a trial is the "),
     ("hydra.sweeper.prune_below=1.5", "hydra.sweeper.prune_below=1.5: a validation accuracy in [0, 1) below which"),
     ("hydra.sweeper.cheapest_of=abc", "hydra.sweeper.cheapest_of='abc' must be "),
     ("hydra.sweeper.budget_s=soon", "hydra.sweeper.budget_s='soon' must be ")],
)  # fmt: skip
def test_a_bad_search_setting_is_one_line_before_any_trial(tmp_path, tiny_data_dir, override, message):
    result, sweep_dir = search(tmp_path, tiny_data_dir, "hydra.sweeper.n_trials=1", override)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("cnnlab: error:")]
    assert line.startswith(f"cnnlab: error: {message}"), line
    assert not list(sweep_dir.glob("[0-9]*"))


def test_a_reused_process_keeps_the_data_set_until_its_files_change(tmp_path):
    from cnnlab.data import MNISTDataModule

    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    write_idx_set(raw)
    kwargs = {"data_dir": str(tmp_path / "data"), "val_size": 20, "verify_md5": False, "download": False}
    first, second = MNISTDataModule(**kwargs), MNISTDataModule(**kwargs)
    first.setup()
    second.setup()
    assert second.train_set[0] is first.train_set[0] and second.test_set[0] is first.test_set[0]
    other_split = MNISTDataModule(**{**kwargs, "split_seed": 7})
    other_split.setup()
    assert other_split.train_set[0] is not first.train_set[0]
    write_idx_set(raw, n_train=50)  # new files: read again
    third = MNISTDataModule(**kwargs)
    third.setup()
    assert len(third.train_set[1]) == 30 and len(first.train_set[1]) != 30


@pytest.mark.slow
def test_a_record_says_how_long_its_epochs_took(tmp_path, tiny_data_dir):
    result, sweep_dir = search(tmp_path, tiny_data_dir, "hydra.sweeper.n_trials=1", "trainer.max_epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = records(sweep_dir).values()
    assert 0 < record["train_s"] < record["wall_s"]
    assert json.loads(json.dumps(record))["train_s"] == record["train_s"]
