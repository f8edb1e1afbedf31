"""The markdown tables of a report (``cnnlab.report``): its cells, and the overrides a table's rows share.

The overrides every row of a table has (a sweep's fixed settings: ``experiment=...``, ``trainer.max_epochs=3``)
are written once above the table (``All runs: ...``); the overrides column shows only what differs between rows.
"""

from __future__ import annotations

import re
from typing import Any

from cnnlab.rundir import RESULT_KEYS

OVERRIDE_SEP = re.compile(r",(?=[\w.+~@/-]+=)")  # the commas of override_dirname that start a new key=value
# the runs table of report.md, in order (report.csv has every column, full precision)
RUN_COLUMNS = ["model", "overrides", "tags", *(k for k in RESULT_KEYS if k not in ("startup_s", "train_s", "epochs"))]
RUN_COLUMNS += ["status", "seed", "error", "run"]  # run: its dir, as TensorBoard and the progress lines name it
HEADERS = {
    "test_acc": "test acc",
    "val_acc": "val acc",
    "train_acc": "train acc",
    "train_loss": "train loss",
    "examples_per_sec": "examples/s",
    "wall_s": "wall s",
}


def round_floats(text: str) -> str:
    """Long decimals in overrides to 4 significant digits (``lr=0.03855871074880703`` -> ``lr=0.03856``)."""
    return re.sub(r"\d+\.\d{5,}(e-?\d+)?", lambda m: f"{float(m.group()):.4g}", text)


def split_overrides(overrides: str) -> list[str]:
    """An override_dirname (``model=lenet,optimizer.lr=0.1``) as its ``key=value`` items."""
    return OVERRIDE_SEP.split(overrides) if overrides else []


def shared_overrides(rows: list[dict[str, Any]]) -> list[str]:
    """The override items that every row has, in the first row's order (all of them for a single row)."""
    items = [split_overrides(row["overrides"]) for row in rows]
    common = set(items[0]).intersection(*items[1:]) if items else set()
    return [item for item in items[0] if item in common] if items else []


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
    if key in ("params", "macs"):
        return f"{value:,}"
    text = error_line(value) if key == "error" else round_floats(str(value))
    return text.replace("|", "\\|")


def error_line(error: Any, limit: int = 100) -> str:
    """An error's first line, cut short (the whole error is in report.csv and the job's log)."""
    text = str(error or "").strip()
    first = text.splitlines()[0] if text else ""
    return (first[:limit] + "...") if len(first) > limit else first


def fmt_mean_std(mean: float | None, std: float | None) -> str:
    """``0.812 ± 0.004``; only the mean when there is no std (one seed), nothing when there is no mean."""
    if mean is None:
        return ""
    return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"


def numbered_table(headers: list[str], cells: list[list[str]]) -> str:
    """A markdown table with a leading ``#`` column counting the rows from 1."""
    lines = ["| " + " | ".join(["#", *headers]) + " |", "| " + " | ".join(["---"] * (len(headers) + 1)) + " |"]
    lines += ["| " + " | ".join([str(i), *row]) + " |" for i, row in enumerate(cells, 1)]
    return "\n".join(lines) + "\n"


def shared_line(shared: list[str], what: str) -> str:
    """``All runs: experiment=fashion_frontier trainer.max_epochs=3`` and a blank line; nothing when none."""
    return f"All {what}: {' '.join(fmt(item, 'overrides') for item in shared)}\n\n" if shared else ""


def differing(overrides: str, shared: list[str]) -> str:
    """The overrides cell: the row's overrides less those every row of its table has."""
    return fmt(",".join(item for item in split_overrides(overrides) if item not in shared), "overrides")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The runs as a markdown table (errors of failed runs in the last column), shared overrides above it."""
    shared = shared_overrides(rows)
    cells = [[differing(row[k], shared) if k == "overrides" else fmt(row[k], k) for k in RUN_COLUMNS] for row in rows]
    return shared_line(shared, "runs") + numbered_table([HEADERS.get(k, k) for k in RUN_COLUMNS], cells)


def configuration_cell(config: dict[str, Any], shared: list[str]) -> str:
    """What tells a configuration apart: its differing settings (``cnnlab.runs.configuration_names``); for runs
    from before fingerprints, its command-line overrides less those every configuration has."""
    return fmt(config["configuration"], "overrides") if config.get("fingerprint") else differing(config["overrides"],
                                                                                                  shared)  # fmt: skip


def configs_table(configs: list[dict[str, Any]]) -> str:
    """The configurations as a markdown table: finished seeds (n; repeats of a seed beside, when any) and mean ± std
    of the accuracies over them (and the validation accuracy's 95% confidence interval where a configuration has two
    seeds or more)."""
    shared = shared_overrides(configs)
    with_ci = any(c.get("val_acc_ci95") is not None for c in configs)
    with_repeats = any(c.get("repeats") for c in configs)
    headers = ["model", "configuration", "tags", "n", *(["repeats"] if with_repeats else []), "val acc",
               *(["val acc 95% CI"] if with_ci else []), "test acc", "wall s", "params"]  # fmt: skip
    cells = [
        [fmt(c["model"], "model"), configuration_cell(c, shared), fmt(c["tags"], "tags"), str(c["n"])]
        + ([str(c.get("repeats") or "")] if with_repeats else [])
        + [fmt_mean_std(c["val_acc_mean"], c["val_acc_std"])]
        + ([fmt_interval(c["val_acc_mean"], c.get("val_acc_ci95"))] if with_ci else [])
        + [fmt_mean_std(c["test_acc_mean"], c["test_acc_std"])]
        + [fmt(c["wall_s_mean"], "wall_s"), fmt(c["params"], "params")]
        for c in configs
    ]
    return shared_line(shared, "configurations") + numbered_table(headers, cells)


def fmt_interval(mean: float | None, half_width: float | None) -> str:
    """``[0.808, 0.822]``; nothing below two seeds."""
    if mean is None or half_width is None:
        return ""
    return f"[{mean - half_width:.3f}, {mean + half_width:.3f}]"
