"""Every file inside a run dir, read and written here: the run record, the job's state, checkpoints, failed attempts.

A run dir (one run, or one job of a sweep) holds::

    metrics.json           the run record (``RunRecord``): written once, all or nothing, by process 0
    checkpoints/last.ckpt  the newest checkpoint, to resume from (and best-epochNN.ckpt)
    .hydra/                Hydra's record of the config and overrides
    train.log              the run's log; events.out.tfevents.*: TensorBoard
    failed-attempt-N/      an attempt that failed, set aside when the job ran again
    .lock                  held by the process that drives the dir (a sweep's, or a run's), released when it ends

The record is one typed dataclass read one way (tolerant: a bad file is named, never a traceback) and written one
way (atomic). A new run status is one entry of ``Status`` and, if a re-run treats it specially, of ``job_state``.
Light on purpose (no torch): the report and ``cnnlab.resume`` read run dirs without importing it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cnnlab.errors import CnnlabError
from cnnlab.files import write_json_atomically

log = logging.getLogger("cnnlab.rundir")

METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
LAST = Path(CHECKPOINTS) / "last.ckpt"
LOCK = ".lock"
FAILED_ATTEMPT = "failed-attempt-"


class Status:
    """How a run ended, as its record says (plain strings in the JSON)."""

    OK = "ok"  # trained and tested
    FAILED = "failed"  # crashed or refused (its error is in the record): a re-run of the sweep runs it again
    INTERRUPTED = "interrupted"  # stopped by a signal after saving last.ckpt: a re-run resumes it
    PRUNED = "pruned"  # stopped by a search's pruner after an epoch (last.ckpt kept, not tested): a re-run skips it


@dataclass
class RunRecord:
    """``metrics.json``: a run's results, how long it took, and how it ended."""

    params: int | None = None
    macs: int | None = None  # multiply-adds per example (cnnlab.inspect's count)
    val_acc: float | None = None  # the selection metric: what sweeps maximise and reports rank by
    test_acc: float | None = None
    train_acc: float | None = None
    train_loss: float | None = None
    examples_per_sec: float | None = None  # training examples per second of the whole job (every DDP rank)
    startup_s: float | None = None  # from the job's start (a process's first job: the process start) to its first step
    wall_s: float | None = None
    epochs: int | None = None
    status: str = Status.OK
    tags: list[str] = field(default_factory=list)
    error: str | None = None  # a failed run's error
    eval: dict[str, dict[str, Any]] = field(default_factory=dict)  # cnnlab.eval's results, by checkpoint

    def as_json(self) -> dict[str, Any]:
        """The record as written: every result key; ``error`` and ``eval`` only when set."""
        data = dataclasses.asdict(self)
        for optional in ("error", "eval"):
            if not data[optional]:
                del data[optional]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        """A record from its JSON (records from before a key existed get its default; unknown keys are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


RESULT_KEYS = tuple(f.name for f in dataclasses.fields(RunRecord) if f.name not in ("tags", "error", "eval", "status"))


class BadRecord(CnnlabError):
    """A ``metrics.json`` that is not a run record (not JSON, or not an object)."""


def record_path(run_dir: Path | str) -> Path:
    return Path(run_dir) / METRICS


def read_record(run_dir: Path | str) -> RunRecord | None:
    """The run's record; None when it has none; ``BadRecord`` naming the file when it cannot be read."""
    path = record_path(run_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        why = f"not valid JSON: {err}" if isinstance(err, ValueError) else err.strerror
        raise BadRecord(f"{path} cannot be read ({why}); move it away to run that job again.") from None
    if not isinstance(data, dict):
        raise BadRecord(f"{path} holds {type(data).__name__}, not a run record; move it away to run that job again.")
    return RunRecord.from_json(data)


def write_record(run_dir: Path | str, record: RunRecord) -> Path:
    """Write the run's record, all or nothing (a reader sees the old file or the new one)."""
    path = record_path(run_dir)
    write_json_atomically(path, record.as_json())
    return path


def record_failure(run_dir: Path | str, err: BaseException, wall_s: float) -> None:
    """A crashed job's record (status failed, its error, no results), by process 0; the log gets the traceback unless
    the error is a user mistake (a ``CnnlabError`` says all there is to say)."""
    if not is_rank_zero():
        return
    error = str(err) if isinstance(err, CnnlabError) else f"{type(err).__name__}: {err}"
    trace = "" if isinstance(err, CnnlabError) else "\n" + "".join(traceback.format_exception(err))
    log.error("job failed, the sweep goes on: %s%s", error, trace)
    write_record(run_dir, RunRecord(wall_s=wall_s, status=Status.FAILED, error=error))


def add_eval(run_dir: Path | str, ckpt_key: str, result: dict[str, Any]) -> Path:
    """Add ``result`` to the run's record under ``eval.<ckpt_key>``; training results are kept, and ``test_acc`` is
    set only where training did not (an interrupted run)."""
    record = read_record(run_dir) or RunRecord(status=Status.INTERRUPTED)
    if record.test_acc is None:
        record.test_acc = result["test_acc"]
    record.eval[ckpt_key] = result
    return write_record(run_dir, record)


def job_state(run_dir: Path) -> str:
    """What a re-run of the sweep does with this job: ``finished`` (skip it: it ended ok or pruned), ``failed`` (run
    it again from scratch), ``interrupted`` (resume it from its ``last.ckpt``) or ``new`` (run it)."""
    try:
        record = read_record(run_dir)
    except BadRecord:
        record = None  # cut short by hand or by a full disk: what is on disk decides
    if record is None or record.status == Status.INTERRUPTED:
        return "interrupted" if (run_dir / LAST).is_file() else "new"
    return "finished" if record.status in (Status.OK, Status.PRUNED) else "failed"


def runs_with_checkpoint(log_dir: Path, run_name: str) -> list[Path]:
    """The run dirs of ``run_name`` under ``log_dir`` that have a ``last.ckpt``, oldest first (named by time)."""
    return sorted(p.parent.parent for p in (log_dir / run_name).glob(f"*/{LAST}"))


def run_dir_of(ckpt_path: Path | str) -> Path:
    """The run dir of a checkpoint: the folder that holds ``checkpoints/`` (else the checkpoint's own folder)."""
    folder = Path(ckpt_path).expanduser().resolve().parent
    return folder.parent if folder.name == CHECKPOINTS else folder


def set_aside_failed_attempt(run_dir: Path) -> Path:
    """Move a failed attempt's results (record, checkpoints, TensorBoard events) into ``failed-attempt-N/``."""
    n = 1 + sum(1 for _ in run_dir.glob(f"{FAILED_ATTEMPT}*"))
    kept = run_dir / f"{FAILED_ATTEMPT}{n}"
    kept.mkdir()
    for item in run_dir.iterdir():
        if item.name.startswith((FAILED_ATTEMPT, ".hydra", LOCK)) or item.suffix == ".log":
            continue
        shutil.move(str(item), kept / item.name)
    return kept


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
                handler.stream = handler._open()  # logging has no public way to reopen a handler on a new file
    if (own_dir / ".hydra").is_dir():
        shutil.move(str(own_dir / ".hydra"), run_dir / ".hydra" / f"resumed-{own_dir.name}")
    try:
        own_dir.rmdir()
    except OSError:
        log.warning("%s is not empty; left in place", own_dir)


def is_rank_zero() -> bool:
    """Process 0 of a job (SLURM tasks, DDP ranks), or a job of one process: the one that writes its run dir."""
    return all(os.environ.get(var, "0") == "0" for var in ("SLURM_PROCID", "LOCAL_RANK", "RANK"))


# ---- one driver per dir ------------------------------------------------------------------------------------------


class DirBusy(CnnlabError):
    """A sweep dir or run dir that another live process drives."""


def hold(folder: Path, what: str) -> IO[str]:
    """Take ``folder`` for this process (its ``.lock``, with who holds it) until the returned file is closed or the
    process ends: the operating system releases the lock of a killed process, so a dir is never left stuck.

    ``DirBusy`` names the live process that holds it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK, "a+")  # noqa: SIM115 (held open: the lock lasts as long as the file)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise DirBusy(
            f"{folder} is being {what} by {holder}; wait for it to end (or stop it), then run this again."
        ) from None
    handle.seek(0)
    handle.truncate()
    command = " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv))[:300]
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    handle.write(f"process {os.getpid()} on {socket.gethostname()} (started {started}: {command})\n")
    handle.flush()
    return handle
