"""The build puts cnnlab's configs into the package: ``conf/`` (its ``sweep`` group is ``sweeps/``, linked) becomes
``cnnlab/conf`` in the wheel, where an installed cnnlab finds them (``cnnlab.config.CONF_DIR``). The repository keeps
them at its top level; an editable install reads them there. Everything else is in ``pyproject.toml``."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def not_this_machines(folder: str, names: list[str]) -> list[str]:
    """``conf/local`` holds a machine's own settings (git-ignored): only its example travels."""
    return [n for n in names if n != "example.yaml"] if Path(folder).name == "local" else []


class BuildWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib, "cnnlab", "conf")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(ROOT / "conf", target, ignore=not_this_machines)  # links followed: conf/sweep -> sweeps/


setup(cmdclass={"build_py": BuildWithConfigs})
