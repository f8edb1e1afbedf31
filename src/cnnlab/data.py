"""Fashion-MNIST and MNIST as a ``LightningDataModule``: find or fetch the IDX files, verify, keep as tensors.

The files live where torchvision's ``FashionMNIST``/``MNIST`` expect them (``data_dir/FashionMNIST/raw/``).
They are found, in order: already in ``data_dir``; the Debian system copy (Fashion-MNIST only), imported into
``data_dir`` and checked by content md5; torchvision's own download. The whole set is held as tensors and
served in shuffled batches by index: no per-sample transforms, no collation.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor
from torchvision.datasets import MNIST, FashionMNIST

from cnnlab.augment import BatchAugment
from cnnlab.errors import ConfigError, DataError

DATASETS: dict[str, type[MNIST]] = {"fashion_mnist": FashionMNIST, "mnist": MNIST}
SYSTEM_COPIES = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}
# md5 of the uncompressed IDX files (torchvision's list is of the .gz files, which other packagers recompress).
CONTENT_MD5 = {
    "fashion_mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IDX_MAGIC = {"images": 2051, "labels": 2049}  # 0x00000803 (uint8, 3 dims) and 0x00000801 (uint8, 1 dim)


def md5_of(path: Path) -> str:
    """md5 of a file's bytes, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_idx(path: Path, how_to_fix: str) -> None:
    """Check an uncompressed IDX file's magic number and that its length matches its header."""
    kind = "images" if "images" in path.name else "labels"
    with open(path, "rb") as f:
        header = f.read(16 if kind == "images" else 8)
    size = path.stat().st_size
    if len(header) < (16 if kind == "images" else 8):
        raise DataError(f"{path} is truncated ({size} bytes, shorter than its IDX header). {how_to_fix}")
    magic, count = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    if magic != IDX_MAGIC[kind]:
        raise DataError(
            f"{path} has IDX magic number {magic}, expected {IDX_MAGIC[kind]} for {kind}: it is not an "
            f"uncompressed IDX {kind} file. {how_to_fix}"
        )
    expected = 8 + count
    if kind == "images":
        expected = 16 + count * int.from_bytes(header[8:12], "big") * int.from_bytes(header[12:16], "big")
    if size != expected:
        raise DataError(f"{path} is {size} bytes but its header promises {expected}: truncated. {how_to_fix}")


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
        self.dataset_cls = DATASETS[name]
        self.data_dir = Path(data_dir).expanduser()
        default_system = SYSTEM_COPIES.get(name)
        self.system_dir = Path(system_dir) if system_dir else default_system
        self.classes: list[str] = list(self.dataset_cls.classes)
        self.mean, self.std = 0.0, 1.0
        self.train_set: tuple[Tensor, Tensor] | None = None
        self.val_set: tuple[Tensor, Tensor] | None = None
        self.test_set: tuple[Tensor, Tensor] | None = None
        self._drawn_shuffle_seed: int | None = None

    @property
    def raw_folder(self) -> Path:
        """Where torchvision's dataset class reads the IDX files."""
        return self.data_dir / self.dataset_cls.__name__ / "raw"

    def how_to_get(self) -> str:
        """The ways to get good data files, for error messages."""
        ways = [f"put the four IDX files in {self.raw_folder}"]
        if self.hparams.name == "fashion_mnist":
            ways.append("install the Debian package: apt-get install -y dataset-fashion-mnist")
        ways.append("allow torchvision's download: data.download=true with network access")
        return "Get the data one of these ways: " + "; ".join(ways) + "."

    def prepare_data(self) -> None:
        """Make sure the four IDX files are in ``data_dir``: import the system copy or download them."""
        if not self._files_present():
            self._make_data_dir()
            if not self._import_system_copy() and not self._download():
                raise DataError(f"No {self.hparams.name} data found in {self.raw_folder}. {self.how_to_get()}")
        self._verify()

    def _files_present(self) -> bool:
        return all((self.raw_folder / f).is_file() for f in IDX_FILES)

    def _make_data_dir(self) -> None:
        try:
            self.raw_folder.mkdir(parents=True, exist_ok=True)
            probe = self.raw_folder / ".write-test"
            probe.touch()
            probe.unlink()
        except OSError as err:
            raise DataError(
                f"data.data_dir={str(self.data_dir)!r} cannot be created or written ({err.strerror}); "
                f"point data.data_dir at a writable folder."
            ) from None

    def _import_system_copy(self) -> bool:
        """Decompress the Debian copy into ``data_dir``; its content md5 is checked by ``_verify``."""
        if self.system_dir is None or not all((self.system_dir / f"{f}.gz").is_file() for f in IDX_FILES):
            return False
        for name in IDX_FILES:
            target = self.raw_folder / name
            partial = target.with_suffix(f".{os.getpid()}.partial")  # parallel sweep jobs import at once
            try:
                with gzip.open(self.system_dir / f"{name}.gz", "rb") as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (OSError, EOFError) as err:
                partial.unlink(missing_ok=True)
                raise DataError(
                    f"{self.system_dir / (name + '.gz')} cannot be read ({err}); reinstall it with "
                    f"apt-get install --reinstall dataset-fashion-mnist."
                ) from None
            partial.replace(target)
        return True

    def _download(self) -> bool:
        if not self.hparams.download:
            return False
        try:
            for train in (True, False):
                self.dataset_cls(str(self.data_dir), train=train, download=True)
        except (RuntimeError, OSError) as err:
            first_line = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise DataError(
                f"Downloading {self.hparams.name} into {self.raw_folder} failed ({first_line}). {self.how_to_get()}"
            ) from None
        return True

    def _verify(self) -> None:
        fix = f"Delete it and rerun to fetch a good copy. {self.how_to_get()}"
        known = CONTENT_MD5.get(self.hparams.name, {}) if self.hparams.verify_md5 else {}
        for name in IDX_FILES:
            path = self.raw_folder / name
            check_idx(path, fix)
            if name in known and md5_of(path) != known[name]:
                raise DataError(
                    f"{path} has the wrong md5 (expected {known[name]}): corrupt or not the real "
                    f"{self.hparams.name}. {fix} (data.verify_md5=false accepts custom files.)"
                )

    def setup(self, stage: str | None = None) -> None:
        """Load the IDX files through torchvision once, as float tensors; split off the validation set."""
        if self.train_set is not None:
            return
        if not self._files_present():  # setup without prepare_data (e.g. a notebook): do it now
            self.prepare_data()
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
        dataset = self.dataset_cls(str(self.data_dir), train=train, download=False)
        images, labels = dataset.data, dataset.targets.long()
        h = self.hparams
        if tuple(images.shape[1:]) != (h.image_size, h.image_size):
            raise DataError(
                f"{self.raw_folder} holds {tuple(images.shape[1:])} images, but data.image_size={h.image_size}."
            )
        if len(labels) != len(images):
            raise DataError(f"{self.raw_folder}: {len(images)} images but {len(labels)} labels. {self.how_to_get()}")
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
