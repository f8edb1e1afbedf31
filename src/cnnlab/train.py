"""Train one model: ``python -m cnnlab.train [overrides]`` (Hydra; ``-m`` sweeps).

Check the overrides, compose the config, plan the job and validate it, all without torch; then build data, model
and trainer, fit, test and write ``metrics.json`` into the run dir (``cnnlab.run``); return the validation accuracy
(the objective sweepers maximise).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import hydra
from omegaconf import DictConfig

from cnnlab.config import CONF_DIR
from cnnlab.errors import RunInterrupted, exit_on_user_error, user_error
from cnnlab.plan import plan_job, skipped, started
from cnnlab.rundir import DirBusy, record_failure
from cnnlab.runtime import help_page, is_multirun
from cnnlab.schemas import check_overrides
from cnnlab.validate import validate_config

log = logging.getLogger("cnnlab.train")


def train(cfg: DictConfig) -> dict[str, Any]:
    """One job: plan it (``cnnlab.plan``), validate it, then fit, test and write its record (``cnnlab.run``); returns
    the record as ``metrics.json`` has it. A sweep job that finished before is skipped and returns its earlier record.

    Everything up to the run itself needs neither torch nor Lightning: a config mistake answers at once.
    """
    plan = plan_job(cfg)
    if plan.action == "skip":
        return skipped(plan).as_json()
    validate_config(cfg)  # before the job starts: a bad config moves and locks nothing
    with started(cfg, plan):
        from cnnlab.run import fit_and_test

        return fit_and_test(cfg, plan).as_json()


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
            record_failure(cfg.paths.output_dir, user_error(err) or err, wall_s=time.time() - start)
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
