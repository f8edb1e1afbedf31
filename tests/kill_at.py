"""A job that kills its own process (SIGKILL, as a power cut would) at a chosen point, once per point: the
deterministic stand-in for a kill at any moment, for the tests of resume. A job gets it as a callback:
``+callbacks.kill_at={_target_: kill_at.KillAt, points: [step, epoch], markers: <dir>}``; a point it has killed at is
marked in ``markers``, so the resumed job goes past it.

Points, in the order a job meets them: ``step`` (after training step 7 of epoch 0: a step checkpoint at 5),
``validation`` (epoch 1's validation, started), ``epoch`` (epoch 1 started: epoch 0's checkpoint written),
``test`` (the test started: training done), ``record`` (``metrics.json`` half written).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

POINTS = ("step", "validation", "epoch", "test", "record")


class KillAt(pl.Callback):
    def __init__(self, points: list[str], markers: str, step: int = 7) -> None:
        unknown = set(points) - set(POINTS)
        assert not unknown, unknown
        self.points, self.markers, self.step = list(points), Path(markers), step
        self.markers.mkdir(parents=True, exist_ok=True)
        if "record" in self.points:
            self._die_while_writing_the_record()

    def kill(self, point: str) -> None:
        marker = self.markers / point
        if point in self.points and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.current_epoch == 0 and trainer.global_step == self.step:
            self.kill("step")

    def on_validation_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking and trainer.current_epoch >= 1:
            self.kill("validation")

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.current_epoch >= 1:
            self.kill("epoch")

    def on_test_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.kill("test")

    def _die_while_writing_the_record(self) -> None:
        """A finished run's ``metrics.json``: half of it into the temp file, then the kill (before the rename)."""
        from cnnlab import files, rundir

        write = rundir.write_json_atomically

        def half_then_killed(path: Path, data: dict) -> None:
            if path.name == "metrics.json" and data.get("status") in ("ok", "pruned"):
                with files.atomic_file(path) as f:
                    f.write(b'{"status": "ok", "val')
                    f.flush()
                    self.kill("record")
            write(path, data)

        rundir.write_json_atomically = half_then_killed
