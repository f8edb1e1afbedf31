"""TensorBoard's HPARAMS tab: a run's knobs (not its whole config) beside its final metrics, and a sweep's experiment
summary that lists what the sweep varies first, with its values or ranges, so the table opens on it.

A run writes one event file of its own when it ends: its knobs (the hparams plugin's session), its whole config as
YAML with the command that reproduces it (the TEXT tab) and, outside a sweep, an experiment summary of its own. A
sweep writes its experiment summary once, into the sweep dir: the TensorBoard root its jobs share. Light: tensorboard's
protobufs (its hparams ``summary_v2`` module works without TensorFlow), no torch.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cnnlab.config import as_dict, config_yaml
from cnnlab.rundir import RunRecord
from cnnlab.runtime import is_multirun
from cnnlab.sweepspace import domain, plain_key, sweep_record, swept_overrides
from cnnlab.vocab import STATUS_CODES, RunFiles, Status

KNOB_GROUPS = ("model", "optimizer", "scheduler")  # config groups whose choice and fields are knobs
DATA_KNOBS = ("name", "batch_size", "val_size", "split_seed", "normalize", "augment", "crop_padding", "erase_size",
              "erase_prob")  # fmt: skip
TRAINER_KNOBS = ("max_epochs", "precision")
RUN_KNOBS = ("seed", "init", "label_smoothing", "ema", "tta", "tags")
# Not knobs: class paths, the model's copies of the data set's shape, the optimizers' switches for other uses.
NOT_KNOBS = {"_target_", "_partial_", "in_channels", "image_size", "num_classes", "foreach", "fused", "differentiable",
             "capturable", "maximize"}  # fmt: skip
EVENTS = RunFiles.EVENTS


def status_codes() -> dict[Status, int]:
    """Each run status a run writes as the number ``hp/status`` holds (``cnnlab.vocab.STATUS_CODES``: fixed codes)."""
    return {status: code for status, code in STATUS_CODES.items() if status not in (Status.INCOMPLETE,
                                                                                     Status.UNREADABLE)}  # fmt: skip


def final_metrics() -> dict[str, str]:
    """The metrics beside the knobs, ``hp/<key>``: what each is."""
    codes = ", ".join(f"{code} {status}" for status, code in status_codes().items())
    return {"test_acc": "test accuracy", "val_acc": "validation accuracy (the selection metric)",
            "params": "parameters", "macs": "multiply-adds per example", "wall_s": "wall time of the job, s",
            "examples_per_sec": "training examples per second", "epochs": "epochs trained",
            "status": f"how the run ended: {codes}"}  # fmt: skip


def metric_values(record: RunRecord, macs: int | None) -> dict[str, float]:
    """The run's ``hp/...`` metrics (those it has)."""
    values = {key: getattr(record, key, None) for key in final_metrics()}
    values.update(macs=macs, status=status_codes().get(Status(record.status)))
    return {f"hp/{key}": float(value) for key, value in values.items() if value is not None}


def knob_value(value: Any) -> str | float | int | bool:
    """A knob as the HPARAMS tab holds it: numbers, strings and booleans as they are, lists as ``[6,16]``."""
    if isinstance(value, list | tuple):
        return "[" + ",".join(str(knob_value(v)) for v in value) + "]"
    return value if isinstance(value, str | float | int | bool) else str(value)


def choices_of(cfg: DictConfig) -> dict[str, Any]:
    """The config groups' choices (``model: lenet``): from the config's hydra node, or Hydra's runtime."""
    if "hydra" in cfg:
        return dict(cfg.hydra.runtime.choices)
    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def knobs(cfg: DictConfig, choices: dict[str, Any]) -> dict[str, Any]:
    """The knobs of an experiment, by override key: the groups' choices and fields, the data set's batch, split and
    augmentation, the run settings, the epochs and precision. None (unset) is left out."""
    found: dict[str, Any] = {}
    for group in KNOB_GROUPS:
        found[group] = choices.get(group)
        found.update({f"{group}.{k}": v for k, v in as_dict(cfg.get(group)).items() if k not in NOT_KNOBS})
    picked = [f"data.{k}" for k in DATA_KNOBS] + [f"trainer.{k}" for k in TRAINER_KNOBS] + list(RUN_KNOBS)
    for key in picked:  # each resolved alone: the rest of data and trainer may point at dirs not made yet
        value = OmegaConf.select(cfg, key)
        found[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return {key: knob_value(value) for key, value in found.items() if value is not None}


def run_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The run's row of the HPARAMS tab: its knobs, and in a sweep job what its sweep varies beyond them."""
    params = knobs(cfg, choices_of(cfg))
    if is_multirun():
        hydra_cfg = HydraConfig.get()
        record = sweep_record(hydra_cfg.sweep.dir)
        swept = swept_overrides(record) if record is not None else {}
        for override in OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task)):
            key = plain_key(override)
            if key in swept and key not in params:
                params[key] = knob_value(override.value())
    return params


def hp_domain(values: tuple[float, float] | list[Any] | None) -> Any:
    """A swept key's domain for the experiment summary: a range, or the values (numbers as floats)."""
    from tensorboard.plugins.hparams import summary_v2 as hp

    if values is None:
        return None
    if isinstance(values, tuple):
        return hp.RealInterval(*values)
    shown = [knob_value(v) for v in values]
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in shown):
        shown = [float(v) for v in shown]
    elif not all(isinstance(v, bool) for v in shown):
        shown = [str(v) for v in shown]
    return hp.Discrete(shown)


def experiment_pb(first: dict[str, Any], rest: Iterable[str]) -> Any:
    """The experiment summary: the swept keys first (``{key: domain}``), then the other knobs, then the metrics."""
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp

    hparams = [hp.HParam(key, hp_domain(values)) for key, values in first.items()]
    hparams += [hp.HParam(key) for key in rest if key not in first]
    metrics = [hp.Metric(f"hp/{key}", description=what) for key, what in final_metrics().items()]
    summary = hp.hparams_config_pb(hparams, metrics)
    # TensorBoard lists the hparams that differ first (then by name): the swept keys are marked so.
    content = summary.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(content.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in first
    content.content = data.SerializeToString()
    return summary


def write_summaries(folder: Path | str, summaries: list[Any], step: int = 0) -> None:
    """One event file of ``summaries`` in ``folder`` (TensorBoard reads every event file of a folder as one run)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(folder))
    for summary in summaries:
        writer.add_event(Event(summary=summary, wall_time=time.time(), step=step))
    writer.close()


def write_run_summaries(folder: Path | str, cfg: DictConfig, step: int) -> None:
    """The run's HPARAMS row and its TEXT tab (the config, the command that reproduces it) into its run dir; outside
    a sweep, an experiment summary of its own too."""
    from tensorboard.plugins.hparams import summary_v2 as hp
    from tensorboard.plugins.text.summary_v2 import text_pb

    params = run_hparams(cfg)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    command = " ".join(["python -m cnnlab.train", *map(shlex.quote, overrides)])
    text = f"    {command}\n\n" + "".join(f"    {line}\n" for line in config_yaml(cfg).splitlines())  # code blocks
    summaries = [hp.hparams_pb(params, trial_id=Path(folder).name), text_pb("config", text)]  # the Trial ID: its name
    if not is_multirun():
        summaries.append(experiment_pb({}, params))
    write_summaries(folder, summaries, step)


class SweepSummary(Callback):
    """Hydra callback: a sweep's experiment summary, written once into its dir (a resumed sweep has it)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if any(sweep_dir.glob(EVENTS)):
            return
        swept = {key: domain(override) for key, override in swept_overrides(config).items()}
        try:
            rest = list(knobs(config, dict(config.hydra.runtime.choices)))
        except Exception:  # a knob that resolves only in a job (${hydra:job.num}, say): the swept keys alone
            rest = []
        write_summaries(sweep_dir, [experiment_pb(swept, rest)])
