"""Sizes and spec rules in plain Python (no torch): the chapter's output-size formula and a LeNet spec's plan.

``python -m cnnlab.train`` validates a config with these before anything heavy is imported; ``cnnlab.models.LeNet``
and ``cnnlab.ops`` use the same functions.
"""

from __future__ import annotations

from collections.abc import Sequence

from cnnlab.errors import ModelSpecError

IntOrPair = int | Sequence[int]
# The spec's names and the torch.nn classes they stand for (cnnlab.models.lenet looks the classes up).
ACTIVATION_CLASSES = {
    "sigmoid": "Sigmoid",
    "relu": "ReLU",
    "tanh": "Tanh",
    "gelu": "GELU",
    "leaky_relu": "LeakyReLU",
    "elu": "ELU",
    "silu": "SiLU",
}
POOLING_CLASSES = {"avg": "AvgPool2d", "max": "MaxPool2d", "none": None}


def _pair(value: IntOrPair, name: str) -> tuple[int, int]:
    """Turn ``3`` into ``(3, 3)`` and check that a pair really has two integers."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def conv_output_shape(
    input_size: IntOrPair, kernel_size: IntOrPair, padding: IntOrPair = 0, stride: IntOrPair = 1
) -> tuple[int, int]:
    """Output (height, width) of a convolution or pooling window: floor((n - k + 2p + s) / s) per dim.

    ``padding`` is the number of rows/columns added on *each* side; ints mean the same value for both dims.
    """
    return _output_shape(input_size, kernel_size, padding, stride, names=("input_size", "kernel_size"))


def _output_shape(
    input_size: IntOrPair,
    kernel_size: IntOrPair,
    padding: IntOrPair,
    stride: IntOrPair,
    names: tuple[str, str],
) -> tuple[int, int]:
    """``conv_output_shape`` with the caller's argument names (input, kernel) used in error messages."""
    input_name, kernel_name = names
    n_h, n_w = _pair(input_size, input_name)
    k_h, k_w = _pair(kernel_size, kernel_name)
    p_h, p_w = _pair(padding, "padding")
    s_h, s_w = _pair(stride, "stride")
    if n_h <= 0 or n_w <= 0:
        raise ValueError(f"{input_name} must have a positive size, got {(n_h, n_w)}")
    if k_h <= 0 or k_w <= 0:
        raise ValueError(f"{kernel_name} must have a positive size, got {(k_h, k_w)}")
    if p_h < 0 or p_w < 0:
        raise ValueError(f"padding must be non-negative, got {(p_h, p_w)}")
    if s_h <= 0 or s_w <= 0:
        raise ValueError(f"stride must be positive, got {(s_h, s_w)}")
    padded = (n_h + 2 * p_h, n_w + 2 * p_w)
    if k_h > padded[0] or k_w > padded[1]:
        raise ValueError(
            f"{kernel_name} {(k_h, k_w)} is larger than the padded {input_name}: {input_name} size "
            f"{(n_h, n_w)} + padding {(p_h, p_w)} on each side = {padded}"
        )
    return ((n_h - k_h + 2 * p_h + s_h) // s_h, (n_w - k_w + 2 * p_w + s_w) // s_w)


def per_block(value: int | Sequence[int], n_blocks: int, field: str) -> list[int]:
    """Broadcast one int to every conv block, or check a list has one entry per block."""
    if isinstance(value, int):
        return [value] * n_blocks
    values = [int(v) for v in value]
    if len(values) != n_blocks:
        raise ModelSpecError(
            f"model.{field} has {len(values)} entries but model.conv_channels has {n_blocks} blocks; "
            f"give one value per conv block (or a single int for all)."
        )
    return values


def plan_layers(
    conv_channels: Sequence[int], kernel_sizes: int | Sequence[int], paddings: int | Sequence[int],
    strides: int | Sequence[int], activation: str, pool: str, pool_size: int, pool_stride: int | None,
    fc_sizes: Sequence[int], dropout: float, in_channels: int, image_size: int, num_classes: int, **_: object,
) -> list[tuple[int, int]]:  # fmt: skip
    """(channels, side) after every conv block of a LeNet spec (``LeNet``'s arguments, which hold the defaults; any
    others ignored), every rule of the spec checked before anything is built: ``cnnlab.validate`` and ``LeNet``
    itself call this, and nothing else checks a spec.

    Raises ``ModelSpecError`` naming the setting, the layer and the sizes.
    """
    if activation not in ACTIVATION_CLASSES:
        raise ModelSpecError(
            f"model.activation={activation!r} is not known; choose one of {sorted(ACTIVATION_CLASSES)}."
        )
    if not 0.0 <= dropout < 1.0:
        raise ModelSpecError(f"model.dropout={dropout} must be in [0, 1).")
    if num_classes < 2 or in_channels < 1 or image_size < 1 or any(h < 1 for h in fc_sizes):
        raise ModelSpecError(
            f"model.num_classes={num_classes} must be >= 2, in_channels={in_channels} and "
            f"image_size={image_size} >= 1, and every model.fc_sizes entry ({list(fc_sizes)}) >= 1."
        )
    n_blocks = len(conv_channels)
    kernels = per_block(kernel_sizes, n_blocks, "kernel_sizes")
    pads = per_block(paddings, n_blocks, "paddings")
    steps = per_block(strides, n_blocks, "strides")
    if pool not in POOLING_CLASSES:
        raise ModelSpecError(f"model.pool={pool!r} is not a pooling kind; choose one of {sorted(POOLING_CLASSES)}.")
    pool_stride = pool_size if pool_stride is None else pool_stride
    side, shapes = image_size, []
    for i, (channels, k, p, s) in enumerate(zip(conv_channels, kernels, pads, steps, strict=True), start=1):
        if channels < 1 or k < 1 or s < 1 or p < 0:
            raise ModelSpecError(
                f"conv{i}: channels={channels}, kernel={k}, stride={s} must be >= 1 and padding={p} >= 0."
            )
        if k > side + 2 * p:
            raise ModelSpecError(
                f"conv{i}: kernel {k}x{k} is larger than its input {side}x{side} (padding {p}); "
                f"use a smaller model.kernel_sizes, more model.paddings, or fewer conv blocks."
            )
        side = conv_output_shape(side, k, p, s)[0]
        if POOLING_CLASSES[pool] is not None:
            if pool_size > side:
                raise ModelSpecError(
                    f"pool{i}: pooling window {pool_size}x{pool_size} is larger than its input "
                    f"{side}x{side}; use a smaller model.pool_size, model.pool=none, or fewer conv blocks."
                )
            side = conv_output_shape(side, pool_size, 0, pool_stride)[0]
        shapes.append((channels, side))
    return shapes
