"""What a network costs before it trains: multiply-adds per example (``cnnlab.inspect``'s count, the layer walk of
``cnnlab.models.walk``) and, for a search that orders its trials by cost (``cnnlab.sweeper``), an epoch's worth.
torch is imported when a cost is asked for.
"""

from __future__ import annotations

from typing import Any

from cnnlab.config import as_dict, input_shape

TRAINING_SET = 60_000  # images in the training files of Fashion-MNIST and MNIST (the validation split comes from them)


def network_macs(net: Any, data: Any) -> int:
    """Multiply-adds of ``net`` for one example of ``data``'s shape (on the CPU, no training)."""
    from cnnlab.models.walk import layer_rows

    return sum(row.mult_adds for row in layer_rows(net, input_shape(data)))


def epoch_examples(cfg: Any) -> int:
    """The training examples of one epoch of a composed config: the training set less the validation split, or
    ``trainer.limit_train_batches`` batches of ``data.batch_size`` when that is fewer."""
    data = cfg.data
    whole = TRAINING_SET - int(data.get("val_size") or 0)
    limit = cfg.trainer.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        return min(whole, limit * int(data.batch_size))
    return int(whole * float(limit)) if limit is not None else whole


def epoch_cost(cfg: Any) -> float:
    """Multiply-adds of a training epoch of a composed config (its network built, not trained): a trial's cost."""
    from hydra.utils import instantiate

    return float(network_macs(instantiate(as_dict(cfg.model)), cfg.data) * epoch_examples(cfg))
