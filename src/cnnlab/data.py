"""Fashion-MNIST and MNIST as a ``LightningDataModule``: the whole set as tensors, split and served in batches.

The IDX files are found, imported, downloaded and verified by ``cnnlab.idx``; here they are read through
torchvision's ``FashionMNIST``/``MNIST``, split into training and validation sets (``data.split_seed``) and served
in shuffled batches by index (``seed``: the batch order): no per-sample transforms, no collation.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor

from cnnlab.augment import BatchAugment
from cnnlab.errors import ConfigError, DataError
from cnnlab.idx import DATASETS, IdxFiles


def fresh_seed() -> int:
    """A seed for a run left unseeded, from the operating system: torch's global generators stay untouched."""
    return secrets.randbits(31)


class TensorBatches:
    """Mini-batches drawn by index from tensors (on any device), reshuffled each epoch, sharded per rank."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch_of: Callable[[], int] | None = None,
    ) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        # Where the epoch number comes from: the trainer's, so a resumed run reshuffles as the first run did.
        self.epoch_of = epoch_of
        self.epoch = 0
        # Training shards are padded to equal length so every rank takes the same number of steps (DDP).
        n = len(labels)
        self.per_rank = math.ceil(n / world_size) if shuffle else len(range(rank, n, world_size))

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def _indices(self) -> Tensor:
        n = len(self.labels)
        if not self.shuffle:
            return torch.arange(self.rank, n, self.world_size)
        epoch = self.epoch_of() if self.epoch_of is not None else self.epoch
        self.epoch += 1
        # (seed, epoch) hashed, not seed + epoch: seed s at epoch 1 would be seed s + 1 at epoch 0.
        generator = torch.Generator().manual_seed(hash((self.seed, epoch)) % 2**63)
        order = torch.randperm(n, generator=generator)
        padded = order.repeat(math.ceil(self.per_rank * self.world_size / n))[: self.per_rank * self.world_size]
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        indices = self._indices().to(self.images.device)
        for start in range(0, len(indices), self.batch_size):
            batch = indices[start : start + self.batch_size]
            yield self.images[batch], self.labels[batch]


# The sets of the last data module set up in this process (MNISTDataModule.setup): tensors nothing writes to.
_held_sets: dict[tuple, tuple] = {}


class MNISTDataModule(pl.LightningDataModule):
    """Fashion-MNIST or MNIST through torchvision's dataset classes, held in memory as float tensors."""

    def __init__(
        self,
        name: str = "fashion_mnist",
        data_dir: str = "data",
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        val_size: int = 5000,
        split_seed: int = 42,
        shuffle_seed: int | None = None,
        normalize: bool = False,
        download: bool = True,
        verify_md5: bool = True,
        system_dir: str | None = None,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        device_resident: bool = True,
        augment: Sequence[str] = (),
        augment_seed: int | None = None,
        crop_padding: int = 2,
        erase_size: int = 8,
        erase_prob: float = 0.5,
    ) -> None:
        super().__init__()
        if name not in DATASETS:
            raise ConfigError(f"data.name={name!r} is not known; choose one of {sorted(DATASETS)}.")
        if num_classes != len(DATASETS[name].classes):
            raise ConfigError(
                f"data.num_classes={num_classes} does not match {name}, which has {len(DATASETS[name].classes)} "
                f"classes; set data.num_classes={len(DATASETS[name].classes)}."
            )
        augment = [str(op) for op in augment]  # plain data in the checkpoint (weights_only loading)
        self.save_hyperparameters()
        seed = fresh_seed() if augment_seed is None else augment_seed  # null: a different draw every run
        self.augment = BatchAugment(augment, seed, crop_padding, erase_size, erase_prob)
        self.data_dir = Path(data_dir).expanduser()
        self.files = IdxFiles(name, self.data_dir, system_dir, download=download, verify_md5=verify_md5)
        self.classes: list[str] = list(self.files.dataset_cls.classes)
        self.mean, self.std = 0.0, 1.0
        self.train_set: tuple[Tensor, Tensor] | None = None
        self.val_set: tuple[Tensor, Tensor] | None = None
        self.test_set: tuple[Tensor, Tensor] | None = None
        self._drawn_shuffle_seed: int | None = None

    def prepare_data(self) -> None:
        """Make sure the four IDX files are in ``data_dir``: import the system copy or download them; verify."""
        self.files.ensure()

    def setup(self, stage: str | None = None) -> None:
        """Load the IDX files through torchvision once, as float tensors; split off the validation set. The sets of
        the last data module set up in this process are kept: the next one of the same files and split (the next
        job of a sweep's reused worker, a notebook's next run) takes them as they are."""
        if self.train_set is not None:
            return
        if not self.files.present():  # setup without prepare_data (e.g. a notebook): do it now
            self.prepare_data()
        key = self._sets_key()
        if key in _held_sets:
            self.train_set, self.val_set, self.test_set, self.mean, self.std = _held_sets[key]
            return
        self._load_sets()
        _held_sets.clear()  # one data set held at a time
        _held_sets[key] = (self.train_set, self.val_set, self.test_set, self.mean, self.std)

    def _sets_key(self) -> tuple:
        """What the sets depend on: the files as they are now, and the split and scaling settings."""
        files = [(str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(self.files.raw_folder.iterdir())
                 if p.is_file()]  # fmt: skip
        h = self.hparams
        return (h.name, tuple(files), h.val_size, h.split_seed, h.normalize, h.image_size, h.num_classes)

    def _load_sets(self) -> None:
        train = self._load(train=True)
        test = self._load(train=False)
        images, labels = train
        if self.hparams.normalize:
            scaled = images.float().div_(255.0)
            self.mean, self.std = scaled.mean().item(), scaled.std().item()
        val_size = self.hparams.val_size
        if not 0 <= val_size < len(labels):
            raise ConfigError(
                f"data.val_size={val_size} must be >= 0 and smaller than the {len(labels)} training examples; "
                f"0 validates on the test set."
            )
        if val_size:
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.hparams.split_seed))
            val_idx, train_idx = order[:val_size], order[val_size:]
            self.train_set = (self._scale(images[train_idx]), labels[train_idx])
            self.val_set = (self._scale(images[val_idx]), labels[val_idx])
        else:
            self.train_set = (self._scale(images), labels)
        self.test_set = (self._scale(test[0]), test[1])
        if val_size == 0:
            self.val_set = self.test_set

    def _load(self, train: bool) -> tuple[Tensor, Tensor]:
        dataset = self.files.dataset_cls(str(self.data_dir), train=train, download=False)
        images, labels = dataset.data, dataset.targets.long()
        h = self.hparams
        if tuple(images.shape[1:]) != (h.image_size, h.image_size):
            raise DataError(
                f"{self.files.raw_folder} holds {tuple(images.shape[1:])} images, but data.image_size={h.image_size}."
            )
        if len(labels) != len(images):
            found = f"{len(images)} images but {len(labels)} labels"
            raise DataError(f"{self.files.raw_folder}: {found}. {self.files.how_to_get()}")
        if int(labels.max()) >= h.num_classes:
            raise ConfigError(
                f"the {h.name} labels run 0..{int(labels.max())}, but data.num_classes={h.num_classes} "
                f"(and so model.num_classes); set it to {int(labels.max()) + 1}."
            )
        return images.unsqueeze(1), labels

    def _scale(self, images: Tensor) -> Tensor:
        """uint8 [N, 1, H, W] -> float32 in [0, 1] (as ``ToTensor``), then the optional normalisation."""
        scaled = images.float().div_(255.0)
        return scaled.sub_(self.mean).div_(self.std) if self.hparams.normalize else scaled

    def _batches(self, split: str) -> TensorBatches:
        self.setup()
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        train = split == "train"
        batch_size = self.hparams.batch_size if train else (self.hparams.eval_batch_size or self.hparams.batch_size)
        images, labels = getattr(self, f"{split}_set")
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        if self.hparams.device_resident and device.type != "cpu":  # the whole set on the GPU, batched there
            images, labels = images.to(device), labels.to(device)
        return TensorBatches(
            images,
            labels,
            batch_size,
            shuffle=train,
            seed=self.shuffle_seed() if train else 0,
            rank=rank,
            world_size=world,
            epoch_of=(lambda: trainer.current_epoch) if trainer is not None else None,
        )

    def shuffle_seed(self) -> int:
        """The batch order's seed: ``data.shuffle_seed`` (``${seed}``), else one drawn for this run.

        A drawn seed comes from the operating system, not torch's generators (the weights' seed stays as it is),
        and rank 0's is shared so that every DDP rank shards the same order.
        """
        if self.hparams.shuffle_seed is not None:
            return int(self.hparams.shuffle_seed)
        if self._drawn_shuffle_seed is None:
            drawn = fresh_seed()
            self._drawn_shuffle_seed = self.trainer.strategy.broadcast(drawn) if self.trainer is not None else drawn
        return self._drawn_shuffle_seed

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        """Augment training batches (``data.augment``) on their device; other batches pass untouched."""
        trainer = self.trainer
        # (The model summary's example input comes through here too, as a bare tensor: it passes untouched.)
        if self.augment and trainer is not None and trainer.training and isinstance(batch, tuple | list):
            images, labels = batch
            return self.augment(images, step=trainer.global_step, rank=trainer.global_rank), labels
        return batch

    def train_dataloader(self) -> TensorBatches:
        return self._batches("train")

    def val_dataloader(self) -> TensorBatches:
        return self._batches("val")

    def test_dataloader(self) -> TensorBatches:
        return self._batches("test")
