"""Where a cnnlab training step spends its time: ``torch.profiler`` over N steps of the default LeNet recipe.

    python benchmarks/profile_step.py --data-dir data --steps 120

Prints the top ATen operators by self time and the share of the step spent in ATen kernels versus the rest
(Lightning's loop, hooks, logging, callbacks). Runs the same callbacks that cost time per step in a default run.
"""

from __future__ import annotations

import argparse
import logging
import tempfile

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.profiler import ProfilerActivity, profile

from cnnlab.callbacks import ExamplesPerSecond
from cnnlab.data import MNISTDataModule
from cnnlab.guards import DivergenceGuard
from cnnlab.module import ClassifierModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    datamodule = MNISTDataModule(data_dir=args.data_dir)
    lenet, sgd = {"_target_": "cnnlab.models.LeNet"}, {"_target_": "torch.optim.SGD", "lr": 0.9}
    module = ClassifierModule(lenet, sgd, channels_last=args.channels_last)
    speed = ExamplesPerSecond()
    with tempfile.TemporaryDirectory() as checkpoints:
        trainer = pl.Trainer(
            max_epochs=1, limit_train_batches=args.steps, limit_val_batches=0, logger=False, accelerator="cpu",
            enable_progress_bar=False, enable_model_summary=False,
            callbacks=[speed, DivergenceGuard(), ModelCheckpoint(checkpoints, every_n_train_steps=100, save_last=True)],
        )  # fmt: skip
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.fit(module, datamodule=datamodule)
    averages = prof.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=14))
    aten = sum(e.self_cpu_time_total for e in averages if e.key.startswith("aten::")) / 1e6
    step = speed.seconds / args.steps
    print(
        f"{args.steps} steps: {step * 1e3:.2f} ms a step (under the profiler), {speed.examples_per_sec:,.0f} "
        f"examples/s; ATen kernels {aten / args.steps * 1e3:.2f} ms a step ({aten / speed.seconds:.0%})"
    )


if __name__ == "__main__":
    main()
