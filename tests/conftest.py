"""Shared fixtures: tiny IDX data sets in the real format, and composed configs shrunk to tiny runs."""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import forked_cli
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files with the most slow tests first (stable otherwise).

    ``make test`` hands whole files to two workers in this order (``--dist loadfile --no-loadscope-reorder``): the
    long files start at once and the short ones fill in behind, so neither worker is left alone with a long file
    at the end.
    """
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])


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


def run_cli(
    module: str, *args: str, cwd: Path, timeout: float = 300, fresh: bool = False
) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` in a process of its own, as a user would, and return its status and output.

    The process is forked from a server that has imported cnnlab (tests/forked_cli.py: seconds saved per call);
    ``fresh=True`` starts a new interpreter, for what happens while importing (warnings, say).
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if fresh:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    with tempfile.TemporaryDirectory(prefix="cnnlab-cli-") as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        proc = forked_cli.start(module, list(args), str(cwd), env, str(out), str(err))
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise subprocess.TimeoutExpired(proc.args, timeout, out.read_text(), err.read_text()) from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text())


# A real one-node SLURM cluster (scripts/local-slurm.sh), for the tests that submit jobs.
LOCAL_SLURM = Path(__file__).resolve().parents[1] / "scripts" / "local-slurm.sh"
SLURM_TOOLS = ("slurmctld", "slurmd", "munged", "sbatch")


@dataclass(frozen=True)
class SlurmCluster:
    dir: Path  # all the cluster's state, logs and sockets
    conf: Path  # its slurm.conf, also in os.environ["SLURM_CONF"] while the session runs


def _slurm_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    """A short directory that every user can traverse (munged insists on it; unix sockets need < 108 bytes).

    pytest's own base dir is usually /tmp/pytest-of-<user> with mode 0700, so this mostly falls back to a
    fresh /tmp/cnnlab-slurm-*; the bool says whether the directory is ours to remove at the end.
    """
    path = tmp_path_factory.mktemp("slurm")
    parents = [path.parent, *path.parent.parents]
    if len(str(path)) <= 60 and all(p.stat().st_mode & stat.S_IXOTH for p in parents):
        return path, False
    return Path(tempfile.mkdtemp(prefix="cnnlab-slurm-", dir="/tmp")), True


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """Start a one-node SLURM cluster for the session, point SLURM_CONF at it, and always stop it."""
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
    if missing:
        not_found = ", ".join(missing)
        pytest.skip(f"slurm-wlm/munge not installed ({not_found} not on PATH): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (slurmd and munged run as root/munge)")
    cluster_dir, remove_dir = _slurm_dir(tmp_path_factory)
    previous = os.environ.get("SLURM_CONF")

    def stop() -> None:
        result = subprocess.run(
            ["bash", str(LOCAL_SLURM), "stop", str(cluster_dir)], capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            print(f"local-slurm.sh stop failed ({result.returncode}):\n{result.stdout}{result.stderr}", file=sys.stderr)

    try:
        started = subprocess.run(
            ["bash", str(LOCAL_SLURM), "start", str(cluster_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        stop()
        output = b"".join(o if isinstance(o, bytes) else o.encode() for o in (exc.stdout, exc.stderr) if o)
        pytest.fail(f"local-slurm.sh start {cluster_dir} timed out:\n{output.decode(errors='replace')}", pytrace=False)
    lines = started.stdout.strip().splitlines()
    if started.returncode != 0 or not lines or not lines[-1].startswith("export SLURM_CONF="):
        stop()
        pytest.fail(
            f"local-slurm.sh start {cluster_dir} failed ({started.returncode}; its logs are kept there):\n"
            f"{started.stdout}{started.stderr}",
            pytrace=False,
        )
    conf = Path(lines[-1].removeprefix("export SLURM_CONF="))
    os.environ["SLURM_CONF"] = str(conf)
    try:
        yield SlurmCluster(dir=cluster_dir, conf=conf)
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        stop()
        if remove_dir:
            shutil.rmtree(cluster_dir, ignore_errors=True)
