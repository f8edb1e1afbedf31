"""Edge detection with a [1, -1] kernel, and learning that kernel back by gradient descent.

Run it with ``python -m cnnlab.demos.edge [--epochs 10] [--lr 0.03] [--seed 0]``.
"""

import argparse
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cnnlab.ops import corr2d


def make_image() -> Tensor:
    """The seeds' 6x8 image: ones, with a black (zero) stripe in columns 2-5."""
    X = torch.ones((6, 8))
    X[:, 2:6] = 0
    return X


def edge_kernel() -> Tensor:
    """The 1x2 kernel [[1, -1]]: non-zero output only where horizontal neighbours differ."""
    return torch.tensor([[1.0, -1.0]])


def learn_kernel(X: Tensor, Y: Tensor, epochs: int = 10, lr: float = 3e-2, seed: int = 0, log_every: int = 0) -> Tensor:
    """Learn a 1x2 kernel mapping 2-D ``X`` to ``Y`` with plain gradient descent; return it as (1, 2).

    Uses ``nn.Conv2d(1, 1, kernel_size=(1, 2), bias=False)`` initialised from ``seed`` (the global random
    state is left untouched) and the squared-error loss summed over pixels. Prints the loss every
    ``log_every`` epochs when ``log_every > 0``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        conv2d = nn.Conv2d(1, 1, kernel_size=(1, 2), bias=False)
    # The layer works on 4-D (batch, channel, height, width) tensors; batch and channel are both 1.
    X = X.reshape((1, 1) + tuple(X.shape))
    Y = Y.reshape((1, 1) + tuple(Y.shape))
    for epoch in range(1, epochs + 1):
        Y_hat = conv2d(X)
        loss = ((Y_hat - Y) ** 2).sum()
        conv2d.zero_grad()
        loss.backward()
        with torch.no_grad():  # the seeds write this as conv2d.weight.data[:] -= lr * grad
            conv2d.weight -= lr * conv2d.weight.grad
        if log_every > 0 and epoch % log_every == 0:
            print(f"epoch {epoch}, loss {loss.item():.3f}")
    return conv2d.weight.detach().reshape((1, 2))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: show the edge detector, then learn its kernel back."""
    parser = argparse.ArgumentParser(prog="python -m cnnlab.demos.edge", description=__doc__)
    parser.add_argument("--epochs", type=int, default=10, help="gradient-descent steps (default: 10)")
    parser.add_argument("--lr", type=float, default=3e-2, help="learning rate (default: 0.03)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the kernel's initial value")
    parser.add_argument("--log-every", type=int, default=2, help="print the loss every N epochs")
    args = parser.parse_args(argv)

    X, K = make_image(), edge_kernel()
    print("X (6x8 image, black stripe in columns 2-5):")
    print(X)
    print(f"K = {K.tolist()}")
    print("Y = corr2d(X, K): +1 marks a white->black edge, -1 a black->white edge")
    Y = corr2d(X, K)
    print(Y)
    print("corr2d(X.T, K): the transposed image has only horizontal edges, which K cannot see")
    print(corr2d(X.T, K))

    print(f"Learning K back from X and Y (epochs={args.epochs}, lr={args.lr}, seed={args.seed}):")
    learned = learn_kernel(X, Y, epochs=args.epochs, lr=args.lr, seed=args.seed, log_every=args.log_every)
    print(f"learned kernel: {[round(v, 4) for v in learned.flatten().tolist()]} (target [1.0, -1.0])")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
