"""One table and one picture for many runs: ``python -m cnnlab.report DIR`` (a sweep dir, or the log root).

Reads every run's ``metrics.json`` (and its ``.hydra/`` record of the model, overrides and seed), writes
``report.md``, ``report.csv``, ``report_configs.csv`` and ``report.png`` into DIR, sorted by test accuracy, and
prints the tables. Runs that differ only in ``seed`` are one configuration, shown first as mean ± std over seeds.
A job dir with a ``.hydra/`` record but no ``metrics.json`` (killed, or still running) is listed as incomplete.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import statistics
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
    "seed",
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
CONFIG_COLUMNS = [  # report_configs.csv: one row per configuration, full precision; std empty below two seeds
    *("model", "overrides", "n", "failed", "seeds", "test_acc_mean", "test_acc_std", "val_acc_mean", "val_acc_std"),
    *("wall_s_mean", "wall_s_std", "params", "runs"),
]
OUTPUTS = ("report.md", "report.csv", "report_configs.csv", "report.png")
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
    row["seed"] = read_seed(run_dir)
    return row


def read_seed(run_dir: Path) -> Any:
    """The run's top-level ``seed`` from its ``.hydra/config.yaml`` (None without one)."""
    config_file = run_dir / ".hydra" / "config.yaml"
    config = OmegaConf.load(config_file) if config_file.is_file() else OmegaConf.create()
    return OmegaConf.select(config, "seed", throw_on_resolution_failure=False)


def load_runs(root: Path) -> list[dict[str, Any]]:
    """All runs under ``root``, best test accuracy first; failed and incomplete runs last."""
    rows = [read_run(run_dir, root) for run_dir in find_run_dirs(root)]
    return sorted(rows, key=lambda r: (r["test_acc"] is None, -(r["test_acc"] or 0.0), r["run"]))


def without_seed(overrides: str) -> str:
    """The overrides minus any ``seed=...`` item: what runs of one configuration share."""
    items = OVERRIDE_SEP.split(overrides) if overrides else []
    return ",".join(item for item in items if item.split("=", 1)[0].lstrip("+~") != "seed")


def config_key(row: dict[str, Any]) -> tuple[str, str]:
    """The configuration a run (or an aggregated row) belongs to: its model and its overrides without the seed."""
    return row["model"], without_seed(row["overrides"])


def mean_std(values: list[Any]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1) of the values that are set; std is None below two."""
    values = [v for v in values if v is not None]
    mean = statistics.mean(values) if values else None
    return mean, statistics.stdev(values) if len(values) > 1 else None


def summarize(model: str, overrides: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's row: counts, mean ± std of the accuracies over its finished seeds, its runs."""
    done = [r for r in runs if r["status"] == "ok" and r["test_acc"] is not None]
    config = {"model": model, "overrides": overrides, "n": len(done), "failed": len(runs) - len(done)}
    config["seeds"] = ";".join(str(r["seed"]) for r in done if r["seed"] is not None)
    for key in ("test_acc", "val_acc", "wall_s"):
        config[f"{key}_mean"], config[f"{key}_std"] = mean_std([r[key] for r in done])
    config["params"] = next((r["params"] for r in runs if r["params"] is not None), None)
    config["runs"] = ";".join(r["run"] for r in runs)
    return config


def aggregate_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration (runs that differ only in seed), best mean test accuracy first."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(config_key(row), []).append(row)
    configs = [summarize(model, overrides, runs) for (model, overrides), runs in groups.items()]
    return sorted(configs, key=lambda c: (c["n"] == 0, -(c["test_acc_mean"] or 0.0), c["model"], c["overrides"]))


def run_labels(rows: list[dict[str, Any]]) -> list[str]:
    """Short names for the picture: the model and the overrides that differ between runs (``lr=0.1``)."""
    parsed = [dict(item.split("=", 1) for item in OVERRIDE_SEP.split(r["overrides"]) if "=" in item) for r in rows]
    varying = sorted({k for p in parsed for k in p if len({q.get(k) for q in parsed}) > 1} - {"model"})
    labels = []
    for row, overrides in zip(rows, parsed, strict=True):
        shown = [f"{key.rsplit('.', 1)[-1]}={overrides[key]}" for key in varying if key in overrides]
        labels.append(round_floats(" ".join([row["model"] or row.get("run", row.get("runs", "")), *shown])))
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


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The runs as a markdown table (errors of failed runs in the last column)."""
    keys = [k for k in COLUMNS if k not in ("run", "epochs")]
    return numbered_table([HEADERS.get(k, k) for k in keys], [[fmt(row[k], k) for k in keys] for row in rows])


def configs_table(configs: list[dict[str, Any]]) -> str:
    """The configurations as a markdown table: finished seeds and mean ± std of the accuracies over them."""
    headers = ["model", "overrides", "n", "test acc", "val acc", "wall s", "params"]
    cells = [
        [fmt(c["model"], "model"), fmt(c["overrides"], "overrides"), str(c["n"])]
        + [fmt_mean_std(c[f"{key}_mean"], c[f"{key}_std"]) for key in ("test_acc", "val_acc")]
        + [fmt(c["wall_s_mean"], "wall_s"), fmt(c["params"], "params")]
        for c in configs
    ]
    return numbered_table(headers, cells)


def write_csv(rows: list[dict[str, Any]], path: Path, columns: list[str] = COLUMNS) -> None:
    """The rows as CSV, full precision (one row per run, or per configuration with ``CONFIG_COLUMNS``)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_report(root: Path | str) -> list[dict[str, Any]]:
    """Write ``report.md``, the two CSVs and ``report.png`` into ``root``; return the rows, best first."""
    root = Path(root)
    if not root.is_dir():
        raise CnnlabError(f"{root} is not a folder; give a sweep dir (logs/multirun/<time>) or the log root (logs).")
    rows = load_runs(root)
    if not rows:
        raise CnnlabError(f"no runs under {root} (no metrics.json or .hydra/ folders); give a sweep dir or logs/.")
    configs = aggregate_seeds(rows)
    failed = [r for r in rows if r["status"] != "ok"]
    summary = f"{len(rows)} runs, {len(failed)} failed or incomplete" if failed else f"{len(rows)} runs"
    (root / "report.md").write_text(
        f"# Report: {root}\n\n{summary}, {len(configs)} configurations. Sorted by (mean) test accuracy.\n\n"
        f"## Configurations (mean ± std over seeds)\n\n{configs_table(configs)}\n## Runs\n\n{markdown_table(rows)}"
    )
    write_csv(rows, root / "report.csv")
    write_csv(configs, root / "report_configs.csv", CONFIG_COLUMNS)
    from cnnlab.plot import plot_report  # the picture's module reads this one's helpers

    plot_report(root, rows, root / "report.png", configs)
    return rows


class ReportAfterSweep(Callback):
    """Hydra callback: when a sweep (``-m``) ends, write its report into the sweep dir and print its tables."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = write_report(sweep_dir)
        configs = aggregate_seeds(rows)
        outputs = ", ".join(str(sweep_dir / name) for name in OUTPUTS)
        log.info("report: %s\n%s\n%s", outputs, configs_table(configs), markdown_table(rows))
        failed = [r["run"] for r in rows if r["status"] != "ok"]
        if failed:
            log.warning("%d job(s) failed or did not finish: %s (errors in report.md)", len(failed), ", ".join(failed))
        print(best_line(configs), f"report: {sweep_dir / 'report.md'}", sep="\n", flush=True)


def best_line(configs: list[dict[str, Any]]) -> str:
    """The configuration with the best mean validation accuracy (the selection metric), its test accuracy beside."""
    ranked = [(c["val_acc_mean"], label, c) for label, c in zip(run_labels(configs), configs, strict=True)]
    ranked = [r for r in ranked if r[0] is not None]
    if not ranked:
        return "no job finished"
    _, label, best = max(ranked, key=lambda r: r[0])
    val, test = (fmt_mean_std(best[f"{k}_mean"], best[f"{k}_std"]) for k in ("val_acc", "test_acc"))
    return f"best configuration (by validation accuracy): {label}: val acc {val}, test acc {test} (n={best['n']})"


def main(argv: list[str] | None = None) -> int:
    """``python -m cnnlab.report DIR``: write the report files; print the runs, then the configurations."""
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
    print(markdown_table(rows) + "\n" + configs_table(aggregate_seeds(rows)), end="")
    print("\n" + "  ".join(str(args.dir / name) for name in OUTPUTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
