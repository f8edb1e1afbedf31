"""What Hydra does before a job, made to answer clearly: job dir names that fit, ``${hydra:...}`` in a sweep's dir,
output dirs that can be made (Hydra's own ``mkdir`` would end in a traceback), and whether this is a sweep's job.
Light: no torch.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
import string
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import refuse
from cnnlab.report_table import round_floats, split_overrides
from cnnlab.sweepspace import sweep_record, swept_keys


def job_dirname(override_dirname: str, limit: int = 200) -> str:
    """A job folder name that says its overrides and fits the file system (255 bytes a name, no ``/``).

    Long floats are rounded (``lr=0.0386``); when still too long, keys lose their group (``activation=gelu``);
    when still too long, the name is cut and ends in a hash of the whole, so names stay unique.
    """
    name = round_floats(override_dirname).replace("/", "_")
    if len(name) > limit:
        name = re.sub(r"(^|,)[\w.]+\.(\w+=)", r"\1\2", name)
    if len(name) > limit:
        name = name[: limit - 9] + "-" + hashlib.md5(override_dirname.encode()).hexdigest()[:8]
    return name


def job_subdir(num: int, override_dirname: str, sweep_dir: str) -> str:
    """A sweep job's folder, and so its TensorBoard run: its number and the overrides the sweep varies
    (``3_model=lenet_k7,seed=2``); the overrides every job shares are in the sweep's record (``multirun.yaml``).

    A sweep started before jobs were named so has folders named by all the overrides (``3_++trainer.x=2,model=...``):
    a job of it that is resumed finds its folder by that name. Without a readable record, or when nothing is
    swept, the name is the old one.
    """
    old = f"{num}_{job_dirname(override_dirname)}"
    record = sweep_record(sweep_dir)
    keys = swept_keys(record) if record is not None else set()
    swept = [item for item in split_overrides(override_dirname) if item.split("=", 1)[0].lstrip("+~") in keys]
    if not swept:
        return old
    new = f"{num}_{job_dirname(','.join(swept))}"
    return old if (Path(sweep_dir) / old).is_dir() and not (Path(sweep_dir) / new).exists() else new


# hydra.sweep.subdir in conf/hydra/default.yaml names each job's folder with it; the records of sweeps started before
# (their .hydra/hydra.yaml) name job_dirname, which stays resolvable.
OmegaConf.register_new_resolver("cnnlab.job_subdir", job_subdir, replace=True)
OmegaConf.register_new_resolver("cnnlab.job_dirname", job_dirname, replace=True)


def is_multirun() -> bool:
    """True inside a job of ``-m`` (a sweep), False in a single run or outside Hydra."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class OutputDirs(Callback):
    """Hydra callback: before a run or a sweep, make its dir (``hydra.run.dir`` or ``hydra.sweep.dir``) or say in
    one line why it cannot be made, exit status 2; and make ``${hydra:...}`` resolvable while a sweep starts, as it
    is in a single run.

    Hydra resolves ``hydra.sweep.dir`` before any job has set ``HydraConfig``; ours goes through
    ``paths.log_dir`` to ``${hydra:runtime.cwd}``, so without this ``-m`` works only with ``paths.log_dir=...``.
    Resolving the dir here gives the one Hydra uses: its ``now`` resolver caches its value in the config.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        make_output_dir(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        refuse_a_swept_debug_mode(config)
        make_output_dir(config, "sweep")


def refuse_a_swept_debug_mode(config: DictConfig) -> None:
    """A sweep over ``debug=...`` modes: each mode moves its jobs under ``<log root>/debug/`` (its own
    ``hydra.sweep.dir``), away from the sweep's dir, whose report would find none of them. One line, exit 2, unless
    the sweep's dir is given on the command line (then every job goes there)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    swept = any(o.key_or_group == "debug" and o.is_sweep_override() for o in parsed)
    given_dir = any(str(o).startswith("hydra.sweep.dir=") for o in config.hydra.overrides.hydra)
    if swept and not given_dir:
        refuse("debug=... takes one mode per sweep (a mode moves its jobs under <log root>/debug/); run one mode "
               "with -m over the rest (debug=limit -m model=lenet,lenet_k3), or give the sweep's dir "
               "(hydra.sweep.dir=...).")


def make_output_dir(config: DictConfig, mode: str) -> None:
    """Make ``hydra.<mode>.dir``; a dir that cannot be made is one ``cnnlab: error:`` line naming the setting."""
    HydraConfig.instance().set_config(copy.deepcopy(config))  # a copy: set_config makes its hydra node read-only
    folder = Path(str(OmegaConf.select(config, f"hydra.{mode}.dir")))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((p for p in folder.parents if p.exists()), None)
        why = f"{blocker} is a file" if blocker is not None and not blocker.is_dir() else err.strerror
        log_dir = OmegaConf.select(config, "paths.log_dir", throw_on_resolution_failure=False)
        refuse(f"paths.log_dir={log_dir}: cannot create {folder} ({why}); point paths.log_dir at a writable folder.")


class LightningNotes(logging.Filter):
    """Keeps Lightning's start-up notes and tips off the terminal (the log file keeps them): the header says it."""

    NOTES = ("GPU available:", "TPU available:", "HPU available:", "💡 Tip:", "`Trainer.fit` stopped:",
             "You are using a CUDA device", "LOCAL_RANK:", "Trainer already configured")  # fmt: skip

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("pytorch_lightning") and record.getMessage().startswith(self.NOTES))


def help_page(conf_dir: Path) -> str:
    """``--help``: cnnlab's page (``hydra.help.template`` in conf/hydra/default.yaml) with the config groups and their
    choices read from the folders of ``conf_dir``. Hydra's own listing builds a config repository per group, each a
    deep copy of every stored schema: most of a second, for the same list."""
    template = OmegaConf.load(conf_dir / "hydra" / "default.yaml").help.template
    lines = []
    for folder in sorted(p for p in conf_dir.iterdir() if p.is_dir() and p.name != "hydra"):
        choices = sorted(f.stem for f in folder.glob("*.yaml"))
        if choices:
            lines.append(f"{folder.name}: {', '.join(choices)}\n")
    return string.Template(template).safe_substitute(APP_CONFIG_GROUPS="".join(lines))
