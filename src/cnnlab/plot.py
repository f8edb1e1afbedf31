"""``report.png``: the picture of a report (``cnnlab.report``): test accuracy per configuration (± std over seeds)
or per run, in the report's order (best validation accuracy first), above the validation accuracy and training
loss per epoch of every run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cnnlab.curves import epoch_curves
from cnnlab.files import atomic_file
from cnnlab.report_table import error_line, fmt_mean_std
from cnnlab.runs import aggregate_seeds, config_key, run_labels
from cnnlab.vocab import Tag


def read_curves(run_dir: Path) -> dict[str, dict[int, float]]:
    """The run's validation accuracy and training loss by epoch (from 1), from its TensorBoard events."""
    return epoch_curves(run_dir, (Tag.VAL_ACC, Tag.TRAIN_LOSS_EPOCH))


Bar = tuple[float | None, float | None, str]  # a bar of the top chart: its length, its error bar, its text


def params_text(params: int | None) -> str:
    """A parameter count for the picture (``61.7k params``)."""
    return f"{params / 1000:,.1f}k params" if params else ""


def run_bars(rows: list[dict[str, Any]]) -> list[Bar]:
    """A bar per run: its test accuracy, and its parameters or why it has no accuracy."""
    bars = []
    for row in rows:
        if row["test_acc"] is None:
            note = f"{row['status']}: {error_line(row['error'], 80)}" if row["error"] else "no metrics.json (killed?)"
        else:
            note = f"{row['test_acc']:.3f}  {params_text(row['params'])}"
        bars.append((row["test_acc"], None, note))
    return bars


def config_bars(configs: list[dict[str, Any]]) -> list[Bar]:
    """A bar per configuration: its mean test accuracy ± std over seeds, ``n=3`` and its parameters."""
    bars = []
    for c in configs:
        if c["n"] == 0:
            note = f"no finished run ({c['failed']} failed or incomplete)"
        else:
            note = f"{fmt_mean_std(c['test_acc_mean'], c['test_acc_std'])}  n={c['n']}  {params_text(c['params'])}"
        bars.append((c["test_acc_mean"], c["test_acc_std"], note))
    return bars


def draw_bars(axis: Any, labels: list[str], bars: list[Bar], colors: list[Any]) -> None:
    """Horizontal bars, best on top, with error bars where given and their text beside them."""
    starts = [value - (err or 0.0) for value, err, _ in bars if value is not None]
    ends = [value + (err or 0.0) for value, err, _ in bars if value is not None]
    low = max(0.0, math.floor((min(starts, default=0.5) - 0.05) * 20) / 20)
    y = list(range(len(bars)))[::-1]
    errors = [math.nan if err is None else err for _, err, _ in bars]  # NaN: no error bar (one seed)
    xerr = errors if any(err is not None for _, err, _ in bars) else None
    axis.barh(y, [value or 0.0 for value, _, _ in bars], xerr=xerr, color=colors, capsize=3)
    for yi, (value, err, note) in zip(y, bars, strict=True):
        if value is None:
            axis.text(low + 0.005, yi, note, va="center", color="crimson", fontsize=9)
        else:
            axis.text(value + (err or 0.0) + 0.002, yi, note, va="center", fontsize=9)
    axis.set_yticks(y, labels, fontsize=9)
    axis.set_xlim(low, min(1.0, max(ends, default=1.0) + 0.1))
    axis.grid(axis="x", alpha=0.3)


def plot_report(
    root: Path, rows: list[dict[str, Any]], path: Path, configs: list[dict[str, Any]] | None = None
) -> None:
    """Test accuracy (a bar per configuration, ± std over seeds, or per run) above the per-run curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    configs = aggregate_seeds(rows) if configs is None else configs
    if any(c["n"] > 1 for c in configs):
        labels, bars = run_labels(configs), config_bars(configs)
        index = {config_key(c): i for i, c in enumerate(configs)}
        group = [index[config_key(row)] for row in rows]  # the runs of a configuration share its colour
        title = f"{len(configs)} configurations ({len(rows)} runs) in {root.name}: mean test accuracy ± std"
        title += ", best mean validation accuracy first"
        xlabel = "mean test accuracy over seeds (bar, ± std), seeds and parameters (text)"
    else:
        labels, bars, group = run_labels(rows), run_bars(rows), list(range(len(rows)))
        title = f"{len(rows)} runs in {root.name}: test accuracy, best validation accuracy first"
        xlabel = "test accuracy (bar), parameters (text)"
    # tab20's dark shades first, then the light ones, so that neighbours in the ranking differ.
    colors = [plt.get_cmap("tab20")((2 * i) % 20 + (2 * i // 20) % 2) for i in range(len(bars))]
    fig = plt.figure(figsize=(13, 4.2 + 0.32 * len(bars)), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[0.9 + 0.3 * len(bars), 3.2])
    top, acc, loss = fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    draw_bars(top, labels, bars, colors)
    top.set(xlabel=xlabel, title=title)

    legend: set[int] = set()  # the bars with an entry in the legend: one each, however many seeds
    for row, g in zip(rows, group, strict=True):
        curves = read_curves(root / row["run"])
        label = "_nolegend_" if g in legend else labels[g]
        for axis, tag in ((acc, Tag.VAL_ACC), (loss, Tag.TRAIN_LOSS_EPOCH)):
            values = curves.get(tag, {})
            if values:
                legend.add(g)
                marker = "." if len(values) < 15 else None
                axis.plot(list(values), list(values.values()), color=colors[g], label=label, marker=marker)
    acc.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy per epoch")
    loss.set(xlabel="epoch", ylabel="training loss", title="training loss per epoch")
    for axis in (acc, loss):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if acc.lines:
        loss.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), ncols=2 if len(legend) > 16 else 1)
    with atomic_file(Path(path)) as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)
