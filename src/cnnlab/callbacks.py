"""Lightning callbacks of cnnlab's own: what Lightning's built-in callbacks do not measure."""

from __future__ import annotations

import time

import psutil
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EMAWeightAveraging

from cnnlab.vocab import Tag


class ExamplesPerSecond(Callback):
    """Training throughput as the seeds report it: examples divided by the time spent in training steps.

    Sums the time from each batch's start to its end (on a GPU, one sync at each epoch's last batch, none per
    step), logs ``train/examples_per_sec`` per epoch, and keeps the run's totals and the start-up time (the job's
    start, ``job_start``, to its first step) for ``metrics.json``. Under DDP both are the whole job's: the ranks'
    rates are summed each epoch, and at the end all ranks' examples over the slowest rank's time.
    """

    def __init__(self) -> None:
        self.examples = 0
        self.seconds = 0.0
        self.job_start: float | None = None  # set by cnnlab.train from the job's plan; else the process start
        self.startup_s: float | None = None
        self.train_s: float | None = None  # the first training step to training's end (validation included)
        self._first_step = 0.0
        self._job_rate: float | None = None  # the whole job's, once training ended
        self._batch_start = 0.0
        self._epoch_examples = 0
        self._epoch_seconds = 0.0

    @property
    def examples_per_sec(self) -> float:
        if self._job_rate is not None:
            return self._job_rate
        return self.examples / self.seconds if self.seconds else 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self.startup_s is None:
            start = self.job_start if self.job_start is not None else psutil.Process().create_time()
            self.startup_s = time.time() - start
            self._first_step = time.perf_counter()
        self._batch_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if pl_module.device.type == "cuda" and batch_idx == trainer.num_training_batches - 1:
            torch.cuda.synchronize(pl_module.device)
        self._epoch_seconds += time.perf_counter() - self._batch_start
        self._epoch_examples += len(batch[-1])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._epoch_seconds:
            return
        rate = self._epoch_examples / self._epoch_seconds  # this rank's; summed over the ranks, the job's
        pl_module.log(Tag.EXAMPLES_PER_SEC, rate, on_epoch=True, sync_dist=True, reduce_fx="sum")
        self.examples += self._epoch_examples
        self.seconds += self._epoch_seconds
        self._epoch_examples, self._epoch_seconds = 0, 0.0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.startup_s is not None:
            self.train_s = time.perf_counter() - self._first_step
        if trainer.world_size > 1:  # one all-reduce each, once per run
            device = pl_module.device
            examples = trainer.strategy.reduce(torch.tensor(float(self.examples), device=device), reduce_op="sum")
            seconds = trainer.strategy.reduce(torch.tensor(self.seconds, device=device), reduce_op="max")
            self._job_rate = float(examples) / float(seconds) if float(seconds) else 0.0

    def state_dict(self) -> dict:
        return {"examples": self.examples, "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.examples, self.seconds = state_dict["examples"], state_dict["seconds"]


class CheckpointedMetrics(Callback):
    """The last epoch's metrics of the run record (validation accuracy, training accuracy and loss), kept in every
    checkpoint: a run resumed after its last epoch (killed while it tested, or while it wrote its record) trains no
    more and logs none of them again, yet its record holds them. ``cnnlab.run`` adds it to every run.

    Taken at each epoch's end and each validation's end, the moments Lightning has them in ``callback_metrics``
    (before the epoch-end checkpoint is written); a step checkpoint carries the previous epoch's.
    """

    KEPT = (Tag.VAL_ACC, Tag.TRAIN_ACC, Tag.TRAIN_LOSS_EPOCH)

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def _take(self, trainer: pl.Trainer) -> None:
        if not trainer.sanity_checking:  # one host read per epoch of values Lightning has already reduced
            logged = trainer.callback_metrics
            self.metrics.update({key: float(logged[key]) for key in self.KEPT if key in logged})

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take(trainer)

    def state_dict(self) -> dict:
        return {"metrics": dict(self.metrics)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.metrics = dict(state_dict.get("metrics") or {})


def ema_weights(decay: float | None) -> EMAWeightAveraging | None:
    """Lightning's exponential moving average of the weights (and BN statistics) when ``ema`` is set; else None.

    Validation and test run on the averaged weights, checkpoints hold them as their ``state_dict`` (the raw
    weights beside them, to resume), so eval and predict use them too.
    """
    return None if decay is None else EMAWeightAveraging(decay=float(decay))
