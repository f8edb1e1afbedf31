"""Finish what was stopped: a sweep re-run in its own dir, one run from its newest checkpoint.

- A sweep re-run with ``hydra.sweep.dir=<its dir>`` (or ``python -m cnnlab.resume <sweep dir>``) skips the jobs
  whose ``metrics.json`` says they finished, resumes interrupted ones from their own ``checkpoints/last.ckpt``
  and runs failed or never-started ones from scratch. Jobs are matched by their folder, which their number and
  overrides name; a re-run whose overrides differ from the sweep's is refused (``SweepRecord``).
- ``ckpt_path=last`` resumes the newest run of the same ``run_name``; a resumed run writes into the run dir of
  its checkpoint, and the dir Hydra made for the resuming command is folded into it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cnnlab.errors import ConfigError

log = logging.getLogger("cnnlab.resume")

RECORD = "multirun.yaml"  # how the sweep was started: Hydra's record of its config and overrides
LAST = Path("checkpoints") / "last.ckpt"
# Overrides that may differ between a sweep and its resume: where things are, not what runs.
MOVABLE_PREFIXES = ("paths.", "data.system_dir", "data.data_dir")


# ---- one job of a sweep ------------------------------------------------------------------------------------------


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``metrics.json``, or None when it is missing or unreadable (a kill during its write)."""
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def job_state(job_dir: Path) -> str:
    """``finished``, ``failed``, ``interrupted`` (a ``last.ckpt`` and no result) or ``new``."""
    metrics = read_metrics(job_dir)
    if metrics is not None:
        return "failed" if metrics.get("status", "ok") != "ok" else "finished"
    return "interrupted" if (job_dir / LAST).is_file() else "new"


def continue_job(cfg: DictConfig) -> dict[str, Any] | None:
    """Pick up a sweep job where it stopped; returns the metrics of a job that finished before (skip it).

    An interrupted job gets ``ckpt_path=<job dir>/checkpoints/last.ckpt``; a failed one runs from scratch, its
    earlier files moved into ``failed-attempt-N/``. Single runs and jobs with a ``ckpt_path`` of their own are
    left as they are.
    """
    from cnnlab.launch import is_multirun  # imports torch: not for `python -m cnnlab.resume`, which only execs

    if not is_multirun() or cfg.get("ckpt_path"):
        return None
    job_dir = Path(cfg.paths.output_dir)
    state = job_state(job_dir)
    if state == "finished":
        metrics = read_metrics(job_dir)
        log.info("job %s finished before (test acc %s): skipped, its files untouched", job_dir.name,
                 _fmt(metrics.get("test_acc")))  # fmt: skip
        return metrics
    if state == "interrupted":
        log.info("job %s was interrupted: resuming from %s", job_dir.name, job_dir / LAST)
        with open_dict(cfg):
            cfg.ckpt_path = str(job_dir / LAST)
    elif state == "failed" and _is_rank_zero():
        kept = set_aside_failed_attempt(job_dir)
        log.info("job %s failed before: running it again from scratch (the failed attempt is in %s)",
                 job_dir.name, kept.name)  # fmt: skip
    return None


def set_aside_failed_attempt(job_dir: Path) -> Path:
    """Move a failed attempt's results (metrics, checkpoints, TensorBoard events) into ``failed-attempt-N/``."""
    n = 1 + sum(1 for _ in job_dir.glob("failed-attempt-*"))
    kept = job_dir / f"failed-attempt-{n}"
    kept.mkdir()
    for item in job_dir.iterdir():
        if item != kept and not item.name.startswith(("failed-attempt-", ".hydra")) and item.suffix != ".log":
            shutil.move(str(item), kept / item.name)
    return kept


def _is_rank_zero() -> bool:
    """Rank 0 of a multi-process job (SLURM tasks, DDP ranks), or a job of one process."""
    return all(os.environ.get(var, "0") == "0" for var in ("SLURM_PROCID", "LOCAL_RANK", "RANK"))


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


# ---- one run: ckpt_path=last, and resuming into the checkpoint's run dir -----------------------------------------


def resolve_resume(cfg: DictConfig) -> None:
    """``ckpt_path=last`` -> the newest run's ``last.ckpt``; a resumed run writes into its checkpoint's run dir."""
    if str(cfg.get("ckpt_path")) == "last":
        with open_dict(cfg):
            cfg.ckpt_path = str(newest_last_checkpoint(Path(cfg.paths.log_dir), cfg.run_name))
    resume_into_run_dir(cfg)


def newest_last_checkpoint(log_dir: Path, run_name: str) -> Path:
    """``<log_dir>/<run_name>/<newest run>/checkpoints/last.ckpt``; run dirs are named by their start time.

    DDP ranks that Lightning starts later resolve ``last`` again, in the run dir rank 0 chose: the same answer.
    """
    runs = sorted(p.parent.parent for p in (log_dir / run_name).glob(f"*/{LAST}"))
    if not runs:
        raise ConfigError(
            f"ckpt_path=last: no run of {run_name} under {log_dir} has a {LAST}; give the checkpoint's path "
            f"(ckpt_path=<run dir>/{LAST}) or the run_name=... and paths.log_dir=... of the run to resume."
        )
    log.info("ckpt_path=last: resuming %s, the newest of %d runs of %s", runs[-1], len(runs), run_name)
    return runs[-1] / LAST


def resume_into_run_dir(cfg: DictConfig) -> None:
    """Resuming ``<run dir>/checkpoints/*.ckpt`` writes into that run dir, so TensorBoard shows one run, not two.

    The TensorBoard logger writes into the run dir itself (no version subfolder), so the resumed steps continue
    the same curves. The dir Hydra made for this command is folded into the run dir (its log appended there, its
    ``.hydra/`` kept as ``.hydra/resumed-<time>``), and DDP ranks started later log there too. In a sweep each
    job keeps its own dir.
    """
    from cnnlab.launch import is_multirun

    ckpt_path = cfg.get("ckpt_path")
    if not ckpt_path or is_multirun():
        return
    checkpoints = Path(str(ckpt_path)).expanduser().resolve().parent
    run_dir, own_dir = checkpoints.parent, Path(cfg.paths.output_dir)
    if checkpoints.name != "checkpoints" or run_dir == own_dir.resolve():
        return
    log.info("resuming into %s", run_dir)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    if _is_rank_zero() and HydraConfig.initialized():
        fold_into(own_dir, run_dir)
        hydra_cfg = HydraConfig.get()
        with read_write(hydra_cfg), open_dict(hydra_cfg):  # DDP ranks that Lightning starts run there too
            hydra_cfg.run.dir = hydra_cfg.runtime.output_dir = str(run_dir)


def fold_into(own_dir: Path, run_dir: Path) -> None:
    """Move this command's log and ``.hydra/`` into ``run_dir`` and remove ``own_dir``, so no empty run is left."""
    for handler in logging.getLogger().handlers:
        source = Path(getattr(handler, "baseFilename", "/"))
        if isinstance(handler, logging.FileHandler) and source.parent == own_dir:
            target = run_dir / source.name
            with handler.lock:  # the log so far goes to the end of the run's log; what follows is written there
                handler.close()
                with open(target, "a") as log_file:
                    log_file.write(source.read_text())
                source.unlink()
                handler.baseFilename = str(target)
                handler.stream = handler._open()
    if (own_dir / ".hydra").is_dir():
        shutil.move(str(own_dir / ".hydra"), run_dir / ".hydra" / f"resumed-{own_dir.name}")
    try:
        own_dir.rmdir()
    except OSError:
        log.warning("%s is not empty; left in place", own_dir)


# ---- the sweep as a whole ----------------------------------------------------------------------------------------


def override_key(override: str) -> str:
    """The key an override sets: ``optimizer.lr`` for ``optimizer.lr=0.1,0.9``, ``hydra/launcher`` for a group."""
    return OverridesParser.create().parse_override(override).key_or_group


def sweep_overrides(overrides: list[str]) -> list[str]:
    """The overrides that decide a sweep's jobs: all but those saying where files are."""
    return [o for o in overrides if not override_key(o).lstrip("+~").startswith(MOVABLE_PREFIXES)]


def differences(recorded: list[str], given: list[str]) -> str:
    """What ``given`` changes in ``recorded`` (both the overrides that decide the jobs), or '' when nothing."""
    was, now = sweep_overrides(recorded), sweep_overrides(given)
    if was == now:
        return ""
    if sorted(was) == sorted(now):
        return f"the same overrides in another order, which numbers the jobs differently: give {' '.join(was)}"
    added, removed = [o for o in now if o not in was], [o for o in was if o not in now]
    parts = [f"{' '.join(added)} (not in the sweep)"] if added else []
    return "; ".join(parts + ([f"{' '.join(removed)} missing"] if removed else []))


class SweepRecord(Callback):
    """Hydra callback: a sweep started in a dir that holds a sweep already must be that sweep, with its overrides.

    Writes the record (``multirun.yaml``) for every sweeper; Hydra's basic sweeper rewrites it with the same
    content, the Optuna sweeper writes none of its own.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        record = sweep_dir / RECORD
        given = list(config.hydra.overrides.task)
        if record.is_file():
            recorded = list(OmegaConf.load(record).hydra.overrides.task)
            changed = differences(recorded, given)
            if changed:
                print(f"cnnlab: error: {sweep_dir} holds a sweep with other overrides: {changed}. Resume it with "
                      f"python -m cnnlab.resume {sweep_dir}, or start a new sweep without hydra.sweep.dir.",
                      file=sys.stderr)  # fmt: skip
                raise SystemExit(2)
            states = [job_state(p) for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()]
            log.info("resuming the sweep in %s: %d jobs finished, %d interrupted, %d failed before", sweep_dir,
                     states.count("finished"), states.count("interrupted"), states.count("failed"))  # fmt: skip
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(config, record)


def resume_command(sweep_dir: Path, extra: list[str]) -> tuple[list[str], Path]:
    """The ``cnnlab.train -m`` command that finishes the sweep in ``sweep_dir``, and the directory to run it in."""
    record = sweep_dir / RECORD
    if not record.is_file():
        raise ConfigError(
            f"{sweep_dir} is not a sweep dir (it has no {RECORD}); give the folder a sweep wrote, "
            f"e.g. logs/multirun/<date>_<time>."
        )
    try:
        hydra = OmegaConf.load(record).hydra
        recorded_task, recorded_hydra = list(hydra.overrides.task), list(hydra.overrides.hydra)
    except Exception as err:  # cut short or edited by hand
        raise ConfigError(f"{record} cannot be read as a sweep record ({type(err).__name__}: {err}).") from None
    extra_keys = {override_key(o) for o in extra}
    kept_hydra = [o for o in recorded_hydra if override_key(o) not in {"hydra.mode", "hydra.sweep.dir", *extra_keys}]
    task = [o for o in recorded_task if override_key(o) not in extra_keys]
    command = ["-m", *task, *kept_hydra, f"hydra.sweep.dir={sweep_dir.resolve()}", *extra]
    cwd = Path(str(OmegaConf.select(hydra, "runtime.cwd", default=".")))
    return command, cwd if cwd.is_dir() else Path.cwd()


def main(argv: list[str] | None = None) -> int:
    """``python -m cnnlab.resume <sweep dir> [overrides]``: finish a stopped sweep with the command that started it."""
    parser = argparse.ArgumentParser(prog="python -m cnnlab.resume", description=main.__doc__)
    parser.add_argument("sweep_dir", type=Path, help="the sweep's folder (logs/multirun/<date>_<time>)")
    parser.add_argument("overrides", nargs="*", help="for the jobs still to run, e.g. hydra.launcher.n_jobs=2")
    args = parser.parse_args(argv)
    try:
        command, cwd = resume_command(args.sweep_dir.expanduser().resolve(), args.overrides)
    except ConfigError as err:
        print(f"cnnlab: error: {err}", file=sys.stderr)
        return 2
    print("cnnlab: python -m cnnlab.train " + " ".join(command), file=sys.stderr, flush=True)
    os.chdir(cwd)  # the sweep's relative paths (data, logs) mean what they meant when it started
    os.execv(sys.executable, [sys.executable, "-m", "cnnlab.train", *command])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
