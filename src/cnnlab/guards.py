"""Guards that keep a run from dying silently or losing work.

- ``AtomicCheckpointIO``: checkpoints are written to a temp file beside the target and renamed into place, so a
  kill during a save never leaves a corrupt ``last.ckpt``; loads use ``weights_only=True``.
- ``DivergenceGuard``: stops the run when the training loss becomes NaN or infinite, naming the step.
- ``InterruptCheckpoint``: Ctrl-C (SIGINT) or SIGTERM stops the run after the current step and saves ``last.ckpt``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from cnnlab.errors import CnnlabError, RunInterrupted
from cnnlab.files import atomic_file

log = logging.getLogger("cnnlab.guards")


class TrainingDiverged(CnnlabError):
    """The training loss became NaN or infinite: the run cannot recover, so it stops."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temp file in the target's folder, fsync, then ``os.replace`` (atomic on POSIX).

    Lightning's own save goes through an fsspec transaction whose temp file lives in the system temp dir: when
    that is another file system, the final move is a copy, and a kill during it leaves a truncated file.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own transaction
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_file(Path(path)) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = "cpu", weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load onto the CPU (as Lightning does), tensors and plain data only: ``weights_only=True`` unless asked."""
        return super().load_checkpoint(
            path, map_location=map_location, weights_only=True if weights_only is None else weights_only
        )


class DivergenceGuard(Callback):
    """Stop the run when the training loss is NaN or infinite, naming the step and the likely fix.

    The first non-finite step is recorded on the loss's device each step (no host sync); the host reads that
    record every ``check_every_n_steps`` steps, at each epoch end and before every checkpoint save, so a diverged
    model never overwrites a good checkpoint. ``None`` reads it every step on the CPU (free there) and every
    ``trainer.log_every_n_steps`` steps on an accelerator (one sync per log step, which Lightning does anyway).
    """

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        self.check_every_n_steps = check_every_n_steps
        self._every = 1
        self._first_bad_step: torch.Tensor | None = None
        self._first_bad_loss: torch.Tensor | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        on_cpu = pl_module.device.type == "cpu"
        self._every = self.check_every_n_steps or (1 if on_cpu else max(1, trainer.log_every_n_steps))
        self._first_bad_step = torch.full((), -1, dtype=torch.long, device=pl_module.device)
        self._first_bad_loss = torch.zeros((), device=pl_module.device)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None or self._first_bad_step is None:
            return
        loss = loss.detach().float()
        first = (self._first_bad_step < 0) & ~torch.isfinite(loss)
        self._first_bad_step = torch.where(first, trainer.global_step, self._first_bad_step)
        self._first_bad_loss = torch.where(first, loss, self._first_bad_loss)
        if trainer.global_step % self._every == 0:
            self.check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.check(trainer)
        weights = [p.detach() for p in pl_module.parameters()]
        if weights and not bool(torch.stack([torch.isfinite(w).all() for w in weights]).all()):
            self._stop(trainer, "the weights became NaN or infinite", trainer.global_step)

    def check(self, trainer: pl.Trainer) -> None:
        """Raise ``TrainingDiverged`` if a step so far had a non-finite loss (one host sync).

        Under DDP the ranks decide together (every rank calls this after the same steps): a rank that stopped alone
        would leave the others waiting in their next all-reduce.
        """
        if self._first_bad_step is None:
            return
        bad = int(self._first_bad_step) >= 0  # the one host read of a check that finds nothing
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(bad, all=False):
            local = self._first_bad_step if bad else torch.full_like(self._first_bad_step, 2**62)
            step = int(trainer.strategy.reduce(local, reduce_op="min"))  # the first bad step of any rank
            what = self._what() if bad else "the training loss of another process became NaN or infinite"
            self._stop(trainer, what, step)
        if bad:
            self._stop(trainer, self._what(), int(self._first_bad_step))

    def _what(self) -> str:
        return f"the training loss became {float(self._first_bad_loss)}"

    def _stop(self, trainer: pl.Trainer, what: str, step: int) -> None:
        self._first_bad_step = None  # report once, even if a save is attempted while the error unwinds
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        raise TrainingDiverged(
            f"{what} at step {step} (epoch {trainer.current_epoch}): the run diverged and was stopped, before "
            f"any checkpoint of it was saved. Likely fix: lower optimizer.lr (now {lr:g}); too high a learning "
            f"rate makes LeNet diverge (the seeds use 0.9 for the sigmoid LeNet, 0.1 for the ReLU variant)."
        )


class InterruptCheckpoint(Callback):
    """Ctrl-C (SIGINT), SIGTERM or SLURM's warning (SIGUSR2): finish the step, save ``last.ckpt``, stop.

    Not Lightning's ``OnExceptionCheckpoint``: that one saves on every exception (a diverged run would overwrite
    the last good checkpoint), deletes its file at teardown, and makes ``fit(ckpt_path=None)`` resume from
    ``last`` on its own. SIGTERM goes through Lightning's handler (``trainer.received_sigterm``); a second Ctrl-C
    stops at once, without saving a half-done step. Under DDP the ranks agree after each step (one all-reduce of
    a flag; on a GPU every ``trainer.log_every_n_steps`` steps) whether any of them was signalled, SIGTERM
    included, so every rank stops after the same step and one ``last.ckpt`` is written. In a submitit job
    (``hydra/launcher=slurm``) SIGUSR2, which SLURM sends before the time limit or at preemption, saves
    ``last.ckpt`` the same way and then hands over to submitit, which requeues the job: it resumes from that
    checkpoint in its own job dir (``cnnlab.resume``).
    """

    def __init__(self, dirpath: str, filename: str = "last") -> None:
        self.ckpt_path = str(Path(dirpath) / f"{filename}.ckpt")
        self.requested: str | None = None
        self.requeue_on_usr2 = False  # set by cnnlab.run for a job submitit runs (cnnlab.job.JobContext)
        self.requeue: Any = None  # submitit's SIGUSR2 handler: requeues the job and exits
        self._previous: dict[int, Any] = {}
        self._every = 1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not _in_main_thread():
            return
        self.requested = None
        self._take(signal.SIGINT, *([signal.SIGUSR2] if self.requeue_on_usr2 else []))
        self.requeue = self._previous.get(signal.SIGUSR2)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._every = 1 if pl_module.device.type == "cpu" else max(1, trainer.log_every_n_steps)
        if trainer.world_size > 1 and _in_main_thread():
            self._take(signal.SIGTERM)  # in place of Lightning's, whose stop the ranks do not agree on

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if _in_main_thread():
            for signum, handler in reversed(self._previous.items()):
                signal.signal(signum, handler)
            self._previous.clear()

    def _take(self, *signums: int) -> None:
        for signum in signums:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.requested == "SIGINT" and signum == signal.SIGINT:  # the second Ctrl-C: stop now, unsaved
            raise KeyboardInterrupt
        if not self.requested:
            self.requested = signal.Signals(signum).name
            # os.write, not print: a handler that prints while the main thread prints raises "reentrant call"
            os.write(2, STOPPING.get(self.requested, b""))

    def _stop_if_requested(self, trainer: pl.Trainer, every_step: bool = False) -> None:
        if trainer.world_size > 1:  # stop when the ranks agree one of them was signalled: all after this step
            if every_step and trainer.global_step % self._every:
                return
            if trainer.strategy.reduce_boolean_decision(self.requested is not None, all=False):
                raise RunInterrupted.at(self.requested or "SIGTERM", trainer, self.ckpt_path)  # another rank's
            return
        if trainer.received_sigterm:
            self.requested = "SIGTERM"
        if self.requested:
            raise RunInterrupted.at(self.requested, trainer, self.ckpt_path)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._stop_if_requested(trainer, every_step=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_requested(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, RunInterrupted | SIGTERMException) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.ckpt_path, weights_only=False)


STOPPING = {  # what a signal's first arrival prints
    "SIGINT": b"\ncnnlab: Ctrl-C: stopping after this step and saving a checkpoint (Ctrl-C again: stop now).\n",
    "SIGUSR2": b"\ncnnlab: SLURM says the job ends soon (time limit or preemption): saving a checkpoint after this "
    b"step, then the job is requeued and resumes from it.\n",
}


@contextmanager
def interruptions_reported(trainer: pl.Trainer) -> Iterator[None]:
    """Report a run stopped by a signal as ``RunInterrupted`` (Lightning ends a SIGTERM with ``SIGTERMException``,
    exit status 0); a job that SLURM warned (SIGUSR2) is requeued by submitit once its checkpoint is saved."""
    saver = next((c for c in trainer.callbacks if isinstance(c, InterruptCheckpoint)), None)
    try:
        yield
    except (SIGTERMException, RunInterrupted) as stopped:
        if isinstance(stopped, SIGTERMException):
            signal_name = (saver.requested if saver else None) or "SIGTERM"
            stopped = RunInterrupted.at(signal_name, trainer, saver.ckpt_path if saver else None)
        if saver is not None and saver.requested == "SIGUSR2" and callable(saver.requeue):
            log.info("saved %s; submitit requeues the job", saver.ckpt_path)
            saver.requeue(signal.SIGUSR2, None)  # submitit: requeue, then exit (returns on ranks other than 0)
        raise stopped from None


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
