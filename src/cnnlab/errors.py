"""The errors cnnlab raises for user mistakes: each message names the setting and the fix."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

# The exit statuses of cnnlab's commands (README, "When things go wrong"); a signal's: 128 + its number.
EXIT_USER_ERROR = 2  # a mistake in the command, the config or the data: one line, nothing run
EXIT_JOBS_FAILED = 3  # a sweep or search ran every job; some failed (report.md names them and their errors)
EXIT_NO_JOB_COMPLETED = 4  # a sweep or search in which no job completed


class CnnlabError(Exception):
    """A user-facing error: printed as one clear message, without a traceback."""


class ConfigError(CnnlabError, ValueError):
    """A composed config that cannot work (a range, a size, an unknown choice)."""


class ModelSpecError(ConfigError):
    """A model spec that cannot be built: a kernel larger than its input, an unknown activation."""


class DataError(CnnlabError):
    """Data that cannot be found, read or trusted: missing, truncated or corrupt IDX files."""


class WriteError(CnnlabError):
    """A file cnnlab must write (a checkpoint, metrics.json, a report) that cannot be written: a full disk, no
    permission, a read-only folder."""


class RunInterrupted(CnnlabError):
    """A run stopped by SIGINT or SIGTERM, after saving a checkpoint to resume from."""

    exit_code = 130  # the shell's convention, 128 + the signal number: 130 for SIGINT, 143 for SIGTERM

    @classmethod
    def at(cls, signal_name: str, trainer: Any, ckpt_path: str | None) -> RunInterrupted:
        """The error for a run stopped by ``signal_name``; ``ckpt_path`` is saved by ``InterruptCheckpoint``."""
        saved = (
            f"saved {ckpt_path}; resume with the same overrides and ckpt_path={ckpt_path}"
            if ckpt_path
            else "no checkpoint was saved (callbacks.interrupt_checkpoint is off)"
        )
        where = f"at step {trainer.global_step} (epoch {trainer.current_epoch})"
        error = cls(f"run interrupted by {signal_name} {where}; {saved}.")
        error.exit_code = 128 + signal.Signals[signal_name].value
        return error


def user_error(err: BaseException) -> CnnlabError | None:
    """The ``CnnlabError`` behind an exception (Hydra's ``instantiate`` wraps them), or None for a bug."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, CnnlabError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a user mistake into one ``cnnlab: error: ...`` line and exit status 2 (CNNLAB_DEBUG=1: traceback)."""
    try:
        yield
    except Exception as err:
        problem = user_error(err)
        if problem is None or os.environ.get("CNNLAB_DEBUG") == "1":
            raise
        refuse(str(problem))


def refuse(message: str) -> NoReturn:
    """A user mistake found outside a job (a Hydra callback, a plugin): one ``cnnlab: error:`` line, exit 2."""
    print(f"cnnlab: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR) from None
