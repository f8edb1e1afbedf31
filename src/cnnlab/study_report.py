"""The Optuna study of a search, in its sweep's report: the Pareto front of accuracy against cost (a table and
``pareto.png``) and Optuna's own pictures (optimisation history, parameter importances, the trials' learning
curves when the search prunes). ``cnnlab.report`` adds this section when the sweep dir holds a study
(``optuna.db``); optuna is imported only then.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab import study as studies
from cnnlab.anytime import anytime
from cnnlab.anytime import draw as draw_anytime
from cnnlab.errors import ConfigError
from cnnlab.search_checks import check_study_file
from cnnlab.vocab import SweepFiles

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("cnnlab.study_report")

COST_LABELS = {"val_acc": "val acc", "macs": "multiply-adds per example", "params": "parameters"}


def study_section(root: Path, rows: list[dict[str, Any]]) -> str:
    """The report's section on the study (or studies) in ``root/optuna.db``; '' when there is none, and a line saying
    it is missing (the file named, one warning) when it cannot be read: the runs' tables are written all the same."""
    if not (root / SweepFiles.STUDY).is_file():
        return ""
    try:
        check_study_file(root / SweepFiles.STUDY)
    except ConfigError as err:
        print(f"cnnlab: warning: the report has no study part: {err}", file=sys.stderr)
        return f"## Study\n\nThe study part is missing: {err}\n"
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = studies.open_storage(f"sqlite:///{root / SweepFiles.STUDY}")
    every = set(optuna.get_all_study_names(storage))
    names = sorted(n for n in every if not n.endswith(studies.PRUNING_STUDY))
    parts = []
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        beside = name + studies.PRUNING_STUDY  # a multi-objective study's trials report there
        pruning = optuna.load_study(study_name=beside, storage=storage) if beside in every else study
        parts.append(one_study(root, study, pruning, rows, prefix="" if len(names) == 1 else f"{name}-"))
    return "\n".join(parts)


def failed_trials(path: Path) -> list[int]:
    """The numbers of the failed trials of the searches in ``path`` (none when it cannot be read)."""
    try:
        check_study_file(path)
    except ConfigError:
        return []
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = studies.open_storage(f"sqlite:///{path}")
    names = [n for n in optuna.get_all_study_names(storage) if not n.endswith(studies.PRUNING_STUDY)]
    return [t.number for name in names for t in optuna.load_study(study_name=name, storage=storage).get_trials(
            deepcopy=False, states=(TrialState.FAIL,))]  # fmt: skip


def one_study(root: Path, study: optuna.Study, pruning: optuna.Study, rows: list[dict[str, Any]], prefix: str) -> str:
    from optuna.trial import TrialState

    every = study.get_trials(deepcopy=False)
    trials = [t for t in every if t.state != TrialState.WAITING]
    states = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    waiting = f" ({len(every) - len(trials)} more drawn, not run yet)" if len(every) > len(trials) else ""
    lines = [f"## Study {study.study_name}\n",
             f"{len(trials)} trials: {states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
             f"{states[TrialState.FAIL]} failed{waiting}.\n"]  # fmt: skip
    stop = study.user_attrs.get(studies.BUDGET_ATTR)
    if stop:
        lines.append(f"The search stopped at its wall-time budget (hydra.sweeper.budget_s={stop['budget_s']:g}): "
                     f"{stop['trials']} of {stop['n_trials']} trials ran. `python -m cnnlab.resume {root} "
                     f"hydra.sweeper.budget_s=null` runs the rest.\n")  # fmt: skip
    results = anytime(study, pruning if pruning is not study else None)
    lines.append(results.line() + "\n")
    if results.results and draw(root / f"{prefix}anytime.png",
                                lambda: draw_anytime({study.study_name: [results]}, "best so far against wall time")):
        lines.append(f"![best so far against wall time]({prefix}anytime.png)\n")
    objectives = objective_names(study)
    if len(objectives) > 1:
        lines.append(pareto_table(study, objectives, rows))
        if draw(root / f"{prefix}pareto.png", lambda: pareto_plot(study, objectives)):
            lines.append(f"![Pareto front]({prefix}pareto.png)\n")
    accuracy = (lambda t: t.values[0]) if len(objectives) > 1 else None
    pictures = []
    if states[TrialState.COMPLETE]:
        pictures.append(("history", "optimisation history", lambda: plot("plot_optimization_history", study, accuracy)))
    if states[TrialState.COMPLETE] > 1:
        pictures.append(("importances", "parameter importances",
                         lambda: plot("plot_param_importances", study, accuracy)))  # fmt: skip
    if any(t.intermediate_values for t in pruning.get_trials(deepcopy=False)):
        pictures.append(("curves", "validation accuracy per epoch (pruned trials stop early)",
                         lambda: plot("plot_intermediate_values", pruning, None)))  # fmt: skip
    shown = [f"[{what}]({prefix}optuna-{name}.png)" for name, what, make in pictures
             if draw(root / f"{prefix}optuna-{name}.png", make)]  # fmt: skip
    if shown:
        lines.append("Optuna's pictures: " + ", ".join(shown) + ".\n")
    return "\n".join(lines)


def objective_names(study: optuna.Study) -> list[str]:
    """The study's objectives by cnnlab's names (a study of one direction: the validation accuracy)."""
    names = study.user_attrs.get("cnnlab.objectives")
    return list(names) if names else ["val_acc", *list(studies.OBJECTIVES)[1 : len(study.directions)]]


def pareto_table(study: optuna.Study, objectives: list[str], rows: list[dict[str, Any]]) -> str:
    """The Pareto front (no other trial is as good in every objective and better in one), cheapest first."""
    by_job = {row["run"].split("_", 1)[0]: row for row in rows}
    front = sorted(study.best_trials, key=lambda t: tuple(t.values[1:]))
    header = ["trial", "job", *(COST_LABELS.get(o, o) for o in objectives), "test acc"]
    lines = [f"### Pareto front: {' against '.join(objectives)} ({len(front)} of the complete trials)\n",
             "| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]  # fmt: skip
    for trial in front:
        row = by_job.get(str(trial.number), {})
        cells = [f"{v:.3f}" if o == "val_acc" else f"{int(v):,}" for o, v in zip(objectives, trial.values, strict=True)]
        test = row.get("test_acc")
        lines.append("| " + " | ".join([str(trial.number), row.get("run", ""), *cells,
                                         f"{test:.3f}" if test is not None else ""]) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def pareto_plot(study: optuna.Study, objectives: list[str]) -> Any:
    """Accuracy against the first cost on a log scale: Optuna's Pareto-front plot, the front joined and labelled."""
    from optuna.visualization.matplotlib import plot_pareto_front

    cost = objectives[1]
    ax = plot_pareto_front(study, targets=lambda t: (t.values[1], t.values[0]),
                           target_names=[COST_LABELS.get(cost, cost), "validation accuracy"])  # fmt: skip
    ax.set_xscale("log")
    front = sorted(study.best_trials, key=lambda t: t.values[1])
    ax.step([t.values[1] for t in front], [t.values[0] for t in front], where="post", color="tab:red", lw=1)
    for trial in front:
        ax.annotate(f"#{trial.number}", (trial.values[1], trial.values[0]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)  # fmt: skip
    ax.set_title(f"Pareto front: validation accuracy against {COST_LABELS.get(cost, cost)}")
    return ax


def plot(name: str, study: optuna.Study, target: Callable[[Any], float] | None) -> Any:
    from optuna.visualization import matplotlib as optuna_plots

    kwargs = {"target": target, "target_name": "val_acc"} if target is not None else {}
    return getattr(optuna_plots, name)(study, **kwargs)


def draw(path: Path, make: Callable[[], Any]) -> bool:
    """Save the picture ``make`` draws; False (and a log line) when the study cannot make it yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    verbosity = optuna.logging.get_verbosity()
    try:
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # "no complete trials": said in the study's line
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's plots are marked experimental
            ax = make()
        figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        figure.set_size_inches(8, 5)
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        return True
    except Exception as err:  # too few complete trials, a single parameter, ...: Optuna says why
        log.info("%s not drawn: %s", path.name, err)
        plt.close("all")
        return False
    finally:
        optuna.logging.set_verbosity(verbosity)
