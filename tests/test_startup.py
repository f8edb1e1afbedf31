"""A command line that answers at once: what ``--help``, ``--cfg job`` and a config mistake import (fresh
interpreters), and the kept schemas that let composing go without torch and Lightning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.signatures import installed_tables, kept_tables, schema_differences

HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "torchmetrics", "torchvision", "matplotlib", "optuna",
         "submitit", "mlflow", "scipy")  # fmt: skip
PROBE = """
import runpy, sys
sys.argv = [{module!r}, *{args!r}]
try:
    runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print("IMPORTED:" + ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def imported_by(module: str, args: list[str], cwd: Path) -> tuple[list[str], str]:
    """The heavy packages in ``sys.modules`` after ``python -m module args`` in a fresh interpreter, and its stderr."""
    code = PROBE.format(module=module, args=args, heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    line = next(line for line in result.stderr.splitlines() if line.startswith("IMPORTED:"))
    return [m for m in line.removeprefix("IMPORTED:").split(",") if m], result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--help"], "Config groups"),
        (["--cfg", "job"], "conv_channels"),
        (["model=lenet_maxpol"], "Could not find 'model/lenet_maxpol'"),  # a typo in a choice: Hydra's own answer
        (["trainer.max_epoch=3"], "cnnlab: error: trainer.max_epoch is not a Lightning Trainer argument"),
        (["optimizer.lr=0"], "cnnlab: error: optimizer.lr=0.0 must be a positive number"),  # found by validation
        (["model.kernel_sizes=[5,40]"], "cnnlab: error: conv2: kernel 40x40 is larger than its input"),
    ],
)
def test_help_and_config_mistakes_import_nothing_heavy(args, says, tmp_path):
    heavy, printed = imported_by("cnnlab.train", args, tmp_path)
    assert says in printed, printed[-2000:]
    assert heavy == [], f"python -m cnnlab.train {' '.join(args)} imported {heavy}"


def test_report_and_resume_need_no_torch_and_inspect_no_lightning(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text('{"test_acc": 0.5, "val_acc": 0.5}')
    heavy, printed = imported_by("cnnlab.report", [str(tmp_path)], tmp_path)
    assert "report.md" in printed and "torch" not in heavy, (heavy, printed[-2000:])
    heavy, printed = imported_by("cnnlab.resume", [str(tmp_path)], tmp_path)
    assert "is not a sweep dir" in printed and heavy == [], (heavy, printed[-2000:])
    heavy, printed = imported_by("cnnlab.inspect", [], tmp_path)
    assert "parameters: 61,706" in printed and "pytorch_lightning" not in heavy, (heavy, printed[-2000:])


def test_the_kept_schemas_match_the_installed_signatures():
    assert kept_tables() == installed_tables(), (
        f"src/cnnlab/schemas_kept.py no longer matches the installed packages ({'; '.join(schema_differences())}): "
        "run python -m cnnlab.signatures --write"
    )
    trainer = {row[0] for row in kept_tables()["trainer"][1]}
    import inspect

    import pytorch_lightning as pl

    assert trainer == set(inspect.signature(pl.Trainer.__init__).parameters) - {"self", "callbacks", "logger"}


def test_a_kept_schema_that_differs_is_named_with_the_fix(monkeypatch):
    kept = {name: (path, list(rows)) for name, (path, rows) in kept_tables().items()}
    kept["trainer"][1].pop()  # as after a Lightning upgrade that added an argument
    kept["sgd"][1].append(("gone_argument", "int", 0))  # and a torch upgrade that removed one
    monkeypatch.setattr("cnnlab.signatures.kept_tables", lambda: kept)
    differences = schema_differences()
    assert len(differences) == 2 and differences[0].startswith("pytorch_lightning.Trainer: new ")
    assert differences[1] == "torch.optim.SGD: gone gone_argument"
