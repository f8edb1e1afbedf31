"""Check a composed config before anything heavy is built: one clear message naming the setting and the fix."""

from __future__ import annotations

from omegaconf import DictConfig

from cnnlab.errors import ConfigError
from cnnlab.models import ACTIVATIONS, plan_shapes
from cnnlab.module import INITS


def validate_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` for the first setting that cannot work."""
    lr = cfg.optimizer.get("lr")
    if lr is None or not lr > 0:
        raise ConfigError(f"optimizer.lr={lr} must be a positive number (the seeds use 0.9 with SGD).")
    if cfg.data.batch_size < 1:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be at least 1 (the seeds use 256).")
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is not None and max_epochs != -1 and max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs={max_epochs} must be at least 1 (the seeds train 10).")
    if cfg.data.val_size < 0:
        raise ConfigError(f"data.val_size={cfg.data.val_size} must be >= 0 (0 validates on the test set).")
    if cfg.init not in INITS:
        raise ConfigError(f"init={cfg.init!r} is not known; choose one of {sorted(INITS)}.")
    model = cfg.model
    if model.get("activation") is not None and model.activation not in ACTIVATIONS:
        raise ConfigError(f"model.activation={model.activation!r} is not known; choose one of {sorted(ACTIVATIONS)}.")
    if model.get("num_classes") not in (None, cfg.data.num_classes):
        raise ConfigError(
            f"model.num_classes={model.num_classes} does not match data.num_classes={cfg.data.num_classes}; "
            f"leave model.num_classes at its default (${{data.num_classes}})."
        )
    if "conv_channels" in model:
        plan_shapes(
            model.conv_channels,
            model.kernel_sizes,
            model.paddings,
            model.strides,
            model.pool,
            model.pool_size,
            model.pool_stride,
            model.in_channels,
            model.image_size,
        )
