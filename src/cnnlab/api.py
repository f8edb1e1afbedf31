"""cnnlab from Python (a notebook): train, sweep, load and inspect, each returning its results.

    import cnnlab
    run = cnnlab.train("model=lenet_maxpool", "trainer.max_epochs=3")   # a Run: metrics, run_dir, history, plot()
    chapter = cnnlab.sweep("sweep=chapter6", "seed=1,2,3", launcher="joblib")  # a Sweep: runs, configs, best
    cnnlab.load("logs/multirun/...")                                   # either, read back from disk
    cnnlab.inspect("model=lenet_improved")                             # the layer walk as a DataFrame

Each call runs the command line itself (``python -m cnnlab.train ...`` with this interpreter, in a process of its
own), so composition, validation, the run dir, ``metrics.json``, checkpoints and TensorBoard are the command line's,
and the results are read back from its files: the command writes its run dir or sweep dir (or the inspected walk)
into a file this module names (``CNNLAB_RESULT_FILE``, ``cnnlab.environment.tell_the_api``), never parsed from what
it prints. A user mistake raises ``CnnlabError`` with the command line's one-line message (no ``SystemExit``).
Inside Jupyter a run draws its curves under the cell from its TensorBoard events, one update per epoch, in place of
the epoch lines; elsewhere the lines print as the command line prints them.

(``cnnlab.train`` and ``cnnlab.inspect`` are these functions as long as the modules of the same names, the command
line's, are not imported into this process; ``cnnlab.api.train`` always is.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.curves import epoch_curves
from cnnlab.environment import RESULT_FILE
from cnnlab.errors import CnnlabError
from cnnlab.rundir import read_record
from cnnlab.vocab import RunFiles, SweepFiles, Tag

ERROR = "cnnlab: error: "  # cnnlab.errors.exit_on_user_error's one line
HISTORY = {Tag.TRAIN_LOSS_EPOCH: "train_loss", Tag.TRAIN_ACC: "train_acc", Tag.VAL_ACC: "val_acc",
           Tag.EXAMPLES_PER_SEC: "examples_per_sec", "lr": "lr"}  # fmt: skip


def run_command(module: str, args: list[str], on_line: Any = None) -> dict[str, Any]:
    """``python -m module args`` in a process of its own; what it left for this API (its run dir, sweep dir or walk).
    Each stdout line is handed to ``on_line(line, results)`` as it comes (``results``: what it left so far).

    A user mistake (exit status 2, a ``cnnlab: error:`` line) raises ``CnnlabError`` with that line's message; any
    other failure raises it with the end of what the command printed.
    """
    with tempfile.TemporaryDirectory(prefix="cnnlab-api-") as folder, tempfile.TemporaryFile(mode="w+") as errors:
        results = Path(folder) / "results.json"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", RESULT_FILE: str(results)}
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=errors,
                                stdin=subprocess.DEVNULL, text=True, env=env)  # fmt: skip
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if on_line is not None:
                on_line(lines[-1], read_results(results))
        proc.wait()
        errors.seek(0)
        stderr = errors.read()
        left = read_results(results)
    if proc.returncode:
        said = [line.removeprefix(ERROR) for line in stderr.splitlines() if line.startswith(ERROR)]
        tail = "\n".join((stderr or "\n".join(lines)).strip().splitlines()[-8:])
        raise CnnlabError(said[-1] if said else f"python -m {module} {' '.join(args)} failed:\n{tail}")
    return left


def read_results(path: Path) -> dict[str, Any]:
    """What the command left for this API so far (nothing yet: empty)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@dataclass
class Run:
    """One run, as its run dir holds it: the record, the checkpoints, the per-epoch history."""

    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        record = read_record(run_dir)
        if record is None:
            raise CnnlabError(f"{run_dir} holds no {RunFiles.METRICS}: give a run dir that a run finished in.")
        return cls(Path(run_dir), record.as_json())

    @property
    def checkpoints(self) -> list[Path]:
        return sorted((self.run_dir / RunFiles.CHECKPOINTS).glob("*.ckpt"))

    @property
    def history(self) -> Any:
        """A DataFrame of the epochs (from 1): train loss and accuracy, val accuracy, learning rate, examples/s; each
        value at the epoch it was logged in (an epoch without validation has none)."""
        return history_frame(epoch_curves(self.run_dir))

    def plot(self) -> Any:
        """The d2l curves: train loss, train accuracy and val accuracy per epoch."""
        return draw_curves(self.history, f"{self.run_dir.parent.name}: test acc {self.metrics.get('test_acc')}")


@dataclass
class Sweep:
    """A sweep, as its report holds it: a row per run, a row per configuration (seeds aggregated), the best."""

    sweep_dir: Path
    runs: Any = None
    configs: Any = None

    @classmethod
    def load(cls, sweep_dir: str | Path) -> Sweep:
        import pandas as pd

        sweep_dir = Path(sweep_dir)
        if not (sweep_dir / SweepFiles.REPORT_RUNS).is_file():
            from cnnlab.report import write_report

            write_report(sweep_dir)
        return cls(sweep_dir, pd.read_csv(sweep_dir / SweepFiles.REPORT_RUNS),
                   pd.read_csv(sweep_dir / SweepFiles.REPORT_CONFIGS))  # fmt: skip

    @property
    def best(self) -> Any:
        """The configuration with the best mean validation accuracy (the report's first row)."""
        return self.configs.iloc[0]

    def plot(self) -> Any:
        """The report's picture (``report.png``)."""
        import matplotlib.image
        import matplotlib.pyplot as plt

        image = matplotlib.image.imread(self.sweep_dir / SweepFiles.REPORT_PICTURE)
        fig, axis = plt.subplots(figsize=(image.shape[1] / 110, image.shape[0] / 110))
        axis.imshow(image)
        axis.axis("off")
        return fig


def history_frame(curves: dict[str, dict[int, float]]) -> Any:
    """Per-epoch curves (``cnnlab.curves.epoch_curves``) as a DataFrame indexed by epoch."""
    import pandas as pd

    columns = {HISTORY[tag]: pd.Series(values, dtype=float) for tag, values in curves.items() if tag in HISTORY}
    frame = pd.DataFrame(columns).sort_index()
    frame.index.name = "epoch"
    return frame


def draw_curves(history: Any, title: str, axis: Any = None) -> Any:
    """Loss and accuracies against the epoch on one axis, as the book's ``Animator`` draws them."""
    import matplotlib.pyplot as plt

    fig = None
    if axis is None:
        fig, axis = plt.subplots(figsize=(5, 3.5))
    axis.clear()
    for column, style in (("train_loss", "-"), ("train_acc", "m--"), ("val_acc", "g-.")):
        if column in history:
            axis.plot(history.index, history[column], style, label=column.replace("_", " "))
    axis.set(xlabel="epoch", title=title)
    axis.grid(alpha=0.3)
    axis.legend()
    return fig or axis.figure


def in_jupyter() -> bool:
    """Whether this runs inside a Jupyter kernel (where figures show under the cell)."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return type(shell).__name__ == "ZMQInteractiveShell"


class LiveCurves:
    """A run's curves redrawn under the cell from its TensorBoard events as its epochs end (Jupyter), or its lines
    printed as they come (elsewhere). Each line the run prints is the moment to look at its events again."""

    def __init__(self, live: bool | None) -> None:
        self.live = in_jupyter() if live is None else live
        self.epochs = 0
        self.handle: Any = None
        self.events_size = 0  # the run's event files read when they had grown to this size

    def __call__(self, line: str, results: dict[str, Any]) -> None:
        if not self.live:
            print(line, flush=True)
            return
        if "run_dir" not in results:
            return
        run_dir = Path(results["run_dir"])
        size = sum(p.stat().st_size for p in run_dir.glob(RunFiles.EVENTS))
        if size == self.events_size:  # nothing new logged since the last look: no reading
            return
        self.events_size = size
        curves = epoch_curves(run_dir, (Tag.TRAIN_LOSS_EPOCH, Tag.TRAIN_ACC, Tag.VAL_ACC))
        epochs = max((max(values) for values in curves.values() if values), default=0)
        if epochs > self.epochs:
            self.epochs = epochs
            self.redraw(history_frame(curves), epochs)

    def redraw(self, history: Any, epoch: int) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        fig = draw_curves(history, f"epoch {epoch}")
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        plt.close(fig)


def config_dir_args(config_dir: str | Path | None) -> list[str]:
    """``--config-dir <folder>``: your own configs (``model=mynet`` in ``<folder>/model/mynet.yaml``), or nothing."""
    return [] if config_dir is None else ["--config-dir", str(Path(config_dir).expanduser())]


def train(*overrides: str, live: bool | None = None, config_dir: str | Path | None = None) -> Run:
    """``python -m cnnlab.train *overrides``; the finished run (``live``: draw its curves; None: only in Jupyter;
    ``config_dir``: a folder of your own configs, ``--config-dir``)."""
    overrides = (*config_dir_args(config_dir), *overrides)
    results = run_command("cnnlab.train", list(overrides), LiveCurves(live))
    if "run_dir" not in results:
        raise CnnlabError(f"python -m cnnlab.train {' '.join(overrides)} ended without a run dir.")
    return Run.load(Path(results["run_dir"]))


def sweep(*overrides: str, launcher: str | None = None, config_dir: str | Path | None = None) -> Sweep:
    """``python -m cnnlab.train -m *overrides`` (``launcher``: ``joblib``, ``slurm``, ...; None: as configured;
    ``config_dir``: as in ``train``); the sweep's report as DataFrames."""
    args = [*config_dir_args(config_dir), "-m", *overrides, *([f"hydra/launcher={launcher}"] if launcher else [])]
    results = run_command("cnnlab.train", args, lambda line, _: print(line, flush=True))
    if "sweep_dir" not in results:
        raise CnnlabError(f"python -m cnnlab.train {' '.join(args)} ended without a sweep dir.")
    return Sweep.load(Path(results["sweep_dir"]))


def load(path: str | Path) -> Run | Sweep:
    """A run dir (it has ``metrics.json``) as a ``Run``, a sweep dir as a ``Sweep``."""
    path = Path(path).expanduser()
    if (path / RunFiles.METRICS).is_file():
        return Run.load(path)
    if (path / SweepFiles.RECORD).is_file() or (path / SweepFiles.REPORT_RUNS).is_file():
        return Sweep.load(path)
    raise CnnlabError(f"{path} is neither a run dir (no {RunFiles.METRICS}) nor a sweep dir (no {SweepFiles.RECORD}).")


def inspect(*overrides: str, config_dir: str | Path | None = None) -> Any:
    """``python -m cnnlab.inspect *overrides`` as a DataFrame: each layer's output shape, parameters, multiply-adds
    (``config_dir``: as in ``train``)."""
    import pandas as pd

    args = [*config_dir_args(config_dir), *overrides]
    walk = run_command("cnnlab.inspect", args, lambda line, _: None).get("walk", [])
    frame = pd.DataFrame([{"layer": row["name"], "type": row["kind"], "output shape": str(list(row["shape"])),
                           "params": row["params"], "mult-adds": row["mult_adds"]} for row in walk])  # fmt: skip
    return frame.set_index("layer")
