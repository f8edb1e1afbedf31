"""The switches past the chapter: batch augmentation, label smoothing, EMA, TTA, warm-up, and the frontier recipes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from pytorch_lightning.callbacks import Callback, EMAWeightAveraging

from cnnlab.augment import AUGMENTATIONS, BatchAugment
from cnnlab.eval import load_classifier
from cnnlab.images import predicted_probabilities
from cnnlab.module import ClassifierModule
from cnnlab.run import build
from cnnlab.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def image_batch(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Float images in [0, 1] with a bright off-centre bar, so shifts, flips and erasures all show."""
    images = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 0.2
    images[:, :, 4:20, 3:9] = 1.0
    return images


@pytest.mark.parametrize("op", AUGMENTATIONS)
def test_each_augmentation_keeps_shape_dtype_and_range_and_repeats_under_its_seed(op: str) -> None:
    images = image_batch()
    augment = BatchAugment([op], seed=7)
    out = augment(images, step=3)
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert torch.equal(out, BatchAugment([op], seed=7)(images, step=3)), "not reproducible under its seed"
    assert not torch.equal(out, images), "nothing changed"
    changed = (out != images).flatten(1).any(dim=1)
    assert 0 < changed.sum() < len(images) or op == "crop", "one draw per image: some change, some do not"
    assert not torch.equal(out, augment(images, step=4)), "the same draw at every step"
    assert not torch.equal(out, BatchAugment([op], seed=8)(images, step=3)), "the seed is ignored"


def test_crop_shifts_each_image_by_at_most_the_padding() -> None:
    images = image_batch(32)
    out = BatchAugment(["crop"], seed=0, crop_padding=2)(images, step=0)
    for before, after in zip(images[:, 0], out[:, 0], strict=True):
        shifts = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(after[2:-2, 2:-2], before[2 - dy : 26 - dy, 2 - dx : 26 - dx])
        ]
        assert shifts, "the crop is not a shift of the image"


def test_flip_mirrors_and_erase_blanks_one_square() -> None:
    images = image_batch(32)
    flipped = BatchAugment(["flip"], seed=0)(images, step=0)
    for before, after in zip(images, flipped, strict=True):
        assert torch.equal(after, before) or torch.equal(after, before.flip(-1))
    erased = BatchAugment(["erase"], seed=0, erase_size=8, erase_prob=1.0)(images, step=0)
    blanked = (erased == 0) & (images != 0)
    assert blanked.flatten(1).any(dim=1).all(), "erase_prob=1 blanks every image"
    assert (blanked.flatten(1).sum(dim=1) <= 64).all(), "more than an 8x8 square blanked"


def test_an_unknown_augmentation_names_the_choices() -> None:
    with pytest.raises(Exception, match=r"data.augment.*'rotate'.*crop"):
        BatchAugment(["crop", "rotate"])


class RecordBatches(Callback):
    """The batches each step gets, after the data module's ``on_after_batch_transfer``."""

    def __init__(self) -> None:
        self.train: list[torch.Tensor] = []
        self.val: list[torch.Tensor] = []
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train.append(batch[0].clone())
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.val.append(batch[0].clone())


def fit_recording(cfg) -> tuple[RecordBatches, pl.LightningDataModule, ClassifierModule, pl.Trainer]:
    datamodule, module, trainer = build(cfg)
    recorder = RecordBatches()
    trainer.callbacks.append(recorder)
    trainer.fit(module, datamodule=datamodule)
    return recorder, datamodule, module, trainer


def plain_batches(datamodule, split: str, epochs: int, per_epoch: int | None = None) -> list[torch.Tensor]:
    """The first ``per_epoch`` batches of each epoch the data module serves, without augmentation (as before
    augmentation existed)."""
    batches = datamodule._batches(split)
    out = []
    for epoch in range(epochs):
        batches.epoch_of = lambda e=epoch: e
        out += [images for images, _ in batches][:per_epoch]
    return out


def test_augmentation_touches_only_training_batches_and_is_off_by_default(tiny_cfg) -> None:
    default, datamodule, _, trainer = fit_recording(tiny_cfg("trainer.max_epochs=2"))
    assert not datamodule.augment, "an augmentation is on by default"
    plain_train = plain_batches(datamodule, "train", 2, trainer.num_training_batches)
    assert len(default.train) == len(plain_train)
    assert all(torch.equal(a, b) for a, b in zip(default.train, plain_train, strict=True)), "default batches changed"

    augmented, datamodule, _, _ = fit_recording(tiny_cfg("trainer.max_epochs=2", "data.augment=[crop,flip,erase]"))
    assert all(a.shape == b.shape for a, b in zip(augmented.train, plain_train, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(augmented.train, plain_train, strict=True))
    plain_val = plain_batches(datamodule, "val", 1)
    assert all(torch.equal(a, plain_val[i % len(plain_val)]) for i, a in enumerate(augmented.val))

    again, _, _, _ = fit_recording(tiny_cfg("trainer.max_epochs=2", "data.augment=[crop,flip,erase]"))
    assert all(torch.equal(a, b) for a, b in zip(augmented.train, again.train, strict=True)), "not reproducible"


def test_ema_weights_are_the_ones_evaluated_and_checkpointed(tiny_cfg, tmp_path) -> None:
    cfg = tiny_cfg("trainer.max_epochs=2", "ema=0.5", "optimizer.lr=0.5")
    _, datamodule, module, trainer = fit_recording(cfg)
    ema = next(c for c in trainer.callbacks if isinstance(c, EMAWeightAveraging))
    averaged = ema._average_model.module.state_dict()
    current = module.state_dict()
    assert all(torch.equal(averaged[k], current[k]) for k in current), "the module does not hold the EMA weights"
    checkpoint = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    saved, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert all(torch.equal(saved[k], current[k]) for k in current), "the checkpoint's state_dict is not the EMA"
    assert any(not torch.equal(raw[k], saved[k]) for k in saved), "EMA weights equal the raw ones: no averaging"
    loaded, _ = load_classifier(tmp_path / "run/checkpoints/last.ckpt")
    assert all(torch.equal(v, current[k]) for k, v in loaded.state_dict().items()), "eval loads other weights"
    tested = trainer.test(module, datamodule=datamodule, verbose=False)[0]["test/acc"]
    images, labels = datamodule.test_set
    with torch.no_grad():
        expected = (module.eval()(images).argmax(-1) == labels).float().mean().item()
    assert tested == pytest.approx(expected)


def test_tta_averages_the_predictions_of_the_image_and_its_mirror(tiny_cfg) -> None:
    # Untrained and with ReLU: a sigmoid LeNet, or one trained a few steps on the tiny set, gives every image,
    # mirrored or not, the same answer, and the mirror would change nothing to measure.
    cfg = tiny_cfg("tta=true", "model.activation=relu", "model.pool=max")
    datamodule, module, trainer = build(cfg)
    datamodule.setup("test")
    images, labels = datamodule.test_set
    module.eval()
    with torch.no_grad():
        expected = (module(images).softmax(-1) + module(images.flip(-1)).softmax(-1)) / 2
        assert torch.allclose(module.predict_proba(images), expected)
        plain = module(images).softmax(-1)
        assert (plain - expected).abs().max() > 1e-4, "the mirror changes nothing here"  # float noise: ~1e-7
    tested = trainer.test(module, datamodule=datamodule, verbose=False)[0]["test/acc"]
    assert tested == pytest.approx((expected.argmax(-1) == labels).float().mean().item())
    # the confusion matrix and the misclassified images show these predictions too, not the plain network's
    shown = predicted_probabilities(SimpleNamespace(global_step=trainer.global_step), module, images)
    assert torch.allclose(shown, expected, atol=1e-6), "the TensorBoard figures ignore tta=true"


def test_label_smoothing_is_the_training_loss(tiny_cfg) -> None:
    cfg = tiny_cfg("label_smoothing=0.2")
    datamodule, module, _ = build(cfg)
    datamodule.setup()
    images, labels = datamodule.train_set[0][:16], datamodule.train_set[1][:16]
    module.log = lambda *args, **kwargs: None
    loss = module.training_step((images, labels), 0)
    logits = module(images)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.2).item(), rel=1e-5)
    assert loss.item() != pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)


def test_warmup_ramps_the_learning_rate_then_the_schedule_decays_it(tiny_cfg) -> None:
    cfg = tiny_cfg(
        "trainer.max_epochs=3", "optimizer=sgd_nesterov", "optimizer.lr=0.1", "scheduler=cosine",
        "scheduler.interval=step", "scheduler.warmup_epochs=1",
    )  # fmt: skip
    recorder, _, _, trainer = fit_recording(cfg)
    lrs, per_epoch = recorder.lrs, trainer.num_training_batches
    assert lrs[0] == pytest.approx(0.001)
    assert all(a < b for a, b in zip(lrs[:per_epoch], lrs[1 : per_epoch + 1], strict=True)), "no ramp"
    assert max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == per_epoch
    assert all(a > b for a, b in zip(lrs[per_epoch:-1], lrs[per_epoch + 1 :], strict=True)), "no decay"


@pytest.mark.parametrize(
    ("experiment", "max_params"), [("fashion_frontier", 100_000), ("fashion_tiny", 25_000), ("fashion_fast", 100_000)]
)
def test_the_frontier_recipes_fit_their_parameter_budgets_and_train(tiny_cfg, experiment: str, max_params: int):
    cfg = tiny_cfg(f"experiment={experiment}", "trainer.max_epochs=1", "callbacks=none")
    params = sum(p.numel() for p in instantiate(cfg.model).parameters())
    assert params < max_params
    metrics = train(cfg)
    assert metrics["params"] == params and metrics["epochs"] == 1
