"""A search's best-so-far validation accuracy against wall time: how soon it has a good network, not only how good
its last one is. The report draws it for every search (``cnnlab.study_report``) and ``benchmarks/search.py``
compares searches by it.

A result counts from the moment it is known: each epoch's validation accuracy that a job of a pruned search reports
to its trial (``cnnlab.pruning`` records when), and a trial's own when it ends (a complete trial's validation
accuracy, a pruned trial's last one). Times are seconds since the search started (the study records it; a study
from before that record: its first trial's start), or since a time given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnnlab import study as studies

if TYPE_CHECKING:
    import optuna

GAPS = (0.01, 0.005)  # "within 0.01 and 0.005 of the final best": how a search's figures are read


@dataclass(frozen=True)
class Anytime:
    """The results of a search in the order they came: (seconds since its start, validation accuracy, state)."""

    results: list[tuple[float, float, str]]

    @property
    def best_so_far(self) -> list[tuple[float, float]]:
        """(seconds, best so far) at every new best."""
        steps: list[tuple[float, float]] = []
        for seconds, value, _ in self.results:
            if not steps or value > steps[-1][1]:
                steps.append((seconds, value))
        return steps

    @property
    def best(self) -> float | None:
        steps = self.best_so_far
        return steps[-1][1] if steps else None

    @property
    def first_s(self) -> float | None:
        return self.results[0][0] if self.results else None

    @property
    def last_s(self) -> float | None:
        return self.results[-1][0] if self.results else None

    def within_s(self, gap: float) -> float | None:
        """When the best so far first came within ``gap`` of the final best."""
        best = self.best
        return next((s for s, v in self.best_so_far if v >= best - gap), None) if best is not None else None

    def figures(self) -> dict[str, float | None]:
        """The search's anytime figures: first result, within each gap of the final best, final best."""
        return {"first_s": self.first_s, **{f"within_{gap}_s": self.within_s(gap) for gap in GAPS},
                "best": self.best, "last_s": self.last_s}  # fmt: skip

    def line(self) -> str:
        """The figures as a sentence of the report."""
        if not self.results:
            return "No trial has a result yet."
        within = ", ".join(f"within {gap} of the best after {self.within_s(gap):.0f} s" for gap in GAPS)
        return (f"Best so far against wall time (seconds since the search started): the first result after "
                f"{self.first_s:.0f} s, {within}; best val acc {self.best:.4f} (the last result after "
                f"{self.last_s:.0f} s).")  # fmt: skip


def anytime(study: optuna.Study, pruning: optuna.Study | None = None, started: float | None = None) -> Anytime:
    """The results of ``study``'s trials by when they came, in seconds since ``started`` (seconds since the epoch;
    default: when the search started). ``pruning``: the study a multi-objective study's trials report to."""
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    if started is None:
        recorded = study.user_attrs.get(studies.STARTED_ATTR)
        starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start is not None]
        started = float(recorded) if recorded is not None else min(starts, default=0.0)
    reporters = {t.number: t for t in pruning.get_trials(deepcopy=False)} if pruning is not None else {}
    results = []
    for trial in trials:
        reporter = reporters.get(trial.user_attrs.get(studies.PRUNING_TRIAL_ATTR, -1), trial)
        for step, value in reporter.intermediate_values.items():
            when = reporter.user_attrs.get(f"{studies.REPORTED_AT}{step}")
            if when is not None:
                results.append((float(when) - started, float(value), "epoch"))
        value = result_of(trial, reporter)
        if value is not None and trial.datetime_complete is not None and trial.state.name in ENDS:
            results.append((trial.datetime_complete.timestamp() - started, value, trial.state.name.lower()))
    return Anytime(sorted(results))


ENDS = ("COMPLETE", "PRUNED")


def result_of(trial: optuna.trial.FrozenTrial, reporter: optuna.trial.FrozenTrial) -> float | None:
    """A trial's validation accuracy: its first objective, or a pruned trial's last report."""
    if trial.values:
        return float(trial.values[0])
    reported = reporter.intermediate_values
    return float(reported[max(reported)]) if reported else None


def draw(curves: dict[str, Sequence[Anytime]], title: str) -> Any:
    """Best so far against wall time: a step line per search (several searches under one label share its colour),
    each trial's end a dot (hollow: pruned). Returns the axes (of a figure outside pyplot)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5))
    ax = figure.subplots()
    colours = matplotlib.colormaps["tab10"]
    for index, (label, searches) in enumerate(curves.items()):
        colour = colours(index % 10)
        for n, search in enumerate(searches):
            steps = search.best_so_far
            if not steps:
                continue
            xs = [s for s, _ in steps] + [search.last_s]
            ys = [v for _, v in steps] + [steps[-1][1]]
            ax.step(xs, ys, where="post", color=colour, lw=1.6, label=label if n == 0 else None)
            done = [(s, v) for s, v, state in search.results if state == "complete"]
            pruned = [(s, v) for s, v, state in search.results if state == "pruned"]
            ax.scatter([s for s, _ in done], [v for _, v in done], color=colour, s=12)
            ax.scatter([s for s, _ in pruned], [v for _, v in pruned], facecolors="none", edgecolors=colour, s=12)
    values = [v for searches in curves.values() for s in searches for _, v in s.best_so_far]
    if values:  # every curve from its first result, unless that would squeeze the last 0.15 below the best
        ax.set_ylim(max(0.0, min(values) - 0.01, max(values) - 0.15), min(1.0, max(values) + 0.01))
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds since the search started")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return ax
