"""The ``LightningModule``: cross-entropy, torchmetrics accuracy, optimizer and scheduler from Hydra configs.

Off by default, each a switch: label smoothing of the training loss, test-time augmentation (the mean of the
predictions for an image and its mirror image), a linear learning-rate warm-up before any scheduler.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from cnnlab.vocab import Tag

InitName = Literal["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "default"]
# torch.nn.init's function of each name; default: PyTorch's own initialisation
INITS = {name: None if name == "default" else getattr(nn.init, f"{name}_") for name in get_args(InitName)}


def init_weights(net: nn.Module, scheme: str) -> None:
    """Re-initialise the weights of every Linear and Conv2d layer (the seeds use Xavier uniform)."""
    init_fn = INITS[scheme]
    if init_fn is None:
        return
    for layer in net.modules():
        if isinstance(layer, nn.Linear | nn.Conv2d):
            init_fn(layer.weight)


class ClassifierModule(pl.LightningModule):
    """Trains any image classifier built from a config; logs loss, accuracy and the hyperparameters.

    Every argument is plain data (dicts with ``_target_``), so a checkpoint restores the network without
    pickled code and loads with ``weights_only=True``.
    """

    def __init__(
        self,
        model: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        init: InitName = "xavier_uniform",
        compile: bool | str = False,
        channels_last: bool = True,
        label_smoothing: float = 0.0,
        tta: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.net: nn.Module = instantiate(model)
        init_weights(self.net, init)
        num_classes = int(model.get("num_classes", 10))
        # One example input: the model summary shows each layer's input/output sizes and the FLOPs.
        size = int(model.get("image_size", 28))
        self.example_input_array = torch.zeros(1, int(model.get("in_channels", 1)), size, size)
        # validate_args=False: torchmetrics' checks read torch.unique(target) back to the host on every update (a GPU
        # sync per step); the labels come from the data module, checked once when it loads them.
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        # NHWC lets oneDNN/cuDNN run the small convolutions and pooling ~1.5x faster; a 1-channel input is
        # already NHWC in memory, so the per-batch ``contiguous`` below costs nothing.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        # torch.compile the training forward (and so its backward) only, with a dynamic batch dimension: one
        # graph for every batch size; evaluation runs eagerly, so no extra graphs compile for it. A compiled
        # bound method, not a module, so the state_dict keys stay those of the plain network.
        self.train_forward = self.net.forward
        if compile:
            self.train_forward = torch.compile(
                self.net.forward, dynamic=True, mode=None if compile is True else compile
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.contiguous(memory_format=self.memory_format))

    def predict_proba(self, x: Tensor) -> Tensor:
        """Class probabilities; with ``tta`` the mean of those for the images and their left-right mirrors."""
        probs = self(x).softmax(dim=-1)
        if self.hparams.tta:
            probs = (probs + self(x.flip(-1)).softmax(dim=-1)) / 2
        return probs

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.train_forward(x.contiguous(memory_format=self.memory_format))
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        self.train_acc.update(logits, y)
        self.log(Tag.TRAIN_LOSS, loss, on_step=True, on_epoch=True, prog_bar=False)
        self.log(Tag.TRAIN_ACC, self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        x, y = batch
        metric = self.val_acc if stage == "val" else self.test_acc
        if self.hparams.tta:
            probs = self.predict_proba(x)
            metric.update(probs, y)
            loss = F.nll_loss(probs.clamp_min(1e-12).log(), y)
        else:
            logits = self(x)
            metric.update(logits, y)
            loss = F.cross_entropy(logits, y)
        self.log(Tag.of(stage, "loss"), loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log(Tag.of(stage, "acc"), metric, on_step=False, on_epoch=True, prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> Any:
        # _convert_="all": the optimizer holds plain lists (Adam's betas), not OmegaConf's, so that a checkpoint of its
        # state loads with weights_only=True on every torch (2.7 keeps what it is given in its param_groups).
        optimizer = instantiate(self.hparams.optimizer, params=self.parameters(), _convert_="all")
        sched_cfg = dict(self.hparams.scheduler or {})
        warmup_epochs = float(sched_cfg.pop("warmup_epochs", 0) or 0)
        default_interval = "step" if warmup_epochs and "_target_" not in sched_cfg else "epoch"
        interval = sched_cfg.pop("interval", None) or default_interval
        if not sched_cfg and not warmup_epochs:
            return optimizer
        epochs = max(1, int(self.trainer.max_epochs or 1))
        total = epochs if interval == "epoch" else int(self.trainer.estimated_stepping_batches)  # scheduler steps
        warmup = min(total - 1, max(1, round(warmup_epochs * total / epochs))) if warmup_epochs else 0
        for key in ("total_steps", "T_max"):  # null: the rest of the run after the warm-up (OneCycleLR, cosine)
            if key in sched_cfg and sched_cfg[key] is None:
                sched_cfg[key] = total - warmup
        schedulers = [instantiate(sched_cfg, optimizer=optimizer, _convert_="all")] if "_target_" in sched_cfg else []
        if warmup:  # linear warm-up from 1% of the learning rate, in the scheduler's own interval
            ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup)
            schedulers = [ramp, *schedulers]
        scheduler = schedulers[0]
        if len(schedulers) > 1:
            scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, schedulers, milestones=[warmup])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}
