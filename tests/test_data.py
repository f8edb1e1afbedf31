"""The DataModule on tiny IDX files in the real format: both data sets, the Debian import, clear errors."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch
from torchvision.datasets import FashionMNIST

from cnnlab.data import MNISTDataModule, TensorBatches
from cnnlab.errors import ConfigError, DataError
from cnnlab.idx import IDX_FILES
from conftest import RAW_FOLDERS, TINY_TEST, TINY_TRAIN, write_idx_set


def make_dm(data_dir: Path, name: str = "fashion_mnist", **kwargs) -> MNISTDataModule:
    options = {
        "val_size": 20,
        "batch_size": 16,
        "verify_md5": False,
        "download": False,
        "system_dir": "/nonexistent",
        **kwargs,
    }
    return MNISTDataModule(name=name, data_dir=str(data_dir), **options)


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_loads_both_data_sets_as_tensors_with_a_split(tiny_data_dir, name):
    dm = make_dm(tiny_data_dir, name)
    dm.prepare_data()
    dm.setup()
    assert dm.train_set[0].shape == (TINY_TRAIN - 20, 1, 28, 28)
    assert dm.val_set[0].shape == (20, 1, 28, 28) and dm.test_set[0].shape == (TINY_TEST, 1, 28, 28)
    assert dm.train_set[0].dtype == torch.float32 and 0.0 <= dm.train_set[0].min() <= dm.train_set[0].max() <= 1.0
    # the same pixels torchvision's dataset class reads
    raw = FashionMNIST if name == "fashion_mnist" else None
    if raw is not None:
        reference = raw(str(tiny_data_dir), train=False).data[0].float() / 255
        assert torch.allclose(dm.test_set[0][0, 0], reference)
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader()) == -(-(TINY_TRAIN - 20) // 16)
    assert sum(len(y) for _, y in batches) == TINY_TRAIN - 20
    assert "Trouser" in dm.classes if name == "fashion_mnist" else "0 - zero" in dm.classes


def test_split_is_seeded_and_batches_reshuffle_each_epoch(tiny_data_dir):
    first, second = make_dm(tiny_data_dir), make_dm(tiny_data_dir)
    first.setup()
    second.setup()
    assert torch.equal(first.val_set[1], second.val_set[1])
    loader = first.train_dataloader()
    epoch1, epoch2 = [torch.cat([y for _, y in loader]) for _ in range(2)]
    assert not torch.equal(epoch1, epoch2) and torch.equal(epoch1.sort().values, epoch2.sort().values)


def test_val_size_zero_validates_on_the_test_set(tiny_data_dir):
    dm = make_dm(tiny_data_dir, val_size=0)
    dm.setup()
    assert dm.val_set is dm.test_set and len(dm.train_set[1]) == TINY_TRAIN


def test_normalize_gives_zero_mean_unit_std(tiny_data_dir):
    dm = make_dm(tiny_data_dir, normalize=True, val_size=0)
    dm.setup()
    images = dm.train_set[0]
    assert abs(images.mean().item()) < 1e-4 and abs(images.std().item() - 1) < 1e-3


def test_imports_the_debian_copy_and_checks_its_content_md5(tmp_path, monkeypatch):
    system = write_idx_set(tmp_path / "system", compress=True)
    plain = write_idx_set(tmp_path / "plain")
    md5 = {name: hashlib.md5((plain / name).read_bytes()).hexdigest() for name in IDX_FILES}
    monkeypatch.setitem(__import__("cnnlab.idx").idx.CONTENT_MD5, "fashion_mnist", md5)
    dm = make_dm(tmp_path / "data", system_dir=str(system), verify_md5=True)
    dm.prepare_data()
    for name in IDX_FILES:
        assert (dm.files.raw_folder / name).read_bytes() == (plain / name).read_bytes()
    dm.setup()
    assert len(dm.test_set[1]) == TINY_TEST


def test_a_system_copy_with_other_content_is_refused(tmp_path):
    system = write_idx_set(tmp_path / "system", compress=True)
    dm = make_dm(tmp_path / "data", system_dir=str(system), verify_md5=True)
    with pytest.raises(DataError, match="wrong md5"):
        dm.prepare_data()


def test_nothing_found_names_the_three_ways_to_get_the_data(tmp_path):
    dm = make_dm(tmp_path / "empty")
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str(dm.files.raw_folder) in message and "apt-get install -y dataset-fashion-mnist" in message
    assert "data.download=true" in message


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_download_goes_through_torchvision_and_fails_clearly_offline(tmp_path, monkeypatch, name):
    dm = make_dm(tmp_path / "data", name, download=True)
    monkeypatch.setattr(dm.files.dataset_cls, "mirrors", ["http://127.0.0.1:9/"])  # nothing listens: refused
    with pytest.raises(DataError, match="Downloading .* failed"):
        dm.prepare_data()


def test_download_uses_torchvision_files_when_they_arrive(tmp_path, monkeypatch):
    """torchvision's download is the path taken: simulate a mirror that serves the real .gz format."""
    served = write_idx_set(tmp_path / "served", compress=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dm = make_dm(tmp_path / "data", "mnist", download=True)
        monkeypatch.setattr(dm.files.dataset_cls, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
        monkeypatch.setattr(dm.files.dataset_cls, "resources", [(f"{n}.gz", None) for n in IDX_FILES])
        dm.prepare_data()
        dm.setup()
    finally:
        server.shutdown()
        server.server_close()
    assert len(dm.test_set[1]) == TINY_TEST


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated"),
        (lambda p: p.write_bytes(b"\x00\x00\x09\x03" + p.read_bytes()[4:]), "magic number"),
        (lambda p: p.write_bytes(b"\x00\x00"), "truncated"),
    ],
)
def test_damaged_files_are_named(tiny_data_dir, damage, words):
    path = tiny_data_dir / RAW_FOLDERS["fashion_mnist"] / "raw" / "train-images-idx3-ubyte"
    damage(path)
    dm = make_dm(tiny_data_dir)
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    assert str(path) in str(info.value) and words in str(info.value)


def test_class_count_must_be_the_data_sets_and_cover_the_labels(tiny_data_dir, tmp_path):
    with pytest.raises(ConfigError, match="data.num_classes=5 does not match fashion_mnist, which has 10"):
        make_dm(tiny_data_dir, num_classes=5)
    custom = tmp_path / "custom"  # custom files (data.verify_md5=false) whose labels run past the class count
    write_idx_set(custom / RAW_FOLDERS["fashion_mnist"] / "raw", num_classes=12)
    with pytest.raises(ConfigError, match="labels run 0..11, but data.num_classes=10"):
        make_dm(custom).setup()


def test_validation_split_must_be_smaller_than_the_training_set(tiny_data_dir):
    with pytest.raises(ConfigError, match="data.val_size"):
        make_dm(tiny_data_dir, val_size=TINY_TRAIN).setup()


def test_batch_order_follows_the_trainer_epoch_so_a_resume_replays_it(tiny_data_dir):
    dm = make_dm(tiny_data_dir)
    dm.setup()
    epoch = {"now": 3}
    images, labels = dm.train_set
    first = TensorBatches(images, labels, 16, shuffle=True, seed=7, epoch_of=lambda: epoch["now"])
    resumed = TensorBatches(images, labels, 16, shuffle=True, seed=7, epoch_of=lambda: epoch["now"])
    order = [torch.cat([y for _, y in batches]) for batches in (first, resumed)]
    assert torch.equal(order[0], order[1])
    epoch["now"] = 4
    assert not torch.equal(torch.cat([y for _, y in first]), order[0])


def _epoch_orders(cfg, epochs: int = 2) -> list[torch.Tensor]:
    """The training labels in the order the data module of ``cfg`` serves them, for each epoch."""
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    dm.setup()
    loader = dm.train_dataloader()
    return [torch.cat([y for _, y in loader]) for _ in range(epochs)], dm


def test_the_batch_order_follows_seed_and_the_split_stays_on_split_seed(tiny_cfg):
    (one_a, one_b), dm_one = _epoch_orders(tiny_cfg("seed=1"))
    (again_a, _), _ = _epoch_orders(tiny_cfg("seed=1"))
    (two_a, two_b), dm_two = _epoch_orders(tiny_cfg("seed=2"))
    assert torch.equal(one_a, again_a), "the same seed must give the same batch order"
    assert not torch.equal(one_a, two_a), "seed=1 and seed=2 serve the batches in the same order"
    # seed s at epoch 1 is not seed s+1 at epoch 0: the seeds' orders are not shifted copies of each other
    assert not torch.equal(one_b, two_a)
    assert torch.equal(dm_one.val_set[1], dm_two.val_set[1]), "every seed must validate on the same images"


def test_an_unseeded_augmentation_leaves_the_global_generators_alone():
    torch.manual_seed(42)
    state = torch.get_rng_state()
    a, b = (MNISTDataModule(augment=["flip"], augment_seed=None) for _ in range(2))
    assert torch.equal(torch.get_rng_state(), state), "data.augment_seed=null reseeded torch's global generator"
    assert a.augment.seed != b.augment.seed, "data.augment_seed=null must draw a different seed every run"
