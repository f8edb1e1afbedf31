"""cnnlab outside its checkout: the wheel built from a clean tree, installed into a new virtual environment, run with
the ``cnnlab`` command from an empty folder that is not the repository, with a user's own configs and network.

The new environment takes cnnlab from the wheel and its dependencies from the suite's environment (a ``.pth`` line
naming the suite's site-packages, whose own ``.pth`` files, the editable install's among them, are not run), and an
audit hook refuses every file the processes would read in the repository (the suite's virtual environment, which
may sit in the checkout, apart): a command that reads its configs, code or anything else from the checkout fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import TINY_OVERRIDES, write_idx_set

REPO = Path(__file__).resolve().parents[1]
SUITE_SITE = Path(sysconfig.get_paths()["purelib"])
EXAMPLE = REPO / "examples" / "own_network"

GUARD = """
import sys

REPO, ALLOWED = {repo!r}, {allowed!r}


def _refuse(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes)):
        path = args[0].decode() if isinstance(args[0], bytes) else args[0]
        if (path == REPO or path.startswith(REPO + "/")) and not any(path.startswith(a) for a in ALLOWED):
            raise PermissionError(f"read from the repository: {{path}}")


sys.addaudithook(_refuse)
"""


def tracked_tree(dest: Path) -> Path:
    """The repository's files (tracked, and new ones git does not ignore) copied to ``dest``: a clean tree, as a
    fresh clone has it, without build outputs, logs or the virtual environment. Links stay links."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source, target = REPO / name, dest / name
        if not source.exists() and not source.is_symlink():  # deleted in the work tree, not yet in git
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return dest


def repository_configs() -> set[str]:
    """Every file of conf/ and sweeps/ (conf/sweep is a link to sweeps/) as it lies in the package: cnnlab/conf/...,
    less conf/local's machine settings (its example travels)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "conf", "sweeps"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    names = set()
    for name in listed:
        if (REPO / name).is_symlink() or not (REPO / name).is_file():
            continue
        names.add("cnnlab/conf/" + (f"sweep/{name.removeprefix('sweeps/')}" if name.startswith("sweeps/") else
                                    name.removeprefix("conf/")))  # fmt: skip
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cnnlab's wheel, built from a clean copy of the tree (setuptools of the suite's environment, no downloads)."""
    root = tmp_path_factory.mktemp("build")
    tree = tracked_tree(root / "tree")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(tree)], check=True, capture_output=True, timeout=300)  # fmt: skip
    shutil.rmtree(tree)
    (found,) = (root / "dist").glob("cnnlab-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A new virtual environment with the wheel installed; the environment variables that run its ``cnnlab``."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    (site / "_cnnlab_suite_packages.pth").write_text(f"{SUITE_SITE}\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    allowed = [str(SUITE_SITE.parents[2]) + "/", str(venv) + "/"]  # the suite's venv may sit in the checkout
    (site / "cnnlab_test_guard.py").write_text(GUARD.format(repo=str(REPO), allowed=allowed))
    (site / "zz_cnnlab_test_guard.pth").write_text("import cnnlab_test_guard\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}


def cnnlab(env: dict[str, str], cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The installed ``cnnlab`` command (first on the environment's PATH), run in ``cwd``."""
    return subprocess.run(["cnnlab", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)  # fmt: skip


def test_the_wheel_holds_every_config_and_sweep(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        packaged = {n for n in zf.namelist() if n.startswith("cnnlab/conf/")}
        entry_points = next(zf.read(n).decode() for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert packaged == repository_configs()
    assert "cnnlab/conf/sweep/chapter6.yaml" in packaged and "cnnlab/conf/local/example.yaml" in packaged
    assert "cnnlab = cnnlab.cli:main" in entry_points


def test_the_source_distribution_carries_the_configs(tmp_path: Path) -> None:
    """``python -m build`` makes the wheel from the sdist: the sdist must hold conf/ and sweeps/ (MANIFEST.in)."""
    tree = tracked_tree(tmp_path / "tree")
    made = subprocess.run([sys.executable, "-c", "from setuptools import build_meta as b; print(b.build_sdist("
                           f"{str(tmp_path / 'dist')!r}))"], cwd=tree, capture_output=True, text=True, timeout=300,
                          check=True).stdout.split()[-1]  # fmt: skip
    with tarfile.open(tmp_path / "dist" / made) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {"sweeps/chapter6.yaml", "conf/config.yaml", "conf/model/lenet.yaml", "setup.py"} <= names


def test_the_guard_refuses_the_repository(installed: dict[str, str], tmp_path: Path) -> None:
    """The proof below holds only if reading the checkout fails in these processes: it does."""
    proc = subprocess.run(["python", "-c", f"open({str(REPO / 'README.md')!r})"], cwd=tmp_path, env=installed,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0 and "read from the repository" in proc.stderr


@pytest.mark.slow
def test_installed_cnnlab_runs_outside_the_checkout(installed: dict[str, str], tmp_path: Path) -> None:
    """From an empty folder: --help, a run, a sweep of a user's network beside a LeNet, its report and resume, the
    user's network inspected and its checkpoint evaluated, all from the installed package."""
    data = write_idx_set(tmp_path / "data" / "FashionMNIST" / "raw").parents[1]
    work = tmp_path / "work"
    work.mkdir()
    tiny = [*TINY_OVERRIDES, f"paths.data_dir={data}"]

    where = subprocess.run(["python", "-c", "import cnnlab, cnnlab.config as c; print(cnnlab.__file__, c.CONF_DIR)"],
                           cwd=work, env=installed, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert str(REPO / "src") not in where and "site-packages/cnnlab/conf" in where

    helped = cnnlab(installed, work, "--help")
    assert helped.returncode == 0 and "resume" in helped.stdout, helped.stderr
    assert cnnlab(installed, work, "--version").stdout.startswith("cnnlab ")

    run = cnnlab(installed, work, "train", *tiny, "hydra.run.dir=runs/lenet")
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((work / "runs" / "lenet" / "metrics.json").read_text())["status"] == "ok"

    shutil.copytree(EXAMPLE, work, dirs_exist_ok=True)  # the README's example: conf/ and residual_lenet.py
    swept = cnnlab(installed, work, "train", "--config-dir", "conf", "-m", "model=residual_lenet,lenet", *tiny,
                   "hydra.sweep.dir=sweep")  # fmt: skip
    assert swept.returncode == 0, swept.stderr[-3000:]
    records = {p.parent.name: json.loads(p.read_text()) for p in (work / "sweep").glob("*/metrics.json")}
    assert sorted(records) == ["0_model=residual_lenet", "1_model=lenet"]
    assert all(r["status"] == "ok" for r in records.values())
    assert records["0_model=residual_lenet"]["params"] == 100_514  # the walk of cnnlab inspect, below
    assert records["0_model=residual_lenet"]["macs"] == 1_312_048

    reported = cnnlab(installed, work, "report", "sweep")
    assert reported.returncode == 0 and (work / "sweep" / "report.md").is_file(), reported.stderr[-3000:]
    assert "model=residual_lenet" in (work / "sweep" / "report.md").read_text()
    resumed = cnnlab(installed, work, "resume", "sweep")  # composes each finished job again: needs --config-dir
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "--config-dir" in resumed.stderr

    walked = cnnlab(installed, work, "inspect", "--config-dir", "conf", "model=residual_lenet")
    assert walked.returncode == 0, walked.stderr[-3000:]
    assert "block  Residual" in walked.stdout and "parameters: 100,514" in walked.stdout

    checkpoint = work / "sweep" / "0_model=residual_lenet" / "checkpoints" / "last.ckpt"
    tested = cnnlab(installed, work, "eval", f"ckpt_path='{checkpoint}'", "trainer=debug", "trainer.accelerator=cpu")
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "checkpoints/last.ckpt: test_acc" in tested.stdout
