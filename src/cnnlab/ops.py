"""The chapter's convolution and pooling operations, written from scratch.

These follow the seeds (d2l chapter 6) and keep their names: ``corr2d``, ``corr2d_multi_in``,
``corr2d_multi_in_out``, ``corr2d_multi_in_out_1x1``, ``pool2d`` and ``comp_conv2d``. They favour
readability over speed; ``torch.nn.functional`` is the fast reference they are tested against.

Sizes follow the seeds' formula: with input ``n``, kernel ``k``, padding ``p`` on *each* side and stride
``s``, the output has ``floor((n - k + 2p + s) / s)`` elements along that dimension.
"""

import torch
from torch import Tensor, nn

from cnnlab.shapes import IntOrPair, _output_shape, _pair, conv_output_shape  # noqa: F401 (the chapter's API)


def _check_2d(X: Tensor, name: str) -> None:
    """Raise ValueError unless ``X`` is a 2-D tensor (height, width)."""
    if X.dim() != 2:
        raise ValueError(f"{name} must be 2-D (height, width), got shape {tuple(X.shape)}")


def _pad2d(X: Tensor, padding: IntOrPair, value: float = 0.0) -> Tensor:
    """Surround a 2-D tensor with ``padding`` rows/columns of ``value`` on each side."""
    p_h, p_w = _pair(padding, "padding")
    h, w = X.shape
    X_padded = torch.full((h + 2 * p_h, w + 2 * p_w), value, dtype=X.dtype, device=X.device)
    X_padded[p_h : p_h + h, p_w : p_w + w] = X
    return X_padded


def corr2d(X: Tensor, K: Tensor, *, padding: IntOrPair = 0, stride: IntOrPair = 1) -> Tensor:
    """2-D cross-correlation of input ``X`` (h, w) with kernel ``K`` (k_h, k_w), as in the seeds.

    Optional zero ``padding`` (per side) and ``stride`` (int or pair) match ``F.conv2d``'s arguments.
    """
    _check_2d(X, "X")
    _check_2d(K, "K")
    h, w = K.shape
    out_h, out_w = _output_shape(tuple(X.shape), (h, w), padding, stride, names=("X", "K"))
    s_h, s_w = _pair(stride, "stride")
    X = _pad2d(X, padding)
    Y = torch.zeros((out_h, out_w), dtype=torch.result_type(X, K), device=X.device)
    # Slide the window: output (i, j) sees the input block starting at (i * s_h, j * s_w).
    for i in range(out_h):
        for j in range(out_w):
            top, left = i * s_h, j * s_w
            Y[i, j] = (X[top : top + h, left : left + w] * K).sum()
    return Y


def corr2d_multi_in(X: Tensor, K: Tensor, *, padding: IntOrPair = 0, stride: IntOrPair = 1) -> Tensor:
    """Multi-input-channel cross-correlation: X (c_i, h, w), K (c_i, k_h, k_w) -> (out_h, out_w).

    Correlate each channel with its own kernel slice, then add the results over channels.
    """
    if X.dim() != 3 or K.dim() != 3 or X.shape[0] != K.shape[0]:
        raise ValueError(
            f"X must be (c_i, h, w) and K (c_i, k_h, k_w) with the same c_i, "
            f"got X {tuple(X.shape)} and K {tuple(K.shape)}"
        )
    return sum(corr2d(x, k, padding=padding, stride=stride) for x, k in zip(X, K, strict=True))


def corr2d_multi_in_out(X: Tensor, K: Tensor, *, padding: IntOrPair = 0, stride: IntOrPair = 1) -> Tensor:
    """Multi-input, multi-output cross-correlation: X (c_i, h, w), K (c_o, c_i, k_h, k_w) -> (c_o, ...).

    Each output channel is ``corr2d_multi_in`` with that channel's kernel; results are stacked on dim 0.
    """
    if K.dim() != 4:
        raise ValueError(f"K must be 4-D (c_o, c_i, k_h, k_w), got shape {tuple(K.shape)}")
    return torch.stack([corr2d_multi_in(X, k, padding=padding, stride=stride) for k in K], 0)


def corr2d_multi_in_out_1x1(X: Tensor, K: Tensor) -> Tensor:
    """1x1 convolution as a matrix multiply: X (c_i, h, w), K (c_o, c_i, 1, 1) -> (c_o, h, w).

    Every pixel's c_i channel values go through the same fully connected layer with weights (c_o, c_i).
    """
    if X.dim() != 3 or K.dim() != 4 or tuple(K.shape[2:]) != (1, 1) or K.shape[1] != X.shape[0]:
        raise ValueError(
            f"X must be (c_i, h, w) and K (c_o, c_i, 1, 1) with the same c_i, "
            f"got X {tuple(X.shape)} and K {tuple(K.shape)}"
        )
    c_i, h, w = X.shape
    c_o = K.shape[0]
    X = X.reshape((c_i, h * w))  # one column per pixel
    K = K.reshape((c_o, c_i))
    Y = torch.matmul(K, X)  # the matrix multiply of a fully connected layer
    return Y.reshape((c_o, h, w))


def pool2d(
    X: Tensor,
    pool_size: IntOrPair,
    mode: str = "max",
    padding: IntOrPair = 0,
    stride: IntOrPair | None = None,
) -> Tensor:
    """Max or average pooling of a 2-D tensor ``X`` with a ``pool_size`` window.

    ``stride=None`` means stride 1, as in the seeds' ``pool2d`` (note: ``nn.MaxPool2d`` defaults to the
    window size instead). Max pooling pads with -inf; average pooling pads with zeros that are counted in
    the mean (torch's ``count_include_pad=True``). Unlike torch, padding may exceed half the window; a
    window that then holds only padding gives -inf (max) or 0 (avg).
    """
    if mode not in ("max", "avg"):
        raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
    _check_2d(X, "X")
    p_h, p_w = _pair(pool_size, "pool_size")
    stride = 1 if stride is None else stride
    out_h, out_w = _output_shape(tuple(X.shape), (p_h, p_w), padding, stride, names=("X", "pool_size"))
    s_h, s_w = _pair(stride, "stride")
    X = _pad2d(X, padding, value=float("-inf") if mode == "max" else 0.0)
    Y = torch.zeros((out_h, out_w), dtype=X.dtype, device=X.device)
    for i in range(out_h):
        for j in range(out_w):
            window = X[i * s_h : i * s_h + p_h, j * s_w : j * s_w + p_w]
            Y[i, j] = window.max() if mode == "max" else window.mean()
    return Y


def comp_conv2d(conv2d: nn.Module, X: Tensor) -> Tensor:
    """Apply a one-in/one-out-channel ``conv2d`` layer to a 2-D ``X`` and return a 2-D result.

    Adds the batch and channel dimensions (both 1) before the layer and removes them afterwards.
    """
    X = X.reshape((1, 1) + tuple(X.shape))
    Y = conv2d(X)
    return Y.reshape(Y.shape[2:])
