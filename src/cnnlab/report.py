"""One table and one picture for many runs: ``python -m cnnlab.report DIR`` (a sweep dir, or the log root).

Reads every run's ``metrics.json`` (and its ``.hydra/`` record of the model and overrides), writes ``report.md``,
``report.csv`` and ``report.png`` into DIR, sorted by test accuracy, and prints the markdown table. A job dir
with a ``.hydra/`` record but no ``metrics.json`` (killed, or still running) is listed as incomplete.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import CnnlabError, user_error

log = logging.getLogger("cnnlab.report")

COLUMNS = [
    "model",
    "overrides",
    "params",
    "test_acc",
    "val_acc",
    "train_acc",
    "train_loss",
    "examples_per_sec",
    "wall_s",
    "epochs",
    "status",
    "error",
    "run",
]
HEADERS = {
    "test_acc": "test acc",
    "val_acc": "val acc",
    "train_acc": "train acc",
    "train_loss": "train loss",
    "examples_per_sec": "examples/s",
    "wall_s": "wall s",
}
OUTPUTS = ("report.md", "report.csv", "report.png")
OVERRIDE_SEP = re.compile(r",(?=[\w.+~@/-]+=)")  # the commas of override_dirname that start a new key=value


def round_floats(text: str) -> str:
    """Long decimals in overrides to 4 significant digits (``lr=0.03855871074880703`` -> ``lr=0.03856``)."""
    return re.sub(r"\d+\.\d{5,}(e-?\d+)?", lambda m: f"{float(m.group()):.4g}", text)


def find_run_dirs(root: Path) -> list[Path]:
    """Every run dir under ``root``: those with a ``metrics.json`` or a Hydra ``.hydra/overrides.yaml``."""
    found = {p.parent for p in root.rglob("metrics.json")} | {
        p.parent.parent for p in root.rglob(".hydra/overrides.yaml")
    }
    return sorted(found)


def read_run(run_dir: Path, root: Path) -> dict[str, Any]:
    """One report row: the run's metrics, its model choice and overrides, and its status."""
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {"status": "incomplete"}
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    model, overrides = "", ""
    if hydra_file.is_file():
        job = OmegaConf.load(hydra_file).hydra
        model = str(job.runtime.choices.get("model", ""))
        overrides = str(job.job.override_dirname)
    row = {key: metrics.get(key) for key in COLUMNS}
    row.update(model=model, overrides=overrides, status=metrics.get("status", "ok"), run=str(run_dir.relative_to(root)))
    return row


def load_runs(root: Path) -> list[dict[str, Any]]:
    """All runs under ``root``, best test accuracy first; failed and incomplete runs last."""
    rows = [read_run(run_dir, root) for run_dir in find_run_dirs(root)]
    return sorted(rows, key=lambda r: (r["test_acc"] is None, -(r["test_acc"] or 0.0), r["run"]))


def run_labels(rows: list[dict[str, Any]]) -> list[str]:
    """Short names for the picture: the model and the overrides that differ between runs (``lr=0.1``)."""
    parsed = [dict(item.split("=", 1) for item in OVERRIDE_SEP.split(r["overrides"]) if "=" in item) for r in rows]
    varying = sorted({k for p in parsed for k in p if len({q.get(k) for q in parsed}) > 1} - {"model"})
    labels = []
    for row, overrides in zip(rows, parsed, strict=True):
        shown = [f"{key.rsplit('.', 1)[-1]}={overrides[key]}" for key in varying if key in overrides]
        labels.append(round_floats(" ".join([row["model"] or row["run"], *shown])))
    return labels


def fmt(value: Any, key: str) -> str:
    """A cell of the markdown table."""
    if value is None:
        return ""
    if key in ("test_acc", "val_acc", "train_acc", "train_loss"):
        return f"{value:.3f}"
    if key == "examples_per_sec":
        return f"{value:,.0f}"
    if key == "wall_s":
        return f"{value:.0f}"
    if key == "params":
        return f"{value:,}"
    text = error_line(value) if key == "error" else round_floats(str(value))
    return text.replace("|", "\\|")


def error_line(error: Any, limit: int = 100) -> str:
    """An error's first line, cut short (the whole error is in report.csv and the job's log)."""
    text = str(error or "").strip()
    first = text.splitlines()[0] if text else ""
    return (first[:limit] + "...") if len(first) > limit else first


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The runs as a markdown table (errors of failed runs in the last column)."""
    keys = [k for k in COLUMNS if k not in ("run", "epochs")]
    lines = [
        "| " + " | ".join(["#", *(HEADERS.get(k, k) for k in keys)]) + " |",
        "| " + " | ".join(["---"] * (len(keys) + 1)) + " |",
    ]
    for i, row in enumerate(rows, 1):
        lines.append("| " + " | ".join([str(i), *(fmt(row[k], k) for k in keys)]) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The runs as CSV, full precision, one row per run."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_curves(run_dir: Path) -> dict[str, list[float]]:
    """The run's per-epoch validation accuracy and training loss, from its TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not any(run_dir.glob("events.out.tfevents.*")):
        return {}
    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # not a line per event file
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    return {tag: [e.value for e in events.Scalars(tag)] for tag in ("val/acc", "train/loss_epoch") if tag in tags}


def plot_report(root: Path, rows: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy per run (bars, with parameter counts) above the validation-accuracy and loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    labels = run_labels(rows)
    # tab20's dark shades first, then the light ones, so that neighbours in the ranking differ.
    colors = [plt.get_cmap("tab20")((2 * i) % 20 + (2 * i // 20) % 2) for i in range(len(rows))]
    fig = plt.figure(figsize=(13, 4.2 + 0.32 * len(rows)), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[0.9 + 0.3 * len(rows), 3.2])
    bars, acc, loss = fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])

    finished = [r["test_acc"] for r in rows if r["test_acc"] is not None]
    low = max(0.0, math.floor((min(finished, default=0.5) - 0.05) * 20) / 20)
    y = range(len(rows))[::-1]  # best run on top
    bars.barh(list(y), [r["test_acc"] or 0.0 for r in rows], color=colors, left=0)
    for yi, row in zip(y, rows, strict=True):
        if row["test_acc"] is None:
            note = f"{row['status']}: {error_line(row['error'], 80)}" if row["error"] else "no metrics.json (killed?)"
            bars.text(low + 0.005, yi, note, va="center", color="crimson", fontsize=9)
        else:
            params = f"{row['params'] / 1000:,.1f}k params" if row["params"] else ""
            bars.text(row["test_acc"] + 0.002, yi, f"{row['test_acc']:.3f}  {params}", va="center", fontsize=9)
    bars.set_yticks(list(y), labels, fontsize=9)
    bars.set_xlim(low, min(1.0, max(finished, default=1.0) + 0.1))
    bars.set_xlabel("test accuracy (bar), parameters (text)")
    bars.set_title(f"{len(rows)} runs in {root.name}: test accuracy, best first")
    bars.grid(axis="x", alpha=0.3)

    for row, label, color in zip(rows, labels, colors, strict=True):
        curves = read_curves(root / row["run"])
        for axis, tag in ((acc, "val/acc"), (loss, "train/loss_epoch")):
            values = curves.get(tag, [])
            if values:
                axis.plot(
                    range(1, len(values) + 1),
                    values,
                    color=color,
                    label=label,
                    marker="." if len(values) < 15 else None,
                )
    acc.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy per epoch")
    loss.set(xlabel="epoch", ylabel="training loss", title="training loss per epoch")
    for axis in (acc, loss):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if acc.lines:
        loss.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), ncols=2 if len(rows) > 16 else 1)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(root: Path | str) -> list[dict[str, Any]]:
    """Write ``report.md``, ``report.csv`` and ``report.png`` into ``root``; return the rows, best first."""
    root = Path(root)
    if not root.is_dir():
        raise CnnlabError(f"{root} is not a folder; give a sweep dir (logs/multirun/<time>) or the log root (logs).")
    rows = load_runs(root)
    if not rows:
        raise CnnlabError(f"no runs under {root} (no metrics.json or .hydra/ folders); give a sweep dir or logs/.")
    table = markdown_table(rows)
    failed = [r for r in rows if r["status"] != "ok"]
    summary = f"{len(rows)} runs, {len(failed)} failed or incomplete" if failed else f"{len(rows)} runs"
    (root / "report.md").write_text(f"# Report: {root}\n\n{summary}. Sorted by test accuracy.\n\n{table}")
    write_csv(rows, root / "report.csv")
    plot_report(root, rows, root / "report.png")
    return rows


class ReportAfterSweep(Callback):
    """Hydra callback: when a sweep (``-m``) ends, write its report into the sweep dir and print the table."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = write_report(sweep_dir)
        log.info("report: %s\n%s", ", ".join(str(sweep_dir / name) for name in OUTPUTS), markdown_table(rows))
        failed = [r["run"] for r in rows if r["status"] != "ok"]
        if failed:
            log.warning("%d job(s) failed or did not finish: %s (errors in report.md)", len(failed), ", ".join(failed))


def main(argv: list[str] | None = None) -> int:
    """``python -m cnnlab.report DIR``: write the report files and print the table."""
    parser = argparse.ArgumentParser(prog="python -m cnnlab.report", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a sweep dir (logs/multirun/<time>) or the log root (logs)")
    args = parser.parse_args(argv)
    try:
        rows = write_report(args.dir)
    except Exception as err:
        problem = user_error(err)
        if problem is None:
            raise
        print(f"cnnlab: error: {problem}", file=sys.stderr)
        return 2
    print(markdown_table(rows), end="")
    print("\n" + "  ".join(str(args.dir / name) for name in OUTPUTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
