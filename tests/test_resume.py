"""Finishing what was stopped: a killed sweep re-run in its dir (or through ``cnnlab.resume``) skips finished jobs,
resumes the interrupted one from its checkpoint and runs the rest; ``ckpt_path=last``; the sweep's record."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
import yaml

import forked_cli
from cnnlab import plan, resume, rundir
from cnnlab.errors import ConfigError
from conftest import TINY_OVERRIDES, run_cli
from test_failures import EPOCHS, long_run_overrides

# Four jobs of 2 epochs x 25 steps (test_failures' long run), a step checkpoint every 5 steps: long enough to be
# caught mid-training. The end-of-training TensorBoard images have tests of their own; here they only take time.
# One job at a time (joblib runs n_jobs=1 in its own process): each worker process would spend seconds importing.
SWEEP = ["optimizer.lr=0.1,0.2,0.3,0.4", "hydra/launcher=joblib", "hydra.launcher.n_jobs=1"]
IMAGE_CALLBACKS = ("activation_images", "kernel_images", "confusion_matrix", "misclassified_images", "model_graph")


def sweep_overrides(tmp_path: Path) -> list[str]:
    no_images = [f"callbacks.{name}=null" for name in IMAGE_CALLBACKS]
    return [*SWEEP, *long_run_overrides(tmp_path, "callbacks.step_checkpoint.every_n_train_steps=5", *no_images)]


def kill_sweep_mid_job(overrides: list[str], tmp_path: Path) -> Path:
    """Start the sweep in a process group of its own; SIGKILL the group once 2 jobs finished and one is training."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = forked_cli.start(
        "cnnlab.train", ["-m", *overrides], str(tmp_path), env, str(tmp_path / "first.log"), session=True
    )
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            sweeps = list((tmp_path / "logs" / "multirun").glob("*"))
            jobs = [p for p in sweeps[0].iterdir() if p.is_dir()] if sweeps else []
            finished = [j for j in jobs if (j / "metrics.json").is_file()]
            training = [j for j in jobs if (j / "checkpoints" / "last.ckpt").is_file() and j not in finished]
            if len(finished) == 2 and training:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return sweeps[0]
            if proc.poll() is not None:
                printed = (tmp_path / "first.log").read_text()[-3000:]
                pytest.fail(f"the sweep ended before it could be killed: {printed}")
            time.sleep(0.01)
        pytest.fail("the sweep did not reach 2 finished jobs and one training in time")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def job_files(sweep_dir: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in sweep_dir.glob("*/metrics.json")}


@pytest.mark.slow
def test_a_killed_sweep_is_finished_by_one_command(tmp_path):
    """The same command finishes the killed sweep; ``cnnlab.resume`` then finds every job done and changes nothing.

    (``cnnlab.resume`` continuing an interrupted job: the Optuna test below.)
    """
    overrides = sweep_overrides(tmp_path)
    sweep_dir = kill_sweep_mid_job(overrides, tmp_path)
    before = job_files(sweep_dir)
    interrupted = [p.name for p in sweep_dir.iterdir() if rundir.job_state(p) == "interrupted"]
    assert len(before) == 2 and interrupted

    # The same command twice at once: one drives the sweep dir, the other is refused before it runs anything.
    env, command = {**os.environ, "PYTHONUNBUFFERED": "1"}, ["-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    outs = [tmp_path / f"resume{i}.log" for i in (1, 2)]
    procs = [forked_cli.start("cnnlab.train", command, str(tmp_path), env, str(out)) for out in outs]
    codes = [proc.wait(timeout=300) for proc in procs]
    printed = [out.read_text() for out in outs]
    assert sorted(codes) == [0, 2], printed
    output, refused = (printed[0], printed[1]) if codes[0] == 0 else (printed[1], printed[0])
    (error,) = [line for line in refused.splitlines() if line.startswith("cnnlab: error:")]
    assert f"{sweep_dir} is being swept by process " in error and "wait for it to end" in error, refused
    assert "Traceback" not in refused
    for job in sweep_dir.iterdir():  # every job trained once: the processes that wrote its TensorBoard events
        if job.is_dir() and job.name not in before:
            writers = {p.name.split(".")[-2] for p in job.glob("events.out.tfevents.*")}  # ...<host>.<pid>.<n>
            assert len(writers) == (2 if job.name in interrupted else 1), sorted(p.name for p in job.iterdir())
    after = job_files(sweep_dir)
    assert {name: after[name] for name in before} == before  # the finished jobs' files: byte-identical
    for name in before:
        assert f"job {name} finished before" in output
    for name in interrupted:
        log = (sweep_dir / name / "train.log").read_text()
        assert f"job {name} was interrupted: resuming from {sweep_dir / name / 'checkpoints' / 'last.ckpt'}" in log
        assert "Restoring states from the checkpoint path" in log or "Restored all states" in output + log
    metrics = {name: json.loads(data) for name, data in job_files(sweep_dir).items()}
    assert len(metrics) == 4 and all(m["test_acc"] is not None and m["epochs"] == EPOCHS for m in metrics.values())
    with open(sweep_dir / "report.csv") as f:
        assert len(list(csv.DictReader(f))) == 4

    finished = job_files(sweep_dir)
    again = run_cli("cnnlab.resume", str(sweep_dir), "hydra.launcher.jobs_per_gpu=2", cwd=tmp_path.parent)
    assert again.returncode == 0, again.stderr[-3000:]
    assert job_files(sweep_dir) == finished
    assert all(f"job {name} finished before" in again.stdout + again.stderr for name in finished)
    record = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())
    assert "hydra.launcher.jobs_per_gpu=2" in record["hydra"]["overrides"]["hydra"]  # the extra override applied


def test_a_resume_with_other_overrides_is_refused_in_one_line(tmp_path, tiny_data_dir):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    task = ["optimizer.lr=0.1,0.9", *TINY_OVERRIDES, "paths.data_dir=/a"]
    (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task, "hydra": []}}}))
    result = run_cli(
        "cnnlab.train",
        "-m",
        "optimizer.lr=0.1,0.5",
        *TINY_OVERRIDES,
        f"paths.data_dir={tiny_data_dir}",  # where the data is may change; what runs may not
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("cnnlab: error:")]
    assert len(error) == 1 and "optimizer.lr=0.1,0.5 (not in the sweep); optimizer.lr=0.1,0.9 missing" in error[0]
    assert not list(sweep_dir.glob("0_*"))  # nothing ran


def test_differences_name_what_changed():
    assert resume.differences(["a=1,2", "paths.data_dir=/x"], ["a=1,2", "paths.data_dir=/y"]) == ""
    assert resume.differences(["a=1,2", "b=3"], ["b=3", "a=1,2"]).startswith("the same overrides in another order")
    assert resume.differences(["a=1,2"], ["a=1,2", "b=3"]) == "b=3 (not in the sweep)"
    assert resume.differences(["sweep=chapter6"], ["sweep=lr_epochs"]) == (
        "sweep=lr_epochs (not in the sweep); sweep=chapter6 missing"
    )


def test_resume_command_replays_the_sweep_with_extra_overrides_last(tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    record = {
        "hydra": {
            "overrides": {
                "task": ["sweep=chapter6", "seed=1,2"],
                "hydra": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.mode=MULTIRUN"],
            },
            "runtime": {"cwd": str(tmp_path)},
        }
    }
    (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump(record))
    command, cwd = resume.resume_command(sweep_dir, ["hydra.launcher.n_jobs=1"])
    assert command == [
        "-m",
        "sweep=chapter6",
        "seed=1,2",
        "hydra/launcher=joblib",
        f"hydra.sweep.dir={sweep_dir.resolve()}",
        "hydra.launcher.n_jobs=1",
    ]
    assert cwd == tmp_path
    with pytest.raises(ConfigError, match="not a sweep dir"):
        resume.resume_command(tmp_path, [])


def test_resume_cli_refuses_a_folder_that_is_no_sweep(tmp_path):
    result = run_cli("cnnlab.resume", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("cnnlab: error:") and "multirun.yaml" in result.stderr
    (tmp_path / "multirun.yaml").write_text("hydra: {overrides: {task: [a=1")  # cut short
    result = run_cli("cnnlab.resume", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and "cannot be read as a sweep record" in result.stderr
    assert "Traceback" not in result.stderr


def test_job_states(tmp_path):
    job = tmp_path / "0_x"
    assert rundir.job_state(job) == "new"
    (job / "checkpoints").mkdir(parents=True)
    (job / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert rundir.job_state(job) == "interrupted"
    (job / "metrics.json").write_text('{"test_acc": 0.5')  # cut short by a kill
    assert rundir.job_state(job) == "interrupted"
    (job / "metrics.json").write_text(json.dumps({"status": "failed", "test_acc": None}))
    assert rundir.job_state(job) == "failed"
    (job / "metrics.json").write_text(json.dumps({"status": "interrupted", "epochs": 1}))  # Ctrl-C, saved
    assert rundir.job_state(job) == "interrupted"
    (job / "metrics.json").write_text(json.dumps({"test_acc": 0.5}))  # a record from before status existed
    assert rundir.job_state(job) == "finished"


def test_a_failed_attempt_is_set_aside_not_resumed(tmp_path):
    job = tmp_path / "1_x"
    (job / "checkpoints").mkdir(parents=True)
    (job / ".hydra").mkdir()
    for name in ("checkpoints/last.ckpt", "metrics.json", "events.out.tfevents.1", "train.log"):
        (job / name).write_text(name)
    kept = rundir.set_aside_failed_attempt(job)
    assert kept.name == "failed-attempt-1"
    assert sorted(p.name for p in job.iterdir()) == [".hydra", "failed-attempt-1", "train.log"]
    assert (kept / "checkpoints" / "last.ckpt").read_text() == "checkpoints/last.ckpt"
    assert rundir.job_state(job) == "new"


def test_ckpt_path_last_leaves_a_run_still_training_alone(tmp_path):
    runs = tmp_path / "lenet-fashion_mnist"
    for name in ("2026-01-01_10-00-00_000001", "2026-01-02_09-00-00_000001"):
        (runs / name / "checkpoints").mkdir(parents=True)
        (runs / name / "checkpoints" / "last.ckpt").write_bytes(b"x")
    training = rundir.hold(runs / "2026-01-02_09-00-00_000001", "driven")  # the newest run: its process is alive
    try:
        picked = plan.newest_last_checkpoint(tmp_path, "lenet-fashion_mnist")
        assert picked == runs / "2026-01-01_10-00-00_000001" / "checkpoints" / "last.ckpt"
        older = rundir.hold(runs / "2026-01-01_10-00-00_000001", "driven")
        with pytest.raises(ConfigError, match="2 still running"):
            plan.newest_last_checkpoint(tmp_path, "lenet-fashion_mnist")
        older.close()
    finally:
        training.close()
    assert plan.newest_last_checkpoint(tmp_path, "lenet-fashion_mnist").parent.parent.name.startswith("2026-01-02")


def test_ckpt_path_last_picks_the_newest_run_of_the_same_name(tmp_path):
    runs = tmp_path / "lenet-fashion_mnist"
    for name in ("2026-01-01_10-00-00_000001", "2026-01-02_09-00-00_000001", "2026-01-03_09-00-00_000001"):
        (runs / name).mkdir(parents=True)
    for name in ("2026-01-01_10-00-00_000001", "2026-01-02_09-00-00_000001"):
        (runs / name / "checkpoints").mkdir()
        (runs / name / "checkpoints" / "last.ckpt").write_bytes(b"x")
    picked = plan.newest_last_checkpoint(tmp_path, "lenet-fashion_mnist")  # the newest run has no checkpoint
    assert picked == runs / "2026-01-02_09-00-00_000001" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="ckpt_path=last: no run of lenet_k3-fashion_mnist"):
        plan.newest_last_checkpoint(tmp_path, "lenet_k3-fashion_mnist")


@pytest.mark.slow
def test_a_killed_optuna_search_continues_its_study(tmp_path):
    overrides = [
        "sweep=optuna",
        "hydra.sweeper.n_trials=4",
        "optimizer=adam",
        "model.conv_channels=[6,16]",  # fixed here: the search keeps optimizer.lr, model.activation, model.pool
        *[o for o in sweep_overrides(tmp_path) if o not in SWEEP],
    ]
    sweep_dir = kill_sweep_mid_job(overrides, tmp_path)
    before = job_files(sweep_dir)
    (interrupted,) = [p.name for p in sweep_dir.iterdir() if rundir.job_state(p) == "interrupted"]
    assert interrupted.startswith("2_")

    result = run_cli("cnnlab.resume", str(sweep_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    study = optuna.load_study(study_name="lenet", storage=f"sqlite:///{sweep_dir}/optuna.db")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4  # 4 trials, not 6
    assert "trial 2 was running when the sweep stopped: running it again" in result.stdout + result.stderr
    assert f"job {interrupted} was interrupted: resuming from" in (sweep_dir / interrupted / "train.log").read_text()
    after = job_files(sweep_dir)
    assert len(after) == 4 and {k: after[k] for k in before} == before
    assert sorted(int(name.split("_")[0]) for name in after) == [0, 1, 2, 3]  # one job dir per trial number
    with open(sweep_dir / "report.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(t.value for t in study.trials))


GRID = """# @package _global_
hydra:
  sweeper:
    params:
      optimizer.lr: {rates}
"""


@pytest.mark.slow
def test_a_sweep_resumed_after_an_edit_is_refused_in_one_line_naming_what_changed(tmp_path, tiny_data_dir):
    """The sweep file's grid, the sweeper, and a config file under finished jobs: each edit between a sweep and its
    re-run is named in one line, exit 2, and nothing runs (an inserted value would renumber the jobs: job 1 would
    be lr 0.5 in a new dir, and the report would count both)."""
    conf = tmp_path / "myconf"
    (conf / "sweep").mkdir(parents=True)
    (conf / "experiment").mkdir()
    (conf / "sweep" / "grid.yaml").write_text(GRID.format(rates="0.1,0.9"))
    (conf / "experiment" / "mine.yaml").write_text("# @package _global_\nmodel:\n  pool: avg\n")
    sweep_dir = tmp_path / "sweep"
    command = ["-m", "--config-dir", str(conf), "sweep=grid", "experiment=mine", *TINY_OVERRIDES,
               "callbacks.model_graph=null", f"paths.data_dir={tiny_data_dir}", f"paths.log_dir={tmp_path / 'logs'}",
               f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    first = run_cli("cnnlab.train", *command, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    finished = job_files(sweep_dir)
    assert len(finished) == 2

    def refused(*extra: str) -> str:
        result = run_cli("cnnlab.train", *command, *extra, cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-3000:]
        (line,) = [line for line in result.stderr.splitlines() if line.startswith("cnnlab: error:")]
        assert "Traceback" not in result.stderr and job_files(sweep_dir) == finished  # nothing ran, nothing moved
        assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == sorted(finished)
        return line

    (conf / "sweep" / "grid.yaml").write_text(GRID.format(rates="0.1,0.5,0.9"))
    line = refused()
    assert "holds a sweep with another sweeper: hydra.sweeper.params.optimizer.lr: 0.1,0.9 -> 0.1,0.5,0.9" in line
    (conf / "sweep" / "grid.yaml").write_text(GRID.format(rates="0.1,0.9"))
    line = refused("hydra/sweeper=optuna")  # a grid resumed as a search
    assert "another sweeper: hydra.sweeper._target_: " in line and "OptunaSweeper" in line
    (conf / "experiment" / "mine.yaml").write_text("# @package _global_\nmodel:\n  pool: max\n")
    line = refused()
    changed = "jobs whose configs have changed since they ran: job 0_optimizer.lr=0.1 composes model.pool avg -> max"
    assert changed in line
    assert "(and 1 more jobs)" in line


@pytest.mark.slow
def test_ctrl_c_stops_a_search_on_the_basic_launcher_and_resume_finishes_it(tmp_path):
    """The basic launcher runs each trial in the main thread: Ctrl-C reaches it, it saves last.ckpt after its step
    and the search exits 130; ``cnnlab.resume`` then resumes that trial and runs the rest, none twice."""
    overrides = ["sweep=optuna", "hydra.sweeper.n_trials=2", "optimizer=adam", "model.conv_channels=[6,16]",
                 *[o for o in sweep_overrides(tmp_path) if o not in SWEEP]]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = forked_cli.start("cnnlab.train", ["-m", *overrides], str(tmp_path), env, str(tmp_path / "first.log"))
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:  # trial 1 training: its step checkpoint written
            sweeps = list((tmp_path / "logs" / "multirun").glob("*"))
            if sweeps and list(sweeps[0].glob("1_*/checkpoints/last.ckpt")) and proc.poll() is None:
                break
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        stopped_at = time.monotonic()
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    printed = (tmp_path / "first.log").read_text()
    assert code == 130, printed[-3000:]
    assert time.monotonic() - stopped_at < 30  # within the epoch, not at the end of the trial
    sweep_dir = sweeps[0]
    (trial_1,) = sweep_dir.glob("1_*")
    assert json.loads((trial_1 / "metrics.json").read_text())["status"] == "interrupted", printed[-3000:]
    assert (trial_1 / "checkpoints" / "last.ckpt").is_file() and "saved" in printed
    before = job_files(sweep_dir)

    result = run_cli("cnnlab.resume", str(sweep_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="lenet", storage=f"sqlite:///{sweep_dir}/optuna.db")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2  # 2 trials: none run twice
    after = job_files(sweep_dir)
    assert sorted(int(name.split("_")[0]) for name in after) == [0, 1]
    assert after[next(n for n in before if n.startswith("0_"))] == before[next(n for n in before if n.startswith("0_"))]
    assert f"job {trial_1.name} was interrupted: resuming from" in (trial_1 / "train.log").read_text()


def killed_and_resumed(command: list[str], cwd: Path) -> int:
    """Run the sweep; while a kill stops it (SIGKILL: exit -9), run the same command again in its dir (what
    ``cnnlab.resume`` runs, forked here: no new interpreter each time). How many kills."""
    env, kills = {**os.environ, "PYTHONUNBUFFERED": "1"}, 0
    while (code := forked_cli.start("cnnlab.train", command, str(cwd), env, str(cwd / "run.log")).wait(300)) == -9:
        kills += 1
    assert code == 0, (cwd / "run.log").read_text()[-3000:]
    return kills


KILLS = ["step", "validation", "epoch", "test", "record"]
METRICS = ("val_acc", "train_acc", "train_loss", "test_acc", "examples_per_sec")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["grid", "search"])
def test_a_job_killed_at_any_point_resumes_with_every_metric_it_had(kind, tmp_path):
    """SIGKILL (a deterministic hook in the job: tests/kill_at.py) between steps, during validation, between
    epochs, during the test and while writing the record: each time the sweep's command run again in its dir (what
    ``cnnlab.resume`` runs) goes on, and every record ends as an uninterrupted sweep's does: the same status and
    epochs, every metric it has set. The search, a grid sampler from the command line (Hydra built it without its
    space: every grid search failed) over 2 and 3 epochs, pruned at its second step, has a pruned trial and a
    complete one, none run twice."""
    from test_search import FIXED

    if kind == "grid":
        sweep = ["optimizer.lr=0.05"]  # a sweep of one job: every kill lands in it
    else:
        sweep = ["sweep=optuna", *FIXED, "hydra/sweeper/sampler=grid", "trainer.max_epochs=choice(2,3)",
                 "hydra.sweeper.pruner=threshold",
                 "hydra.sweeper.pruner_args={lower: 1.01, n_warmup_steps: 1}"]  # fmt: skip
    outcomes = []
    kill_at = f"+callbacks.kill_at={{_target_: kill_at.KillAt, points: [{','.join(KILLS)}], markers: {tmp_path}/marks}}"
    for name, extra in (("reference", []), ("killed", [kill_at])):
        folder = tmp_path / name
        folder.mkdir()
        sweep_dir = folder / "sweep"
        command = ["-m", *long_run_overrides(folder, "callbacks.step_checkpoint.every_n_train_steps=5",
                   "trainer.deterministic=true", *[f"callbacks.{n}=null" for n in IMAGE_CALLBACKS]), *sweep, *extra,
                   f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip  (the sweep's own trainer.max_epochs last: it wins)
        kills = killed_and_resumed(command, folder)
        found = sweep_dir.glob("*/metrics.json")
        records = {int(p.parent.name.split("_")[0]): json.loads(p.read_text()) for p in found}
        outcomes.append((kills, records, sweep_dir))
    (_, reference, _), (kills, killed, sweep_dir) = outcomes
    assert kills == len(KILLS) and sorted(p.name for p in (tmp_path / "marks").iterdir()) == sorted(KILLS)
    assert sorted(killed) == sorted(reference) == ([0] if kind == "grid" else [0, 1])
    for number, record in reference.items():
        again = killed[number]
        assert (again["status"], again["epochs"]) == (record["status"], record["epochs"]), number
        assert {k for k in METRICS if again[k] is not None} == {k for k in METRICS if record[k] is not None}, number
    if kind == "search":
        study = optuna.load_study(study_name="lenet", storage=f"sqlite:///{sweep_dir}/optuna.db")
        states = [t.state for t in study.trials]
        assert sorted(s.name for s in states) == ["COMPLETE", "PRUNED"]  # 2 trials: none asked or run twice
