"""Finish a stopped sweep: ``python -m cnnlab.resume <sweep dir>``, or the same command with ``hydra.sweep.dir``.

A sweep re-run in its dir skips the jobs that finished, resumes interrupted ones from their ``last.ckpt`` and runs
failed or never-started ones from scratch (each job decides in ``cnnlab.plan``). Here: the sweep's record, which
refuses a re-run with other overrides, and one driver per sweep dir (a second sweep there is refused).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import ConfigError
from cnnlab.rundir import DirBusy, hold, job_state

log = logging.getLogger("cnnlab.resume")

RECORD = "multirun.yaml"  # how the sweep was started: Hydra's record of its config and overrides
# Overrides that may differ between a sweep and its resume: where things are, not what runs.
MOVABLE_PREFIXES = ("paths.", "data.system_dir", "data.data_dir")


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
    """Hydra callback: one process drives a sweep dir, and a sweep started in a dir that holds a sweep already must
    be that sweep, with its overrides.

    Writes the record (``multirun.yaml``) for every sweeper; Hydra's basic sweeper rewrites it with the same
    content, the Optuna sweeper writes none of its own.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:  # held until the sweep ends (or its process does: a killed sweep leaves no stale lock)
            self.lock = hold(sweep_dir, "swept")
        except DirBusy as busy:
            print(f"cnnlab: error: {busy}", file=sys.stderr)
            raise SystemExit(2) from None
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
        OmegaConf.save(config, record)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.lock.close()

    def __getstate__(self) -> dict[str, Any]:
        return {}  # launchers pickle Hydra's callbacks for their jobs: the lock stays with the sweep's process


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
