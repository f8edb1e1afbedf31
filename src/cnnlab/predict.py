"""Classify image files with a checkpoint: ``python -m cnnlab.predict ckpt_path=PATH images=FILE_OR_GLOB``.

Any size, colour or grey: each image is made the model's input as Fashion-MNIST's are made (grey or RGB as the
model wants, padded to a square, resized, light-on-dark). Prints per file the top classes with probabilities;
a file that is not an image gets one line on stderr and the others are still classified (exit status 2).
"""

from __future__ import annotations

import glob
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms.functional import pil_to_tensor, resize

from cnnlab.config import CONF_DIR
from cnnlab.errors import CnnlabError, ConfigError, exit_on_user_error
from cnnlab.eval import load_classifier
from cnnlab.idx import DATASETS
from cnnlab.schemas import check_overrides

GLOB_CHARS = set("*?[")


class ImageFileError(CnnlabError):
    """A file that cannot be read as an image."""


def image_files(spec: str | Sequence[str] | None) -> list[Path]:
    """The files named by ``images=``: a file, a folder (its files), a glob, or a list of these."""
    if not spec:
        raise ConfigError("images is not set; give a file, a folder or a glob: images=photo.png or 'images=dir/*.png'.")
    if isinstance(spec, str):
        spec = [spec]
    files: list[Path] = []
    for item in spec:
        path = Path(str(item)).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        elif GLOB_CHARS & set(str(item)):
            matches = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
            if not matches:
                raise ConfigError(f"images={item} matches no file.")
            files += matches
        else:
            files.append(path)  # a missing file is reported by to_model_input, with the others still classified
    return files


def to_model_input(path: Path, channels: int, size: int, invert: str | bool = "auto") -> Tensor:
    """An image file as one model input [channels, size, size] in [0, 1], light object on a dark background.

    The image is padded to a square with its border colour, then resized. ``invert="auto"`` inverts images
    whose border is light (a photo on white), as Fashion-MNIST's objects are light on black.
    """
    try:
        with Image.open(path) as image:
            pixels = pil_to_tensor(image.convert("L" if channels == 1 else "RGB")).float() / 255
    except FileNotFoundError:
        raise ImageFileError(f"{path}: no such file.") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        reason = "not an image file" if isinstance(err, UnidentifiedImageError) else f"unreadable image ({err})"
        raise ImageFileError(f"{path}: {reason}; give PNG, JPEG, GIF, BMP, TIFF or WebP files.") from None
    border = torch.cat([pixels[:, 0], pixels[:, -1], pixels[:, :, 0], pixels[:, :, -1]], dim=1).mean()
    if invert is True or (invert == "auto" and border > 0.5):
        pixels, border = 1 - pixels, 1 - border
    height, width = pixels.shape[1:]
    grow_h, grow_w = max(width - height, 0), max(height - width, 0)
    square = F.pad(pixels, (grow_w // 2, grow_w - grow_w // 2, grow_h // 2, grow_h - grow_h // 2), value=float(border))
    return resize(square, [size, size], antialias=True).clamp(0, 1)


def class_names(checkpoint: dict[str, Any], num_classes: int) -> list[str]:
    """The class names of the data set the checkpoint was trained on (else the class numbers)."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    dataset = DATASETS.get(data.get("name")) if isinstance(data, dict) else None
    names = list(dataset.classes) if dataset is not None else []
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def input_scaling(checkpoint: dict[str, Any]) -> tuple[float, float]:
    """(mean, std) the model was trained with: (0, 1) unless ``data.normalize``, whose statistics need the data."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    if not data.get("normalize"):
        return 0.0, 1.0
    datamodule = instantiate({"_target_": "cnnlab.data.MNISTDataModule", **data})
    datamodule.setup()
    return datamodule.mean, datamodule.std


def predict(cfg: DictConfig) -> list[tuple[Path, list[tuple[str, float]] | str]]:
    """Per file: its top ``cfg.top_k`` (class, probability) pairs, or the one-line reason it was skipped."""
    if cfg.invert not in ("auto", True, False):
        raise ConfigError(f"invert={cfg.invert!r} must be auto, true or false.")
    if int(cfg.top_k) < 1:
        raise ConfigError(f"top_k={cfg.top_k} must be at least 1.")
    module, checkpoint = load_classifier(cfg.ckpt_path, tta=cfg.get("tta"))
    spec = list(cfg.images) if isinstance(cfg.images, ListConfig) else cfg.images
    files = image_files(spec)
    model = checkpoint["hyper_parameters"]["model"]
    channels, size = int(model.get("in_channels", 1)), int(model.get("image_size", 28))
    names = class_names(checkpoint, int(model.get("num_classes", 10)))
    mean, std = input_scaling(checkpoint)
    results: list[tuple[Path, list[tuple[str, float]] | str]] = []
    for path in files:
        try:
            x = (to_model_input(path, channels, size, cfg.invert) - mean) / std
        except ImageFileError as err:
            results.append((path, str(err)))
            continue
        with torch.no_grad():
            probs = module.predict_proba(x[None])[0]
        top = probs.topk(min(int(cfg.top_k), len(names)))
        results.append((path, [(names[i], float(p)) for p, i in zip(top.values, top.indices.tolist(), strict=True)]))
    return results


@hydra.main(config_path=str(CONF_DIR), config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: print one line per file; exit 2 if a setting or any file was wrong."""
    with exit_on_user_error():
        results = predict(cfg)
    for path, outcome in results:
        if isinstance(outcome, str):
            print(f"cnnlab: error: {outcome}", file=sys.stderr)
        else:
            print(f"{path}: " + ", ".join(f"{name} {p:.1%}" for name, p in outcome))
    if any(isinstance(outcome, str) for _, outcome in results):
        raise SystemExit(2)


def cli() -> None:
    """``python -m cnnlab.predict``: the overrides checked as ``cnnlab.train`` checks them (``tta=off`` is refused:
    true, false or null), then compose and classify."""
    with exit_on_user_error():
        check_overrides(sys.argv[1:], CONF_DIR, nullable=("tta",))
    main()


if __name__ == "__main__":
    cli()
