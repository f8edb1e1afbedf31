"""How fast the command line answers: the wall time of each command, median of fresh interpreters.

    python benchmarks/startup.py [--repeat 5] [--data-dir /tmp/cnnlab-data] [--before-path DIR]

Measures ``--help`` (``python -m cnnlab.train --help`` and the ``cnnlab`` command's), a config typo, ``--cfg job``,
``cnnlab.report`` on a 30-run sweep dir, ``cnnlab.inspect``, ``import torch`` alone, and a default run's process
start to its first training step (the run's own ``startup_s``), each in a new interpreter, one at a time. With
``--before-path DIR`` (a folder holding scipy: ``pip install --no-deps --target DIR scipy``), the first step again
with DIR on the path: the install before cnnlab dropped scipy, which torchmetrics imports (``scipy.signal``) in every
training process whenever it is installed. Prints a table with each goal; exits 1 when one is missed. Run it with
nothing else running: timings on a shared machine are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS = {"--help": 1.0, "cnnlab --help": 1.0, "config typo": 1.0, "--cfg job": 1.0, "report, 30 runs": 1.5,
         "inspect": 3.0, "import torch": float("inf"),
         "start to first step": 4.0, "start to first step, scipy installed (before)": float("inf")}  # fmt: skip


def wall(args: list[str], cwd: Path) -> float:
    """Seconds for ``python args`` to end, in a fresh interpreter."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, stdin=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def fake_sweep(root: Path, runs: int = 30) -> Path:
    """A sweep dir of ``runs`` finished jobs as cnnlab leaves them: record, Hydra's files, 10 epochs of events."""
    from torch.utils.tensorboard import SummaryWriter

    sweep = root / "sweep"
    for i in range(runs):
        job = sweep / f"{i}_optimizer.lr={0.1 * (i + 1):.1f},seed={i % 3}"
        (job / ".hydra").mkdir(parents=True)
        overrides = [f"optimizer.lr={0.1 * (i + 1):.1f}", f"seed={i % 3}"]
        (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        dirname = ",".join(overrides)
        hydra = f"hydra:\n  runtime:\n    choices:\n      model: lenet\n  job:\n    override_dirname: {dirname}\n"
        (job / ".hydra" / "hydra.yaml").write_text(hydra)
        (job / ".hydra" / "config.yaml").write_text(f"seed: {i % 3}\ntags: []\n")
        acc = 0.7 + 0.005 * i
        record = {"params": 61706, "val_acc": acc, "test_acc": acc, "train_acc": acc, "train_loss": 0.5,
                  "examples_per_sec": 9e3, "startup_s": 4.0, "wall_s": 60.0, "epochs": 10, "status": "ok"}  # fmt: skip
        (job / "metrics.json").write_text(json.dumps(record))
        with SummaryWriter(str(job)) as writer:
            for epoch in range(10):
                writer.add_scalar("val/acc", acc * (epoch + 1) / 10, epoch)
                writer.add_scalar("train/loss_epoch", 1 - acc * (epoch + 1) / 10, epoch)
    return sweep


def first_step(cwd: Path, data_dir: str, path: str | None = None) -> float:
    """A default run's ``startup_s`` (process start to first training step), a few batches long; ``path``: a folder
    put first on the module search path."""
    log_dir = cwd / "logs"
    args = ["-m", "cnnlab.train", f"paths.data_dir={data_dir}", f"paths.log_dir={log_dir}",
            "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, stdin=subprocess.DEVNULL, check=True, env=env)
    (record,) = log_dir.rglob("metrics.json")
    startup = json.loads(record.read_text())["startup_s"]
    for path in sorted(log_dir.rglob("*"), reverse=True):  # the next run starts in an empty log root
        path.unlink() if path.is_file() else path.rmdir()
    return startup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--data-dir", default="data", help="where the Fashion-MNIST IDX files are (or go)")
    parser.add_argument("--before-path", default=None, help="a folder holding scipy: the first step with it too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cnnlab-startup-") as folder:
        cwd = Path(folder)
        sweep = fake_sweep(cwd)
        commands = {
            "--help": ["-m", "cnnlab.train", "--help"],
            "config typo": ["-m", "cnnlab.train", "model=lenet_maxpol"],
            "--cfg job": ["-m", "cnnlab.train", "--cfg", "job"],
            "report, 30 runs": ["-m", "cnnlab.report", str(sweep)],
            "inspect": ["-m", "cnnlab.inspect"],
            "import torch": ["-c", "import torch"],
        }
        console = Path(sys.executable).with_name("cnnlab")  # the installed command (its script, run by this python)
        if console.is_file():
            commands = {"--help": commands.pop("--help"), "cnnlab --help": [str(console), "--help"], **commands}
        data_dir = str(Path(args.data_dir).resolve())
        first_step(cwd, data_dir)  # imports the data set into data_dir once, outside the timing
        times = {name: [wall(command, cwd) for _ in range(args.repeat)] for name, command in commands.items()}
        times["start to first step"] = []
        before = "start to first step, scipy installed (before)"
        for _ in range(args.repeat):  # after and before in turn: both see the machine as it is
            times["start to first step"].append(first_step(cwd, data_dir))
            if args.before_path:
                times.setdefault(before, []).append(first_step(cwd, data_dir, str(Path(args.before_path).resolve())))
    missed = 0
    print(f"| command | median of {args.repeat} (s) | min - max (s) | goal (s) | |")
    print("| --- | --- | --- | --- | --- |")
    for name, seconds in times.items():
        median, goal = statistics.median(seconds), GOALS[name]
        missed += median > goal
        verdict = ("met" if median <= goal else "missed") if goal != float("inf") else "(beside)"
        shown = f"<= {goal:g}" if goal != float("inf") else ""
        print(f"| {name} | {median:.2f} | {min(seconds):.2f} - {max(seconds):.2f} | {shown} | {verdict} |")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
