"""Tests for cnnlab.ops (the chapter's from-scratch operations) and the edge-detection demo."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlab.demos.edge import edge_kernel, learn_kernel, main, make_image
from cnnlab.ops import (
    comp_conv2d,
    conv_output_shape,
    corr2d,
    corr2d_multi_in,
    corr2d_multi_in_out,
    corr2d_multi_in_out_1x1,
    pool2d,
)

PROPERTY = settings(max_examples=30, deadline=None)

# The seeds' worked-example tensors.
X_3x3 = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
K_2x2 = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
X_2CH = torch.stack((X_3x3, X_3x3 + 1))
K_2CH = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]]])


def _rand(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A float64 tensor drawn from a seeded generator (float64 keeps the comparisons tight)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- the seeds' worked examples -------------------------------------------------------------------------


def test_corr2d_seed_example() -> None:
    assert torch.equal(corr2d(X_3x3, K_2x2), torch.tensor([[19.0, 25.0], [37.0, 43.0]]))


def test_corr2d_multi_in_seed_example() -> None:
    assert torch.equal(corr2d_multi_in(X_2CH, K_2CH), torch.tensor([[56.0, 72.0], [104.0, 120.0]]))


def test_corr2d_multi_in_out_seed_example() -> None:
    K = torch.stack((K_2CH, K_2CH + 1, K_2CH + 2), 0)
    assert K.shape == (3, 2, 2, 2)
    Y = corr2d_multi_in_out(X_2CH, K)
    assert Y.shape == (3, 2, 2)
    assert torch.equal(Y[0], torch.tensor([[56.0, 72.0], [104.0, 120.0]]))
    assert torch.equal(Y, torch.stack([corr2d_multi_in(X_2CH, k) for k in K]))


def test_pool2d_seed_examples() -> None:
    assert torch.equal(pool2d(X_3x3, (2, 2)), torch.tensor([[4.0, 5.0], [7.0, 8.0]]))
    assert torch.equal(pool2d(X_3x3, (2, 2), "avg"), torch.tensor([[2.0, 3.0], [5.0, 6.0]]))


def test_pool2d_default_stride_is_one_not_window() -> None:
    X = torch.arange(16.0).reshape(4, 4)
    assert pool2d(X, 2).shape == (3, 3)
    assert pool2d(X, 2, stride=2).shape == (2, 2)


def test_corr2d_supports_autograd() -> None:
    K = K_2x2.clone().requires_grad_(True)
    corr2d(X_3x3, K).sum().backward()
    # d(sum Y)/dK[a, b] is the sum of the inputs that K[a, b] touches.
    assert torch.equal(K.grad, torch.tensor([[8.0, 12.0], [20.0, 24.0]]))


# --- agreement with torch.nn.functional -------------------------------------------------------------------


@st.composite
def conv_cases(draw: st.DrawFn, max_channels: int = 3, pool: bool = False) -> dict:
    """Random kernel, padding, stride and an input size that the padded kernel fits into."""
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    # torch's pooling only allows padding up to half the window.
    p = tuple(draw(st.integers(0, kk // 2 if pool else 2)) for kk in k)
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    n = tuple(draw(st.integers(max(1, kk - 2 * pp), max(1, kk - 2 * pp) + 6)) for kk, pp in zip(k, p, strict=True))
    c_i, c_o = draw(st.integers(1, max_channels)), draw(st.integers(1, max_channels))
    return {"k": k, "p": p, "s": s, "n": n, "c_i": c_i, "c_o": c_o, "seed": draw(st.integers(0, 2**31))}


@PROPERTY
@given(conv_cases(max_channels=1))
def test_corr2d_matches_conv2d(case: dict) -> None:
    X, K = _rand(case["n"], case["seed"]), _rand(case["k"], case["seed"] + 1)
    expected = F.conv2d(X[None, None], K[None, None], padding=case["p"], stride=case["s"])[0, 0]
    torch.testing.assert_close(corr2d(X, K, padding=case["p"], stride=case["s"]), expected)


@PROPERTY
@given(conv_cases())
def test_corr2d_multi_in_out_matches_conv2d(case: dict) -> None:
    X = _rand((case["c_i"], *case["n"]), case["seed"])
    K = _rand((case["c_o"], case["c_i"], *case["k"]), case["seed"] + 1)
    expected = F.conv2d(X[None], K, padding=case["p"], stride=case["s"])[0]
    torch.testing.assert_close(corr2d_multi_in_out(X, K, padding=case["p"], stride=case["s"]), expected)


@PROPERTY
@given(conv_cases(max_channels=1, pool=True))
def test_pool2d_matches_torch_pooling(case: dict) -> None:
    X, k, p, s = _rand(case["n"], case["seed"]), case["k"], case["p"], case["s"]
    expected_max = F.max_pool2d(X[None, None], k, stride=s, padding=p)[0, 0]
    expected_avg = F.avg_pool2d(X[None, None], k, stride=s, padding=p, count_include_pad=True)[0, 0]
    torch.testing.assert_close(pool2d(X, k, "max", padding=p, stride=s), expected_max)
    torch.testing.assert_close(pool2d(X, k, "avg", padding=p, stride=s), expected_avg)
    # stride=None means stride 1 (the seeds' behaviour).
    torch.testing.assert_close(pool2d(X, k, "max", padding=p), F.max_pool2d(X[None, None], k, 1, p)[0, 0])


@PROPERTY
@given(conv_cases(max_channels=3))
def test_corr2d_multi_in_out_1x1_matches_general_version(case: dict) -> None:
    X = _rand((case["c_i"], *case["n"]), case["seed"])
    K = _rand((case["c_o"], case["c_i"], 1, 1), case["seed"] + 1)
    torch.testing.assert_close(corr2d_multi_in_out_1x1(X, K), corr2d_multi_in_out(X, K))


# --- output shapes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel_size", "padding", "stride", "expected"),
    [
        (3, 1, 1, (8, 8)),  # 3x3 kernel, padding 1 keeps 8x8
        ((5, 3), (2, 1), 1, (8, 8)),  # 5x3 kernel, padding (2, 1) keeps 8x8
        (3, 1, 2, (4, 4)),  # stride 2 halves the size
        ((3, 5), (0, 1), (3, 4), (2, 2)),  # the seeds' odd-looking example
    ],
)
def test_seed_output_shapes(kernel_size, padding, stride, expected) -> None:
    assert conv_output_shape(8, kernel_size, padding, stride) == expected
    conv2d = nn.Conv2d(1, 1, kernel_size=kernel_size, padding=padding, stride=stride)
    assert comp_conv2d(conv2d, torch.rand(size=(8, 8))).shape == expected


def test_unpadded_output_shape_is_n_minus_k_plus_one() -> None:
    assert conv_output_shape((3, 3), (2, 2)) == (2, 2)
    assert conv_output_shape((6, 8), (1, 2)) == (6, 7)


@PROPERTY
@given(conv_cases(max_channels=1))
def test_conv_output_shape_matches_nn_conv2d(case: dict) -> None:
    conv2d = nn.Conv2d(1, 1, kernel_size=case["k"], padding=case["p"], stride=case["s"])
    with torch.no_grad():
        Y = comp_conv2d(conv2d, torch.zeros(case["n"]))
    assert conv_output_shape(case["n"], case["k"], case["p"], case["s"]) == tuple(Y.shape)


# --- exercise 6.1.1: a 1x1 convolution is a per-pixel fully connected layer --------------------------------


@pytest.mark.parametrize(("c_in", "c_out"), [(1, 1), (3, 2), (4, 6)])
def test_1x1_conv_is_per_pixel_linear_layer(c_in: int, c_out: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, kernel_size=1)
    linear = nn.Linear(c_in, c_out)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.reshape(c_out, c_in))
        linear.bias.copy_(conv.bias)
        X = torch.randn(2, c_in, 5, 7)
        # Move channels last so every pixel is a row of c_in features, apply the layer, move them back.
        per_pixel = linear(X.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(conv(X), per_pixel)
        without_bias = corr2d_multi_in_out_1x1(X[0], conv.weight) + conv.bias.reshape(-1, 1, 1)
        torch.testing.assert_close(without_bias, per_pixel[0])


# --- bad arguments ---------------------------------------------------------------------------------------


ONES_2x2, ONES_3x3 = torch.ones(2, 2), torch.ones(3, 3)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: corr2d(ONES_2x2, torch.ones(3, 1)),
            r"K \(3, 1\) is larger than the padded X: X size \(2, 2\)",
        ),
        (lambda: corr2d(ONES_2x2, ONES_2x2, stride=0), r"stride must be positive, got \(0, 0\)"),
        (lambda: corr2d(ONES_2x2, ONES_2x2, stride=(2, -1)), r"stride must be positive, got \(2, -1\)"),
        (lambda: corr2d(ONES_2x2, ONES_2x2, padding=-1), "padding must be non-negative"),
        (lambda: corr2d(ONES_2x2, ONES_2x2, stride=(1, 2, 3)), "stride must be an int or a pair"),
        (lambda: corr2d(torch.ones(1, 2, 2), ONES_2x2), "X must be 2-D"),
        (lambda: corr2d_multi_in(torch.ones(2, 3, 3), torch.ones(3, 2, 2)), "same c_i"),
        (lambda: corr2d_multi_in_out(torch.ones(2, 3, 3), torch.ones(2, 2, 2)), "K must be 4-D"),
        (lambda: corr2d_multi_in_out_1x1(torch.ones(2, 3, 3), torch.ones(1, 2, 2, 2)), r"\(c_o, c_i, 1, 1\)"),
        (lambda: pool2d(ONES_3x3, 2, mode="median"), "mode must be 'max' or 'avg', got 'median'"),
        (lambda: pool2d(ONES_3x3, 4), r"pool_size \(4, 4\) is larger than the padded X: X size \(3, 3\)"),
        (lambda: pool2d(ONES_3x3, 2, stride=-1), "stride must be positive"),
        (lambda: conv_output_shape(8, 9), r"kernel_size \(9, 9\) is larger .* input_size size \(8, 8\)"),
        (lambda: conv_output_shape(8, 0), "kernel_size must have a positive size"),
        (lambda: conv_output_shape(0, 1), "input_size must have a positive size"),
    ],
)
def test_bad_arguments_raise_value_error(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_padding_lets_a_large_kernel_fit() -> None:
    assert corr2d(torch.ones(2, 2), torch.ones(3, 3), padding=1).shape == (2, 2)


# --- the edge-detection demo -----------------------------------------------------------------------------


def test_edge_detection_finds_vertical_edges_only() -> None:
    X, K = make_image(), edge_kernel()
    Y = corr2d(X, K)
    expected_row = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0])
    assert torch.equal(Y, expected_row.expand(6, 7))
    assert torch.equal(corr2d(X.T, K), torch.zeros(8, 5))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learn_kernel_recovers_edge_kernel(seed: int) -> None:
    X = make_image()
    learned = learn_kernel(X, corr2d(X, edge_kernel()), epochs=10, lr=3e-2, seed=seed)
    assert learned.shape == (1, 2)
    torch.testing.assert_close(learned, edge_kernel(), atol=0.1, rtol=0)


def test_learn_kernel_is_deterministic_and_keeps_global_rng() -> None:
    X = make_image()
    Y = corr2d(X, edge_kernel())
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = learn_kernel(X, Y, epochs=3, lr=3e-2, seed=7)
    assert torch.equal(torch.rand(1), before)
    assert torch.equal(first, learn_kernel(X, Y, epochs=3, lr=3e-2, seed=7))


def test_edge_main_prints_loss_and_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "epoch 10, loss" in out
    assert out.count("loss") == 5  # every 2 epochs for 10 epochs
    assert "learned kernel" in out


def test_edge_main_accepts_epochs_and_lr(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--epochs", "4", "--lr", "0.01"])
    out = capsys.readouterr().out
    assert "epoch 4, loss" in out
    assert "epoch 6" not in out
