"""Every file inside a run dir, read and written here: the run record, the job's state, checkpoints, failed attempts.

A run dir (one run, or one job of a sweep) holds (file names: ``cnnlab.vocab.RunFiles``)::

    metrics.json           the run record (``RunRecord``): written all or nothing, by process 0, under .metrics.lock
    checkpoints/last.ckpt  the newest checkpoint, to resume from (and best-epochNN.ckpt)
    .hydra/                Hydra's record of the config and overrides
    train.log              the run's log; events.out.tfevents.*: TensorBoard
    failed-attempt-N/      an attempt that failed, set aside when the job ran again
    .lock                  held by the process that drives the dir (a run, a sweep's job), released when it ends

The record is one typed dataclass read one way (tolerant: a bad file is named, never a traceback) and written one
way (atomic, under the record's lock: a ``cnnlab.eval`` beside a running job adds to it, never loses a write). A new
run status is one entry of ``cnnlab.vocab.Status`` and, if a re-run treats it specially, of ``job_state``.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cnnlab.errors import CnnlabError
from cnnlab.files import write_failure, write_json_atomically
from cnnlab.vocab import FINISHED, JobState, RunFiles, Status

log = logging.getLogger("cnnlab.rundir")

LAST = Path(RunFiles.LAST)


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
    train_s: float | None = None  # from the first training step to training's end: the epochs, validation included
    wall_s: float | None = None
    epochs: int | None = None
    status: str = Status.OK  # a cnnlab.vocab.Status
    tags: list[str] = field(default_factory=list)
    fingerprint: str | None = None  # of what decides the result (cnnlab.fingerprint); None in records from before it
    identity: dict[str, Any] | None = None  # the settings the fingerprint was made of, flat (optimizer.lr: 0.1)
    error: str | None = None  # a failed run's error
    eval: dict[str, dict[str, Any]] = field(default_factory=dict)  # cnnlab.eval's results, by checkpoint

    def as_json(self) -> dict[str, Any]:
        """The record as written: every result key; the others only when set."""
        data = dataclasses.asdict(self)
        data["status"] = str(self.status)
        for optional in ("fingerprint", "identity", "error", "eval"):
            if not data[optional]:
                del data[optional]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        """A record from its JSON (records from before a key existed get its default; unknown keys are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


RESULT_KEYS = tuple(f.name for f in dataclasses.fields(RunRecord)
                    if f.name not in ("tags", "fingerprint", "identity", "error", "eval", "status"))  # fmt: skip


class BadRecord(CnnlabError):
    """A ``metrics.json`` that is not a run record (not JSON, or not an object)."""


def record_path(run_dir: Path | str) -> Path:
    return Path(run_dir) / RunFiles.METRICS


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


@contextmanager
def record_lock(run_dir: Path | str) -> Iterator[None]:
    """Hold the run's record for a read and a rewrite (a run's last write, ``cnnlab.eval``): one writer at a time."""
    folder = Path(run_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / RunFiles.RECORD_LOCK, "a")  # noqa: SIM115 (closed below; the OS releases a dead one)
    except OSError as err:  # a read-only or full disk: named as the record's write would be
        raise (write_failure(record_path(folder), err) or err) from err
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def write_record(run_dir: Path | str, record: RunRecord) -> Path:
    """Write the run's record, all or nothing (a reader sees the old file or the new one); ``cnnlab.eval`` entries
    already there (an eval of a checkpoint while the run went on) are kept."""
    path = record_path(run_dir)
    with record_lock(run_dir):
        try:
            earlier = read_record(run_dir)
        except BadRecord:
            earlier = None
        if earlier is not None and earlier.eval:
            record.eval = {**earlier.eval, **record.eval}
        write_json_atomically(path, record.as_json())
    return path


def record_failure(run_dir: Path | str, err: BaseException, wall_s: float, fingerprint: tuple | None = None) -> None:
    """A crashed job's record (status failed, its error, no results; its ``fingerprint`` and identity when known);
    the log gets the traceback unless the error is a user mistake (a ``CnnlabError`` says all there is to say).
    Process 0's to write (the caller knows its rank)."""
    error = str(err) if isinstance(err, CnnlabError) else f"{type(err).__name__}: {err}"
    trace = "" if isinstance(err, CnnlabError) else "\n" + "".join(traceback.format_exception(err))
    log.error("job failed, the sweep goes on: %s%s", error, trace)
    known, settings = fingerprint or (None, None)
    write_record(run_dir, RunRecord(wall_s=wall_s, status=Status.FAILED, error=error, fingerprint=known,
                                    identity=settings))  # fmt: skip


def add_eval(run_dir: Path | str, ckpt_key: str, result: dict[str, Any]) -> Path:
    """Add ``result`` to the run's record under ``eval.<ckpt_key>``; training results are kept, and ``test_acc`` is
    set only where training did not (an interrupted run). Under the record's lock: a run writing its record meanwhile
    waits, then keeps this entry."""
    with record_lock(run_dir):
        record = read_record(run_dir) or RunRecord(status=Status.INTERRUPTED)
        if record.test_acc is None:
            record.test_acc = result["test_acc"]
        record.eval[ckpt_key] = result
        path = record_path(run_dir)
        write_json_atomically(path, record.as_json())
    return path


def job_state(run_dir: Path) -> JobState:
    """What a re-run of the sweep does with this job: finished (skip it: it ended ok or pruned), failed (run it again
    from scratch), interrupted (resume it from its ``last.ckpt``) or new (run it)."""
    try:
        record = read_record(run_dir)
    except BadRecord:
        record = None  # cut short by hand or by a full disk: what is on disk decides
    if record is None or record.status == Status.INTERRUPTED:
        return JobState.INTERRUPTED if (run_dir / LAST).is_file() else JobState.NEW
    return JobState.FINISHED if record.status in FINISHED else JobState.FAILED


def runs_with_checkpoint(log_dir: Path, run_name: str) -> list[Path]:
    """The run dirs of ``run_name`` under ``log_dir`` that have a ``last.ckpt``, oldest first (named by time)."""
    return sorted(p.parent.parent for p in (log_dir / run_name).glob(f"*/{RunFiles.LAST}"))


def run_dir_of(ckpt_path: Path | str) -> Path:
    """The run dir of a checkpoint: the folder that holds ``checkpoints/`` (else the checkpoint's own folder)."""
    folder = Path(ckpt_path).expanduser().resolve().parent
    return folder.parent if folder.name == RunFiles.CHECKPOINTS else folder


def is_failed_attempt(path: Path) -> bool:
    """Whether ``path`` lies in a failed attempt set aside (``<job>/failed-attempt-N/...``): not a run of its own."""
    return any(part.startswith(RunFiles.FAILED_ATTEMPT) for part in path.parts)


def set_aside_failed_attempt(run_dir: Path) -> Path:
    """Move a failed attempt's results (record, checkpoints, TensorBoard events) into ``failed-attempt-N/``."""
    n = 1 + sum(1 for _ in run_dir.glob(f"{RunFiles.FAILED_ATTEMPT}*"))
    kept = run_dir / f"{RunFiles.FAILED_ATTEMPT}{n}"
    kept.mkdir()
    for item in run_dir.iterdir():
        if item.name.startswith((RunFiles.FAILED_ATTEMPT, RunFiles.HYDRA, RunFiles.LOCK, RunFiles.RECORD_LOCK)):
            continue
        if item.suffix == ".log":
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
    if (own_dir / RunFiles.HYDRA).is_dir():
        shutil.move(str(own_dir / RunFiles.HYDRA), run_dir / RunFiles.HYDRA / f"resumed-{own_dir.name}")
    try:
        own_dir.rmdir()
    except OSError:
        log.warning("%s is not empty; left in place", own_dir)


# ---- one driver per dir ------------------------------------------------------------------------------------------


class DirBusy(CnnlabError):
    """A sweep dir or run dir that another live process drives."""


def hold(folder: Path, what: str) -> IO[str]:
    """Take ``folder`` for this process (its ``.lock``, with who holds it) until the returned file is closed or the
    process ends: the operating system releases the lock of a killed process, so a dir is never left stuck.

    ``DirBusy`` names the live process that holds it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / RunFiles.LOCK, "a+")  # noqa: SIM115 (held open: the lock lasts as long as the file)
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


def is_held(folder: Path) -> bool:
    """Whether a live process drives ``folder`` now (holds its ``.lock``): a run still training, say."""
    path = folder / RunFiles.LOCK
    if not path.is_file():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False
