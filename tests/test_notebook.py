"""``cnnlab.api`` (train, sweep, load, inspect) gives the command line's results, and notebooks/chapter6.ipynb runs in a
real Jupyter kernel on tiny data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from cnnlab import api
from cnnlab.errors import CnnlabError
from conftest import TINY_OVERRIDES, run_cli

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "chapter6.ipynb"


@pytest.mark.slow
def test_train_gives_the_command_lines_metrics_bit_for_bit(tmp_path, tiny_data_dir, monkeypatch):
    args = [*TINY_OVERRIDES, f"paths.data_dir={tiny_data_dir}", "trainer.max_epochs=2", "trainer.deterministic=true",
            "seed=3"]  # fmt: skip
    result = run_cli("cnnlab.train", *args, f"paths.log_dir={tmp_path / 'cli'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (cli_record,) = (tmp_path / "cli").rglob("metrics.json")
    monkeypatch.chdir(tmp_path)
    run = api.train(*args, f"paths.log_dir={tmp_path / 'api'}", live=False)
    assert run.run_dir.parent.parent == tmp_path / "api" and run.checkpoints
    cli = json.loads(cli_record.read_text())
    for key in ("test_acc", "val_acc", "train_acc", "train_loss", "params", "epochs"):
        assert run.metrics[key] == cli[key], key
    assert list(run.history.index) == [1, 2] and run.history["train_loss"].iloc[-1] == pytest.approx(cli["train_loss"])
    assert api.load(run.run_dir).metrics == run.metrics


@pytest.mark.slow
def test_a_quiet_run_is_found_from_its_files_and_its_history_keeps_each_value_at_its_epoch(
    tmp_path, tiny_data_dir, monkeypatch
):
    """Nothing printed (Hydra's logging off): the run is still found (the API reads files, not lines). Validation
    every second epoch: its accuracies belong to epochs 2 and 4, not 1 and 2."""
    monkeypatch.chdir(tmp_path)
    run = api.train(*TINY_OVERRIDES, f"paths.data_dir={tiny_data_dir}", "trainer.max_epochs=4",
                    "trainer.check_val_every_n_epoch=2", "hydra/job_logging=disabled", live=False)  # fmt: skip
    history = run.history
    assert list(history.index) == [1, 2, 3, 4] and history["train_loss"].notna().all()
    assert list(history["val_acc"].dropna().index) == [2, 4]
    assert history["val_acc"][4] == pytest.approx(run.metrics["val_acc"])
    from cnnlab.plot import read_curves

    assert list(read_curves(run.run_dir)["val/acc"]) == [2, 4]  # the report's picture: the same epochs


@pytest.mark.slow
def test_sweep_gives_a_row_per_job_and_the_seeds_aggregated(tmp_path, tiny_data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = api.sweep(*TINY_OVERRIDES, f"paths.data_dir={tiny_data_dir}", "model=lenet,lenet_maxpool", "seed=1,2")
    assert len(sweep.runs) == 4 and sorted(sweep.configs["model"]) == ["lenet", "lenet_maxpool"]
    assert list(sweep.configs["n"]) == [2, 2] and sweep.best["model"] == sweep.configs["model"].iloc[0]
    again = api.load(sweep.sweep_dir)
    assert isinstance(again, api.Sweep) and again.runs.equals(sweep.runs)


def test_a_config_mistake_raises_the_command_lines_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CnnlabError) as raised:
        api.train("trainer.max_epoch=2")
    cli = run_cli("cnnlab.train", "trainer.max_epoch=2", cwd=tmp_path)
    assert f"cnnlab: error: {raised.value}" == cli.stderr.strip()
    with pytest.raises(CnnlabError, match="neither a run dir"):
        api.load(tmp_path)


def test_inspect_is_the_layer_walk_as_a_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    walk = api.inspect("model=lenet_improved")
    assert list(walk.index[:3]) == ["conv1", "act1", "pool1"] and walk["params"].sum() == 21_940
    assert walk.loc["conv1", "output shape"] == "[1, 6, 30, 30]" and walk["mult-adds"].sum() > 0


@pytest.mark.slow
def test_the_chapter_notebook_runs_on_tiny_data(tmp_path, tiny_data_dir, monkeypatch):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("CNNLAB_NOTEBOOK_DATA", str(tiny_data_dir))
    where = {"metadata": {"path": str(tmp_path)}}  # the notebook's working directory: its logs/ go there
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources=where).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.get("execution_count") for cell in code), "a cell did not run"
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors, errors
    table = code[-1].outputs[-1]["data"]["text/plain"]  # the chapter's table: a row per model
    assert len(re.findall(r"^\d+\s+lenet", table, flags=re.M)) == 2, table
    assert any("image/png" in out.get("data", {}) for cell in code for out in cell.outputs)  # 6.6.4's activations
    (training,) = [cell for cell in code if cell.source.startswith("lenet = cnnlab.train(")]
    drawn = [out for out in training.outputs if "image/png" in out.get("data", {})]
    assert drawn and drawn[0]["output_type"] == "display_data", training.outputs  # the curves, redrawn in place
    printed = "".join(out.get("text", "") for out in training.outputs if out["output_type"] == "stream")
    assert "epoch 1/" not in printed, printed  # the curves take the epoch lines' place


def test_inspect_takes_a_config_folder_of_your_own(tmp_path, monkeypatch):
    """examples/own_network from the API: its network's walk, from the notebook's working directory."""
    import shutil

    shutil.copytree(NOTEBOOK.parents[1] / "examples" / "own_network", tmp_path / "own")
    monkeypatch.chdir(tmp_path / "own")
    walk = api.inspect("model=residual_lenet", config_dir="conf")
    assert list(walk.index) == ["stem", "block", "pool", "head"] and walk["params"].sum() == 100_514


@pytest.mark.parametrize(("installed", "source"), [(True, ""), (False, "/wheels/cnnlab-0.1.0-py3-none-any.whl"),
                                                  (False, "")])  # fmt: skip
def test_the_notebooks_first_cell_installs_cnnlab_only_where_it_is_missing(installed, source, monkeypatch):
    """A fresh hosted notebook has no cnnlab: the setup cell pip-installs CNNLAB_SOURCE, or says to set it; where
    cnnlab is installed it does nothing."""
    import importlib.util

    from IPython.core.inputtransformer2 import TransformerManager

    (setup,) = [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.source.startswith("# Setup")]
    code = TransformerManager().transform_cell(setup.source)  # %pip as IPython runs it
    magics, namespace = [], {}
    record = lambda self, name, line: magics.append((name, line.format(**namespace)))  # noqa: E731
    namespace["get_ipython"] = type("Shell", (), {"run_line_magic": record})  # IPython expands {name} from the cell
    monkeypatch.setenv("CNNLAB_SOURCE", source)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: find_spec(name) if installed else None)
    if not installed and not source:
        with pytest.raises(RuntimeError, match="cnnlab is not installed here: set CNNLAB_SOURCE"):
            exec(code, namespace)
    else:
        exec(code, namespace)
    assert magics == ([("pip", f"install -q {source}")] if not installed and source else [])
