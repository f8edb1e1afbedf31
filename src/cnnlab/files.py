"""Files written all or nothing (checkpoints, metrics.json, reports), and a failed write as one clear line."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from cnnlab.errors import WriteError


@contextmanager
def atomic_file(target: Path) -> Iterator[IO[bytes]]:
    """Write ``target`` all or nothing: a temp file in its folder, fsync, ``os.replace``, fsync of the folder.

    A kill at any moment leaves either the old file or the new one, never a truncated one; temp files left by a
    process killed mid-write are removed by the next write.
    """
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")  # same folder: the rename is atomic
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException as err:
        temp.unlink(missing_ok=True)
        failure = write_failure(target, err)
        if failure is not None:
            raise failure from err
        raise
    folder = os.open(target.parent, os.O_RDONLY)  # make the rename itself durable (a power cut)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def write_failure(target: Path, err: BaseException) -> WriteError | None:
    """A failed write as one line naming the file, the reason and the free space; None when it is no write failure.

    A full disk reaches ``torch.save`` as PyTorch's own RuntimeError ("unexpected pos ..."), not as ENOSPC.
    """
    free = next((shutil.disk_usage(f).free for f in (target.parent, *target.parents) if f.exists()), None)
    if isinstance(err, OSError) and err.strerror:
        reason = err.strerror
    elif isinstance(err, RuntimeError) and ("inline_container" in str(err) or (free is not None and free < 1 << 24)):
        reason = "No space left on device" if free is not None and free < 1 << 24 else str(err).splitlines()[0]
    else:
        return None
    room = f"{free / 2**20:,.1f} MiB free there" if free is not None else "free space unknown"
    return WriteError(
        f"cannot write {target}: {reason} ({room}). Earlier files are intact; free some space or make the folder "
        f"writable (or point paths.log_dir elsewhere), then resume with ckpt_path=last."
    )


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """``metrics.json`` and the like: a reader (a resumed sweep) sees the whole file or none."""
    with atomic_file(path) as f:
        f.write((json.dumps(data, indent=2) + "\n").encode())


def write_text_atomically(path: Path, text: str) -> None:
    """A report file: whole or not at all, and a failed write named as such."""
    with atomic_file(path) as f:
        f.write(text.encode())
