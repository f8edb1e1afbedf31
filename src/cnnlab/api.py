"""cnnlab from Python (a notebook): train, sweep, load and inspect, each returning its results.

    import cnnlab
    run = cnnlab.train("model=lenet_maxpool", "trainer.max_epochs=3")   # a Run: metrics, run_dir, history, plot()
    chapter = cnnlab.sweep("sweep=chapter6", "seed=1,2,3", launcher="joblib")  # a Sweep: runs, configs, best
    cnnlab.load("logs/multirun/...")                                   # either, read back from disk
    cnnlab.inspect("model=lenet_improved")                             # the layer walk as a DataFrame

Each call runs the command line itself (``python -m cnnlab.train ...`` with this interpreter, in a process of its
own), so composition, validation, the run dir, ``metrics.json``, checkpoints and TensorBoard are the command line's,
and the results are read back from its files. A user mistake raises ``CnnlabError`` with the command line's one-line
message (no ``SystemExit``). Inside Jupyter a run draws its curves under the cell, one update per epoch, in place of
the epoch lines; elsewhere the lines print as the command line prints them.

(``cnnlab.train`` and ``cnnlab.inspect`` are these functions as long as the modules of the same names, the command
line's, are not imported into this process; ``cnnlab.api.train`` always is.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.rundir import CHECKPOINTS, METRICS, read_record

ERROR = "cnnlab: error: "  # cnnlab.errors.exit_on_user_error's one line
EPOCH_LINE = re.compile(r"^epoch (\d+)/\S+\s+(.*)$")  # cnnlab.console.EpochLines
RUN_DIR_LINE = re.compile(r"^\s+run dir:\s+(.+?)(?: \(metrics\.json, checkpoints/\))?$")
REPORT_LINE = re.compile(r"^report: (.+)/report\.md$")  # cnnlab.report.ReportAfterSweep
SCALARS = {"train/loss_epoch": "train_loss", "train/acc": "train_acc", "val/acc": "val_acc",
           "train/examples_per_sec": "examples_per_sec"}  # fmt: skip


def run_command(module: str, args: list[str], on_line: Any = None) -> list[str]:
    """``python -m module args`` in a process of its own; its stdout lines, each handed to ``on_line`` as it comes.

    A user mistake (exit status 2, a ``cnnlab: error:`` line) raises ``CnnlabError`` with that line's message; any
    other failure raises it with the end of what the command printed.
    """
    with tempfile.TemporaryFile(mode="w+") as errors:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=errors,
                                stdin=subprocess.DEVNULL, text=True, env=env)  # fmt: skip
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if on_line is not None:
                on_line(lines[-1])
        proc.wait()
        errors.seek(0)
        stderr = errors.read()
    if proc.returncode:
        said = [line.removeprefix(ERROR) for line in stderr.splitlines() if line.startswith(ERROR)]
        tail = "\n".join((stderr or "\n".join(lines)).strip().splitlines()[-8:])
        raise CnnlabError(said[-1] if said else f"python -m {module} {' '.join(args)} failed:\n{tail}")
    return lines


@dataclass
class Run:
    """One run, as its run dir holds it: the record, the checkpoints, the per-epoch history."""

    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        record = read_record(run_dir)
        if record is None:
            raise CnnlabError(f"{run_dir} holds no {METRICS}: give a run dir that a run finished in.")
        return cls(Path(run_dir), record.as_json())

    @property
    def checkpoints(self) -> list[Path]:
        return sorted((self.run_dir / CHECKPOINTS).glob("*.ckpt"))

    @property
    def history(self) -> Any:
        """A DataFrame of the epochs: train loss and accuracy, val accuracy, learning rate, examples/s."""
        import pandas as pd
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(self.run_dir), size_guidance={"scalars": 0}).Reload()
        tags = events.Tags()["scalars"]
        columns = {name: [e.value for e in events.Scalars(tag)] for tag, name in SCALARS.items() if tag in tags}
        rate = next((tag for tag in tags if tag.startswith("lr-")), None)  # LearningRateMonitor's lr-<optimizer>
        if rate is not None:
            columns["lr"] = [e.value for e in events.Scalars(rate)]
        frame = pd.DataFrame({name: pd.Series(values) for name, values in columns.items()})
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="epoch")
        return frame

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
        if not (sweep_dir / "report.csv").is_file():
            from cnnlab.report import write_report

            write_report(sweep_dir)
        return cls(sweep_dir, pd.read_csv(sweep_dir / "report.csv"), pd.read_csv(sweep_dir / "report_configs.csv"))

    @property
    def best(self) -> Any:
        """The configuration with the best mean validation accuracy (the report's first row)."""
        return self.configs.iloc[0]

    def plot(self) -> Any:
        """The report's picture (``report.png``)."""
        import matplotlib.image
        import matplotlib.pyplot as plt

        image = matplotlib.image.imread(self.sweep_dir / "report.png")
        fig, axis = plt.subplots(figsize=(image.shape[1] / 110, image.shape[0] / 110))
        axis.imshow(image)
        axis.axis("off")
        return fig


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
    """A run's epoch lines as curves redrawn under the cell (Jupyter), or printed as they come (elsewhere)."""

    def __init__(self, live: bool | None) -> None:
        self.live = in_jupyter() if live is None else live
        self.rows: list[dict[str, float]] = []
        self.handle: Any = None

    def __call__(self, line: str) -> None:
        match = EPOCH_LINE.match(line)
        if not self.live:
            print(line, flush=True)
            return
        if match is None:
            return
        values = dict(re.findall(r"([a-z/]+(?: [a-z/]+)?) ([\d.,]+)", match.group(2)))
        self.rows.append({k.replace(" ", "_"): float(v.replace(",", "")) for k, v in values.items()})
        self.redraw(int(match.group(1)))

    def redraw(self, epoch: int) -> None:
        import matplotlib.pyplot as plt
        import pandas as pd
        from IPython.display import display

        history = pd.DataFrame(self.rows, index=pd.RangeIndex(1, len(self.rows) + 1, name="epoch"))
        fig = draw_curves(history, f"epoch {epoch}")
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        plt.close(fig)


def train(*overrides: str, live: bool | None = None) -> Run:
    """``python -m cnnlab.train *overrides``; the finished run (``live``: draw its curves; None: only in Jupyter)."""
    lines = run_command("cnnlab.train", list(overrides), LiveCurves(live))
    dirs = [m.group(1) for m in map(RUN_DIR_LINE.match, lines) if m]
    if not dirs:
        raise CnnlabError("the run printed no run dir: " + " ".join(lines[-3:]))
    return Run.load(Path(dirs[-1]).resolve())


def sweep(*overrides: str, launcher: str | None = None) -> Sweep:
    """``python -m cnnlab.train -m *overrides`` (``launcher``: ``joblib``, ``slurm``, ...; None: as configured);
    the sweep's report as DataFrames."""
    args = ["-m", *overrides, *([f"hydra/launcher={launcher}"] if launcher else [])]
    lines = run_command("cnnlab.train", args, lambda line: print(line, flush=True))
    dirs = [m.group(1) for m in map(REPORT_LINE.match, lines) if m]
    if not dirs:
        raise CnnlabError("the sweep printed no report: " + " ".join(lines[-3:]))
    return Sweep.load(Path(dirs[-1]).resolve())


def load(path: str | Path) -> Run | Sweep:
    """A run dir (it has ``metrics.json``) as a ``Run``, a sweep dir as a ``Sweep``."""
    path = Path(path).expanduser()
    if (path / METRICS).is_file():
        return Run.load(path)
    if (path / "multirun.yaml").is_file() or (path / "report.csv").is_file():
        return Sweep.load(path)
    raise CnnlabError(f"{path} is neither a run dir (no {METRICS}) nor a sweep dir (no multirun.yaml).")


def inspect(*overrides: str) -> Any:
    """``python -m cnnlab.inspect *overrides`` as a DataFrame: each layer's output shape, parameters, multiply-adds."""
    import pandas as pd

    lines = run_command("cnnlab.inspect", list(overrides))
    start = next(i for i, line in enumerate(lines) if line.startswith("layer "))
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[start + 1 :] if not line.startswith(("parameters:",
            "multiply-adds"))]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["layer", "type", "output shape", "params", "mult-adds"])
    for column in ("params", "mult-adds"):
        frame[column] = frame[column].str.replace(",", "").astype(int)
    return frame.set_index("layer")
