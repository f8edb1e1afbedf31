"""What a run prints (header, epoch lines, summary, no noise), --help, the debug modes, failed writes."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest
import torch

from cnnlab.errors import user_error
from cnnlab.train import train
from conftest import TINY_OVERRIDES, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory):
    """One tiny run through ``python -m cnnlab.train`` with stdout a pipe (no terminal), as under nohup or SLURM;
    in a new interpreter, so that what importing prints counts too."""
    from conftest import write_idx_set

    root = tmp_path_factory.mktemp("console")
    write_idx_set(root / "data" / "FashionMNIST" / "raw")
    shown = ("trainer.enable_progress_bar", "trainer.enable_model_summary")  # as a user's run has them
    overrides = [o for o in TINY_OVERRIDES if not o.startswith(shown)]
    result = run_cli("cnnlab.train", *overrides, "trainer.max_epochs=2", "model=lenet_bn", cwd=root, fresh=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result


def test_a_run_starts_with_a_header_and_ends_with_a_summary(cli_run) -> None:
    root, result = cli_run
    lines = result.stdout.splitlines()
    header = r"cnnlab: lenet_bn-fashion_mnist on fashion_mnist, 62,\d{3} parameters, 2 epochs on cpu .*"
    assert re.fullmatch(header, lines[0]), lines[:3]
    assert lines[1].startswith("  overrides: trainer=debug") and "model=lenet_bn" in lines[1]
    run_dir = root / lines[2].split("run dir:", 1)[1].strip()
    assert (run_dir / "metrics.json").is_file()
    assert "_target_: cnnlab.models.LeNet" not in result.stdout, "the whole config was printed"
    assert "_target_: cnnlab.models.LeNet" in (run_dir / "train.log").read_text(), "the config is not in the log"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary = lines[lines.index(next(line for line in lines if line.startswith("cnnlab: done in"))) :]
    assert f"test acc {metrics['test_acc']:.4f}" in summary[0] and f"val acc {metrics['val_acc']:.4f}" in summary[0]
    assert summary[1].strip().startswith("run dir:") and summary[2].strip() == "tensorboard: tensorboard --logdir logs"


def test_without_a_terminal_each_epoch_gets_a_line(cli_run) -> None:
    _, result = cli_run
    epochs = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]
    assert all("train loss" in line and "val acc" in line and "examples/s" in line for line in epochs)


def test_a_default_run_shows_no_warning_nobody_can_act_on(cli_run) -> None:
    _, result = cli_run
    printed = result.stdout + result.stderr
    for noise in ("jit.trace", "LeafSpec", "srun", "Total FLOPs: 0", "GPU available", "litlogger", "Warning"):
        assert noise not in printed, f"{noise!r} printed:\n{printed[-3000:]}"
    assert re.search(r"Total FLOPs: [1-9]", printed), "the model summary has no FLOPs"
    assert "In sizes" in printed and "Out sizes" in printed


def test_help_names_the_groups_the_entry_points_and_examples(tmp_path: Path) -> None:
    result = run_cli("cnnlab.train", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for words in ("model: lenet,", "debug: default, fdr", "logger:", "python -m cnnlab.eval", "cnnlab.predict",
                  "cnnlab.inspect", "cnnlab.report", "cnnlab.resume", "experiment=fashion_frontier"):  # fmt: skip
        assert words in result.stdout, words
    assert "powered by Hydra" not in result.stdout and "_target_" not in result.stdout


def test_debug_fdr_runs_one_batch_under_the_debug_folder(tmp_path: Path, tiny_data_dir: Path) -> None:
    result = run_cli("cnnlab.train", "debug=fdr", *TINY_OVERRIDES[1:], f"paths.data_dir={tiny_data_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "logs").rglob("metrics.json"))
    assert len(runs) == 1 and runs[0].relative_to(tmp_path / "logs").parts[0] == "debug", runs


@pytest.mark.parametrize("mode", ["default", "limit", "overfit", "profiler"])
def test_each_debug_mode_composes_and_runs(mode: str, tiny_cfg, tmp_path: Path) -> None:
    # No batch norm: the tiny images encode their label in their brightness, which BN would normalise away.
    learner = ("model.activation=relu", "optimizer=adamw", "optimizer.lr=0.01", "trainer.max_epochs=80")
    learns = learner if mode == "overfit" else ()
    cfg = tiny_cfg(f"debug={mode}", "trainer.enable_progress_bar=false", "callbacks.activation_images=null", *learns)
    assert "/debug/" in cfg.hydra.run.dir and "/debug/" in cfg.hydra.sweep.dir
    metrics = train(cfg)
    if mode == "default":
        assert cfg.trainer.detect_anomaly and cfg.hydra.job_logging.root.level == "DEBUG" and metrics["epochs"] == 1
    if mode == "limit":
        assert metrics["epochs"] == 2
    if mode == "overfit":
        assert metrics["train_loss"] < 0.5, metrics  # falling towards 0 on 3 batches (ln 10 = 2.3 at the start)
    if mode == "profiler":
        assert list((tmp_path / "run").glob("*profile*.txt")), list((tmp_path / "run").iterdir())


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_earlier_checkpoint_stays(
    tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cnnlab.guards

    saves = {"n": 0}
    real_save = torch.save

    def filling_disk(obj, f, *args, **kwargs):  # the first checkpoint fits, then the disk is full
        saves["n"] += 1
        if saves["n"] > 1:
            f.write(b"x" * 100)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 16384 vs 16336")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(cnnlab.guards.torch, "save", filling_disk)
    monkeypatch.setattr(cnnlab.files.shutil, "disk_usage", lambda path: type("U", (), {"free": 4096})())
    with pytest.raises(Exception) as raised:
        train(tiny_cfg("trainer.max_epochs=3"))
    problem = user_error(raised.value)
    assert problem is not None, f"a crash, not a clear message: {raised.value!r}"
    message = str(problem)
    assert "cannot write" in message and "No space left on device" in message and "MiB free" in message, message
    assert len(message.splitlines()) == 1
    checkpoints = tmp_path / "run" / "checkpoints"
    assert not list(checkpoints.glob(".*.tmp")), "a temp file was left behind"
    assert torch.load(next(checkpoints.glob("*.ckpt")), weights_only=True)["state_dict"], "the earlier file is gone"


def test_a_refused_write_of_metrics_names_the_file_and_the_reason(tmp_path: Path, monkeypatch) -> None:
    import cnnlab.files
    from cnnlab.files import write_json_atomically

    def refused(fd: int) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cnnlab.files.os, "fsync", refused)
    with pytest.raises(Exception) as raised:
        write_json_atomically(tmp_path / "metrics.json", {"a": 1})
    message = str(user_error(raised.value))
    assert message.startswith(f"cannot write {tmp_path / 'metrics.json'}: Read-only file system ("), message
    assert "MiB free" in message
    assert not list(tmp_path.iterdir()), "a temp file was left behind"
