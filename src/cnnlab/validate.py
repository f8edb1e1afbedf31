"""Check a composed config before anything heavy is built: one clear message naming the setting and the fix.

``validate_config`` needs no torch (``python -m cnnlab.train`` runs it before importing it); ``validate_for_the_run``
makes the checks that do, at the start of the run.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnnlab.config import as_dict, input_shape
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.schemas import check_run_settings
from cnnlab.shapes import plan_layers

log = logging.getLogger("cnnlab.validate")


def validate_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` for the first setting that cannot work.

    Types are the schemas' (``cnnlab.schemas``: refused when Hydra composes), a model spec is its planner's
    (``cnnlab.models.plan_layers``) and a data set's the data module's; here: the ranges and the rules that join two
    settings, each checked once.
    """
    check_run_settings(cfg)
    lr = cfg.optimizer.get("lr")
    if lr is None or not lr > 0:
        raise ConfigError(f"optimizer.lr={lr} must be a positive number (the seeds use 0.9 with SGD).")
    if cfg.data.batch_size < 1:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be at least 1 (the seeds use 256).")
    eval_batch_size = cfg.data.get("eval_batch_size")
    if eval_batch_size is not None and eval_batch_size < 1:
        raise ConfigError(f"data.eval_batch_size={eval_batch_size} must be at least 1 (or null: data.batch_size).")
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is not None and max_epochs != -1 and max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs={max_epochs} must be at least 1 (the seeds train 10).")
    check_training_switches(cfg)
    model = as_dict(cfg.model)
    if model.get("num_classes") not in (None, cfg.data.num_classes):
        raise ConfigError(
            f"model.num_classes={model['num_classes']} does not match data.num_classes={cfg.data.num_classes}; "
            f"leave model.num_classes at its default (${{data.num_classes}})."
        )
    if "conv_channels" in model:  # a LeNet spec (model/*.yaml extend schema/lenet)
        plan_layers(**{key: value for key, value in model.items() if key != "_target_"})


def validate_for_the_run(cfg: DictConfig) -> None:
    """The checks that need torch, at the start of a run (after ``validate_config``), before any data is read: a
    network of your own (a LeNet spec is its planner's), the GPU a trainer asks for, the checkpoint to resume."""
    model = as_dict(cfg.model)
    if "conv_channels" not in model:
        checked_network(model, cfg.data)
    check_accelerator(cfg)
    if cfg.get("ckpt_path"):
        check_checkpoint(Path(str(cfg.ckpt_path)).expanduser(), as_dict(cfg.model))


def checked_network(model: dict[str, Any], data: Any) -> Any:
    """The network of the model config ``model``, built, after a batch of two blank images of the data's shape went
    through it. A class that cannot be imported or built, or whose output is not ``data.num_classes`` logits per
    image, is one ``ConfigError`` naming the class and the reason."""
    import torch
    from hydra.utils import get_object, instantiate

    target = str(model.get("_target_", ""))
    try:
        get_object(target)
    except Exception as err:
        raise ConfigError(
            f"model._target_={target} cannot be imported ({reason(err)}); put its module in the folder you run "
            f"cnnlab from (or install the package that holds it), or correct the name."
        ) from None
    try:
        net = instantiate(model)
    except Exception as err:
        if isinstance(err.__cause__ or err, CnnlabError):  # a LeNet spec that cannot be built says why itself
            raise (err.__cause__ or err) from None
        raise ConfigError(
            f"model._target_={target} cannot be built from the model config ({reason(err)}); the config's keys are "
            f"the arguments of {target}: python -m cnnlab.train --cfg job model=<yours> shows them."
        ) from None
    if not isinstance(net, torch.nn.Module):
        raise ConfigError(f"model._target_={target} makes a {type(net).__name__}, not a torch.nn.Module.")
    shape, classes = list(input_shape(data)), int(data["num_classes"])
    was_training = net.training
    net.eval()  # batch norm cannot normalise blank images in training mode
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, *shape))
    except Exception as err:
        raise ConfigError(
            f"model._target_={target} fails on a batch of 2 images of {shape} (data.in_channels, data.image_size) "
            f"({reason(err)}); make its layers fit the data's images."
        ) from None
    finally:
        net.train(was_training)
    got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != [2, classes]:
        raise ConfigError(
            f"model._target_={target} returns {got} for a batch of 2 images of {shape}; a classifier of "
            f"data.num_classes={classes} classes returns [2, {classes}] logits: end it with a layer of {classes} "
            f"outputs."
        )
    return net


def reason(err: BaseException) -> str:
    """An exception as one line: its cause's type and message (Hydra wraps what a target raises)."""
    cause = err.__cause__ or err
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def check_accelerator(cfg: DictConfig) -> None:
    """A GPU trainer (``trainer=gpu``, ``trainer=ddp``) on a machine without one: say so before Lightning does."""
    import torch

    accelerator = str(cfg.trainer.get("accelerator") or "auto")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU, and this machine has none; train on the CPU with "
            f"trainer=default (or trainer=ddp_cpu for two processes), or trainer.accelerator=auto."
        )


def check_training_switches(cfg: DictConfig) -> None:
    """The switches past the chapter: label smoothing, EMA, warm-up."""
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing={cfg.label_smoothing} must be in [0, 1) (0.1 is usual; 0 is off).")
    if cfg.ema is not None and not 0.0 < cfg.ema < 1.0:
        raise ConfigError(f"ema={cfg.ema} is the decay of the weights' average: in (0, 1), e.g. 0.999 (null: off).")
    if cfg.tta and "flip" not in (cfg.data.get("augment") or []):
        log.warning(
            "tta=true mirrors the test images, but training never mirrors them (data.augment has no flip): on "
            "Fashion-MNIST, whose shoes all face left, that costs accuracy (README: Past the chapter). Add flip to "
            "data.augment or set tta=false."
        )
    scheduler = cfg.get("scheduler") or {}  # scheduler: null in a config file is no schedule, as scheduler=none
    warmup, max_epochs = scheduler.get("warmup_epochs") or 0, cfg.trainer.get("max_epochs")
    if warmup < 0 or (max_epochs and max_epochs > 0 and warmup >= max_epochs):
        raise ConfigError(
            f"scheduler.warmup_epochs={warmup} must be >= 0 and shorter than the run (trainer.max_epochs={max_epochs})."
        )
    spans_the_run = [k for k in ("total_steps", "T_max") if k in scheduler and scheduler[k] is None]
    if spans_the_run and max_epochs in (None, -1) and cfg.trainer.get("max_steps") in (None, -1):
        raise ConfigError(
            f"trainer.max_epochs={max_epochs} sets no end, and the scheduler spans the run "
            f"(scheduler.{spans_the_run[0]}=null); give trainer.max_epochs (or trainer.max_steps), or "
            f"scheduler.{spans_the_run[0]}=<steps>."
        )
    if warmup and str(scheduler.get("_target_", "")).endswith(".OneCycleLR"):
        raise ConfigError(
            f"scheduler.warmup_epochs={warmup} with scheduler=onecycle would warm up twice (a linear warm-up that ends "
            f"where one-cycle starts, at a 25th of its peak, then one-cycle's own); one-cycle has its warm-up built "
            f"in: leave scheduler.warmup_epochs at 0 and set scheduler.pct_start (the share of the run it warms up)."
        )


def check_checkpoint(path: Path, model: dict[str, Any]) -> None:
    """A checkpoint to resume must exist, load as plain data (``weights_only``) and hold the composed model."""
    import torch

    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={path} does not exist; pass a checkpoint of the run to resume, "
            f"e.g. <run dir>/checkpoints/last.ckpt."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" not in str(err).lower():
            raise ConfigError(f"ckpt_path={path} is not a checkpoint ({_first_line(err)}).") from None
        raise ConfigError(
            f"ckpt_path={path} holds pickled Python objects, which weights_only loading refuses (loading them "
            f"could run arbitrary code); use a checkpoint written by cnnlab."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise ConfigError(
            f"ckpt_path={path} cannot be read ({_first_line(err)}): it is truncated or not a checkpoint. "
            f"Resume from another checkpoint of the run (checkpoints/best-*.ckpt)."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"ckpt_path={path} is not a Lightning checkpoint (it has no state_dict).")
    trained = (checkpoint.get("hyper_parameters") or {}).get("model")
    if not isinstance(trained, dict):
        return
    differ = sorted(k for k in set(trained) | set(model) if trained.get(k) != model.get(k))
    if differ:
        was = ", ".join(f"model.{k}={trained.get(k)}" for k in differ)
        now = ", ".join(f"model.{k}={model.get(k)}" for k in differ)
        overrides = path.parent.parent / ".hydra" / "overrides.yaml"
        hint = ""
        if path.parent.name == "checkpoints" and overrides.is_file():
            used = [str(o) for o in OmegaConf.load(overrides) if not str(o).startswith("ckpt_path")]
            hint = f" ({' '.join(used)})"
        raise ConfigError(
            f"ckpt_path={path} holds a model with {was}, but this run composes {now}; "
            f"resume with the overrides of the run that wrote it{hint}."
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
