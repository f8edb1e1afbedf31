"""Batch augmentation of training images already in memory: random translation, horizontal flip, cutout.

Whole batches at once on the batch's device (the data module calls it from ``on_after_batch_transfer``): no
per-sample transforms, no workers, so batching stays as fast as without it. torchvision's v2 transforms draw one
set of parameters per call, that is one shift or one flip for a whole batch; these draw one per image.
Each batch has its own generator, seeded by (seed, step, rank): a run repeats under its seed, and a resumed run
draws what the uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnlab.errors import ConfigError

AUGMENTATIONS = ("crop", "flip", "erase")


def random_translate(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Pad each image by ``padding`` zeros and crop it back at a random offset: a shift of up to ``padding`` px."""
    n, _, h, w = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, n, 1), generator=generator, device=images.device)
    rows = offsets[0] + torch.arange(h, device=images.device)  # [n, h]: the padded rows each image keeps
    cols = offsets[1] + torch.arange(w, device=images.device)
    padded = F.pad(images, (padding, padding, padding, padding)).permute(0, 2, 3, 1)  # [n, H, W, c]
    picked = padded[torch.arange(n, device=images.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return picked.permute(0, 3, 1, 2)  # [n, c, h, w], channels-last in memory


def random_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(len(images), generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_erase(images: Tensor, size: int, prob: float, generator: torch.Generator) -> Tensor:
    """Cutout: with probability ``prob`` blank a ``size`` x ``size`` square (clipped at the border) to 0."""
    n, _, h, w = images.shape
    device = images.device
    centre = torch.stack(
        [torch.randint(0, side, (n, 1), generator=generator, device=device) for side in (h, w)]
    )
    chosen = torch.rand(n, generator=generator, device=device) < prob
    top_left = centre - size // 2
    rows = torch.arange(h, device=device) - top_left[0]  # [n, h]
    cols = torch.arange(w, device=device) - top_left[1]
    inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
    return images.masked_fill((inside & chosen[:, None, None])[:, None], 0.0)


class BatchAugment:
    """The training-batch augmentations named in ``data.augment``, applied in the order given."""

    def __init__(
        self,
        ops: Sequence[str],
        seed: int = 0,
        crop_padding: int = 2,
        erase_size: int = 8,
        erase_prob: float = 0.5,
    ) -> None:
        unknown = [op for op in ops if op not in AUGMENTATIONS]
        if unknown:
            raise ConfigError(
                f"data.augment={list(ops)}: {unknown[0]!r} is not an augmentation; choose from {list(AUGMENTATIONS)} "
                f"(e.g. data.augment=[crop,flip])."
            )
        if crop_padding < 1 or erase_size < 1 or not 0.0 <= erase_prob <= 1.0:
            raise ConfigError(
                f"data.crop_padding={crop_padding} and data.erase_size={erase_size} must be >= 1 and "
                f"data.erase_prob={erase_prob} in [0, 1]."
            )
        self.ops = list(ops)
        self.seed = int(seed)
        self.crop_padding, self.erase_size, self.erase_prob = crop_padding, erase_size, erase_prob

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __call__(self, images: Tensor, step: int, rank: int = 0) -> Tensor:
        generator = torch.Generator(device=images.device)
        generator.manual_seed(hash((self.seed, step, rank)) % 2**63)
        for op in self.ops:
            if op == "crop":
                images = random_translate(images, self.crop_padding, generator)
            elif op == "flip":
                images = random_flip(images, generator)
            else:
                images = random_erase(images, self.erase_size, self.erase_prob, generator)
        return images
