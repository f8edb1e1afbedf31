"""One table and one picture for many runs: ``python -m cnnlab.report DIR`` (a sweep dir, or the log root).

Reads every run's ``metrics.json`` (and its ``.hydra/`` record of the model, overrides, seed and tags), writes
``report.md``, ``report.csv``, ``report_configs.csv`` and ``report.png`` into DIR, and prints the tables. Runs are
ranked by validation accuracy, the selection metric the sweepers maximise (test accuracy is shown beside it; a run
without one comes last). Runs that differ only in ``seed`` are one configuration, shown first as mean ± std over
seeds. A job dir with a ``.hydra/`` record but no ``metrics.json`` (killed, or still running) is listed as
incomplete. ``tags=ablation`` keeps only the runs tagged ablation; ``tags=[a,b]`` those that carry a OR b.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from cnnlab.errors import CnnlabError, ConfigError, user_error
from cnnlab.files import write_text_atomically
from cnnlab.report_table import configs_table, fmt_mean_std, markdown_table, round_floats, split_overrides

log = logging.getLogger("cnnlab.report")

COLUMNS = [  # report.csv: one row per run, full precision
    *("model", "overrides", "tags", "params", "val_acc", "test_acc", "train_acc", "train_loss", "examples_per_sec"),
    *("wall_s", "epochs", "status", "seed", "error", "run"),
]
CONFIG_COLUMNS = [  # report_configs.csv: one row per configuration, full precision; std empty below two seeds
    *("model", "overrides", "tags", "n", "failed", "seeds", "val_acc_mean", "val_acc_std", "test_acc_mean"),
    *("test_acc_std", "wall_s_mean", "wall_s_std", "params", "runs"),
]
OUTPUTS = ("report.md", "report.csv", "report_configs.csv", "report.png")
FILTER = re.compile(r"([A-Za-z_][\w.]*)=(.*)", re.DOTALL)  # a ``key=value`` argument of the CLI


class TagFilterError(ConfigError):
    """A ``tags=...`` filter that keeps no run."""


def find_run_dirs(root: Path) -> list[Path]:
    """Every run dir under ``root``: those with a ``metrics.json`` or a Hydra ``.hydra/overrides.yaml``."""
    found = {p.parent for p in root.rglob("metrics.json")} | {
        p.parent.parent for p in root.rglob(".hydra/overrides.yaml")
    }
    return sorted(found)


def read_run(run_dir: Path, root: Path) -> dict[str, Any]:
    """One report row: the run's metrics, its model choice and overrides, its tags and its status."""
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
    config = read_config(run_dir)
    row["seed"] = OmegaConf.select(config, "seed", throw_on_resolution_failure=False)
    # metrics.json's tags; a failed or killed run's from its config; none in runs from before tags
    tags = metrics["tags"] if "tags" in metrics else OmegaConf.select(config, "tags", throw_on_resolution_failure=False)
    row["tags"] = ",".join(tag_list(tags))
    return row


def read_config(run_dir: Path) -> DictConfig:
    """The run's composed config, ``.hydra/config.yaml`` (empty without one; interpolations left unresolved)."""
    config_file = run_dir / ".hydra" / "config.yaml"
    config = OmegaConf.load(config_file) if config_file.is_file() else OmegaConf.create()
    return config if isinstance(config, DictConfig) else OmegaConf.create()


def tag_list(value: Any) -> list[str]:
    """Tags as a list of strings: a list as it is, a single string as one tag, nothing for anything else."""
    if isinstance(value, ListConfig):
        value = OmegaConf.to_container(value)
    if isinstance(value, str):
        return [value] if value else []
    return [str(tag) for tag in value] if isinstance(value, list | tuple) else []


def row_tags(row: dict[str, Any]) -> list[str]:
    """The tags of a run (or of a configuration: those of its runs)."""
    return [tag for tag in (row.get("tags") or "").split(",") if tag]


def by_val_acc(value: float | None) -> tuple[bool, float]:
    """A sort key: the highest validation accuracy first, none last."""
    return value is None, -(value or 0.0)


def load_runs(root: Path) -> list[dict[str, Any]]:
    """All runs under ``root``, best validation accuracy first; runs without one (failed, incomplete) last."""
    rows = [read_run(run_dir, root) for run_dir in find_run_dirs(root)]
    return sorted(rows, key=lambda r: (*by_val_acc(r["val_acc"]), r["status"] != "ok", r["run"]))


def parse_tags(value: str) -> list[str]:
    """``ablation``, ``[ablation,frontier]`` or ``ablation,frontier`` as a list of tags."""
    inner = value.strip()
    if inner.startswith("[") and inner.endswith("]"):
        inner = inner[1:-1]
    return [tag.strip().strip("'\"") for tag in inner.split(",") if tag.strip().strip("'\"")]


def filter_tags(rows: list[dict[str, Any]], tags: list[str], root: Path) -> list[dict[str, Any]]:
    """The runs that carry any of ``tags``; a filter that keeps none is a ``TagFilterError`` naming the tags found."""
    kept = [row for row in rows if set(row_tags(row)) & set(tags)]
    if not kept:
        found = sorted({tag for row in rows for tag in row_tags(row)})
        there = f"the tags found there: {', '.join(found)}" if found else "none of its runs has a tag"
        wanted = f"the tag {tags[0]}" if len(tags) == 1 else f"any of the tags {', '.join(tags)}"
        raise TagFilterError(f"no run under {root} carries {wanted}; {there}.")
    return kept


def without_seed(overrides: str) -> str:
    """The overrides minus any ``seed=...`` item: what runs of one configuration share."""
    return ",".join(item for item in split_overrides(overrides) if item.split("=", 1)[0].lstrip("+~") != "seed")


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
    config["tags"] = ",".join(dict.fromkeys(tag for r in runs for tag in row_tags(r)))
    config["seeds"] = ";".join(str(r["seed"]) for r in done if r["seed"] is not None)
    for key in ("test_acc", "val_acc", "wall_s"):
        config[f"{key}_mean"], config[f"{key}_std"] = mean_std([r[key] for r in done])
    config["params"] = next((r["params"] for r in runs if r["params"] is not None), None)
    config["runs"] = ";".join(r["run"] for r in runs)
    return config


def aggregate_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration (runs that differ only in seed), best mean validation accuracy first."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(config_key(row), []).append(row)
    configs = [summarize(model, overrides, runs) for (model, overrides), runs in groups.items()]
    return sorted(configs, key=lambda c: (c["n"] == 0, *by_val_acc(c["val_acc_mean"]), c["model"], c["overrides"]))


def run_labels(rows: list[dict[str, Any]]) -> list[str]:
    """Short names for the picture: the model and the overrides that differ between runs (``lr=0.1``)."""
    parsed = [dict(item.split("=", 1) for item in split_overrides(r["overrides"]) if "=" in item) for r in rows]
    varying = sorted({k for p in parsed for k in p if len({q.get(k) for q in parsed}) > 1} - {"model"})
    labels = []
    for row, overrides in zip(rows, parsed, strict=True):
        shown = [f"{key.rsplit('.', 1)[-1]}={overrides[key]}" for key in varying if key in overrides]
        labels.append(round_floats(" ".join([row["model"] or row.get("run", row.get("runs", "")), *shown])))
    return labels


def best_line(configs: list[dict[str, Any]]) -> str:
    """The configuration with the best mean validation accuracy (the selection metric), its test accuracy beside."""
    ranked = [(c["val_acc_mean"], label, c) for label, c in zip(run_labels(configs), configs, strict=True)]
    ranked = [r for r in ranked if r[0] is not None]
    if not ranked:
        return "no job finished"
    _, label, best = max(ranked, key=lambda r: r[0])
    val, test = (fmt_mean_std(best[f"{k}_mean"], best[f"{k}_std"]) for k in ("val_acc", "test_acc"))
    return f"best configuration (by validation accuracy): {label}: val acc {val}, test acc {test} (n={best['n']})"


def write_csv(rows: list[dict[str, Any]], path: Path, columns: list[str] = COLUMNS) -> None:
    """The rows as CSV, full precision (one row per run, or per configuration with ``CONFIG_COLUMNS``)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(path, text.getvalue())


def write_report(root: Path | str, tags: list[str] | None = None) -> list[dict[str, Any]]:
    """Write ``report.md``, the two CSVs and ``report.png`` into ``root``; return the rows, best first.

    With ``tags``, only the runs that carry at least one of them (``TagFilterError`` when that is none).
    """
    root = Path(root)
    if not root.is_dir():
        raise CnnlabError(f"{root} is not a folder; give a sweep dir (logs/multirun/<time>) or the log root (logs).")
    rows = load_runs(root)
    if not rows:
        raise CnnlabError(f"no runs under {root} (no metrics.json or .hydra/ folders); give a sweep dir or logs/.")
    if tags:
        rows = filter_tags(rows, tags, root)
    configs = aggregate_seeds(rows)
    failed = [r for r in rows if r["status"] != "ok"]
    tagged = f" tagged {' or '.join(tags)}" if tags else ""
    summary = f"{len(rows)} runs{tagged}" + (f", {len(failed)} failed or incomplete" if failed else "")
    write_text_atomically(
        root / "report.md",
        f"# Report: {root}\n\n{summary}, {len(configs)} configurations. Sorted by (mean) validation accuracy, "
        f"the selection metric; test accuracy beside it.\n\n{best_line(configs)}\n\n"
        f"## Configurations (mean ± std over seeds)\n\n{configs_table(configs)}\n## Runs\n\n{markdown_table(rows)}",
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


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[Path, list[str] | None]:
    """The DIR and the tags of ``DIR [tags=TAG | tags=[A,B]]`` (in either order)."""
    dirs, tags = [], None
    for item in parser.parse_args(argv).args:
        match = FILTER.fullmatch(item)
        if match is None or Path(item).exists():
            dirs.append(Path(item))
        elif match.group(1) != "tags":
            parser.error(f"unknown filter {match.group(1)}=...; the filter is tags=TAG or tags=[TAG1,TAG2]")
        elif not parse_tags(match.group(2)):
            parser.error(f"{item} names no tag; give tags=ablation or tags=[ablation,frontier]")
        else:
            tags = [*(tags or []), *parse_tags(match.group(2))]
    if len(dirs) != 1:
        given = f", not {len(dirs)}: {' '.join(map(str, dirs))}" if dirs else ""
        parser.error(f"give one DIR (a sweep dir or the log root){given}")
    return dirs[0], tags


def main(argv: list[str] | None = None) -> int:
    """``python -m cnnlab.report DIR [tags=...]``: write the report files; print the runs, the configurations."""
    parser = argparse.ArgumentParser(
        prog="python -m cnnlab.report",
        usage="%(prog)s DIR [tags=TAG | tags=[TAG1,TAG2]]",
        description=__doc__.splitlines()[0],
        epilog="tags=ablation keeps only the runs tagged ablation; tags=[ablation,frontier] keeps the runs that "
        "carry ANY of them (ablation or frontier). The report files are written into DIR for those runs only.",
    )
    parser.add_argument(
        "args",
        nargs="+",
        metavar="DIR [tags=...]",
        help="a sweep dir (logs/multirun/<time>) or the log root (logs); tags=... filters the runs (below)",
    )
    root, tags = parse_args(parser, argv)
    try:
        rows = write_report(root, tags)
    except Exception as err:
        problem = user_error(err)
        if problem is None:
            raise
        print(f"cnnlab: error: {problem}", file=sys.stderr)
        return 2
    configs = aggregate_seeds(rows)
    print(markdown_table(rows) + "\n" + configs_table(configs), end="")
    print("\n" + best_line(configs))
    print("\n" + "  ".join(str(root / name) for name in OUTPUTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
