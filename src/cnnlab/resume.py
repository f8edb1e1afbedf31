"""Finish a stopped sweep: ``python -m cnnlab.resume <sweep dir>``, or the same command with ``hydra.sweep.dir``.

A sweep re-run in its dir skips the jobs that finished, resumes interrupted ones from their ``last.ckpt`` and runs
failed or never-started ones from scratch (each job decides in ``cnnlab.plan``). Here: the sweep's record, and one
driver per sweep dir (a second sweep there is refused). A re-run must be the sweep that ran, or a finished job's
result would stand for a config that no longer runs, and an edited grid would number its jobs anew: so it is refused,
in one line naming what changed, when its command-line overrides, its sweeper (the grid's or the search space's
params, the sampler, the pruner: all but how many trials and how many at once) or the config a finished or
interrupted job composes now (its fingerprint, ``cnnlab.fingerprint``) differ from the sweep's.
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

from cnnlab.environment import tell_the_api
from cnnlab.errors import ConfigError, refuse
from cnnlab.fingerprint import changes, identity
from cnnlab.rundir import BadRecord, DirBusy, hold, job_state, read_record
from cnnlab.search_checks import check_study_file
from cnnlab.vocab import JobState, RunFiles, SweepFiles

log = logging.getLogger("cnnlab.resume")

# Sweeper settings a resume may change: how many trials in all (a search asks only for the missing ones) and at once,
# the wall-time budget, which extras a trial does (each trial_callbacks.<name>) and how many of TPE's proposals a trial
# is the cheapest of (which points run, not how one is judged); none decides a trial's result.
RESUMABLE_SWEEPER_KEYS = ("n_trials", "n_jobs", "budget_s", "trial_callbacks", "cheapest_of")
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


def sweeper_changes(recorded: DictConfig, given: DictConfig) -> str:
    """What differs between two sweepers' settings (the grid's or the search space's params, the sweeper itself, the
    sampler, the pruner, ...), but for ``RESUMABLE_SWEEPER_KEYS``; '' when nothing."""
    was, now = (flat_settings(OmegaConf.to_container(c, resolve=False), "hydra.sweeper.") for c in (recorded, given))
    keys = [k for k in dict.fromkeys([*was, *now])
            if k.removeprefix("hydra.sweeper.").split(".")[0] not in RESUMABLE_SWEEPER_KEYS
            and was.get(k) != now.get(k)]  # fmt: skip
    return ", ".join(f"{k}: {was.get(k, '(unset)')} -> {now.get(k, '(unset)')}" for k in keys)


def flat_settings(node: Any, prefix: str) -> dict[str, Any]:
    """A nested mapping as ``{prefix + dotted key: value}``."""
    if not isinstance(node, dict) or not node:
        return {prefix.rstrip("."): node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flat_settings(value, f"{prefix}{key}."))
    return flat


def composed_identity(overrides: list[str]) -> dict[str, Any]:
    """The identity (``cnnlab.fingerprint``) of the config a job with ``overrides`` composes now, in this Hydra app.

    A config is resolved against HydraConfig (``${hydra:runtime.choices.model}``, say): the job's own is set while
    it resolves, then the sweep's is put back.
    """
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    config = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    holder = HydraConfig.instance()
    sweeps = holder.cfg
    holder.set_config(config)
    try:
        return identity(config)
    finally:
        holder.cfg = sweeps


def job_changes(sweep_dir: Path) -> str:
    """The first finished or interrupted job whose config composes otherwise now than when it ran (its record's
    identity), in words, with how many others changed; '' when none did (or no job's record has an identity)."""
    changed = []
    for job in sorted(p for p in sweep_dir.iterdir() if (p / RunFiles.OVERRIDES).is_file()):
        if job_state(job) not in (JobState.FINISHED, JobState.INTERRUPTED):
            continue
        try:
            record = read_record(job)
        except BadRecord:
            continue
        if record is None or not record.identity:  # written before runs had an identity: not compared
            continue
        overrides = [str(o) for o in OmegaConf.load(job / RunFiles.OVERRIDES)]
        now = composed_identity(overrides)
        if now != record.identity:
            changed.append(f"job {job.name} composes {changes(record.identity, now)}")
    if not changed:
        return ""
    more = f" (and {len(changed) - 1} more jobs)" if len(changed) > 1 else ""
    return changed[0] + more


class SweepRecord(Callback):
    """Hydra callback: one process drives a sweep dir, and a sweep started in a dir that holds a sweep already must
    be that sweep: its overrides, its sweeper, and its jobs' configs as they ran.

    Writes the record (``multirun.yaml``) for every sweeper; Hydra's basic sweeper rewrites it with the same
    content, the Optuna sweeper writes none of its own.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:  # held until the sweep ends (or its process does: a killed sweep leaves no stale lock)
            self.lock = hold(sweep_dir, "swept")
        except DirBusy as busy:
            refuse(str(busy))
        tell_the_api(sweep_dir=sweep_dir)
        record = sweep_dir / SweepFiles.RECORD
        if (sweep_dir / SweepFiles.STUDY).exists():  # a search's study that cannot be read: refused before the record
            try:  # is rewritten (a failed resume leaves the sweep's files as they were)
                check_study_file(sweep_dir / SweepFiles.STUDY)
            except ConfigError as err:
                refuse(str(err))
        if record.is_file():
            recorded = OmegaConf.load(record)
            changed = differences(list(recorded.hydra.overrides.task), list(config.hydra.overrides.task))
            what = "other overrides"
            if not changed:
                changed, what = sweeper_changes(recorded.hydra.sweeper, config.hydra.sweeper), "another sweeper"
            if not changed:
                changed, what = job_changes(sweep_dir), "jobs whose configs have changed since they ran"
            if changed:
                refuse(f"{sweep_dir} holds a sweep with {what}: {changed}. Resume it as it ran (python -m "
                       f"cnnlab.resume {sweep_dir}, the config files as they were), or start a new sweep without "
                       f"hydra.sweep.dir.")  # fmt: skip
            states = [job_state(p) for p in sweep_dir.iterdir() if (p / RunFiles.HYDRA).is_dir()]
            log.info("resuming the sweep in %s: %d jobs finished, %d interrupted, %d failed before", sweep_dir,
                     states.count(JobState.FINISHED), states.count(JobState.INTERRUPTED),
                     states.count(JobState.FAILED))  # fmt: skip
        OmegaConf.save(config, record)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.lock.close()

    def __getstate__(self) -> dict[str, Any]:
        return {}  # launchers pickle Hydra's callbacks for their jobs: the lock stays with the sweep's process


def resume_command(sweep_dir: Path, extra: list[str]) -> tuple[list[str], Path]:
    """The ``cnnlab.train -m`` command that finishes the sweep in ``sweep_dir``, and the directory to run it in."""
    record = sweep_dir / SweepFiles.RECORD
    if not record.is_file():
        raise ConfigError(
            f"{sweep_dir} is not a sweep dir (it has no {SweepFiles.RECORD}); give the folder a sweep wrote, "
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
    sources = OmegaConf.select(hydra, "runtime.config_sources", default=[])  # a user's --config-dir: "command-line"
    config_dirs = [f"--config-dir={s.path}" for s in sources if s.get("provider") == "command-line"]
    command = [*config_dirs, "-m", *task, *kept_hydra, f"hydra.sweep.dir={sweep_dir.resolve()}", *extra]
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
