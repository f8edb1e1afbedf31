"""A user's own configs and network: any ``nn.Module`` named by a model config's ``_target_`` (``--config-dir``), the
mistakes it can hold refused in one line before any data is read, and the ``cnnlab`` command's dispatch."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from cnnlab import cli
from cnnlab.config import config_flags, user_config_dirs
from conftest import TINY_OVERRIDES, run_cli

NETS = """
import torch
from torch import nn


class TinyMLP(nn.Module):
    def __init__(self, in_channels=1, image_size=28, hidden=16, num_classes=10):
        super().__init__()
        if hidden % 2:
            raise ValueError("hidden must be even")
        self.flat = nn.Flatten()
        self.hidden = nn.Linear(in_channels * image_size * image_size, hidden)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(self.flat(x))))


class SevenClasses(TinyMLP):
    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "num_classes": 7})


class WrongInput(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(100, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))
"""

SHAPE = "in_channels: ${data.in_channels}\nimage_size: ${data.image_size}\nnum_classes: ${data.num_classes}\n"


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """A folder as a user has it: nets.py and conf/model/*.yaml (a good network and each kind of broken one)."""
    (tmp_path / "nets.py").write_text(NETS)
    models = tmp_path / "conf" / "model"
    models.mkdir(parents=True)
    (models / "mlp.yaml").write_text(f"_target_: nets.TinyMLP\nhidden: 16\n{SHAPE}")
    (models / "missing.yaml").write_text(f"_target_: nets_typo.TinyMLP\n{SHAPE}")
    (models / "odd.yaml").write_text(f"_target_: nets.TinyMLP\nhidden: 15\n{SHAPE}")
    (models / "seven.yaml").write_text("_target_: nets.SevenClasses\nin_channels: ${data.in_channels}\n")
    (models / "wrong_input.yaml").write_text("_target_: nets.WrongInput\n")
    return tmp_path


def test_a_choice_of_your_own_takes_its_own_keys(user_folder: Path, tiny_data_dir: Path) -> None:
    """``model=mlp model.hidden=32``: the key is mlp.yaml's, not LeNet's (it was refused: "not a model setting")."""
    result = run_cli("cnnlab.train", "--config-dir", "conf", "model=mlp", "model.hidden=32", *TINY_OVERRIDES,
                     f"paths.data_dir={tiny_data_dir}", "hydra.run.dir=run", cwd=user_folder)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hidden: 32" in (user_folder / "run" / ".hydra" / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("choice", "said"),
    [
        ("missing", "model._target_=nets_typo.TinyMLP cannot be imported (ModuleNotFoundError: No module named "
                    "'nets_typo'); put its module in the folder you run cnnlab from"),
        ("odd", "model._target_=nets.TinyMLP cannot be built from the model config (ValueError: hidden must be even)"),
        ("seven", "model._target_=nets.SevenClasses returns [2, 7] for a batch of 2 images of [1, 28, 28]; a "
                  "classifier of data.num_classes=10 classes returns [2, 10] logits"),
        ("wrong_input", "model._target_=nets.WrongInput fails on a batch of 2 images of [1, 28, 28]"),
    ],
)  # fmt: skip
def test_a_network_that_cannot_work_is_one_line_before_the_data(choice, said, user_folder: Path) -> None:
    """Refused at the start of the run, before the data is read: the data dir given does not even exist."""
    result = run_cli("cnnlab.train", "--config-dir", "conf", f"model={choice}", *TINY_OVERRIDES,
                     "paths.data_dir=no_data_here", "hydra.run.dir=run", cwd=user_folder)  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"cnnlab: error: {said}")
    assert not (user_folder / "run" / "checkpoints").exists() and not (user_folder / "no_data_here").exists()
    walked = run_cli("cnnlab.inspect", "--config-dir", "conf", f"model={choice}", cwd=user_folder)
    assert walked.returncode == 2 and walked.stderr.strip().splitlines() == [line]


@pytest.mark.parametrize("module", ["cnnlab.train", "cnnlab.inspect", "cnnlab.eval"])
def test_a_config_folder_that_does_not_exist_is_one_line(module, tmp_path: Path) -> None:
    """Hydra printed a warning and a hint about HYDRA_FULL_ERROR, and exited 0."""
    result = run_cli(module, "--config-dir", "myconf", "model=mlp", cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("cnnlab: error: --config-dir myconf does not exist; give the folder that holds your")


def test_the_config_source_flags_go_with_a_command_started_again() -> None:
    argv = ["--config-dir", "a", "-m", "model=x", "--config-name=eval", "-cd", "b", "seed=1"]
    assert config_flags(argv) == ["--config-dir", "a", "--config-name=eval", "-cd", "b"]
    assert user_config_dirs(argv) == [Path("a"), Path("b")]


def test_the_cnnlab_command_dispatches(monkeypatch, capsys, tmp_path: Path) -> None:
    """Each command runs its module's entry point with the rest of the line; overrides alone are a training run (a
    DDP rank reruns the command so); a misspelt command is one line, exit 2."""
    called = []
    monkeypatch.setattr(
        cli.importlib,
        "import_module",
        lambda name: SimpleNamespace(
            cli=lambda: called.append((name, sys.argv[1:])), main=lambda: called.append((name, sys.argv[1:])) or 3
        ),
    )
    monkeypatch.setattr(sys, "argv", ["cnnlab"])
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["eval", "ckpt_path=x"]) == 0
    assert cli.main(["report", "logs"]) == 3
    assert cli.main(["--config-dir", "c", "model=m"]) == 0
    assert called == [("cnnlab.eval", ["ckpt_path=x"]), ("cnnlab.report", ["logs"]),
                      ("cnnlab.train", ["--config-dir", "c", "model=m"])]  # fmt: skip
    assert sys.path[0] == str(tmp_path)  # a network of your own imports from here, as with python -m
    assert cli.main(["trian"]) == 2
    assert capsys.readouterr().err.strip() == "cnnlab: error: trian is not a cnnlab command; did you mean cnnlab train?"


def test_the_readme_example_trains_with_its_experiment(tmp_path: Path, tiny_data_dir: Path) -> None:
    """examples/own_network as the README runs it: the experiment of a network of your own, its kernel and
    activation images named by its own layers (no warning that a layer is missing)."""
    import shutil

    shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "own_network", tmp_path / "own")
    result = run_cli("cnnlab.train", "--config-dir", "conf", "experiment=residual_adamw", *TINY_OVERRIDES,
                     f"paths.data_dir={tiny_data_dir}", "hydra.run.dir=run", cwd=tmp_path / "own")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = (tmp_path / "own" / "run" / "metrics.json").read_text()
    assert '"status": "ok"' in record and '"model._target_": "residual_lenet.ResidualLeNet"' in record
    assert "ActivationImages" not in result.stderr and "KernelImages" not in result.stderr
    events = list((tmp_path / "own" / "run").glob("**/events.out.tfevents.*"))
    assert events, "no TensorBoard events"


def test_ddp_ranks_rerun_the_command_with_its_config_folder(monkeypatch, tmp_path: Path) -> None:
    """Lightning starts the other ranks from ``sys.argv``: a job's overrides alone lost ``--config-dir`` (the ranks
    could not compose ``model=mynet``)."""
    from cnnlab.launch import ddp_ranks_start_as_this_job

    monkeypatch.setattr(sys, "argv", ["cnnlab", "--config-dir", "conf", "-m", "model=mlp,lenet", "trainer=ddp_cpu"])
    with ddp_ranks_start_as_this_job(["model=mlp", "trainer=ddp_cpu"], tmp_path, None, pruned_trial=False):
        assert sys.argv == ["cnnlab", "--config-dir", "conf", "model=mlp", "trainer=ddp_cpu"]
    assert sys.argv[1:3] == ["--config-dir", "conf"]
