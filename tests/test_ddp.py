"""``trainer=ddp_cpu``: two processes over gloo train one run, write it once, and test on the whole test set."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

import forked_cli
from cnnlab.data import MNISTDataModule, TensorBatches
from cnnlab.module import ClassifierModule
from conftest import TINY_OVERRIDES, TINY_TEST, run_cli, write_idx_set

# trainer=ddp_cpu instead of trainer=debug: two CPU processes, one short epoch.
DDP_OVERRIDES = [o for o in TINY_OVERRIDES if o != "trainer=debug"] + [
    "trainer=ddp_cpu",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
]


def whole_test_set_accuracy(checkpoint: Path, data_dir: Path) -> float:
    """The checkpoint's accuracy on every test image, in this one process."""
    module = ClassifierModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    datamodule = MNISTDataModule(
        data_dir=str(data_dir), val_size=20, download=False, verify_md5=False, system_dir="/nonexistent"
    )
    datamodule.setup()
    images, labels = datamodule.test_set
    assert len(labels) == TINY_TEST
    with torch.no_grad():
        return float((module(images).argmax(dim=-1) == labels).float().mean())


@pytest.mark.slow
def test_ddp_cpu_trains_once_tests_on_the_whole_test_set_and_resumes_in_its_run_dir(tmp_path, tiny_data_dir):
    log_dir = tmp_path / "logs"
    overrides = [*DDP_OVERRIDES, f"paths.data_dir={tiny_data_dir}", f"paths.log_dir={log_dir}"]
    result = run_cli("cnnlab.train", *overrides, cwd=tmp_path, timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stdout + result.stderr  # two ranks took part
    assert "self.log('train/examples_per_sec'" not in result.stderr  # the whole job's, synced: no Lightning warning
    run_dirs = list((log_dir / "lenet-fashion_mnist").iterdir())
    assert len(run_dirs) == 1, run_dirs  # rank 1 ran in rank 0's run dir, not a dir of its own
    run_dir = run_dirs[0]
    assert (run_dir / "train_ddp_process_1.log").is_file() and len(list(log_dir.rglob("metrics.json"))) == 1
    assert "metrics:" in (run_dir / "train.log").read_text()
    assert "metrics:" not in (run_dir / "train_ddp_process_1.log").read_text()  # written by rank 0 only
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["params"] == 61_706
    # Each rank tested its half of the test set; the synced accuracy is that of the whole set.
    assert metrics["test_acc"] == pytest.approx(
        whole_test_set_accuracy(run_dir / "checkpoints" / "last.ckpt", tiny_data_dir)
    )

    resumed = run_cli("cnnlab.train", *overrides, "trainer.max_epochs=2", "ckpt_path=last", cwd=tmp_path, timeout=150)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert list((log_dir / "lenet-fashion_mnist").iterdir()) == [run_dir]  # no second run dir, from rank 0 or 1
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 2
    assert f"ckpt_path=last: resuming {run_dir}," in (run_dir / "train.log").read_text()
    rank_1 = (run_dir / "train_ddp_process_1.log").read_text()  # rank 1 resumed the checkpoint rank 0 resolved
    assert "ckpt_path=last" not in rank_1 and "MEMBER: 2/2" in rank_1


@pytest.mark.slow
def test_ddp_jobs_of_a_sweep_start_their_own_ranks_in_their_own_dirs(tmp_path, tiny_data_dir):
    log_dir = tmp_path / "logs"
    result = run_cli(
        "cnnlab.train",
        "-m",
        "model=lenet,lenet_bn",  # lenet_bn: batch norm under DDP on the CPU (no SyncBatchNorm there)
        *DDP_OVERRIDES,
        f"paths.data_dir={tiny_data_dir}",
        f"paths.log_dir={log_dir}",
        cwd=tmp_path,
        timeout=200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in log_dir.iterdir()] == ["multirun"]  # no stray single-run dirs from the ranks
    sweeps = list((log_dir / "multirun").iterdir())
    assert len(sweeps) == 1, sweeps  # the ranks did not start sweeps of their own
    jobs = sorted(p.parent for p in sweeps[0].glob("*/metrics.json"))
    assert [j.name.split("_")[0] for j in jobs] == ["0", "1"]
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text()).get("status", "ok") == "ok"
        assert (job / "train_ddp_process_1.log").is_file()


@pytest.mark.parametrize("world_size", [2, 3])
def test_evaluation_shards_cover_every_example_once(world_size):
    images, labels = torch.zeros(41, 1, 2, 2), torch.arange(41)
    seen = torch.cat(
        [y for rank in range(world_size) for _, y in TensorBatches(images, labels, 8, rank=rank, world_size=world_size)]
    )
    assert sorted(seen.tolist()) == list(range(41))


@pytest.mark.slow
def test_ctrl_c_under_ddp_stops_every_rank_after_the_same_step_with_one_checkpoint(tmp_path):
    data_dir = tmp_path / "data"
    write_idx_set(data_dir / "FashionMNIST" / "raw", n_train=1000 + 20)  # 2 ranks x 4 a step: 125 steps an epoch
    log_dir = tmp_path / "logs"
    overrides = [*DDP_OVERRIDES, "data.batch_size=8", "trainer.max_epochs=2", f"paths.data_dir={data_dir}",
                 "callbacks.step_checkpoint.every_n_train_steps=10", f"paths.log_dir={log_dir}"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = forked_cli.start("cnnlab.train", overrides, str(tmp_path), env, str(tmp_path / "out.log"), session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(log_dir.glob("*/*/checkpoints/last.ckpt")):  # both ranks are training
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "out.log").read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: every process of the group gets it
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    printed = (tmp_path / "out.log").read_text()
    assert proc.returncode == 130, printed[-3000:]
    stops = re.findall(r"cnnlab: run interrupted by SIGINT at step (\d+) \(epoch 0\); saved (\S+/last\.ckpt);", printed)
    assert len(stops) == 2 and stops[0] == stops[1], printed[-3000:]  # rank 0 and rank 1, after the same step
    (checkpoint,) = log_dir.glob("*/*/checkpoints/last*.ckpt")
    assert torch.load(checkpoint, weights_only=True)["global_step"] == int(stops[0][0])
    assert "Traceback" not in printed


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_after_the_same_step(tmp_path, tiny_data_dir):
    """Rank 1 alone meets a NaN loss: both ranks stop after the same step, each with the divergence message.

    Deciding alone, rank 1 stopped and rank 0 was left in its next all-reduce: over gloo it died in a "Connection
    closed by peer" traceback, over NCCL it would wait for the collective's timeout.
    """
    overrides = [*DDP_OVERRIDES, f"paths.data_dir={tiny_data_dir}", f"paths.log_dir={tmp_path / 'logs'}",
                 "+callbacks.nan_on_one_rank._target_=nan_on_one_rank.NanOnOneRank"]  # fmt: skip
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])  # for rank 1 to import
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    out = tmp_path / "out.log"
    proc = forked_cli.start("cnnlab.train", overrides, str(tmp_path), env, str(out), session=True)
    try:
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"the ranks did not stop together: {out.read_text()[-3000:]}")
    printed = out.read_text()
    assert proc.returncode == 2, printed[-3000:]
    errors = [line for line in printed.splitlines() if line.startswith("cnnlab: error:")]
    assert len(errors) == 2 and all("at step 3 (epoch 0): the run diverged" in e for e in errors), printed[-3000:]
    assert any("the training loss became nan" in e for e in errors)  # rank 1's own
    assert any("the training loss of another process" in e for e in errors)  # rank 0, told by rank 1
