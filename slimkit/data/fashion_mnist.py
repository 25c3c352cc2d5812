"""Fashion-MNIST (Zalando): 70k 28x28 grey images of 10 clothing classes, read from the IDX files that
Debian's ``dataset-fashion-mnist`` package installs (no download)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimkit.data.core import DataBundle, TensorPairDataset, make_bundle
from slimkit.data.idx import read_idx
from slimkit.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
MEAN, STD = 0.2860, 0.3530  # of the training images scaled to [0, 1]
_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
_CACHE: dict[tuple[Any, ...], dict[str, torch.Tensor]] = {}
_LOCK = threading.Lock()


def _find(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    raise DataError(
        f"Fashion-MNIST file {stem}.gz not found in {directory}.",
        hint="Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, files land in "
             f"{DEFAULT_DIR}), or set data.path to a directory holding the four IDX files "
             f"({', '.join(s + '.gz' for s in _FILES.values())}).",
    )


def fashion_mnist_arrays(directory: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The four arrays as tensors (images uint8 Nx1x28x28, labels int64), cached in memory per directory.
    Raises :class:`DataError` naming the apt package when the files are missing, or naming the file when
    one is truncated or inconsistent."""
    directory = Path(directory) if directory is not None else DEFAULT_DIR
    if not directory.is_dir():
        _find(directory, _FILES["train_x"])  # raises with the install hint
    paths = {k: _find(directory, stem) for k, stem in _FILES.items()}
    key = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in paths.values())
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        out: dict[str, torch.Tensor] = {}
        for split in ("train", "test"):
            x, y = read_idx(paths[f"{split}_x"]), read_idx(paths[f"{split}_y"])
            if x.ndim != 3 or x.dtype != np.uint8 or y.ndim != 1 or len(x) != len(y):
                raise DataError(f"Fashion-MNIST {split} files disagree: images {x.shape} {x.dtype}, labels {y.shape} "
                                f"(expected N x 28 x 28 uint8 images and N labels).")
            if y.size and (int(y.min()) < 0 or int(y.max()) > 9):
                raise DataError(f"Fashion-MNIST {split} labels must be 0..9, found {int(y.min())}..{int(y.max())}.")
            out[f"{split}_x"] = torch.from_numpy(x.copy()).unsqueeze(1)
            out[f"{split}_y"] = torch.from_numpy(y.astype(np.int64))
        _CACHE.clear()  # keep one copy (about 55 MB) in memory
        _CACHE[key] = out
        log.info("read Fashion-MNIST from %s: %d train, %d test", directory, len(out["train_y"]), len(out["test_y"]))
        return out


def load_fashion_mnist_bundle(cfg: Any) -> DataBundle:
    """Fashion-MNIST as 1x28x28 images: ``(x / 255 - 0.2860) / 0.3530``. The official 10k test split is the
    test set; validation is carved out of the 60k training images."""
    from slimkit.data.sample_images import IMAGENET_MEAN, IMAGENET_STD

    arrays = fashion_mnist_arrays(cfg.path)
    channels = cfg.channels or 1
    mean, std = ((list(IMAGENET_MEAN), list(IMAGENET_STD)) if cfg.normalize == "imagenet" else ([MEAN], [STD]))
    if channels == 1 and len(mean) == 3:
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    elif channels == 3 and len(mean) == 1:
        mean, std = mean * 3, std * 3
    norm: dict[str, Any] = {"scale": 1.0 / 255.0, "mean": mean, "std": std, "channels": channels,
                            "size": cfg.image_size}
    train = TensorPairDataset(arrays["train_x"], arrays["train_y"], **norm)
    test = TensorPairDataset(arrays["test_x"], arrays["test_y"], **norm)
    size = cfg.image_size or 28
    return make_bundle(cfg, train=train, test=test, num_classes=10, class_names=CLASS_NAMES,
                       info={"source": str(cfg.path or DEFAULT_DIR),
                             "preprocess": f"{channels}x{size}x{size}: (x / 255 - mean) / std, mean {mean}, std {std}"
                                           + (" (ImageNet's)" if cfg.normalize == "imagenet" else "")})
