"""Watching a sweep: one line per finished job while it runs, with the time the rest should take.

    [3/11] 3_model=lenet_k3: test acc 0.801, 82 s (sweep 4 min, about 11 min left)

Each job is named as its dir and its TensorBoard run are (``3_model=lenet_k3``: its number and what the sweep
varies). A Hydra callback starts a thread in the process that launched the sweep; it reads the ``metrics.json`` each job
writes into the sweep dir, so it works alike for every launcher (in-process, joblib workers, SLURM nodes).
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cnnlab.rundir import BadRecord, RunRecord, job_state, read_record
from cnnlab.sweepspace import swept_overrides
from cnnlab.vocab import JobState, RunFiles, Status

POLL_S = 1.0


def sweep_size(config: DictConfig) -> int | None:
    """How many jobs the sweep runs: the basic sweeper's grid (file params, then the command line), or the Optuna
    sweeper's ``n_trials``; None for other sweepers."""
    sweeper = config.hydra.sweeper
    if "n_trials" in sweeper:
        return int(sweeper.n_trials)
    if "BasicSweeper" not in str(sweeper.get("_target_", "")):
        return None
    return math.prod(len(list(o.sweep_string_iterator())) for o in swept_overrides(config).values())


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def progress_line(done: int, total: int | None, label: str, record: RunRecord, elapsed: float,
                  finished_here: int) -> str:  # fmt: skip
    """``[3/11] 3_model=lenet_k3: test acc 0.801, 82 s (sweep 4 min, about 11 min left)``."""
    if record.status == Status.PRUNED:  # stopped by the search's pruner: its last validation accuracy
        val = f", val acc {record.val_acc:.3f}" if isinstance(record.val_acc, float) else ""
        result = f"pruned after {record.epochs} epoch{'s' if record.epochs != 1 else ''}{val}"
    elif record.status != Status.OK:
        error = str(record.error or "").strip()
        result = f"{record.status} ({error.splitlines()[0][:100]})" if error else record.status
    else:
        test_acc = record.test_acc
        result = f"test acc {test_acc:.3f}" if isinstance(test_acc, float) else "finished"
    wall = record.wall_s
    result += f", {wall:.0f} s" if isinstance(wall, float | int) else ""
    sweep = f"sweep {minutes(elapsed)}"
    if total is not None and done < total and finished_here:
        sweep += f", about {minutes(elapsed / finished_here * (total - done))} left"
    count = f"{done}/{total}" if total else str(done)
    return f"[{count}] {label}: {result} ({sweep})"


class SweepProgress(Callback):
    """Hydra callback: print a line for each job of the sweep as it finishes (jobs that finished before a resume
    are counted, not printed)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.total = sweep_size(config)
        # Finished before a resume: counted. A failed job's old metrics.json is not this sweep's result: it is
        # older than the sweep, and the job's rerun writes a new one.
        self.seen = {p.parent for p in self.sweep_dir.glob(f"*/{RunFiles.METRICS}")
                     if job_state(p.parent) == JobState.FINISHED}  # fmt: skip
        self.before = len(self.seen)
        self.start, self.started_at = time.monotonic(), time.time()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="cnnlab-sweep-progress", daemon=True)
        self.thread.start()

    def __getstate__(self) -> dict[str, Any]:
        return {}  # launchers pickle Hydra's callbacks for their jobs: the watching stays in this process

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self._report_new()

    def _watch(self) -> None:
        while not self.stop.wait(POLL_S):
            self._report_new()

    def _report_new(self) -> None:
        new = []
        for metrics_file in self.sweep_dir.glob(f"*/{RunFiles.METRICS}"):
            try:  # a failed job's rerun may move its old file away meanwhile
                written = metrics_file.stat().st_mtime
            except OSError:
                continue
            if metrics_file.parent not in self.seen and written >= self.started_at - 1:  # coarse file clocks
                new.append((written, metrics_file.parent))
        for _, job_dir in sorted(new):
            try:
                record = read_record(job_dir)
            except BadRecord:
                record = None  # another process's file, cut short by hand: its job is reported when rewritten
            if record is None:
                continue
            self.seen.add(job_dir)
            line = progress_line(len(self.seen), self.total, job_dir.name, record,
                                 time.monotonic() - self.start, len(self.seen) - self.before)  # fmt: skip
            print(line, flush=True)
