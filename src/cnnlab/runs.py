"""The runs under a folder as rows, and the configurations they form (runs that differ only in ``seed``).

Shared by the report's tables (``cnnlab.report``) and its picture (``cnnlab.plot``). Each run dir is read through
``cnnlab.rundir``; a record that cannot be read is reported as ``unreadable``, named in one line, and the other runs
are reported as usual.
"""

from __future__ import annotations

import logging
import math
import statistics
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from cnnlab.errors import ConfigError
from cnnlab.report_table import fmt_mean_std, round_floats, split_overrides
from cnnlab.rundir import METRICS, RESULT_KEYS, BadRecord, Status, read_record

log = logging.getLogger("cnnlab.report")


class TagFilterError(ConfigError):
    """A ``tags=...`` filter that keeps no run."""


def find_run_dirs(root: Path) -> list[Path]:
    """Every run dir under ``root``: those with a ``metrics.json`` or a Hydra ``.hydra/overrides.yaml``."""
    found = {p.parent for p in root.rglob(METRICS)} | {
        p.parent.parent for p in root.rglob(".hydra/overrides.yaml")
    }
    return sorted(found)


def read_run(run_dir: Path, root: Path) -> dict[str, Any]:
    """One report row: the run's metrics, its model choice and overrides, its tags and its status."""
    try:
        record = read_record(run_dir)
    except BadRecord as bad:
        log.warning("cnnlab: %s", bad)
        record, status, error = None, "unreadable", str(bad)
    else:
        status, error = ("incomplete", None) if record is None else (record.status, record.error)
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    model, overrides = "", ""
    if hydra_file.is_file():
        job = OmegaConf.load(hydra_file).hydra
        model = str(job.runtime.choices.get("model", ""))
        overrides = str(job.job.override_dirname)
    row: dict[str, Any] = {key: getattr(record, key, None) for key in RESULT_KEYS}
    row.update(model=model, overrides=overrides, status=status, error=error, run=str(run_dir.relative_to(root)))
    config = read_config(run_dir)
    row["seed"] = OmegaConf.select(config, "seed", throw_on_resolution_failure=False)
    # the record's tags; a killed run's from its config
    tags = record.tags if record is not None and record.tags else None
    if tags is None:
        tags = OmegaConf.select(config, "tags", throw_on_resolution_failure=False)
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
    """One configuration's row: counts, mean ± std of the accuracies over its finished seeds (and the validation
    accuracy's 95% confidence interval), its runs."""
    done = [r for r in runs if r["status"] == Status.OK and r["test_acc"] is not None]
    pruned = sum(r["status"] == Status.PRUNED for r in runs)
    config = {"model": model, "overrides": overrides, "n": len(done), "failed": len(runs) - len(done) - pruned,
              "pruned": pruned}  # fmt: skip
    config["tags"] = ",".join(dict.fromkeys(tag for r in runs for tag in row_tags(r)))
    config["seeds"] = ";".join(str(r["seed"]) for r in done if r["seed"] is not None)
    for key in ("test_acc", "val_acc", "wall_s"):
        config[f"{key}_mean"], config[f"{key}_std"] = mean_std([r[key] for r in done])
    config["val_accs"] = [r["val_acc"] for r in done if r["val_acc"] is not None]
    config["val_acc_ci95"] = ci95_half_width(config["val_accs"])
    config["params"] = next((r["params"] for r in runs if r["params"] is not None), None)
    config["runs"] = ";".join(r["run"] for r in runs)
    return config


def ci95_half_width(values: list[float]) -> float | None:
    """Half the width of the 95% confidence interval of the mean (Student's t, n - 1 degrees of freedom)."""
    if len(values) < 2:
        return None
    from scipy import stats

    return float(stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


NOISE_RULE = ("A difference is larger than the noise when Welch's t-test (two-sided, unequal variances) over the "
              "seeds' validation accuracies gives p < 0.05; CI: the 95% confidence interval of the mean.")  # fmt: skip


def ahead_line(configs: list[dict[str, Any]]) -> str:
    """Whether the best configuration of two or more seeds is ahead of the runner-up by more than the noise."""
    seeded = sorted((c for c in configs if len(c["val_accs"]) >= 2), key=lambda c: -c["val_acc_mean"])
    if len(seeded) < 2:
        return ""
    from scipy import stats

    best, second = seeded[:2]
    with warnings.catch_warnings():  # scipy warns of precision when one configuration's seeds agree exactly
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(best["val_accs"], second["val_accs"], equal_var=False).pvalue)
    best_label, second_label = run_labels([best, second])
    verdict = "larger than the noise" if p < 0.05 else "within the noise: more seeds would tell them apart, or not"
    if math.isnan(p):
        verdict = "not testable: neither configuration's seeds differ"
    return (f"Best against runner-up: {best_label} (val acc {best['val_acc_mean']:.4f}, n={best['n']}) against "
            f"{second_label} ({second['val_acc_mean']:.4f}, n={second['n']}): Welch's t-test p = {p:.3g}, the "
            f"difference is {verdict}.\n{NOISE_RULE}\n")  # fmt: skip


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


