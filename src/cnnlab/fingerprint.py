"""A run's identity: a fingerprint of what decides its result, from its resolved config.

Two runs with one fingerprint are the same experiment (seeds of one configuration, or repeats of one seed); two with
different fingerprints are not, whatever their command lines said. ``metrics.json`` holds the fingerprint and the
settings it was made of (``identity``), so the report can group seeds and name what differs, and ``cnnlab.resume``
can say what changed in a sweep.

What is in it: the config groups that build the run (``BUILDS_THE_RUN``: model, data, optimizer, scheduler,
trainer) and the run settings (the top-level keys of ``schema/run``: init, label_smoothing, ema, tta, ...), each
whole but for what ``LEFT_OUT`` names, with its reason. A key added to one of them later is in by default, so it can
only split runs apart, never merge different experiments. Other top-level keys (a sweep file's own tables, such as
``chapter6_lr``) are not settings of the run: their effect is in the values they set, which are in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

BUILDS_THE_RUN = ("model", "data", "optimizer", "scheduler", "trainer")
# Left out of a run's identity, by key (a key leaves out everything below it), with the reason.
LEFT_OUT = {
    "seed": "what seeds vary: runs that differ only in it are seeds of one configuration",
    "data.shuffle_seed": "the batch order, which follows seed",
    "data.augment_seed": "the augmentation's draws, which follow seed",
    "data.data_dir": "where the data files are",
    "data.system_dir": "where the Debian copy of the data is",
    "data.download": "how the data files are obtained, not which",
    "data.verify_md5": "how the data files are checked, not which",
    "data.device_resident": "where the data sits on a GPU: speed only",
    "data.eval_batch_size": "the batch of evaluation: speed only (no batch statistics are updated)",
    "compile": "torch.compile: speed only",
    "channels_last": "the memory layout: speed only",
    "tags": "labels for finding runs",
    "optimizer.foreach": "which kernels the optimizer uses: speed only",
    "optimizer.fused": "which kernels the optimizer uses: speed only",
    "optimizer.capturable": "whether the optimizer can be captured in a CUDA graph: speed only",
    "optimizer.differentiable": "whether the optimizer's step can be differentiated: no other step",
    "trainer._target_": "always Lightning's Trainer",
    "trainer.accelerator": "where it runs",
    "trainer.devices": "where it runs",
    "trainer.num_nodes": "where it runs",
    "trainer.strategy": "how the processes share the work",
    "trainer.sync_batchnorm": "how the processes share the work",
    "trainer.plugins": "how checkpoints are written",
    "trainer.default_root_dir": "where files are",
    "trainer.logger": "what is recorded",
    "trainer.callbacks": "what is recorded",
    "trainer.enable_checkpointing": "what is saved",
    "trainer.enable_progress_bar": "what is printed",
    "trainer.enable_model_summary": "what is printed",
    "trainer.log_every_n_steps": "how often metrics are recorded",
    "trainer.profiler": "what is measured",
    "trainer.num_sanity_val_steps": "a check before training, which changes no weight",
    "trainer.detect_anomaly": "a check, which changes no weight",
    "trainer.deterministic": "whether a repeat is bit-identical, not what is trained",
    "trainer.benchmark": "which kernels are picked: speed only",
    "trainer.inference_mode": "evaluation's autograd mode: speed only",
    "trainer.barebones": "what is recorded",
    "trainer.enable_autolog_hparams": "what is recorded",
    "trainer.limit_predict_batches": "prediction, which training never runs",
}
FINGERPRINT_LENGTH = 12  # hex digits of sha256 (48 bits)


def left_out(key: str) -> bool:
    """Whether ``key`` (``data.data_dir``) or a node above it is left out of the identity."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in LEFT_OUT for i in range(1, len(parts) + 1))


def identity_keys() -> tuple[str, ...]:
    """The top-level keys a run's identity is made of: the groups that build the run and the run settings.

    (Not ``ckpt_path``, ``run_name``, ``extras``, ``paths``, ``logger``, ``callbacks`` or ``hydra``: where a run
    starts from, its name, what it prints, where its files go, what it records and saves; ``ema``, the one training
    switch among the callbacks, is a run setting.)"""
    from cnnlab import config  # noqa: F401 (registers the schemas: schema/run lists the run settings)
    from cnnlab.schemas import SCHEMAS

    return (*BUILDS_THE_RUN, *(f.name for f in dataclasses.fields(SCHEMAS["run"])))


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The settings that decide a run's result, flat (``optimizer.lr: 0.1``), resolved, sorted by key.

    Each value is resolved on its own, so the keys left out (paths that exist only in a job, say) are never resolved.
    """
    flat: dict[str, Any] = {}
    wanted = set(identity_keys())

    def walk(node: Any, prefix: str) -> None:
        for key in node.keys() if isinstance(node, DictConfig) else ():
            path = f"{prefix}{key}"
            if (not prefix and key not in wanted) or left_out(path):
                continue
            value = node[key]
            if isinstance(value, DictConfig):
                if not value:  # an empty node (logger=none, say) is a value of its own
                    flat[path] = {}
                walk(value, path + ".")
            elif isinstance(value, ListConfig):
                flat[path] = OmegaConf.to_container(value, resolve=True)
            else:
                flat[path] = value

    walk(cfg, "")
    return dict(sorted(flat.items()))


def fingerprint_of(settings: dict[str, Any]) -> str:
    """The fingerprint of an identity: the first hex digits of the sha256 of its canonical JSON."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_LENGTH]


def changes(was: dict[str, Any], now: dict[str, Any], limit: int = 4) -> str:
    """What differs between two identities, in words: ``optimizer.lr 0.9 -> 0.5, model.pool avg -> max``."""
    keys = sorted(k for k in set(was) | set(now) if was.get(k, "(unset)") != now.get(k, "(unset)"))
    parts = [f"{k} {was.get(k, '(unset)')} -> {now.get(k, '(unset)')}" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(parts) + more
