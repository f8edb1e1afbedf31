"""An Optuna search's settings, read once: the search space (Hydra's override syntax), the objectives, the sampler,
the pruner and the study's storage. The sweeper (``cnnlab.sweeper``), the jobs that report to a trial
(``cnnlab.pruning``) and the report (``cnnlab.study_report``) all open the study through here.

The search space keeps the syntax of Hydra's Optuna sweeper: ``choice(a, b)``, ``range(1, 8)``,
``interval(0.001, 0.1)``, ``tag(log, interval(...))``; a plain value is fixed in every trial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer

from cnnlab.errors import ConfigError
from cnnlab.search_checks import built, check_arguments, check_counts, check_storage

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

# What a search may optimise: the record's key and its direction. Parameters and multiply-adds are known before
# training (cnnlab.inspect counts them); every run's metrics.json has them.
OBJECTIVES = {"val_acc": "maximize", "macs": "minimize", "params": "minimize"}
# hydra.sweeper.pruner: Optuna's pruners by name (hydra.sweeper.pruner_args: their arguments).
PRUNERS = {
    "none": "NopPruner",
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "threshold": "ThresholdPruner",
    "patient": "PatientPruner",
}
# A multi-objective study cannot take trial.report (Optuna refuses it): its trials report their validation accuracy
# to a single-objective study beside it, this name's suffix, whose pruner decides. Hyperband's brackets work by
# filtering the trials the sampler sees, which only a pruner of the sampler's own study can do.
PRUNING_STUDY = "-pruning"
# cnnlab's defaults for the pruners' arguments that Optuna requires or leaves open (patient: a median pruner inside)
PRUNER_DEFAULTS = {"patient": {"wrapped_pruner": None, "patience": 1}, "threshold": {"lower": 0.0}}
NEEDS_THE_SAMPLERS_STUDY = {"hyperband"}
# hydra.sweeper.trial_callbacks: the callbacks a trial goes without (false) unless turned back on. A search needs none
# of them: TensorBoard's images of the trained network (a pass over the test set and matplotlib each), and last.ckpt
# every 100 steps (a trial still saves last.ckpt at every epoch end, so a stopped search resumes its trials from
# there, and its best epoch's checkpoint).
LIGHT_TRIAL = {"activation_images": False, "kernel_images": False, "confusion_matrix": False,
               "misclassified_images": False, "model_graph": False, "step_checkpoint": False}  # fmt: skip
PRUNING_TRIAL_ATTR = "cnnlab.pruning_trial"  # on a trial of a multi-objective study: its trial in the pruning study
STARTED_ATTR = "cnnlab.started"  # the study's: when its search first started (seconds since the epoch)
REPORTED_AT = "cnnlab.reported_at."  # a trial's, + the epoch: when its job reported that epoch's val acc
BUDGET_ATTR = "cnnlab.budget_stop"  # the study's: the wall-time budget that stopped its search, and its trials then


@dataclass(frozen=True)
class SearchSettings:
    """``hydra.sweeper``'s settings, checked: what the sweeper and the jobs need to find and drive the study."""

    study_name: str
    storage: str | None
    objectives: tuple[str, ...]
    pruner: str
    pruner_args: Mapping[str, Any]
    prune_below: float | None = None  # a trial reporting a validation accuracy below it is pruned (with a pruner)

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[name] for name in self.objectives]

    @property
    def prunes(self) -> bool:
        return self.pruner != "none"

    @property
    def pruning_study_name(self) -> str:
        """The study the trials report to: the study itself, or the one beside a multi-objective study."""
        return self.study_name if len(self.objectives) == 1 else self.study_name + PRUNING_STUDY


def settings(sweeper: Mapping[str, Any]) -> SearchSettings:
    """Check ``hydra.sweeper``'s counts, objectives, pruner and storage (``cnnlab.search_checks``); a bad one is a
    ``ConfigError`` naming it."""
    check_counts(sweeper)
    objectives = sweeper.get("objectives") or ["val_acc"]
    if isinstance(objectives, str):
        objectives = [objectives]
    objectives = tuple(str(o) for o in objectives)
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown or objectives[0] != "val_acc" or len(set(objectives)) != len(objectives):
        raise ConfigError(
            f"hydra.sweeper.objectives={list(objectives)}: the first is val_acc (maximised), then any of macs, params "
            f"(minimised), each once; e.g. hydra.sweeper.objectives=[val_acc,macs]."
        )
    direction = str(sweeper.get("direction") or "maximize")
    if direction != "maximize":
        raise ConfigError(
            f"hydra.sweeper.direction={direction}: the search maximises the validation accuracy; to minimise size "
            f"too, add it as an objective (hydra.sweeper.objectives=[val_acc,macs])."
        )
    pruner = str(sweeper.get("pruner") or "none")
    if pruner not in PRUNERS:
        raise ConfigError(f"hydra.sweeper.pruner={pruner} is not one of {', '.join(PRUNERS)}.")
    given = sweeper.get("pruner_args") or {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"hydra.sweeper.pruner_args={given!r}: the pruner's arguments by name are wanted, e.g. "
                          f"'hydra.sweeper.pruner_args={{n_startup_trials: 4}}'.")  # fmt: skip
    args = dict(given) if pruner != "none" else {}  # none: no pruner, no arguments
    if pruner != "none":
        check_arguments(f"hydra.sweeper.pruner={pruner}", pruner_class(pruner), {**PRUNER_DEFAULTS.get(pruner, {}),
                        **args}, "hydra.sweeper.pruner_args")  # fmt: skip
        if pruner in NEEDS_THE_SAMPLERS_STUDY and len(objectives) > 1:
            raise ConfigError(
                f"hydra.sweeper.pruner={pruner} cannot prune a search of several objectives ({','.join(objectives)}): "
                f"its brackets need the sampler's own study; use median, percentile, successive_halving or threshold."
            )
        if not sweeper.get("storage"):
            raise ConfigError(
                f"hydra.sweeper.pruner={pruner} needs hydra.sweeper.storage (the jobs report to their trial through "
                f"it), e.g. sqlite:///${{hydra.sweep.dir}}/optuna.db."
            )
    check_storage(sweeper.get("storage"))
    name = sweeper.get("study_name") or "cnnlab"
    floor = check_floor(sweeper.get("prune_below"))  # a floor under the pruner: without one, nothing prunes
    search = SearchSettings(str(name), sweeper.get("storage"), objectives, pruner, args,
                            floor if pruner != "none" else None)  # fmt: skip
    if pruner != "none":
        built(f"hydra.sweeper.pruner={pruner} with hydra.sweeper.pruner_args={args}", lambda: build_pruner(search))
    return search


def check_floor(value: Any) -> float | None:
    """``hydra.sweeper.prune_below``: a validation accuracy in [0, 1), or null for no floor."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ConfigError(f"hydra.sweeper.prune_below={value!r}: a validation accuracy in [0, 1) below which a "
                          f"trial is pruned after its epoch, or null for none; e.g. "
                          f"hydra.sweeper.prune_below=0.15.")  # fmt: skip
    return float(value)


BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def trials_in_flight(sweeper: Mapping[str, Any], launcher_target: str) -> int:
    """How many trials run at once: ``hydra.sweeper.n_jobs`` with a parallel launcher (joblib, SLURM), one with
    Hydra's basic launcher (it runs its jobs in the sweep's own process, one after another)."""
    return 1 if launcher_target == BASIC_LAUNCHER else max(1, int(sweeper.get("n_jobs") or 1))


def pruner_class(name: str) -> type:
    import optuna

    return getattr(optuna.pruners, PRUNERS[name])


def build_pruner(search: SearchSettings) -> optuna.pruners.BasePruner:
    """The search's pruner (a ``patient`` pruner wraps a median pruner unless ``wrapped_pruner`` is given)."""
    import optuna

    args = {**PRUNER_DEFAULTS.get(search.pruner, {}), **search.pruner_args}
    if search.pruner == "patient" and args["wrapped_pruner"] is None:
        args["wrapped_pruner"] = optuna.pruners.MedianPruner()
    return pruner_class(search.pruner)(**args)


def open_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """The study's storage; SQLite waits for a busy file (parallel jobs report to it) instead of failing at once."""
    import optuna

    if url is None:
        return None
    engine_kwargs = {"connect_args": {"timeout": 60}} if str(url).startswith("sqlite:") else {}
    return optuna.storages.RDBStorage(str(url), engine_kwargs=engine_kwargs)


# ---- the search space --------------------------------------------------------------------------------------------


def search_space(arguments: Sequence[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """Hydra overrides (the sweep file's ``params``, then the command line's) as Optuna distributions, and the
    fixed overrides beside them (as given); a later override of a key wins. A bad one: ``ConfigError``."""
    parser = OverridesParser.create()
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for argument in arguments:
        try:
            override = parser.parse_override(argument)
        except Exception as err:  # Hydra's parser error: the whole grammar message, one line of it
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"the search space cannot be parsed: {argument} ({first})") from None
        key = override.get_key_element()
        distributions.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            distributions[key] = distribution(override, argument)
        else:
            fixed[key] = override.get_value_element_as_str()
    return distributions, fixed


def distribution(override: Override, argument: str) -> BaseDistribution:
    """One swept override as an Optuna distribution (as Hydra's Optuna sweeper reads it)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        if not all(isinstance(c, str | int | float | bool | type(None)) for c in choices):
            raise ConfigError(f"the search space cannot be parsed: {argument} (a choice of plain values is wanted)")
        return CategoricalDistribution(choices)
    if override.is_range_sweep():  # range(start, stop, step): stop excluded, as in Hydra's grid
        start, stop, step = value.start, value.stop, value.step
        n = math.ceil((stop - start) / step)
        if n < 1:
            raise ConfigError(f"the search space cannot be parsed: {argument} (an empty range)")
        if any(isinstance(v, float) for v in (start, stop, step)):
            return FloatDistribution(start, start + (n - 1) * step, step=step)
        return IntDistribution(int(start), int(start + (n - 1) * step), step=int(step))
    if override.is_interval_sweep():
        log = "log" in value.tags
        if value.start >= value.end or (log and value.start <= 0):
            raise ConfigError(f"the search space cannot be parsed: {argument} (an interval (low, high), low < high"
                              f"{', low > 0 on a log scale' if log else ''})")  # fmt: skip
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(value.start, value.end, log=log)
    raise ConfigError(f"the search space cannot be parsed: {argument} (choice, range, interval or a plain value)")


def grid_choices(distributions: Mapping[str, BaseDistribution]) -> dict[str, list[Any]]:
    """The grid sampler's values of each axis (discrete distributions only)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    grid: dict[str, list[Any]] = {}
    for name, dist in distributions.items():
        if isinstance(dist, CategoricalDistribution):
            grid[name] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            grid[name] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            n = int(round((dist.high - dist.low) / dist.step)) + 1
            grid[name] = [dist.low + i * dist.step for i in range(n)]
        else:
            raise ConfigError(
                f"hydra/sweeper/sampler=grid takes choice(...) or range(...), not an interval: {name}; give its values."
            )
    return grid


def trial_overrides(params: Mapping[str, Any], fixed: Mapping[str, str]) -> list[str]:
    """A trial's overrides: its sampled parameters, then the fixed ones."""
    return [f"{name}={value}" for name, value in {**params, **fixed}.items()]
