"""Speed benchmark: cnnlab against the seeds' loop and a plain eager PyTorch loop, in one run on one machine.

    python benchmarks/speed.py --data-dir data            # LeNet and LeNet with ReLU + max pooling, and a sweep

Each contender runs as its own process, 10 epochs of the default recipe (batch 256, SGD lr 0.9, Xavier init):
(a) ``seeds``: the seeds' ``train_ch6`` re-typed (benchmarks/reference_loops.py); (b) ``eager``: a plain eager
loop over in-memory tensors; (c) ``cnnlab``: ``python -m cnnlab.train`` with its default logging, metrics and
checkpoints. Figures: training examples/s (steps only), whole-process wall time, start-up (process start to
first step), peak RSS, test accuracy. Then a 4-job sweep, sequential versus joblib with 2 parallel jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cnnlab.data import MNISTDataModule

HERE = Path(__file__).resolve().parent
VARIANTS = {  # cnnlab model name -> the reference loops' flags for the same network and learning rate
    "lenet": [],
    "lenet_relu_maxpool": ["--activation", "relu", "--pool", "max", "--lr", "0.1"],  # the seeds' ReLU lr
}
CNNLAB_LR = {"lenet_relu_maxpool": ["optimizer.lr=0.1"]}
SWEEP_MODELS = "lenet,lenet_maxpool,lenet_relu,lenet_relu_maxpool"


def run_process(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """Run a command; return its wall seconds, its peak RSS in MiB and its stdout."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
    return wall, usage.ru_maxrss / 1024, text


def reference(loop: str, model: str, args: argparse.Namespace, work: Path) -> dict:
    cmd = [sys.executable, str(HERE / "reference_loops.py"), loop, "--data-dir", args.data_dir,
           "--epochs", str(args.epochs), *VARIANTS[model]]  # fmt: skip
    wall, rss, text = run_process(cmd, work)
    return {**json.loads(text.strip().splitlines()[-1]), "wall_s": wall, "peak_rss_mib": rss}


def cnnlab(model: str, args: argparse.Namespace, work: Path, *extra: str) -> dict:
    log_dir = work / f"logs-{model}-{time.time_ns()}"
    cmd = [sys.executable, "-m", "cnnlab.train", f"model={model}", f"paths.data_dir={args.data_dir}",
           f"paths.log_dir={log_dir}", f"trainer.max_epochs={args.epochs}", "trainer.enable_progress_bar=false",
           *CNNLAB_LR.get(model, []), *extra]  # fmt: skip
    wall, rss, _ = run_process(cmd, work)
    metrics = json.loads(next(log_dir.rglob("metrics.json")).read_text())
    return {**metrics, "wall_s": wall, "peak_rss_mib": rss}


def sweep(args: argparse.Namespace, work: Path, *launcher: str) -> float:
    cmd = [sys.executable, "-m", "cnnlab.train", "-m", f"model={SWEEP_MODELS}", f"paths.data_dir={args.data_dir}",
           f"paths.log_dir={work / f'sweep-{time.time_ns()}'}", f"trainer.max_epochs={args.sweep_epochs}",
           "trainer.enable_progress_bar=false", *launcher]  # fmt: skip
    return run_process(cmd, work)[0]


def table(rows: dict[str, dict]) -> str:
    lines = ["| contender | examples/s | wall s | start-up s | peak RSS MiB | test acc |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['examples_per_sec']:,.0f} | {r['wall_s']:.1f} | {r['startup_s']:.1f} "
            f"| {r['peak_rss_mib']:,.0f} | {r['test_acc']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(Path("data").resolve()), help="cnnlab's data.data_dir")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--models", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--sweep-epochs", type=int, default=5)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--cnnlab-args", nargs="*", default=[], help="extra overrides for (c), e.g. compile=true")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=["compile=true", "trainer.precision=bf16-mixed"],
        help="extra rows: (c) again with these overrides (one quoted string per row)",
    )
    parser.add_argument("--json", help="write all figures to this file")
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())
    MNISTDataModule(data_dir=args.data_dir).prepare_data()  # import or fetch the files the reference loops read
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-") as tmp:
        work = Path(tmp)
        for model in args.models:
            rows = {
                "(a) seeds' loop": reference("seeds", model, args, work),
                "(b) plain eager loop": reference("eager", model, args, work),
                "(c) cnnlab": cnnlab(model, args, work, *args.cnnlab_args),
            }
            for variant in args.variants:  # the same run with other settings, for comparison
                rows[f"(c) cnnlab {variant}"] = cnnlab(model, args, work, *variant.split(), *args.cnnlab_args)
            a, b, c = list(rows.values())[:3]
            ratios = {
                "throughput c/b": c["examples_per_sec"] / b["examples_per_sec"],
                "throughput c/a": c["examples_per_sec"] / a["examples_per_sec"],
                "wall c/a": c["wall_s"] / a["wall_s"],
                "peak RSS c/b": c["peak_rss_mib"] / b["peak_rss_mib"],
            }
            results[model] = {"rows": rows, "ratios": ratios}
            print(f"\n## {model}, {args.epochs} epochs\n\n{table(rows)}\n")
            print(", ".join(f"{k}: {v:.2f}x" for k, v in ratios.items()), flush=True)
        if not args.no_sweep:
            sequential = sweep(args, work)
            parallel = sweep(args, work, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
            results["sweep"] = {"sequential_s": sequential, "joblib_2_s": parallel, "ratio": parallel / sequential}
            print(f"\n## 4-job sweep ({SWEEP_MODELS}), {args.sweep_epochs} epochs each\n")
            print(f"sequential {sequential:.1f} s, joblib n_jobs=2 {parallel:.1f} s: {parallel / sequential:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
