"""How soon a search finds a good network, what pruning and in-flight trials save: searches on the real Fashion-MNIST.

    python benchmarks/search.py [--data-dir /tmp/cnnlab-data] [--trials 24] [--part anytime|pruning|slots|both]
                                [--seeds 42 43 44] [--picture docs/search-anytime.png] [--keep DIR]

0. Anytime (``--part anytime``, about 100 minutes here): the search of ``sweeps/optuna.yaml``, 24 trials of up to 10
   epochs of 100 batches, two in flight (joblib), successive halving, with 3 sampler seeds, each run before (the
   settings before light trials: ``hydra.sweeper.cheap_first=false``, ``cheapest_of=1``, ``prune_below=null`` and
   every ``hydra.sweeper.trial_callbacks`` back on) and after (the defaults), one after another. Prints each
   search's best-so-far figures (``cnnlab.anytime``, from the command's start): the first result, within 0.01 and
   0.005 of its final best, the final best; and each job's time outside training (the trial's time in the study
   less its ``train_s``; a worker's first job, which starts the worker's process, apart). Draws the best-so-far
   curves of both in one picture (``--picture``).
   ``--before-path DIR``: a folder holding scipy (``pip install --no-deps --target DIR scipy``) on the path of the
   searches before, as installed before cnnlab dropped scipy (torchmetrics imports it into every job's process).
   Goals: the first result within 30 s (every seed); within 0.005 of the final best in <= 0.5x the time before
   (median of the seeds); the final best not lower (median, within 0.003); a job's time outside training <= 2 s
   (median of the jobs after each worker's first).

1. Pruning: ``sweep=search`` (the recommended search: TPE seeded, accuracy against multiply-adds) with 24 trials of up
   to 10 epochs, once with ``hydra.sweeper.pruner=none`` and once with the recommended pruner (successive halving),
   two trials in flight (joblib). Epochs are shortened (``limit_train_batches``) so that the unpruned search takes
   minutes here. Prints, for each: epochs trained in all, wall time, the best trial's val and test accuracy.
   Goals: the pruned search trains <= 1/3 of the epochs, in <= 0.4x the wall time, its best val acc within 0.005.
2. Slots: 8 trials of unequal length (enqueued: 2 to 12 epochs of 100 batches), ``n_jobs=2``, run in batches of
   two (how Hydra's Optuna sweeper runs them: a batch waits for its slowest trial) and kept in flight (cnnlab's
   sweeper): the idle slot-seconds of each, from the jobs' start and end times.

Exits 1 when a goal is missed. Run it with nothing else running: timings on a shared machine are not comparable.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna

from cnnlab import sweeper as cnnlab_sweeper
from cnnlab.anytime import Anytime, anytime
from cnnlab.anytime import draw as draw_anytime
from cnnlab.study import LIGHT_TRIAL

EPOCHS = 10
SHORT_EPOCHS = ["data.batch_size=128", "trainer.limit_train_batches=100"]  # 12,800 examples an epoch
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none"]
UNEQUAL = [2, 12, 4, 10, 6, 2, 8, 4]  # epochs of the slots measurement's trials


class BatchedSearch(cnnlab_sweeper.Search):  # enqueued (waiting) trials are asked in turn
    """Trials in batches of ``slots``: ask a batch, run it, wait for all of it, tell (Hydra's Optuna sweeper)."""

    def run(self) -> None:
        with ThreadPoolExecutor(max_workers=self.slots) as pool:
            left = self.n_trials - sum(t.state != optuna.trial.TrialState.WAITING for t in self.study.trials)
            while left > 0:
                batch = [self.ask() for _ in range(min(self.slots, left))]
                futures = [(number, pool.submit(self.launch, number, overrides)) for number, overrides in batch]
                for _, future in futures:  # the batch's slowest trial decides when the next batch starts
                    future.result()
                for number, future in futures:
                    self.tell(number, self.came_back(number, future.result))
                left -= len(batch)


# Hydra takes a sweeper only from a module of the hydra_plugins package: this one, written where the sweep finds it.
BATCHED_PLUGIN = '''from hydra_plugins.cnnlab_plugins.plugins import OptunaSweeper
from search import BatchedSearch  # benchmarks/search.py


class BatchedOptunaSweeper(OptunaSweeper):
    def sweep(self, arguments):
        BatchedSearch(self.config.hydra.sweeper, self.config, self.launcher, arguments).run()
'''


def sweep(sweep_dir: Path, overrides: list[str], cwd: Path, path: str | None = None) -> float:
    """Run ``cnnlab.train -m overrides`` into ``sweep_dir`` (``path``: a folder first on the module search path); its
    wall time."""
    start = time.perf_counter()
    plugin = cwd / "plugins" / "hydra_plugins" / "cnnlab_batched_sweeper.py"  # Hydra takes sweepers from there only
    plugin.parent.mkdir(parents=True, exist_ok=True)
    plugin.write_text(BATCHED_PLUGIN)
    paths = (path, str(plugin.parent.parent), str(Path(__file__).parent), os.environ.get("PYTHONPATH"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    result = subprocess.run(
        [sys.executable, "-m", "cnnlab.train", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"],
        cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"the sweep failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def records(sweep_dir: Path) -> list[dict]:
    found = [json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")]
    failed = [r["error"] for r in found if r["status"] not in ("ok", "pruned")]
    if failed:
        sys.exit(f"{len(failed)} trials of {sweep_dir.name} failed: {failed[0]}")
    return found


def pruning(data_dir: str, trials: int, cwd: Path) -> bool:
    rows = {}
    for pruner in ("none", "successive_halving"):
        sweep_dir = cwd / f"search-{pruner}"
        overrides = ["sweep=search", f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.pruner={pruner}",
                     "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2",
                     f"trainer.max_epochs={EPOCHS}", *SHORT_EPOCHS, *QUIET, f"paths.data_dir={data_dir}",
                     f"paths.log_dir={cwd / 'logs'}"]  # fmt: skip
        wall = sweep(sweep_dir, overrides, cwd)
        done = records(sweep_dir)
        best = max((r for r in done if r["status"] == "ok"), key=lambda r: r["val_acc"])
        rows[pruner] = {"epochs": sum(r["epochs"] or 0 for r in done), "wall_s": wall, "val": best["val_acc"],
                        "test": best["test_acc"], "pruned": sum(r["status"] == "pruned" for r in done),
                        "failed": sum(r["status"] not in ("ok", "pruned") for r in done)}  # fmt: skip
    print(f"\n{trials} trials of up to {EPOCHS} epochs ({' '.join(SHORT_EPOCHS)}), 2 in flight:")
    print("| pruner | trials pruned | epochs trained | wall time | best val acc | its test acc |")
    print("| --- | --- | --- | --- | --- | --- |")
    for pruner, r in rows.items():
        print(f"| {pruner} | {r['pruned']} of {trials} | {r['epochs']} | {r['wall_s']:.0f} s | {r['val']:.4f} | "
              f"{r['test']:.4f} |")  # fmt: skip
    base, pruned = rows["none"], rows["successive_halving"]
    epochs, wall = pruned["epochs"] / base["epochs"], pruned["wall_s"] / base["wall_s"]
    gap = base["val"] - pruned["val"]
    goals = [("epochs", epochs, epochs <= 1 / 3, "<= 1/3"), ("wall time", wall, wall <= 0.4, "<= 0.4x"),
             ("best val acc below the unpruned", gap, gap <= 0.005, "<= 0.005")]  # fmt: skip
    for what, value, met, goal in goals:
        print(f"{what}: {value:.3f} (goal {goal}): {'met' if met else 'MISSED'}")
    return all(met for _, _, met, _ in goals)


def job_times(sweep_dir: Path) -> list[tuple[float, float]]:
    """Each job's start (its dir made) and end (its record written)."""
    records(sweep_dir)  # none failed
    return [((job / ".hydra").stat().st_mtime, (job / "metrics.json").stat().st_mtime)
            for job in sweep_dir.iterdir() if (job / "metrics.json").is_file()]  # fmt: skip


def slots(data_dir: str, cwd: Path) -> bool:
    idle = {}
    for mode, target in (("batches of 2", "hydra_plugins.cnnlab_batched_sweeper.BatchedOptunaSweeper"),
                         ("in flight", "hydra_plugins.cnnlab_plugins.plugins.OptunaSweeper")):  # fmt: skip
        sweep_dir = cwd / f"slots-{mode.split()[0]}"
        sweep_dir.mkdir()
        storage = f"sqlite:///{sweep_dir}/optuna.db"
        study = optuna.create_study(study_name="lenet", storage=storage, direction="maximize")
        for epochs in UNEQUAL:
            study.enqueue_trial({"trainer.max_epochs": epochs})
        overrides = ["sweep=optuna", f"hydra.sweeper._target_={target}", f"hydra.sweeper.n_trials={len(UNEQUAL)}",
                     "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     f"trainer.max_epochs=choice({','.join(map(str, sorted(set(UNEQUAL))))})", "optimizer=sgd",
                     "optimizer.lr=0.1", "model.activation=relu", "model.pool=max", "model.conv_channels=[6,16]",
                     *SHORT_EPOCHS, *QUIET, f"paths.data_dir={data_dir}",
                     f"paths.log_dir={cwd / 'logs'}"]  # fmt: skip
        wall = sweep(sweep_dir, overrides, cwd)
        times = job_times(sweep_dir)
        span = max(end for _, end in times) - min(start for start, _ in times)
        busy = sum(end - start for start, end in times)
        idle[mode] = (2 * span - busy, 2 * span, wall)
    print(f"\n{len(UNEQUAL)} trials of {', '.join(map(str, UNEQUAL))} epochs, n_jobs=2 (joblib):")
    print("| trials | idle slot-seconds | of slot-seconds | sweep wall time |")
    print("| --- | --- | --- | --- |")
    for mode, (idle_s, total, wall) in idle.items():
        print(f"| {mode} | {idle_s:.0f} s ({idle_s / total:.0%}) | {total:.0f} s | {wall:.0f} s |")
    return idle["in flight"][0] < idle["batches of 2"][0]


# The search: sweeps/optuna.yaml's space, 24 trials of up to 10 epochs of 100 batches, two in flight
ANYTIME_SEARCH = ["sweep=optuna", "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                  "hydra.sweeper.pruner=successive_halving",
                  "hydra.sweeper.pruner_args={min_resource:1,reduction_factor:3}", "trainer.max_epochs=10",
                  "trainer.limit_train_batches=100"]  # fmt: skip
BEFORE = ["hydra.sweeper.cheap_first=false", "hydra.sweeper.cheapest_of=1", "hydra.sweeper.prune_below=null",
          *(f"hydra.sweeper.trial_callbacks.{name}=true" for name in LIGHT_TRIAL)]  # fmt: skip


def one_search(sweep_dir: Path, overrides: list[str], cwd: Path, path: str | None) -> tuple[Anytime, dict[str, float]]:
    """Run a search; its best-so-far curve from the command's start, and its jobs' times outside training."""
    started = time.time()
    wall = sweep(sweep_dir, overrides, cwd, path)
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    study = optuna.load_study(study_name="lenet", storage=storage)
    curve = anytime(study, started=started)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    outside, first = [], []
    for job in sweep_dir.iterdir():
        if not (job / "metrics.json").is_file():
            continue
        record = json.loads((job / "metrics.json").read_text())
        trial = trials[int(job.name.split("_", 1)[0])]
        in_study = (trial.datetime_complete - trial.datetime_start).total_seconds()
        (first if trial.number < 2 else outside).append(in_study - (record.get("train_s") or 0.0))
    jobs = {"wall_s": wall, "outside_median_s": statistics.median(outside), "outside_max_s": max(outside),
            "first_jobs_s": max(first), "epochs": sum(json.loads(p.read_text())["epochs"] or 0
                                                      for p in sweep_dir.glob("*/metrics.json"))}  # fmt: skip
    return curve, jobs


def anytime_part(data_dir: str, trials: int, seeds: list[int], cwd: Path, picture: Path | None,
                 before_path: str | None) -> bool:  # fmt: skip
    curves: dict[str, list[Anytime]] = {"before": [], "after": []}
    jobs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for seed in seeds:
        for name, extra in (("before", BEFORE), ("after", [])):
            overrides = [*ANYTIME_SEARCH, f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.sampler.seed={seed}",
                         *extra, f"paths.data_dir={data_dir}", f"paths.log_dir={cwd / 'logs'}"]  # fmt: skip
            path = before_path if name == "before" else None
            curve, times = one_search(cwd / f"anytime-{name}-{seed}", overrides, cwd, path)
            curves[name].append(curve)
            jobs[name].append(times)
            f = curve.figures()
            print(f"seed {seed} {name}: first result {f['first_s']:.0f} s, within 0.01 {f['within_0.01_s']:.0f} s, "
                  f"within 0.005 {f['within_0.005_s']:.0f} s, best {f['best']:.4f}, wall {times['wall_s']:.0f} s, "
                  f"{times['epochs']} epochs; a job outside training: median {times['outside_median_s']:.1f} s, "
                  f"max {times['outside_max_s']:.1f} s (each worker's first job: up to {times['first_jobs_s']:.1f} s)",
                  flush=True)  # fmt: skip
    print(f"\n{trials} trials of up to 10 epochs of 100 batches, 2 in flight, successive halving; seeds "
          f"{', '.join(map(str, seeds))}; seconds from the command's start:")
    print("| search | seed | first result | within 0.01 | within 0.005 | final best | wall | epochs | "
          "outside training a job, median (max) | a worker's first job |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in curves:
        for seed, curve, times in zip(seeds, curves[name], jobs[name], strict=True):
            f, t = curve.figures(), times
            print(f"| {name} | {seed} | {f['first_s']:.0f} s | {f['within_0.01_s']:.0f} s | "
                  f"{f['within_0.005_s']:.0f} s | {f['best']:.4f} | {t['wall_s']:.0f} s | {t['epochs']:.0f} | "
                  f"{t['outside_median_s']:.1f} s ({t['outside_max_s']:.1f} s) | {t['first_jobs_s']:.1f} s |")

    def median(name: str, key: str) -> float:
        return statistics.median(c.figures()[key] for c in curves[name])

    ratio = median("after", "within_0.005_s") / median("before", "within_0.005_s")
    drop = median("before", "best") - median("after", "best")
    slowest_first = max(c.figures()["first_s"] for c in curves["after"])
    outside = statistics.median(t["outside_median_s"] for t in jobs["after"])
    goals = [("first result, slowest seed (s)", slowest_first, slowest_first <= 30, "<= 30"),
             ("within 0.005 of the final best, after/before (medians)", ratio, ratio <= 0.5, "<= 0.5"),
             ("final best, before - after (medians)", drop, drop <= 0.003, "<= 0.003"),
             ("a job's time outside training, median (s)", outside, outside <= 2.0, "<= 2")]  # fmt: skip
    for what, value, met, goal in goals:
        print(f"{what}: {value:.3f} (goal {goal}): {'met' if met else 'MISSED'}")
    if picture is not None:
        ax = draw_anytime(curves, f"best so far against wall time: {trials} trials, {len(seeds)} sampler seeds each")
        ax.figure.savefig(picture, dpi=110, bbox_inches="tight")
        print(f"picture: {picture}")
    return all(met for _, _, met, _ in goals)


def main() -> int:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/tmp/cnnlab-data")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--part", choices=("anytime", "pruning", "slots", "both"), default="both")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="the anytime part's sampler seeds")
    parser.add_argument("--picture", type=Path, default=None, help="the anytime part's picture (a .png)")
    parser.add_argument("--before-path", default=None, help="a folder holding scipy: the searches before with it")
    parser.add_argument("--keep", type=Path, default=None, help="run the searches in this folder and keep them")
    args = parser.parse_args()
    ok = True
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cnnlab-search-") as scratch:
        folder = str(args.keep.resolve()) if args.keep is not None else scratch
        if args.part == "anytime":
            before = str(Path(args.before_path).resolve()) if args.before_path else None
            ok &= anytime_part(args.data_dir, args.trials, args.seeds, Path(folder), args.picture, before)
        if args.part in ("slots", "both"):
            ok &= slots(args.data_dir, Path(folder))
        if args.part in ("pruning", "both"):
            ok &= pruning(args.data_dir, args.trials, Path(folder))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
