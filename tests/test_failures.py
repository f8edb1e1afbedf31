"""Failures during training: a NaN loss stops the run, a hard kill loses at most N steps, Ctrl-C saves and exits."""

from __future__ import annotations

import os
import pickle
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import forked_cli
from cnnlab import guards
from cnnlab.errors import user_error
from cnnlab.guards import AtomicCheckpointIO, TrainingDiverged
from cnnlab.train import train
from conftest import TINY_OVERRIDES, compose_config, write_idx_set

STEPS_PER_EPOCH, EPOCHS = 25, 2  # 200 training images in batches of 8
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny runs: fastest on one thread, and unslowed by a busy machine


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def long_run_overrides(tmp_path: Path, *extra: str) -> list[str]:
    """A tiny run of 2 epochs x 25 steps that a test can interrupt mid-epoch."""
    data_dir = tmp_path / "data"
    write_idx_set(data_dir / "FashionMNIST" / "raw", n_train=200 + 20)
    return [
        *TINY_OVERRIDES,
        "trainer.limit_train_batches=null",
        f"trainer.max_epochs={EPOCHS}",
        "data.batch_size=8",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path / 'logs'}",
        *extra,
    ]


def start_cli(overrides: list[str], cwd: Path) -> forked_cli.ForkedProcess:
    """``python -m cnnlab.train`` in the background; its output goes to files (a full pipe would block it)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **ONE_THREAD}
    return forked_cli.start("cnnlab.train", overrides, str(cwd), env, str(cwd / "stdout.log"), str(cwd / "stderr.log"))


def output(cwd: Path) -> tuple[str, str]:
    """What a run started by ``start_cli`` in ``cwd`` printed: stdout, stderr."""
    return (cwd / "stdout.log").read_text(), (cwd / "stderr.log").read_text()


def wait_for_file(pattern: str, root: Path, proc: forked_cli.ForkedProcess, timeout: float = 120) -> Path:
    """The first file under ``root`` matching ``pattern``, while ``proc`` still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc={proc.returncode}) before {pattern} appeared: {output(root)[1][-3000:]}")
        time.sleep(0.02)
    pytest.fail(f"{pattern} did not appear in {timeout} s")


def resume(overrides: list[str], last: Path, tmp_path: Path) -> dict:
    """Resume in-process with the run's overrides and ``ckpt_path``, as a user would on the command line."""
    return train(compose_config([*overrides, f"ckpt_path={last}"], tmp_path / "resume"))


def test_nan_loss_stops_the_run_naming_the_step_and_the_fix(tiny_cfg, tmp_path):
    with pytest.raises(TrainingDiverged) as raised:
        train(tiny_cfg("model=lenet_relu", "optimizer.lr=1000"))  # ReLU LeNet at lr 1000: NaN at step 4 (seed 42)
    message = str(raised.value)
    assert "the training loss became nan at step 4" in message, message
    assert "lower optimizer.lr (now 1000)" in message and "diverge" in message
    assert user_error(raised.value) is raised.value  # the entry point prints it as one message, exit 2


def test_a_diverged_model_is_never_saved_over_a_good_checkpoint(tiny_cfg, tmp_path):
    """With sparse checks (as on a GPU), a save still checks first: last.ckpt keeps finite weights."""
    cfg = tiny_cfg(
        "model=lenet_relu",
        "optimizer.lr=1000",
        "callbacks.step_checkpoint.every_n_train_steps=1",
        "callbacks.divergence_guard.check_every_n_steps=1000",
    )
    with pytest.raises(TrainingDiverged, match=r"at step \d") as raised:
        train(cfg)
    first_bad_step = int(re.search(r"at step (\d+)", str(raised.value)).group(1))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert 1 <= state["global_step"] < first_bad_step  # saved before the loss went bad, never after
    assert all(torch.isfinite(w).all() for w in state["state_dict"].values())


def test_last_ckpt_is_the_last_epoch_even_when_val_acc_stops_improving(tiny_cfg, tmp_path):
    """Lightning 2.6 writes a monitored checkpoint's ``last`` only when the best improves; cnnlab's is every epoch."""
    train(tiny_cfg("trainer.max_epochs=3", "optimizer.lr=1e-9"))  # learns nothing: val/acc never improves
    checkpoints = tmp_path / "run" / "checkpoints"
    assert torch.load(checkpoints / "best-epoch00.ckpt", weights_only=True)["global_step"] == 5
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 3 * 5)


@pytest.mark.slow
def test_a_run_killed_hard_resumes_from_last_ckpt_and_finishes_all_epochs(tmp_path):
    # a checkpoint every step: the kill very likely lands during a save, which must not corrupt last.ckpt
    overrides = long_run_overrides(tmp_path, "callbacks.step_checkpoint.every_n_train_steps=1")
    proc = start_cli(overrides, tmp_path)
    try:
        last = wait_for_file("logs/*/*/checkpoints/last.ckpt", tmp_path, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"
    killed_at = torch.load(last, weights_only=True)["global_step"]  # loads: never a half-written file
    assert killed_at < STEPS_PER_EPOCH * EPOCHS

    metrics = resume(overrides, last, tmp_path)

    run_dir = last.parent.parent
    assert metrics["epochs"] == EPOCHS
    assert torch.load(last, weights_only=True)["global_step"] == STEPS_PER_EPOCH * EPOCHS
    assert (run_dir / "metrics.json").is_file() and not (tmp_path / "resume" / "run").exists()
    assert not list(last.parent.glob(".*.tmp")), "a temp file of the killed save was left behind"
    assert [p.name for p in last.parent.glob("last*.ckpt")] == ["last.ckpt"]  # no last-v1.ckpt beside it
    # one TensorBoard run: the resumed steps continue the killed run's curve in the same dir
    assert [p.parent for p in (tmp_path / "logs").rglob("events.out.tfevents.*")] == [run_dir] * len(
        list(run_dir.glob("events.out.tfevents.*"))
    )
    steps = [e.step for e in EventAccumulator(str(run_dir)).Reload().Scalars("train/loss_step")]
    assert min(steps) <= 1 and max(steps) >= STEPS_PER_EPOCH * EPOCHS - 2, steps


@pytest.fixture(scope="module")
def interrupted_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[signal.Signals, dict]:
    """One CLI run per signal, started together, each signalled as soon as its step-5 checkpoint is written."""
    runs = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        root = tmp_path_factory.mktemp(sig.name)
        overrides = long_run_overrides(
            root,
            "callbacks.step_checkpoint.every_n_train_steps=5",
            "callbacks.step_checkpoint.filename=null",  # Lightning's own names (epoch=0-step=5.ckpt), not last.ckpt:
            "callbacks.step_checkpoint.save_top_k=-1",  # last.ckpt can only come from the interruption
        )
        runs[sig] = {"root": root, "overrides": overrides, "proc": start_cli(overrides, root)}
    try:
        waiting, deadline = set(runs), time.monotonic() + 120
        while waiting and time.monotonic() < deadline:
            for sig in list(waiting):
                run = runs[sig]
                if list(run["root"].glob("logs/*/*/checkpoints/epoch=0-step=5.ckpt")):
                    run["proc"].send_signal(sig)
                    waiting.discard(sig)
                elif run["proc"].poll() is not None:
                    waiting.discard(sig)  # ended on its own: the test below reports it
            time.sleep(0.02)
        for run in runs.values():
            run["proc"].wait(timeout=120)
            run["out"], run["err"] = output(run["root"])
    finally:
        for run in runs.values():
            if run["proc"].poll() is None:
                run["proc"].kill()
                run["proc"].wait()
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_exits_cleanly(sig, interrupted_runs, tmp_path):
    run = interrupted_runs[sig]
    out, err = run["out"], run["err"]
    assert run["proc"].returncode == 128 + sig, err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    said = re.search(rf"cnnlab: run interrupted by {sig.name} at step (\d+) \(epoch 0\); saved (\S+/last\.ckpt);", err)
    assert said, err[-3000:]
    step, last = int(said[1]), Path(said[2])
    assert torch.load(last, weights_only=True)["global_step"] == step and 5 <= step < STEPS_PER_EPOCH
    assert not list(last.parent.glob("best-*.ckpt")), "an epoch ended: the test did not interrupt mid-epoch"

    metrics = resume(run["overrides"], last, tmp_path)
    assert metrics["epochs"] == EPOCHS
    assert torch.load(last, weights_only=True)["global_step"] == STEPS_PER_EPOCH * EPOCHS
    assert [p.name for p in last.parent.glob("last*.ckpt")] == ["last.ckpt"]


def test_a_save_killed_midway_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(1000)}, path)

    def dies_midway(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # a signal arriving mid-write

    monkeypatch.setattr(guards.torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(1000)}, path)
    assert io.load_checkpoint(path)["global_step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]

    monkeypatch.undo()
    (path.parent / ".last.ckpt.x1y2.tmp").write_bytes(b"left by a SIGKILL")
    io.save_checkpoint({"global_step": 3}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert io.load_checkpoint(path)["global_step"] == 3


class WritesAFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoints_load_as_weights_only(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": WritesAFile(tmp_path / "pwned")}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
