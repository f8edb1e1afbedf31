"""Bad input is refused before training with one clear message: a table of cases, each easy to add to.

Each ``BadInput`` names the overrides (and any damage done to the data or a checkpoint first) and the words the
message must contain. The table runs in-process through ``train()``; a few cases also run through the command
line, to check the exit status and that no traceback is printed.
"""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.errors import ConfigCompositionException

import forked_cli
from cnnlab.config import CONF_DIR
from cnnlab.errors import ConfigError, user_error
from cnnlab.schemas import check_overrides
from cnnlab.train import train
from conftest import TINY_OVERRIDES, compose_config, run_cli, write_idx_set

RAW = "FashionMNIST/raw"
Damage = Callable[[Path, Path, pytest.MonkeyPatch], list[str]]  # (data_dir, tmp_path, monkeypatch) -> overrides


def data_dir_under_a_file(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A data dir whose parent is a regular file: it cannot be created (even by root)."""
    (tmp_path / "a-file").write_text("not a folder")
    return [f"paths.data_dir={tmp_path / 'a-file' / 'data'}"]


def truncate(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    path = data_dir / RAW / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:5000])
    return []


def wrong_magic(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    path = data_dir / RAW / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + path.read_bytes()[4:])  # the images' magic on a labels file
    return []


def no_data(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return [f"paths.data_dir={tmp_path / 'empty'}"]


def no_data_no_network(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No files, and every host name fails to resolve, as on a machine without network."""

    def unreachable(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (no network)")

    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    return no_data(data_dir, tmp_path, monkeypatch)


def lenet_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint as cnnlab writes it, of the default LeNet (average pooling)."""
    from cnnlab.config import as_dict

    cfg = compose_config([*TINY_OVERRIDES], tmp_path / "other")
    path = tmp_path / "old-run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"model": as_dict(cfg.model)}, "epoch": 0}, path)
    return path


def checkpoint_of_lenet(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return [f"ckpt_path={lenet_checkpoint(tmp_path)}"]


def truncated_checkpoint(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    path = lenet_checkpoint(tmp_path)
    path.write_bytes(path.read_bytes()[:300])
    return [f"ckpt_path={path}"]


class WritesAFile:
    """Unpickling this would create ``marker``: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def pickled_code_checkpoint(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": WritesAFile(tmp_path / "pwned")}, path)
    return [f"ckpt_path={path}"]


@dataclass(frozen=True)
class BadInput:
    """One bad input: overrides, damage done first, and the words its message must contain."""

    id: str
    overrides: tuple[str, ...]
    names: tuple[str, ...]
    damage: Damage | None = field(default=None)


CASES = [
    BadInput("zero-lr", ("optimizer.lr=0",), ("optimizer.lr=0", "positive")),
    BadInput("negative-lr", ("optimizer.lr=-0.1",), ("optimizer.lr=-0.1", "positive")),
    BadInput("batch-size-0", ("data.batch_size=0",), ("data.batch_size=0", "at least 1")),
    BadInput("eval-batch-size-0", ("data.eval_batch_size=0",), ("data.eval_batch_size=0", "at least 1")),
    BadInput("max-epochs-0", ("trainer.max_epochs=0",), ("trainer.max_epochs=0", "at least 1")),
    BadInput("kernel-larger-than-input", ("model.kernel_sizes=[5,30]",), ("conv2", "30x30", "14x14")),
    BadInput("pool-window-larger-than-input", ("model.pool_size=30",), ("pool1", "30x30", "28x28")),
    BadInput("unknown-activation", ("model.activation=swish",), ("model.activation='swish'", "relu")),
    BadInput("unknown-pooling", ("model.pool=median",), ("model.pool='median'", "max")),
    BadInput("unknown-init", ("init=zeros",), ("init='zeros'", "xavier_uniform")),
    BadInput("dropout-out-of-range", ("model.dropout=1.5",), ("model.dropout=1.5", "[0, 1)")),
    BadInput("val-split-not-below-train-size", ("data.val_size=120",), ("data.val_size=120", "120 training")),
    BadInput("negative-val-split", ("data.val_size=-1",), ("data.val_size=-1", ">= 0")),
    BadInput("class-count-vs-data-set", ("data.num_classes=5",), ("data.num_classes=5", "10 classes")),
    BadInput("class-count-vs-model", ("model.num_classes=7",), ("model.num_classes=7", "data.num_classes=10")),
    BadInput("data-dir-not-creatable", (), ("data.data_dir", "cannot be created or written"), data_dir_under_a_file),
    BadInput("truncated-data-file", (), ("train-images-idx3-ubyte", "truncated", "Get the data"), truncate),
    BadInput("wrong-idx-magic", (), ("t10k-labels-idx1-ubyte", "magic number", "Get the data"), wrong_magic),
    BadInput("wrong-md5", ("data.verify_md5=true",), ("train-images-idx3-ubyte", "wrong md5", "Delete it")),
    BadInput("no-data-download-off", (), ("No fashion_mnist data", "data.download=true"), no_data),
    BadInput(
        "no-data-no-network",
        ("data.download=true",),
        ("Downloading fashion_mnist", "failed", "apt-get install -y dataset-fashion-mnist"),
        no_data_no_network,
    ),
    BadInput("missing-checkpoint", ("ckpt_path=/nonexistent/last.ckpt",), ("/nonexistent/last.ckpt", "not exist")),
    BadInput("truncated-checkpoint", (), ("cannot be read", "truncated"), truncated_checkpoint),
    BadInput("checkpoint-with-code", (), ("weights_only", "arbitrary code"), pickled_code_checkpoint),
    BadInput("tags-not-a-list", ("tags=ablation",), ("tags='ablation' must be a list", "tags=[ablation]")),
    BadInput("unknown-augmentation", ("data.augment=[crop,rotate]",), ("data.augment", "'rotate'", "flip")),
    BadInput("label-smoothing-out-of-range", ("label_smoothing=1.0",), ("label_smoothing=1.0", "[0, 1)")),
    BadInput("ema-decay-out-of-range", ("ema=1.5",), ("ema=1.5", "(0, 1)")),
    BadInput("warmup-longer-than-run", ("scheduler.warmup_epochs=3",), ("scheduler.warmup_epochs=3", "max_epochs")),
    BadInput("one-cycle-without-an-end", ("scheduler=onecycle", "trainer.max_epochs=-1"),
             ("trainer.max_epochs=-1 sets no end", "scheduler.total_steps=null", "trainer.max_steps")),
    BadInput("warmup-before-one-cycle", ("scheduler=onecycle", "trainer.max_epochs=3", "scheduler.warmup_epochs=1"),
             ("scheduler.warmup_epochs=1", "scheduler=onecycle", "warm up twice", "scheduler.pct_start")),
    BadInput("checkpoint-of-other-model", ("model.pool=max",), ("model.pool=avg", "pool=max"), checkpoint_of_lenet),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_before_training_with_one_clear_message(
    case: BadInput, tiny_cfg, tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = case.damage(tiny_data_dir, tmp_path, monkeypatch) if case.damage else []
    with pytest.raises(Exception) as raised:
        train(tiny_cfg(*case.overrides, *extra))
    problem = user_error(raised.value)
    assert problem is not None, f"a crash, not a clear message: {raised.value!r}"
    message = str(problem)
    missing = [name for name in case.names if name not in message]
    assert not missing, f"{missing} not in: {message}"
    short = message.replace(str(tmp_path), "<tmp>")  # the temp dir's length depends on the test runner
    assert len(short.splitlines()) <= 3 and len(short) < 600, message
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert not list((tmp_path / "run").rglob("last.ckpt")), "training started"
    assert not (tmp_path / "pwned").exists(), "loading the checkpoint ran its code"


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("trainer.max_epoch=5", "not a Lightning Trainer argument; did you mean trainer.max_epochs"),
        ("trainer.max_epochs=abc", "trainer.max_epochs='abc' must be an integer (or null)."),
        ("trainer.limit_train_batches=[1]", "trainer.limit_train_batches=[1] must be an integer or a number"),
        ("trainer.limit_train_batches=0.5", None),  # Any-typed for OmegaConf (int | float): its annotation's check
        ("data.batch_size=abc", "data.batch_size='abc' must be an integer."),
        ("data.normalize=maybe", "data.normalize='maybe' must be true or false."),
        ("data.batch_szie=64", "did you mean data.batch_size"),
        ("model.conv_channels=[a,16]", "model.conv_channels=['a', 16] must be a list of integers."),
        ("model.dropout=high", "model.dropout='high' must be a number."),
        ("model.activation=[relu]", "model.activation=['relu'] must be a string."),
        ("data.batch_size=64,abc", "data.batch_size='abc' must be an integer."),  # a sweep's values, each
        ("optimizer.lr=abc", "optimizer.lr='abc' must be a number."),
        ("optimizer.lrr=0.1", "optimizer.lrr is not an optimizer setting; did you mean optimizer.lr?"),
        ("model.kernel_sizes=[5,abc]", "model.kernel_sizes=[5, 'abc'] must be an integer or a list of integers."),
        ("label_smoothing=high", "label_smoothing='high' must be a number."),
    ],
)
def test_a_wrong_type_or_unknown_key_is_refused_before_composing(override: str, says: str | None) -> None:
    if says is None:
        check_overrides([override])
        return
    with pytest.raises(ConfigError) as raised:
        check_overrides(["-m", override] if "," in override else [override])
    assert says in str(raised.value) and len(str(raised.value).splitlines()) == 1, str(raised.value)


def test_every_trainer_argument_is_a_config_key(tmp_path: Path) -> None:
    cfg = compose_config(["trainer.limit_train_batches=20", "trainer.gradient_clip_val=0.5"], tmp_path)
    assert cfg.trainer.limit_train_batches == 20 and cfg.trainer.gradient_clip_val == 0.5
    assert set(inspect.signature(pl.Trainer.__init__).parameters) - {"self", "callbacks", "logger"} <= set(cfg.trainer)


@pytest.mark.parametrize("group", ["model", "data", "optimizer", "scheduler", "trainer", "logger", "debug"])
def test_an_unknown_choice_is_refused_listing_the_choices(group: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException) as raised:
        compose_config([f"{group}=no_such_{group}"], tmp_path)
    message = str(raised.value)
    assert f"Could not find '{group}/no_such_{group}'" in message
    assert all(choice.stem in message for choice in (CONF_DIR / group).glob("*.yaml")), message


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    """A few bad inputs through ``python -m cnnlab.train``, started together."""
    root = tmp_path_factory.mktemp("cli")
    data_dir = root / "data"
    write_idx_set(data_dir / RAW)
    common = [*TINY_OVERRIDES, f"paths.data_dir={data_dir}", f"paths.log_dir={root / 'logs'}"]
    on_a_gpu = [o for o in common if not o.startswith("trainer")] + ["trainer=gpu"]
    cases = {  # a data error raised deep inside Lightning's fit, Hydra's own error, and the debug flag
        "data": (common + ["data.verify_md5=true"], {}),
        "unknown-model": (common + ["model=no_such_model"], {}),
        "debug": (common + ["optimizer.lr=0"], {"CNNLAB_DEBUG": "1"}),
        "trainer-name": (common + ["trainer.max_epoch=5"], {}),
        "log-root-under-a-file": (common + [f"paths.log_dir={root / 'a-file' / 'logs'}"], {}),
        "sweep-log-root-under-a-file": (["-m", "seed=1,2", *common, f"paths.log_dir={root / 'a-file' / 'logs'}"], {}),
        "kernel-list-with-a-word": (common + ["model.kernel_sizes=[5,five]"], {}),
        **({} if torch.cuda.is_available() else {"gpu-trainer-without-a-gpu": (on_a_gpu, {})}),
    }
    (root / "a-file").write_text("not a folder")
    procs = {
        name: forked_cli.start(
            "cnnlab.train", args, str(root), {**os.environ, "OMP_NUM_THREADS": "1", **env}, *outputs(root, name)
        )
        for name, (args, env) in cases.items()
    }
    results = {}
    try:
        for name, proc in procs.items():
            proc.wait(timeout=240)
            out, err = (Path(path).read_text() for path in outputs(root, name))
            results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def outputs(root: Path, name: str) -> tuple[str, str]:
    return str(root / f"{name}.out"), str(root / f"{name}.err")


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("data", "cnnlab: error: "),
        ("unknown-model", "Available options in 'model'"),
        ("trainer-name", "cnnlab: error: trainer.max_epoch is not a Lightning Trainer argument; did you mean"),
    ],
)
def test_cli_exits_non_zero_with_the_message_and_no_traceback(cli_results, case: str, says: str) -> None:
    result = cli_results[case]
    assert result.returncode != 0
    assert says in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    if case == "unknown-model":
        assert "lenet_maxpool" in result.stderr  # the choices are listed
    elif case == "trainer-name":
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    else:
        assert result.returncode == 2
        message = result.stderr[result.stderr.index("cnnlab: error: ") :].strip()
        assert "train-images-idx3-ubyte has the wrong md5" in message and len(message.splitlines()) <= 3


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("log-root-under-a-file", "a-file is a file); point paths.log_dir at a writable folder."),
        ("sweep-log-root-under-a-file", "a-file is a file); point paths.log_dir at a writable folder."),
        ("kernel-list-with-a-word", "model.kernel_sizes=[5, 'five'] must be an integer or a list of integers."),
        ("gpu-trainer-without-a-gpu", "trainer.accelerator=gpu needs a CUDA GPU, and this machine has none"),
    ],
)
def test_a_user_mistake_is_one_line_naming_the_setting(cli_results, case: str, says: str) -> None:
    if case not in cli_results:
        pytest.skip("this machine has a GPU: trainer=gpu works here")
    result = cli_results[case]
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("cnnlab: error: ")]
    assert len(errors) == 1 and says in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr and "Error in call to target" not in result.stderr


def test_cnnlab_debug_shows_the_traceback(cli_results) -> None:
    result = cli_results["debug"]
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("module", ["cnnlab", "cnnlab.train"])
def test_both_entry_points_check_the_overrides_alike(module, tmp_path):
    result = run_cli(module, "trainer.max_epoch=5", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    expected = "cnnlab: error: trainer.max_epoch is not a Lightning Trainer argument; did you mean trainer.max_epochs"
    assert result.stderr.strip().startswith(expected), result.stderr


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["optimizer.betas=[0.9,0.99]"], "optimizer.betas is not an argument of torch.optim.SGD (optimizer=sgd); "
         "optimizer=adam or optimizer=adamw takes it."),
        (["optimizer=adam", "optimizer.momentum=0.9"], "optimizer.momentum is not an argument of torch.optim.Adam "
         "(optimizer=adam); optimizer=sgd or optimizer=sgd_nesterov takes it."),
        (["scheduler.T_max=5"], "scheduler.T_max is not a setting of scheduler=none; scheduler=cosine takes it."),
        (["scheduler.interval=weekly"], "scheduler.interval='weekly' must be one of step, epoch (or null)."),
        (["optimizer=adam", "optimizer.betas=[0.9,0.99]"], None),
        (["experiment=fashion_fast", "optimizer.betas=[0.9,0.99]"], None),  # the experiment chooses adamw
    ],
)
def test_a_key_of_another_optimizer_or_scheduler_than_the_chosen_one_is_named(overrides, says) -> None:
    if says is None:
        check_overrides(overrides, CONF_DIR)
        return
    with pytest.raises(ConfigError) as raised:
        check_overrides(overrides, CONF_DIR)
    assert str(raised.value) == says
