"""The two loops cnnlab is measured against, each run as its own process by ``benchmarks/speed.py``.

``seeds``: the seeds' ``train_ch6`` recipe re-typed (torchvision dataset with per-sample ``ToTensor``, a
``DataLoader`` with 4 workers, batch 256, Xavier init, SGD, test accuracy each epoch, the seeds' timer around
each step). ``eager``: a plain eager PyTorch loop over the same model with the data already in one tensor.
Prints one JSON line: examples_per_sec (steps only), startup_s (process start to first step), test_acc.
"""

from __future__ import annotations

import argparse
import json
import time

import psutil
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import FashionMNIST

ACTS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}
POOLS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


def seeds_lenet(activation: str = "sigmoid", pool: str = "avg") -> nn.Sequential:
    """The seeds' LeNet-5 as they wrote it (activation and pooling swappable for the variants)."""
    act, pool_cls = ACTS[activation], POOLS[pool]
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), act(), pool_cls(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), act(), pool_cls(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), act(),
        nn.Linear(120, 84), act(),
        nn.Linear(84, 10),
    )  # fmt: skip


def init_weights(m: nn.Module) -> None:
    if type(m) is nn.Linear or type(m) is nn.Conv2d:
        nn.init.xavier_uniform_(m.weight)


def accuracy(net: nn.Module, batches) -> float:
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for X, y in batches:
            correct += (net(X).argmax(dim=1) == y).sum().item()
            total += y.numel()
    net.train()
    return correct / total


def run_seeds(data_dir: str, epochs: int, lr: float, net: nn.Module) -> dict:
    """``train_ch6`` as the seeds wrote it (minus the plotting)."""
    train = FashionMNIST(data_dir, train=True, transform=transforms.ToTensor())
    test = FashionMNIST(data_dir, train=False, transform=transforms.ToTensor())
    train_iter = DataLoader(train, 256, shuffle=True, num_workers=4)
    test_iter = DataLoader(test, 256, shuffle=False, num_workers=4)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    step_seconds, examples, startup = 0.0, 0, None
    for _ in range(epochs):
        metric = torch.zeros(3)
        net.train()
        for X, y in train_iter:
            start = time.perf_counter()
            if startup is None:
                startup = time.time() - psutil.Process().create_time()
            optimizer.zero_grad()
            y_hat = net(X)
            ls = loss(y_hat, y)
            ls.backward()
            optimizer.step()
            with torch.no_grad():
                metric += torch.tensor([ls.item() * X.shape[0], (y_hat.argmax(1) == y).sum().item(), X.shape[0]])
            step_seconds += time.perf_counter() - start
            examples += X.shape[0]
        test_acc = accuracy(net, test_iter)
    return {"examples_per_sec": examples / step_seconds, "startup_s": startup, "test_acc": test_acc}


def run_eager(data_dir: str, epochs: int, lr: float, net: nn.Module) -> dict:
    """The eager compute limit: data in one tensor, batches by index, nothing else per step."""
    train = FashionMNIST(data_dir, train=True)
    test = FashionMNIST(data_dir, train=False)
    X_all, y_all = train.data.unsqueeze(1).float() / 255, train.targets
    X_test, y_test = test.data.unsqueeze(1).float() / 255, test.targets
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    step_seconds, examples, startup = 0.0, 0, None
    for _ in range(epochs):
        order = torch.randperm(len(y_all))
        epoch_start = time.perf_counter()
        if startup is None:
            startup = time.time() - psutil.Process().create_time()
        for i in range(0, len(order), 256):
            idx = order[i : i + 256]
            X, y = X_all[idx], y_all[idx]
            optimizer.zero_grad()
            ls = loss(net(X), y)
            ls.backward()
            optimizer.step()
        step_seconds += time.perf_counter() - epoch_start
        examples += len(order)
        test_acc = accuracy(net, zip(X_test.split(1024), y_test.split(1024), strict=True))
    return {"examples_per_sec": examples / step_seconds, "startup_s": startup, "test_acc": test_acc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("loop", choices=["seeds", "eager"])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.9)
    parser.add_argument("--activation", default="sigmoid", choices=sorted(ACTS))
    parser.add_argument("--pool", default="avg", choices=sorted(POOLS))
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    net = seeds_lenet(args.activation, args.pool)
    net.apply(init_weights)
    run = run_seeds if args.loop == "seeds" else run_eager
    print(json.dumps(run(args.data_dir, args.epochs, args.lr, net)))


if __name__ == "__main__":
    main()
