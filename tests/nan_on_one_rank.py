"""A test callback for DDP runs (importable by the ranks Lightning starts: on their PYTHONPATH)."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class NanOnOneRank(Callback):
    """Make one rank's training batch NaN at one step, so that only that rank meets a non-finite loss first."""

    def __init__(self, rank: int = 1, step: int = 2) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            batch[0].fill_(float("nan"))  # a gathered copy (the data set is untouched); its step counts as step + 1
