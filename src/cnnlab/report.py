"""One table and one picture for many runs: ``python -m cnnlab.report DIR`` (a sweep dir, or the log root).

Reads every run's ``metrics.json`` (and its ``.hydra/`` record of the choices, overrides, seed and tags), writes
``report.md``, ``report.csv``, ``report_configs.csv`` and ``report.png`` into DIR, and prints the tables. Runs are
ranked by validation accuracy, the selection metric the sweepers maximise (test accuracy is shown beside it; a run
without one comes last). Runs of one fingerprint (what decides the result, seed aside: ``cnnlab.fingerprint``) are
one configuration, shown first as mean ± std over its seeds and named by what differs. A job dir with a ``.hydra/``
record but no ``metrics.json`` (killed, or still running) is listed as incomplete. ``tags=ablation`` keeps only the
runs tagged ablation; ``tags=[a,b]`` those that carry a OR b.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import re
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cnnlab.errors import EXIT_JOBS_FAILED, EXIT_NO_JOB_COMPLETED, CnnlabError, user_error
from cnnlab.files import write_text_atomically
from cnnlab.plot import plot_report
from cnnlab.report_table import configs_table, markdown_table
from cnnlab.rundir import RESULT_KEYS
from cnnlab.runs import LEGACY_NOTE, aggregate_seeds, ahead_line, best_line, filter_tags, legacy_runs, load_runs
from cnnlab.study_report import failed_trials, study_section
from cnnlab.vocab import FINISHED, Status, SweepFiles

log = logging.getLogger("cnnlab.report")

COLUMNS = ["model", "overrides", "tags", *RESULT_KEYS, "status", "seed", "error", "fingerprint", "run"]  # report.csv
CONFIG_COLUMNS = [  # report_configs.csv: one row per configuration, full precision; std empty below two seeds
    *("model", "configuration", "overrides", "tags", "n", "repeats", "failed", "pruned", "seeds", "val_acc_mean"),
    *("val_acc_std", "val_acc_ci95", "test_acc_mean", "test_acc_std", "wall_s_mean", "wall_s_std", "params"),
    *("fingerprint", "runs"),
]
OUTPUTS = SweepFiles.REPORTS
FILTER = re.compile(r"([A-Za-z_][\w.]*)=(.*)", re.DOTALL)  # a ``key=value`` argument of the CLI


def parse_tags(value: str) -> list[str]:
    """``ablation``, ``[ablation,frontier]`` or ``ablation,frontier`` as a list of tags."""
    inner = value.strip()
    if inner.startswith("[") and inner.endswith("]"):
        inner = inner[1:-1]
    return [tag.strip().strip("'\"") for tag in inner.split(",") if tag.strip().strip("'\"")]


def write_csv(rows: list[dict[str, Any]], path: Path, columns: list[str] = COLUMNS) -> None:
    """The rows as CSV, full precision (one row per run, or per configuration with ``CONFIG_COLUMNS``)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
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
    failed, pruned = not_finished(rows), [r for r in rows if r["status"] == Status.PRUNED]
    tagged = f" tagged {' or '.join(tags)}" if tags else ""
    summary = f"{len(rows)} runs{tagged}" + (f", {len(failed)} failed or incomplete" if failed else "")
    summary += f", {len(pruned)} pruned (stopped early by the search's pruner)" if pruned else ""
    ahead = ahead_line(configs)
    legacy = legacy_runs(rows)
    note = f"{LEGACY_NOTE.format(n=legacy)}\n\n" if legacy else ""
    if legacy:
        log.info("cnnlab: %s", LEGACY_NOTE.format(n=legacy))
    write_text_atomically(
        root / SweepFiles.REPORT,
        f"# Report: {root}\n\n{summary}, {len(configs)} configurations (a configuration: the runs of one "
        f"fingerprint, seed aside). Sorted by (mean) validation accuracy, the selection metric; test accuracy beside "
        f"it.\n\n{note}{best_line(configs)}\n\n"
        f"## Configurations (mean ± std over seeds)\n\n{configs_table(configs)}" + (f"\n{ahead}" if ahead else "")
        + f"\n## Runs\n\n{markdown_table(rows)}" + study_block(root, rows),
    )
    write_csv(rows, root / SweepFiles.REPORT_RUNS)
    write_csv(configs, root / SweepFiles.REPORT_CONFIGS, CONFIG_COLUMNS)
    plot_report(root, rows, root / SweepFiles.REPORT_PICTURE, configs)
    return rows


def not_finished(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs that failed or did not finish (a pruned run finished: its search stopped it)."""
    return [r for r in rows if r["status"] not in FINISHED]


def study_block(root: Path, rows: list[dict[str, Any]]) -> str:
    """The search's study (Pareto front, Optuna's pictures) when ``root`` holds one."""
    section = study_section(root, rows)
    return f"\n{section}" if section else ""


class ReportAfterSweep(Callback):
    """Hydra callback: when a sweep (``-m``) ends, write its report into the sweep dir and print its tables."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            rows = write_report(sweep_dir)
        except CnnlabError as err:  # no job left a record (every trial failed before its job started, say)
            log.error("no report: %s", err)
            return
        configs = aggregate_seeds(rows)
        outputs = ", ".join(str(sweep_dir / name) for name in OUTPUTS)
        log.info("report: %s\n%s\n%s", outputs, configs_table(configs), markdown_table(rows))
        failed = [r["run"] for r in not_finished(rows)]
        if failed:
            log.warning("%d job(s) failed or did not finish: %s (errors in report.md)", len(failed), ", ".join(failed))
        print(best_line(configs), f"report: {sweep_dir / SweepFiles.REPORT}", sep="\n", flush=True)


class SweepExitStatus(Callback):
    """Hydra callback, the last to run when a sweep ends: its exit status tells the truth (``cnnlab.errors``): 0 when
    every job completed (ok, or pruned by the search), ``EXIT_JOBS_FAILED`` when some failed (the others ran to
    their end; report.md names the failed ones and their errors), ``EXIT_NO_JOB_COMPLETED`` with one error line
    when none completed. A search's trials are counted from its study (a trial whose job could not start has no
    job dir), a grid's jobs from their records."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        completed, failed = outcome(sweep_dir)
        names = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
        if failed and not completed:
            print(f"cnnlab: error: no job of the sweep completed ({len(failed)} failed: {names}); their errors are in "
                  f"{sweep_dir / SweepFiles.REPORT} and their train.log.", file=sys.stderr)  # fmt: skip
            raise SystemExit(EXIT_NO_JOB_COMPLETED)
        if failed:
            print(f"cnnlab: {len(failed)} of {len(failed) + completed} jobs failed ({names}): exit status "
                  f"{EXIT_JOBS_FAILED}; errors in {sweep_dir / SweepFiles.REPORT}.", file=sys.stderr)  # fmt: skip
            raise SystemExit(EXIT_JOBS_FAILED)


def outcome(sweep_dir: Path) -> tuple[int, list[str]]:
    """How many jobs of the sweep completed (ok or pruned), and the names of those that did not."""
    rows = load_runs(sweep_dir) if sweep_dir.is_dir() else []
    failed = [r["run"] for r in not_finished(rows)]
    completed = len(rows) - len(failed)
    study = sweep_dir / SweepFiles.STUDY
    if study.is_file():  # trials that failed before their job wrote anything are in the study only
        numbers = {r["run"].split("_", 1)[0] for r in rows}
        failed += [f"trial {n}" for n in failed_trials(study) if str(n) not in numbers]
    return completed, failed


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
