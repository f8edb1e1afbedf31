"""Shared fixtures: tiny IDX data sets in the real format, and composed configs shrunk to tiny runs."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from cnnlab.config import CONF_DIR

RAW_FOLDERS = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}
TINY_TRAIN, TINY_TEST = 120, 40


def idx_bytes(array: np.ndarray) -> bytes:
    """An array of uint8 as an IDX file: magic (0x08 = uint8, number of dims), big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(
    folder: Path,
    n_train: int = TINY_TRAIN,
    n_test: int = TINY_TEST,
    seed: int = 0,
    compress: bool = False,
    size: int = 28,
    num_classes: int = 10,
) -> Path:
    """Write the four IDX files (images whose brightness encodes the label, so a model can learn them)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, num_classes, size=n)
        images = rng.integers(0, 20, size=(n, size, size)) + (labels * 25)[:, None, None]
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name, data = f"{prefix}-{kind}-ubyte", idx_bytes(array)
            if compress:
                with gzip.open(folder / f"{name}.gz", "wb") as f:
                    f.write(data)
            else:
                (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def one_torch_thread():
    """Tiny runs are fastest on one thread, and a busy machine slows them least there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_data_dir(tmp_path: Path) -> Path:
    """A data_dir holding tiny Fashion-MNIST and MNIST in torchvision's folder layout."""
    root = tmp_path / "data"
    for folder in RAW_FOLDERS.values():
        write_idx_set(root / folder / "raw")
    return root


TINY_OVERRIDES = [
    "trainer=debug",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.val_size=20",
    "data.batch_size=16",
    "data.verify_md5=false",
    "data.download=false",
    "data.system_dir=/nonexistent",
]


def compose_config(overrides: list[str], tmp_path: Path) -> DictConfig:
    """The composed run config, as the entry point would see it, with the Hydra runtime set up."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path: Path, tiny_data_dir: Path):
    """A factory: a composed config for a tiny CPU run on the tiny data, plus extra overrides."""

    def make(*extra: str) -> DictConfig:
        return compose_config([*TINY_OVERRIDES, f"paths.data_dir={tiny_data_dir}", *extra], tmp_path)

    yield make
    GlobalHydra.instance().clear()


def run_cli(module: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` in a fresh process, as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
