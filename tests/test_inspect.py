"""``python -m cnnlab.inspect``: the seeds' layer walk with parameters and multiply-adds, without data."""

from __future__ import annotations

import re

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from cnnlab.config import CONF_DIR
from cnnlab.inspect import inspect_model, layer_rows
from cnnlab.models import LeNet
from conftest import run_cli
from test_models import LENET_WALK as SEEDS_LENET  # the seeds' walk of LeNet (chapter 6.6)

# Multiply-adds of one example, counted by hand: output elements x inputs per output, for each conv and FC layer.
LENET_MULT_ADDS = 6 * 28 * 28 * (1 * 5 * 5) + 16 * 10 * 10 * (6 * 5 * 5) + 400 * 120 + 120 * 84 + 84 * 10


def test_lenet_walk_is_the_seeds_table_with_params_and_mult_adds():
    rows = layer_rows(LeNet(), (1, 28, 28))
    assert [(r.kind, r.shape) for r in rows] == SEEDS_LENET
    assert sum(r.params for r in rows) == 61_706
    assert [r.params for r in rows if r.params] == [156, 2_416, 48_120, 10_164, 850]
    assert sum(r.mult_adds for r in rows) == LENET_MULT_ADDS == 416_520
    assert rows[0].mult_adds == 117_600 and rows[1].mult_adds == 0  # activations do no multiply-adds


def test_overridden_model_walk_is_exercise_6_6_3():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("inspect", overrides=["model=lenet_improved", "model.activation=tanh"])
    text = inspect_model(cfg)
    shapes = re.findall(r"(\w+)\s+(\w+)\s+(\[[\d, ]+\])", text)
    assert [s for _, kind, s in shapes if kind != "Linear"][:10] == [
        "[1, 6, 30, 30]",
        "[1, 6, 30, 30]",
        "[1, 6, 15, 15]",
        "[1, 10, 13, 13]",
        "[1, 10, 13, 13]",
        "[1, 10, 6, 6]",
        "[1, 16, 4, 4]",
        "[1, 16, 4, 4]",
        "[1, 16, 2, 2]",
        "[1, 64]",
    ]
    assert ("act1", "Tanh", "[1, 6, 30, 30]") in shapes
    assert "model: lenet_improved" not in text  # no Hydra runtime here: the title names the class instead
    GlobalHydra.instance().clear()


def test_cli_prints_the_walk_and_totals_without_data(tmp_path):
    result = run_cli("cnnlab.inspect", "paths.data_dir=/nonexistent", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert out.startswith("model: lenet, input [1, 1, 28, 28]")
    assert re.search(r"conv1\s+Conv2d\s+\[1, 6, 28, 28\]\s+156\s+117,600", out), out
    assert re.search(r"flatten\s+Flatten\s+\[1, 400\]\s+0\s+0", out), out
    assert "parameters: 61,706" in out and "multiply-adds per example: 416,520 (0.42 M)" in out
    assert list(tmp_path.iterdir()) == []  # no run dir, no log file, no data fetched


def test_cli_impossible_spec_is_one_line_naming_layer_and_sizes(tmp_path):
    result = run_cli("cnnlab.inspect", "model.kernel_sizes=[5,15]", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "cnnlab: error: conv2: kernel 15x15 is larger than its input 14x14 (padding 0); use a smaller "
        "model.kernel_sizes, more model.paddings, or fewer conv blocks."
    ]


def test_a_misspelt_setting_is_one_line_in_inspect(tmp_path):
    """inspect checks its overrides as train does (it printed Hydra's schema error and its stack-trace hint)."""
    result = run_cli("cnnlab.inspect", "model.conv_channel=[6,16]", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "cnnlab: error: model.conv_channel is not a model setting; did you mean model.conv_channels, model.in_channels?"
    ]
