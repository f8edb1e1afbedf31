"""A run's per-epoch curves, read from its TensorBoard event files: each value at the epoch it was logged in.

Lightning logs the epoch (``epoch``) beside every metric, at the same step; a metric's value belongs to the epoch
logged at its step. So a validation run every second epoch (``trainer.check_val_every_n_epoch=2``) lands on epochs
2, 4, ..., not on 1, 2, ... Events without Lightning's epoch (written by other tools) count one per epoch. Shared by
the report's picture (``cnnlab.plot``) and the notebook API's history (``cnnlab.api``). Light: tensorboard's reader.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cnnlab.vocab import RunFiles, Tag

EPOCH_CURVES = (Tag.TRAIN_LOSS_EPOCH, Tag.TRAIN_ACC, Tag.VAL_ACC, Tag.EXAMPLES_PER_SEC)


def epoch_curves(run_dir: Path, tags: tuple[str, ...] = EPOCH_CURVES) -> dict[str, dict[int, float]]:
    """``{tag: {epoch (from 1): value}}`` for each of ``tags`` the run logged; ``lr-*`` (Lightning's learning-rate
    monitor, logged once at the start of every epoch) as ``lr``. Empty for a run without event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not any(Path(run_dir).glob(RunFiles.EVENTS)):
        return {}
    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # not a line per event file
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    logged = set(events.Tags()["scalars"])
    epoch_at = {e.step: int(e.value) for e in events.Scalars(Tag.EPOCH)} if Tag.EPOCH in logged else {}
    curves: dict[str, dict[int, float]] = {}
    for tag in (t for t in tags if t in logged):
        by_epoch: dict[int, float] = {}
        for position, event in enumerate(events.Scalars(tag)):
            by_epoch[epoch_at.get(event.step, position) + 1] = event.value  # a resumed epoch: its last value
        curves[tag] = by_epoch
    rate = next((tag for tag in sorted(logged) if tag.startswith("lr-")), None)
    if rate is not None:
        curves["lr"] = {position + 1: event.value for position, event in enumerate(events.Scalars(rate))}
    return curves
