"""Train one model: ``python -m cnnlab.train [overrides]`` (Hydra; ``-m`` sweeps).

The path of one job, in order (``train``):

1. ``cnnlab.schemas.check_overrides``: the command line, before Hydra composes (``cli``);
2. Hydra composes ``conf/config.yaml`` with the overrides (typed schemas refuse unknown keys and wrong types);
3. ``cnnlab.plan.plan_job``: skip (finished before), resume (from its ``last.ckpt``) or run; its run dir;
4. ``cnnlab.validate.validate_config``: the ranges and the rules that join two settings; nothing is built yet;
5. ``cnnlab.job.job_context``: rank, run dir lock, failed attempt or fold, threads, GPU, trial, the job's config;
6. ``cnnlab.run.run_job``: build data, model, trainer -> fit -> test -> record (``metrics.json``).

Steps 1-4 need neither torch nor Lightning: a config mistake answers at once. The entry point returns the validation
accuracy, the objective sweepers maximise.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import hydra
from omegaconf import DictConfig

from cnnlab import environment
from cnnlab.config import CONF_DIR
from cnnlab.errors import RunInterrupted, exit_on_user_error, user_error
from cnnlab.plan import plan_job, skipped
from cnnlab.rundir import DirBusy, record_failure
from cnnlab.runtime import help_page, is_multirun
from cnnlab.schemas import check_overrides
from cnnlab.validate import validate_config

log = logging.getLogger("cnnlab.train")


def train(cfg: DictConfig) -> dict[str, Any]:
    """One job (the steps of this module's docstring); returns its record as ``metrics.json`` has it. A sweep job that
    finished before is skipped and returns its earlier record."""
    plan = plan_job(cfg)
    if not is_multirun():
        environment.tell_the_api(run_dir=plan.output_dir)
    if plan.action == "skip":
        return skipped(plan).as_json()
    validate_config(cfg)  # before the job starts: a bad config moves and locks nothing
    from cnnlab.job import job_context
    from cnnlab.run import run_job  # torch, Lightning: once the job runs

    with job_context(cfg, plan) as ctx:
        return run_job(ctx).as_json()


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point: train, return the validation accuracy.

    In a sweep (``-m``) a job that fails is recorded as failed and returns None, and the sweep goes on.
    """
    start = time.time()
    with exit_on_user_error():  # a user mistake: one clear message, no traceback
        try:
            return train(cfg)["val_acc"]
        except RunInterrupted as stop:  # Ctrl-C or SIGTERM: last.ckpt is saved; a sweep stops too
            print(f"cnnlab: {stop}", file=sys.stderr)
            raise SystemExit(stop.exit_code) from None
        except DirBusy as busy:  # another process runs this job: its dir is left as it is
            if not is_multirun():
                raise
            log.error("job not run: %s", busy)
            return None
        except Exception as err:
            if not is_multirun():
                raise
            if environment.is_rank_zero():
                record_failure(cfg.paths.output_dir, user_error(err) or err, wall_s=time.time() - start,
                               fingerprint=known_fingerprint(cfg))  # fmt: skip
            return None


def known_fingerprint(cfg: DictConfig) -> tuple[str, dict[str, Any]] | None:
    """The failed job's fingerprint, so the report counts the failure against its configuration; None when the
    config itself cannot be resolved (the failure's own error says why)."""
    from cnnlab.job import job_fingerprint

    try:
        return job_fingerprint(cfg)
    except Exception:
        return None


def cli() -> None:
    """``python -m cnnlab.train`` and ``python -m cnnlab``: check the overrides, then compose and run."""
    if sys.argv[1:] in (["--help"], ["-h"]):  # with overrides, Hydra's --help shows them composed
        print(help_page(CONF_DIR))
        return
    with exit_on_user_error():  # trainer.max_epoch=5, data.batch_size=abc: one line before Hydra composes
        check_overrides(sys.argv[1:], CONF_DIR)
    main()


if __name__ == "__main__":
    cli()
