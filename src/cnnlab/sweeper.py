"""cnnlab's Optuna search, on Optuna's ask-and-tell API: ``hydra_plugins.cnnlab_plugins.plugins.OptunaSweeper``
runs this (``sweeps/optuna.yaml``, ``sweeps/search.yaml``).

- Trials stay in flight: with ``hydra.sweeper.n_jobs=k`` (and a parallel launcher: joblib, SLURM) k trials run at
  once, and the next is asked for the moment one ends, so no slot waits for the slowest of a batch.
- Each trial is one job whose number is the trial's: a job finds its trial through the study's storage
  (``cnnlab.pruning``), on this machine or another, and reports its validation accuracy after every epoch; the
  pruner (``hydra.sweeper.pruner``) may stop it there.
- A trial is told what its job's ``metrics.json`` says: complete (with its objectives: validation accuracy, and
  multiply-adds or parameters for a search of accuracy against cost), pruned or failed.
- The study lives in the sweep dir: running the sweep again (``python -m cnnlab.resume``) keeps its finished,
  pruned and failed trials, runs the trials that were running again in their own job dirs, and asks only for the
  trials still missing from ``n_trials``.
- Cost is known before training: the trials the sampler draws blind (TPE's startup trials) are drawn at the start
  and run cheapest first, by multiply-adds times the examples of an epoch (``hydra.sweeper.cheap_first``), so the
  first results come in seconds; each trial TPE draws after them is the cheapest of ``hydra.sweeper.cheapest_of``
  of its proposals (``CheapestOf``); ``hydra.sweeper.budget_s`` bounds the search's wall time (no trial starts after
  it; the study records why it stopped, the report says so, and ``cnnlab.resume`` runs the rest).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from cnnlab import study as studies
from cnnlab.config import CONF_DIR
from cnnlab.errors import ConfigError, refuse
from cnnlab.rundir import RunRecord, read_record
from cnnlab.search_checks import built, check_arguments, check_space
from cnnlab.vocab import FINISHED, Status, SweepFiles

log = logging.getLogger("cnnlab.sweeper")

class Search:
    """One search: its study (and the pruning study beside a multi-objective one), space, sampler and launcher."""

    def __init__(self, sweeper: DictConfig, config: DictConfig, launcher: Any, arguments: Sequence[str],
                 config_loader: Any = None) -> None:  # fmt: skip
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # cnnlab's log says what happens to each trial
        self.settings = studies.settings(sweeper)
        params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
        self.space, self.fixed = studies.search_space([*params, *arguments])  # a later override of a key wins
        if config_loader is not None:  # every value of the space against the config's schema, before any trial
            check_space(self.space, self.fixed, lambda group: config_loader.get_group_options(group), CONF_DIR,
                        lambda overrides: config_loader.load_sweep_config(config, overrides))  # fmt: skip
        self.started = time.time()
        self.budget_s = check_budget(sweeper.get("budget_s"))
        check_trial_callbacks(sweeper.get("trial_callbacks"), config)
        self.sampler, grid_size = build_sampler(sweeper.get("sampler") or {}, self.space)
        self.n_trials = min(int(sweeper.n_trials), grid_size or int(sweeper.n_trials))
        # the trials the sampler draws without looking at results, run cheapest first (a fresh study only)
        self.blind = blind_trials(sweeper.get("sampler") or {}) if sweeper.get("cheap_first", True) else 0
        self.config, self.config_loader, self.sampler_cfg = config, config_loader, sweeper.get("sampler")
        k = check_cheapest_of(sweeper.get("cheapest_of", 1))
        if k > 1 and config_loader is not None and isinstance(self.sampler, optuna.samplers.TPESampler):
            blind = blind_trials(self.sampler_cfg or {})
            self.sampler = CheapestOf(self.sampler, k, self.trial_cost, self.space, blind)
            log.info("each trial TPE draws once %d have ended: the cheapest of %d of its proposals", blind, k)
        self.launcher = launcher
        self.slots = studies.trials_in_flight(sweeper, str(config.hydra.launcher.get("_target_", "")))
        if self.slots == 1 and int(sweeper.get("n_jobs") or 1) > 1:
            log.info("hydra.sweeper.n_jobs=%s with the basic launcher: one trial at a time (hydra/launcher=joblib or "
                     "slurm runs them in parallel)", sweeper.n_jobs)  # fmt: skip
        storage = self.settings.storage
        if storage and str(storage).startswith("sqlite:///"):
            Path(str(storage).removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.storage = studies.open_storage(storage)
        multi = len(self.settings.objectives) > 1
        pruner = studies.build_pruner(self.settings)
        self.study = optuna.create_study(
            study_name=self.settings.study_name, storage=self.storage, sampler=self.sampler,
            directions=self.settings.directions, pruner=None if multi else pruner, load_if_exists=True,
        )  # fmt: skip
        self.study.set_user_attr("cnnlab.objectives", list(self.settings.objectives))
        self.pruning = None
        if multi and self.settings.prunes:
            self.pruning = optuna.create_study(
                study_name=self.settings.pruning_study_name, storage=self.storage, direction="maximize",
                pruner=pruner, load_if_exists=True,
            )  # fmt: skip

    # ---- the loop ----------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Rerun the trials a stopped sweep left running, then keep ``slots`` trials in flight up to ``n_trials``.

        One slot (Hydra's basic launcher): each trial runs in this, the main, thread, so Ctrl-C and SIGTERM reach
        it (Python delivers signals to the main thread only), and it stops after its step with ``last.ckpt`` saved.
        Several slots: a thread each, calling a launcher whose jobs run in processes of their own (joblib's workers,
        SLURM), each with its own signal handlers.
        """
        every = self.study.get_trials(deepcopy=False)
        trials = [t for t in every if t.state != TrialState.WAITING]  # not enqueued
        if studies.STARTED_ATTR not in self.study.user_attrs:  # its anytime curve counts from the first start
            self.study.set_user_attr(studies.STARTED_ATTR, self.started)
        if not every:  # a new study: its blind trials, cheapest first
            self.enqueue_cheapest_first()
        stopped = [t for t in trials if t.state == TrialState.RUNNING]
        if trials:
            log.info("study %s holds %d trials (%d stopped while running): continuing it", self.study.study_name,
                     len(trials), len(stopped))  # fmt: skip
        to_ask = max(0, self.n_trials - len(trials))
        if not to_ask and not stopped:
            log.info("the study has its %d trials: nothing left to run", len(trials))
        queue = list(stopped)

        def next_trial() -> tuple[int, list[str]]:
            nonlocal to_ask
            if queue:
                return self.rerun(queue.pop(0))
            to_ask -= 1
            return self.ask()

        def more() -> bool:  # a trial to start, within the budget
            return bool(queue or to_ask) and not self.budget_spent()

        if self.slots == 1:
            while more():
                number, overrides = next_trial()
                self.tell(number, self.came_back(number, functools.partial(self.launch, number, overrides)))
        else:
            with ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="cnnlab-trial") as pool:
                in_flight: dict[Future[JobReturn], int] = {}
                while more() or in_flight:
                    while len(in_flight) < self.slots and more():
                        number, overrides = next_trial()
                        in_flight[pool.submit(self.launch, number, overrides)] = number
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        number = in_flight.pop(future)
                        self.tell(number, self.came_back(number, future.result))
        self.record_budget_stop(stopped=bool(queue or to_ask))
        self.write_results()

    def budget_spent(self) -> bool:
        return self.budget_s is not None and time.time() - self.started >= self.budget_s

    def record_budget_stop(self, stopped: bool) -> None:
        """The study says whether its budget stopped it (the report reads it); a search that ran to its end clears
        what an earlier, stopped run of it said."""
        ran = sum(t.state != TrialState.WAITING for t in self.study.get_trials(deepcopy=False))
        if stopped:
            log.warning("the budget of %g s is spent (hydra.sweeper.budget_s): %d of %d trials ran; python -m "
                        "cnnlab.resume <sweep dir> hydra.sweeper.budget_s=null runs the rest", self.budget_s, ran,
                        self.n_trials)  # fmt: skip
            stop = {"budget_s": self.budget_s, "trials": ran, "n_trials": self.n_trials}
            self.study.set_user_attr(studies.BUDGET_ATTR, stop)
        elif self.study.user_attrs.get(studies.BUDGET_ATTR):
            self.study.set_user_attr(studies.BUDGET_ATTR, None)

    def enqueue_cheapest_first(self) -> None:
        """Draw the sampler's blind trials now, with Optuna's random sampler (seeded from the search's seed), and
        enqueue them cheapest first: multiply-adds per example (the network built, not trained) times an epoch's
        examples. With trials in flight TPE may draw a few more blind trials itself, before enough have ended."""
        count = min(self.blind, self.n_trials)
        if count < 2 or self.config_loader is None:
            return
        seed = (self.sampler_cfg or {}).get("seed")
        # not the search's seed itself: TPE draws its own blind trials from RandomSampler(seed), the same points
        sampler = optuna.samplers.RandomSampler(seed=None if seed is None else seed + 1)
        draw = optuna.create_study(sampler=sampler, directions=self.settings.directions)
        drawn = [draw.ask(self.space).params for _ in range(count)]
        costs = [self.trial_cost(params) for params in drawn]
        for _, params in sorted(zip(costs, drawn, strict=True), key=lambda pair: pair[0]):
            self.study.enqueue_trial(params, skip_if_exists=False)
        log.info("the first %d trials (the sampler's blind ones) run cheapest first", count)

    def trial_cost(self, params: dict[str, Any]) -> float:
        """What a trial of ``params`` costs before it trains: multiply-adds per example (the network built from the
        trial's composed config) times an epoch's examples; 0 for a point that cannot be built (its trial fails and
        says why, so it may as well run first)."""
        from cnnlab.cost import epoch_cost

        overrides = studies.trial_overrides(params, self.fixed)
        try:
            return epoch_cost(self.config_loader.load_sweep_config(self.config, overrides))
        except Exception as err:
            log.info("the cost of %s is not known (%s)", " ".join(overrides), err)
            return 0.0

    def ask(self) -> tuple[int, list[str]]:
        trial = self.study.ask(self.space)
        if self.pruning is not None:  # its reports go to a trial of the pruning study
            trial.set_user_attr(studies.PRUNING_TRIAL_ATTR, self.pruning.ask().number)
        return trial.number, studies.trial_overrides(trial.params, self.fixed)

    def rerun(self, trial: FrozenTrial) -> tuple[int, list[str]]:
        overrides = studies.trial_overrides(trial.params, self.fixed)
        log.info("trial %d was running when the sweep stopped: running it again (%s)", trial.number,
                 " ".join(overrides))  # fmt: skip
        return trial.number, overrides

    def launch(self, number: int, overrides: list[str]) -> JobReturn:
        (result,) = self.launcher.launch([overrides], initial_job_idx=number)
        return result

    @staticmethod
    def came_back(number: int, result: Callable[[], JobReturn]) -> JobReturn | None:
        """The job's return; None when the launcher itself failed (a lost SLURM job): the trial failed. A Ctrl-C in
        the trial (``SystemExit``) goes on up: the search stops, and ``cnnlab.resume`` continues it."""
        try:
            return result()
        except Exception as err:
            log.warning("trial %d: its job did not come back (%s: %s)", number, type(err).__name__, err)
            return None

    def tell(self, number: int, result: JobReturn | None) -> None:
        """Tell the study how trial ``number`` ended, from its job's record."""
        record = job_record(result)
        trial = self.study.get_trials(deepcopy=False)[number]
        pruning_number = trial.user_attrs.get(studies.PRUNING_TRIAL_ATTR)
        values = None
        if record is None or record.status not in FINISHED:
            state = TrialState.FAIL
        elif record.status == Status.PRUNED:
            state = TrialState.PRUNED
        else:
            values = [getattr(record, name) for name in self.settings.objectives]
            state = TrialState.COMPLETE if all(v is not None for v in values) else TrialState.FAIL
        # a pruned trial's value is its last report (Optuna's rule), a failed one has none
        self.study.tell(number, values if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)
        if self.pruning is not None and pruning_number is not None:
            accuracy = record.val_acc if record is not None else None
            final = state if state != TrialState.COMPLETE or accuracy is not None else TrialState.FAIL
            self.pruning.tell(pruning_number, [accuracy] if final == TrialState.COMPLETE else None, state=final,
                              skip_if_finished=True)  # fmt: skip
        if state == TrialState.PRUNED:
            log.info("trial %d pruned after %s epochs", number, record.epochs)

    def write_results(self) -> None:
        """``optimization_results.yaml`` in the sweep dir, as Hydra's Optuna sweeper writes it."""
        sweep_dir = Path(str(self.launcher.config.hydra.sweep.dir))
        completed = [t for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if not completed:
            log.warning("no trial completed: no best parameters")
            return
        if len(self.settings.objectives) == 1:
            best = self.study.best_trial
            results = {"name": "optuna", "best_params": {**best.params, **self.fixed}, "best_value": best.value}
            log.info("best trial %d: %s (val acc %.4f)", best.number, best.params, best.value)
        else:
            results = {"name": "optuna", "solutions": [{"number": t.number, "params": t.params, "values": t.values}
                                                       for t in self.study.best_trials]}  # fmt: skip
            log.info("Pareto front: %d trials (%s)", len(self.study.best_trials),
                     ", ".join(str(t.number) for t in self.study.best_trials))  # fmt: skip
        OmegaConf.save(OmegaConf.create(results), sweep_dir / SweepFiles.BEST)


def check_budget(value: Any) -> float | None:
    """``hydra.sweeper.budget_s``: seconds > 0, or null."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"hydra.sweeper.budget_s={value!r}: the search's wall time in seconds (> 0), or null for "
                          f"none; e.g. hydra.sweeper.budget_s=600.")  # fmt: skip
    return float(value)


def check_cheapest_of(value: Any) -> int:
    """``hydra.sweeper.cheapest_of``: a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"hydra.sweeper.cheapest_of={value!r}: how many of TPE's proposals a trial is the "
                          f"cheapest of, a whole number >= 1 (1: TPE's own choice); e.g. "
                          f"hydra.sweeper.cheapest_of=3.")  # fmt: skip
    return value


def check_trial_callbacks(value: Any, config: DictConfig) -> dict[str, bool]:
    """``hydra.sweeper.trial_callbacks``: callbacks of the config (``callbacks.<name>``), each true or false (one the
    config does not have is already off: false for it is no mistake)."""
    given = dict(value or {})
    known = set((config.get("callbacks") or {}).keys())
    for name, on in given.items():
        if not isinstance(on, bool) or (on and name not in known):
            raise ConfigError(f"hydra.sweeper.trial_callbacks.{name}={on!r}: true or false for one of the config's "
                              f"callbacks ({', '.join(sorted(known))}).")  # fmt: skip
    return given


def blind_trials(cfg: Any) -> int:
    """How many trials the sampler draws without looking at results: TPE's ``n_startup_trials`` (its own default
    unless set), all of a random search's; none for the others (a grid has its order, NSGA-II its generations)."""
    spec = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    target = str(spec.get("_target_", "optuna.samplers.TPESampler")).rsplit(".", 1)[-1]
    if target == "RandomSampler":
        return 2**31
    if target != "TPESampler":
        return 0
    default = inspect.signature(optuna.samplers.TPESampler).parameters["n_startup_trials"].default
    return int(spec.get("n_startup_trials", default))


def build_sampler(cfg: Any, space: dict[str, Any]) -> tuple[optuna.samplers.BaseSampler, int | None]:
    """The sampler of ``hydra/sweeper/sampler`` (its ``_target_``: one of Optuna's), seeded as configured; and the
    number of points of a grid sampler's grid (None for the others)."""
    from hydra.utils import instantiate

    spec = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    target = str(spec.get("_target_", "optuna.samplers.TPESampler"))
    sampler_cls = getattr(optuna.samplers, target.rsplit(".", 1)[1], None) if target.startswith("optuna.") else None
    if not isinstance(sampler_cls, type) or not issubclass(sampler_cls, optuna.samplers.BaseSampler):
        raise ConfigError(f"hydra.sweeper.sampler._target_={target}: one of optuna.samplers' classes is wanted "
                          f"(hydra/sweeper/sampler=tpe, random, grid or nsgaii).")  # fmt: skip
    args = {k: v for k, v in spec.items() if not k.startswith("_")}
    setting = f"the sampler {target}"
    if sampler_cls is optuna.samplers.GridSampler:
        grid = studies.grid_choices(space)
        check_arguments(setting, sampler_cls, {"search_space": grid, **args}, "hydra.sweeper.sampler")
        return built(setting, lambda: AskAndTellGrid(grid, **args)), math.prod(map(len, grid.values()))
    check_arguments(setting, sampler_cls, args, "hydra.sweeper.sampler")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate, constant_liar
        return built(setting, lambda: instantiate({"_target_": target, **args})), None


class CheapestOf(optuna.samplers.BaseSampler):
    """A sampler that runs the cheapest of ``k`` of its ``base`` sampler's proposals for each trial it draws once
    ``blind`` trials have finished (before that TPE draws at random: its blind trials, ``cheap_first``'s business).

    Optuna's samplers take no cost, and TPE's proposals vary from draw to draw (each is the best of its own random
    candidates by TPE's measure), so among ``k`` of them the cheapest (``cost``: multiply-adds of an epoch, known
    before training) is as much TPE's choice as the first, and a search spends its time on the networks that train
    fastest among those TPE thinks good. Ties go to the first proposal (``k=1``: the base sampler itself). A point is
    drawn whole: all at once by a multivariate TPE, else at the trial's first parameter; an enqueued trial's are not
    drawn at all.
    """

    def __init__(self, base: optuna.samplers.BaseSampler, k: int, cost: Callable[[dict[str, Any]], float],
                 space: dict[str, Any], blind: int) -> None:  # fmt: skip
        self.base, self.k, self.cost, self.space, self.blind = base, k, cost, space, blind
        self.drawn: dict[int, dict[str, Any]] = {}  # trial number -> the point chosen for it

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        if self.k <= 1 or not set(self.space) <= set(search_space) or self.still_blind(study, trial):
            return self.base.sample_relative(study, trial, search_space)
        return self.cheapest(trial, [self.base.sample_relative(study, trial, search_space) for _ in range(self.k)])

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
                           ) -> Any:  # fmt: skip
        if self.k <= 1 or param_name not in self.space or self.still_blind(study, trial):
            return self.base.sample_independent(study, trial, param_name, param_distribution)
        if trial.number not in self.drawn:
            open_space = {n: d for n, d in self.space.items() if n not in trial.params}
            self.drawn[trial.number] = self.cheapest(trial, [
                {n: self.base.sample_independent(study, trial, n, d) for n, d in open_space.items()}
                for _ in range(self.k)])  # fmt: skip
        return self.drawn[trial.number][param_name]

    def cheapest(self, trial: FrozenTrial, points: list[dict[str, Any]]) -> dict[str, Any]:
        costs = [self.cost({**trial.params, **point}) for point in points]
        chosen = costs.index(min(costs))
        if chosen:
            log.info("trial %d: TPE's proposal %d of %d, the cheapest (%.3g multiply-adds an epoch, the first %.3g)",
                     trial.number, chosen + 1, self.k, costs[chosen], costs[0])  # fmt: skip
        return points[chosen]

    def still_blind(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if trial.number in self.drawn:
            return False
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))) < self.blind

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self.drawn.pop(trial.number, None)
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


class AskAndTellGrid(optuna.samplers.GridSampler):
    """Optuna's grid sampler, told its trials by ask-and-tell: when the grid is done it stops the study, which works
    only inside ``study.optimize`` (``study.stop`` raises otherwise: the search crashed at its last trial). The search
    asks for no more trials than the grid has points, so there is nothing to stop."""

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        return None


def job_record(result: JobReturn | None) -> RunRecord | None:
    """The record a trial's job wrote (None when the job came back without one)."""
    if result is None or result.status != JobStatus.COMPLETED or result.hydra_cfg is None:
        return None
    try:
        return read_record(result.hydra_cfg.hydra.runtime.output_dir)
    except Exception:  # unreadable: the trial failed; the report names the file
        return None


def sweep(sweeper: DictConfig, config: DictConfig, launcher: Any, arguments: Sequence[str],
          config_loader: Any = None) -> None:  # fmt: skip
    """Run the search; a bad setting is one ``cnnlab: error:`` line, exit status 2, before any trial runs."""
    try:
        search = Search(sweeper, config, launcher, arguments, config_loader)
    except ConfigError as err:
        refuse(str(err))
    search.run()
