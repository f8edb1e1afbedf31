"""What a sweep varies: the overrides that take several values (a grid's axes, a search's space), their keys and
their domains, read from the sweep's config, or in a job from the sweep's record (``multirun.yaml`` in the sweep dir).

The job dirs (``cnnlab.runtime.job_subdir``), TensorBoard's experiment summary (``cnnlab.hparams``) and the progress
lines (``cnnlab.watch``) all go by these keys. Light: Hydra and OmegaConf only.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override
from omegaconf import DictConfig, OmegaConf

from cnnlab.vocab import SweepFiles


def sweeper_overrides(config: DictConfig) -> list[Override]:
    """The sweep's overrides as Hydra's basic sweeper reads them: its params, then the command line's."""
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    return OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])


def plain_key(override: Override) -> str:
    """The key an override sets, without ``+``/``++``/``~``: ``optimizer.lr``, ``model`` (a group)."""
    return override.get_key_element().lstrip("+~")


def swept_overrides(config: DictConfig) -> dict[str, Override]:
    """The overrides that change from job to job, by key, in the order given (the last one given for a key wins)."""
    final: dict[str, Override] = {}
    for override in sweeper_overrides(config):
        final[plain_key(override)] = override  # a key keeps its first place, as in Hydra's basic sweeper
    return {key: override for key, override in final.items() if override.is_sweep_override()}


def swept_keys(config: DictConfig) -> set[str]:
    """The keys that change from job to job (a grid's axes, or the Optuna search space)."""
    return set(swept_overrides(config))


def domain(override: Override) -> tuple[float, float] | list[Any] | None:
    """What a swept key takes: ``(low, high)`` for ``interval(...)`` (a search's range, ``tag(log, ...)`` too), the
    values of a grid, ``choice(...)`` or ``range(...)``, or None when the sweep does not say (a glob)."""
    value = override.value()
    if isinstance(value, IntervalSweep):
        return float(value.start), float(value.end)
    try:
        return list(override.sweep_iterator())
    except Exception:  # glob(...): its values depend on the config group's choices
        return None


@functools.lru_cache(maxsize=8)
def _record(path: Path, mtime_ns: int) -> DictConfig | None:
    try:
        record = OmegaConf.load(path)
        return record if isinstance(record, DictConfig) and "hydra" in record else None
    except Exception:  # cut short or edited by hand: the job falls back to naming itself by all its overrides
        return None


def sweep_record(sweep_dir: Path | str) -> DictConfig | None:
    """The sweep's record in ``sweep_dir`` (written before any job starts), or None without a readable one."""
    path = Path(sweep_dir) / SweepFiles.RECORD
    try:
        return _record(path, path.stat().st_mtime_ns)
    except OSError:
        return None
