"""The runs under a folder as rows, and the configurations they form.

A configuration is the runs of one fingerprint (``cnnlab.fingerprint``: what decides the result, seed aside), named
by the settings in which it differs from the others. Its runs of different seeds are its seeds; runs of one seed
are repeats, averaged into that seed's sample (n counts seeds, never repeats). Runs written before runs had
fingerprints are grouped as they were then, by model and command-line overrides without the seed (the report says
so once). Shared by the report's tables (``cnnlab.report``) and its picture (``cnnlab.plot``). Each run dir is read
through ``cnnlab.rundir``; a record that cannot be read is reported as ``unreadable``, named in one line, and the
other runs are reported as usual. A failed attempt set aside in a job dir is not a run of its own.
"""

from __future__ import annotations

import logging
import math
import statistics
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from cnnlab.errors import ConfigError
from cnnlab.report_table import fmt_mean_std, round_floats, split_overrides
from cnnlab.rundir import RESULT_KEYS, BadRecord, is_failed_attempt, read_record
from cnnlab.vocab import RunFiles, Status

NAMED_BY_CHOICE = ("model", "data", "optimizer", "scheduler")  # groups whose choice can name their settings
LEGACY_NOTE = ("{n} of these runs were written before runs had fingerprints: they are grouped by model and "
               "command-line overrides without the seed, as then (a config file edited between them goes unseen).")
log = logging.getLogger("cnnlab.report")


class TagFilterError(ConfigError):
    """A ``tags=...`` filter that keeps no run."""


def find_run_dirs(root: Path) -> list[Path]:
    """Every run dir under ``root``: those with a ``metrics.json`` or a Hydra ``.hydra/overrides.yaml``, but the
    failed attempts a job set aside when it ran again (``failed-attempt-N/``)."""
    found = {p.parent for p in root.rglob(RunFiles.METRICS)} | {p.parent.parent for p in root.rglob(RunFiles.OVERRIDES)}
    return sorted(p for p in found if not is_failed_attempt(p.relative_to(root)))


def read_run(run_dir: Path, root: Path) -> dict[str, Any]:
    """One report row: the run's metrics, its choices and overrides, its fingerprint, its tags and its status."""
    try:
        record = read_record(run_dir)
    except BadRecord as bad:
        log.warning("cnnlab: %s", bad)
        record, status, error = None, Status.UNREADABLE, str(bad)
    else:
        status, error = (Status.INCOMPLETE, None) if record is None else (record.status, record.error)
    hydra_file = run_dir / RunFiles.HYDRA_RECORD
    choices, overrides = {}, ""
    if hydra_file.is_file():
        job = OmegaConf.load(hydra_file).hydra
        choices = {str(k): str(v) for k, v in job.runtime.choices.items() if "/" not in str(k) and v is not None}
        overrides = str(job.job.override_dirname)
    row: dict[str, Any] = {key: getattr(record, key, None) for key in RESULT_KEYS}
    row.update(model=choices.get("model", ""), choices=choices, overrides=overrides, status=status, error=error,
               run=str(run_dir.relative_to(root)), fingerprint=getattr(record, "fingerprint", None),
               identity=getattr(record, "identity", None))  # fmt: skip
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
    config_file = run_dir / RunFiles.CONFIG
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
    return sorted(rows, key=lambda r: (*by_val_acc(r["val_acc"]), r["status"] != Status.OK, r["run"]))


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


def config_key(row: dict[str, Any]) -> tuple[str, ...]:
    """The configuration a run belongs to: its fingerprint; a run from before fingerprints, its model and its
    command-line overrides without the seed."""
    if row.get("fingerprint"):
        return ("fingerprint", row["fingerprint"])
    return ("overrides", row["model"], without_seed(row["overrides"]))


def mean_std(values: list[Any]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1) of the values that are set; std is None below two."""
    values = [v for v in values if v is not None]
    mean = statistics.mean(values) if values else None
    return mean, statistics.stdev(values) if len(values) > 1 else None


def seed_samples(done: list[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    """A configuration's finished runs by seed (best first): the runs of one seed are repeats of one sample; an
    unseeded run (``seed=null``) is a sample of its own."""
    samples: dict[Any, list[dict[str, Any]]] = {}
    for row in done:
        samples.setdefault(row["seed"] if row["seed"] is not None else ("unseeded", row["run"]), []).append(row)
    return samples


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's row: counts, mean ± std of the accuracies over its finished seeds (repeats of a seed
    averaged into one sample), the validation accuracy's 95% confidence interval, its runs."""
    done = [r for r in runs if r["status"] == Status.OK and r["test_acc"] is not None]
    pruned = sum(r["status"] == Status.PRUNED for r in runs)
    samples = seed_samples(done)
    first = runs[0]
    config = {"model": first["model"], "overrides": without_seed(first["overrides"]), "n": len(samples),
              "repeats": len(done) - len(samples), "failed": len(runs) - len(done) - pruned, "pruned": pruned,
              "fingerprint": first.get("fingerprint"), "identity": first.get("identity"),
              "choices": first.get("choices") or {}}  # fmt: skip
    config["tags"] = ",".join(dict.fromkeys(tag for r in runs for tag in row_tags(r)))
    config["seeds"] = ";".join(str(seed) for seed in samples if not isinstance(seed, tuple))
    for key in ("test_acc", "val_acc", "wall_s"):
        per_seed = [mean_std([r[key] for r in rows])[0] for rows in samples.values()]
        config[f"{key}_mean"], config[f"{key}_std"] = mean_std(per_seed)
    config["val_accs"] = [v for v in (mean_std([r["val_acc"] for r in rows])[0] for rows in samples.values())
                          if v is not None]  # fmt: skip
    config["val_acc_ci95"] = ci95_half_width(config["val_accs"])
    config["params"] = next((r["params"] for r in runs if r["params"] is not None), None)
    config["runs"] = ";".join(r["run"] for r in runs)
    return config


def ci95_half_width(values: list[float]) -> float | None:
    """Half the width of the 95% confidence interval of the mean (Student's t, n - 1 degrees of freedom)."""
    if len(values) < 2:
        return None
    return t_quantile(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


# Student's t distribution through mpmath's regularized incomplete beta function (mpmath comes with torch, through
# sympy): scipy, which would do it, makes every training process slower to start (torchmetrics imports scipy.signal
# whenever scipy is installed).


def t_tail(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom (two-sided)."""
    import mpmath

    if math.isinf(t):
        return 0.0
    return float(mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True))


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile (p > 0.5) of Student's t with ``df`` degrees of freedom, by bisection of its tail."""
    low, high = 0.0, 1.0
    while t_tail(high, df) > 2 * (1 - p):
        high *= 2
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if t_tail(middle, df) > 2 * (1 - p) else (low, middle)
    return (low + high) / 2


def welch_p(a: list[float], b: list[float]) -> float:
    """Welch's t-test (two-sided, unequal variances) of two samples: its p-value; NaN when neither sample varies and
    their means are equal."""
    se2 = statistics.variance(a) / len(a) + statistics.variance(b) / len(b)
    diff = statistics.mean(a) - statistics.mean(b)
    if se2 == 0:
        return math.nan if diff == 0 else 0.0
    df = se2**2 / ((statistics.variance(a) / len(a)) ** 2 / (len(a) - 1) + (statistics.variance(b) / len(b)) ** 2
                   / (len(b) - 1))  # fmt: skip
    return t_tail(diff / math.sqrt(se2), df)


NOISE_RULE = ("A difference is larger than the noise when Welch's t-test (two-sided, unequal variances) over the "
              "seeds' validation accuracies gives p < 0.05; CI: the 95% confidence interval of the mean.")  # fmt: skip


def ahead_line(configs: list[dict[str, Any]]) -> str:
    """Whether the best configuration of two or more seeds is ahead of the runner-up by more than the noise."""
    seeded = sorted((c for c in configs if len(c["val_accs"]) >= 2), key=lambda c: -c["val_acc_mean"])
    if len(seeded) < 2:
        return ""
    best, second = seeded[:2]
    p = welch_p(best["val_accs"], second["val_accs"])
    best_label, second_label = run_labels([best, second])
    verdict = "larger than the noise" if p < 0.05 else "within the noise: more seeds would tell them apart, or not"
    if math.isnan(p):
        verdict = "not testable: neither configuration's seeds differ"
    return (f"Best against runner-up: {best_label} (val acc {best['val_acc_mean']:.4f}, n={best['n']}) against "
            f"{second_label} ({second['val_acc_mean']:.4f}, n={second['n']}): Welch's t-test p = {p:.3g}, the "
            f"difference is {verdict}.\n{NOISE_RULE}\n")  # fmt: skip


def aggregate_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration (one fingerprint), best mean validation accuracy first, each named by what
    differs (``configuration``)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(config_key(row), []).append(row)
    configs = [summarize(runs) for runs in groups.values()]
    for config, name in zip(configs, configuration_names(configs), strict=True):
        config["configuration"] = name
    return sorted(configs, key=lambda c: (c["n"] == 0, *by_val_acc(c["val_acc_mean"]), c["model"],
                                          c["configuration"]))  # fmt: skip


def legacy_runs(rows: list[dict[str, Any]]) -> int:
    """How many runs that ran have no fingerprint: written before runs had one. (A failed job whose config could not
    even be resolved has none either: not counted.)"""
    return sum(1 for r in rows if not r.get("fingerprint") and r["status"] in (Status.OK, Status.PRUNED,
                                                                                 Status.INTERRUPTED))  # fmt: skip


def configuration_names(items: list[dict[str, Any]]) -> list[str]:
    """What tells each configuration (or run) from the others: the settings of its identity that differ between
    them (``optimizer.lr=0.1``), a group's settings said by its choice where the choice decides them all
    (``optimizer=adam``; the model's choice has a column of its own). Without identities (runs from before), the
    command-line overrides that differ, as then."""
    named = [i for i, item in enumerate(items) if item.get("identity")]
    names = [""] * len(items)
    legacy = [i for i in range(len(items)) if i not in named]
    for i, label in zip(legacy, override_names([items[i] for i in legacy]), strict=True):
        names[i] = label
    identities = [items[i]["identity"] for i in named]
    keys = sorted({k for d in identities for k in d})
    differ = [k for k in keys if len({repr(d.get(k)) for d in identities}) > 1]
    shown_groups = []
    for group in NAMED_BY_CHOICE:
        choices = [items[i]["choices"].get(group) for i in named]
        if not all(choices):
            continue

        def decided(key: str, choices: list[str | None] = choices) -> bool:  # the same value wherever the choice is
            return all(len({repr(d.get(key)) for d, c in zip(identities, choices, strict=True) if c == choice}) == 1
                       for choice in set(choices))  # fmt: skip

        said = [k for k in differ if k.startswith(group + ".") and decided(k)]
        differ = [k for k in differ if k not in said]
        if group != "model" and len(set(choices)) > 1:  # the model's choice has a column of its own
            shown_groups.append(group)
    for position, i in enumerate(named):
        parts = [f"{g}={items[i]['choices'][g]}" for g in shown_groups]
        parts += [f"{k}={setting_text(identities[position].get(k))}" for k in differ]
        names[i] = round_floats(" ".join(parts))
    return names


def setting_text(value: Any) -> str:
    """A setting's value as an override writes it (``[6,16]``, ``null``, ``0.1``)."""
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(setting_text(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def override_names(rows: list[dict[str, Any]]) -> list[str]:
    """Runs from before fingerprints: the command-line overrides that differ between them (``lr=0.1``)."""
    parsed = [dict(item.split("=", 1) for item in split_overrides(r["overrides"]) if "=" in item) for r in rows]
    varying = sorted({k for p in parsed for k in p if len({q.get(k) for q in parsed}) > 1} - {"model"})
    return [round_floats(" ".join(f"{key.rsplit('.', 1)[-1]}={overrides[key]}" for key in varying if key in overrides))
            for overrides in parsed]


def run_labels(rows: list[dict[str, Any]]) -> list[str]:
    """Short names for the picture and the best line: the model and what tells the configuration (or run) apart."""
    labels = []
    for row, name in zip(rows, configuration_names(rows), strict=True):
        model = row["model"] or row.get("run", row.get("runs", ""))
        labels.append(" ".join(part for part in (model, name) if part))
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


