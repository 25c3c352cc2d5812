"""Images in class folders: ``path/<class>/*.png|jpg``, or pre-split ``path/train/<class>/...`` and
``path/test/<class>/...``. Images are read with Pillow, converted to RGB and resized to a square."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimkit.data.core import DataBundle, TensorPairDataset, make_bundle
from slimkit.errors import DataError

log = logging.getLogger(__name__)

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 32


def _class_dirs(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)


def scan_image_folder(root: str | Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """``(class_names, [(file, label), ...])`` for ``root/<class>/*``. Raises :class:`DataError` when the
    folder is missing, has no class folders, or a class folder holds no images."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}", hint="Set data.path to a directory of class folders.")
    classes = _class_dirs(root)
    if not classes:
        raise DataError(f"{root} has no class folders.",
                        hint="Expected one folder per class: ROOT/cat/1.png, ROOT/dog/2.jpg, ...")
    items: list[tuple[Path, int]] = []
    empty = []
    for label, folder in enumerate(classes):
        files = _images(folder)
        if not files:
            empty.append(folder.name)
        items.extend((f, label) for f in files)
    if empty:
        raise DataError(f"class folder(s) without images in {root}: {', '.join(empty[:10])}.",
                        hint=f"Each class folder needs files ending in {', '.join(sorted(EXTENSIONS))}.")
    return [c.name for c in classes], items


def _read(items: list[tuple[Path, int]], size: int) -> TensorPairDataset:
    from PIL import Image, UnidentifiedImageError

    x = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(items):
        try:
            with Image.open(path) as img:
                x[i] = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
    y = torch.tensor([label for _, label in items], dtype=torch.int64)
    return TensorPairDataset(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), y, scale=1.0 / 255.0,
                             mean=IMAGENET_MEAN, std=IMAGENET_STD)


def load_image_folder_bundle(cfg: Any) -> DataBundle:
    """RGB images resized to ``cfg.image_size`` (default 32), normalised with ``/255`` then the ImageNet
    mean/std (so pretrained torchvision-style weights see what they expect)."""
    root = Path(cfg.path)
    size = int(cfg.image_size or DEFAULT_SIZE)
    if (root / "train").is_dir() and (root / "test").is_dir():
        names, train_items = scan_image_folder(root / "train")
        test_names, test_items = scan_image_folder(root / "test")
        if test_names != names:
            raise DataError(f"{root}/train and {root}/test hold different class folders: {names} vs {test_names}.")
        train, test = _read(train_items, size), _read(test_items, size)
    else:
        names, items = scan_image_folder(root)
        train, test = _read(items, size), None
    if len(names) < 2:
        log.warning("image folder %s has a single class (%s)", root, names[0])
    log.info("read %d images in %d classes from %s at %dx%d", len(train) + (len(test) if test else 0),
             len(names), root, size, size)
    return make_bundle(cfg, train=train, test=test, num_classes=len(names), class_names=names,
                       info={"source": str(root), "image_size": size,
                             "preprocess": "RGB, resize, (x / 255 - imagenet_mean) / imagenet_std"})
