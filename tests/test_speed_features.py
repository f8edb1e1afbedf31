"""The speed features change how the network runs, never what it computes."""

from __future__ import annotations

import pytest
import torch

from cnnlab.data import TensorBatches
from cnnlab.module import ClassifierModule

MODEL = {"_target_": "cnnlab.models.LeNet", "activation": "relu", "pool": "max"}
SGD = {"_target_": "torch.optim.SGD", "lr": 0.1}


def make(**kwargs) -> ClassifierModule:
    torch.manual_seed(0)
    return ClassifierModule(MODEL, SGD, **kwargs)


def test_channels_last_computes_the_same_as_nchw():
    nhwc, nchw = make(channels_last=True), make(channels_last=False)
    assert nhwc.net.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert not nchw.net.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(16, 1, 28, 28)
    torch.testing.assert_close(nhwc(x), nchw(x), rtol=1e-4, atol=1e-5)
    for module in (nhwc, nchw):  # and the same gradients
        torch.nn.functional.cross_entropy(module(x), torch.arange(16) % 10).backward()
    torch.testing.assert_close(nhwc.net.conv1.weight.grad, nchw.net.conv1.weight.grad, rtol=1e-4, atol=1e-5)


def test_state_dict_keys_do_not_depend_on_compile():
    assert make(compile=False).state_dict().keys() == make(compile=True).state_dict().keys()


@pytest.mark.slow
def test_compiled_training_forward_computes_the_same_as_eager_for_any_batch_size():
    eager, compiled = make(), make(compile=True)
    for batch_size in (8, 5):  # a dynamic batch dimension: the last, smaller batch of an epoch reuses the graph
        x = torch.rand(batch_size, 1, 28, 28)
        torch.testing.assert_close(compiled.train_forward(x), eager.train_forward(x), rtol=1e-4, atol=1e-5)


def test_batches_cover_the_set_and_keep_each_image_with_its_label():
    images, labels = torch.rand(10, 1, 4, 4), torch.arange(10)
    batches = list(TensorBatches(images, labels, batch_size=4, shuffle=True, seed=1))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(10))
    for x, y in batches:  # each image still carries its own label
        assert torch.equal(x, images[y])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: on the CPU every tensor is on the CPU")
def test_batches_stay_on_the_gpu_that_holds_the_data():
    images, labels = torch.rand(10, 1, 4, 4, device="cuda"), torch.arange(10, device="cuda")
    batches = list(TensorBatches(images, labels, batch_size=4, shuffle=True, seed=1))
    assert all(x.device == images.device and y.device == images.device for x, y in batches)


@pytest.mark.parametrize("n", [11, 12])
def test_ranks_take_disjoint_shards_of_equal_length(n):
    labels = torch.arange(n)
    shards = [torch.cat([y for _, y in TensorBatches(labels.float(), labels, 3, True, 0, r, 2)]) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 6  # padded to equal length so DDP ranks step together
    assert set(shards[0].tolist()) | set(shards[1].tolist()) == set(range(n))
    shared = set(shards[0].tolist()) & set(shards[1].tolist())
    assert len(shared) == 12 - n, f"the ranks share {sorted(shared)}: only the padding of an odd set may repeat"
    evals = [torch.cat([y for _, y in TensorBatches(labels.float(), labels, 3, False, 0, r, 2)]) for r in (0, 1)]
    assert sorted(torch.cat(evals).tolist()) == list(range(n))  # evaluation covers every example exactly once


class TwoRanks:
    """A stand-in for a 2-rank strategy: every rank saw what this one saw; the other rank was slower."""

    def reduce(self, tensor: torch.Tensor, reduce_op: str) -> torch.Tensor:
        return tensor * 2 if reduce_op == "sum" else tensor * 1.25  # max: the slower rank's seconds


def test_throughput_under_ddp_is_the_whole_jobs(monkeypatch):
    from types import SimpleNamespace

    from cnnlab.callbacks import ExamplesPerSecond

    speed, logged = ExamplesPerSecond(), {}
    module = SimpleNamespace(device=torch.device("cpu"), log=lambda name, value, **kw: logged.update({name: kw}))
    trainer = SimpleNamespace(world_size=2, strategy=TwoRanks(), num_training_batches=1)
    speed._epoch_examples, speed._epoch_seconds = 1000, 2.0  # this rank's epoch: 500 examples/s
    speed.on_train_epoch_end(trainer, module)
    assert logged["train/examples_per_sec"] == {"on_epoch": True, "sync_dist": True, "reduce_fx": "sum"}
    speed.on_train_end(trainer, module)
    assert speed.examples_per_sec == pytest.approx(2000 / 2.5)  # both ranks' examples over the slower rank's time
