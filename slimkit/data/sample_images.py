"""Real photographs available offline, as ImageNet-style inputs for fidelity checks of image models.

scikit-learn ships two JPEG photographs (``china.jpg``, a temple, and ``flower.jpg``, 427x640 each).
:func:`sample_image_crops` cuts a deterministic grid of 224x224 crops from them — 4 scales (short side
resized to 256, 320, 400, 480 px) x 6 positions x 2 horizontal flips x 2 images = 96 inputs — and normalizes
them with the ImageNet mean and std. Crop 0 is the standard evaluation view of ``china.jpg`` (short side 256,
centre crop, no flip); crop 1 is the same view of ``flower.jpg``. They are *not* labelled data: use them to
compare a compressed model with its original (top-1 agreement, logits cosine), not to measure accuracy.

    x = sample_image_crops()            # float32 [96, 3, 224, 224]
    batches = sample_image_batches(32)  # list of [32, 3, 224, 224] tensors
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch

from slimkit.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGES = ("china", "flower")
SCALES = (256, 320, 400, 480)
# (x, y) of the crop's top-left corner as a fraction of the free room: centre first
POSITIONS = ((0.5, 0.5), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.0))
FLIPS = (False, True)
NUM_CROPS = len(IMAGES) * len(SCALES) * len(POSITIONS) * len(FLIPS)


class CropSpec(NamedTuple):
    image: str
    scale: int
    position: tuple[float, float]
    flip: bool


CALIBRATION_SCALES = (288, 360, 440)
"""Short sides of a second grid, disjoint from :data:`SCALES`: calibrate on these, evaluate on the others."""


def crop_specs(scales: tuple[int, ...] = SCALES) -> list[CropSpec]:
    """The crops in order: flip, then scale, then position, then image vary slowest to fastest, so any prefix
    of the list holds both photographs."""
    return [CropSpec(img, s, pos, flip) for flip in FLIPS for s in scales for pos in POSITIONS for img in IMAGES]


@functools.lru_cache(maxsize=1)
def _photos() -> dict[str, torch.Tensor]:
    """The two photographs as float tensors [3, H, W] in [0, 1]."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as exc:
        raise DataError(f"the sample photographs come from scikit-learn, which cannot be imported ({exc}).",
                        hint="pip install scikit-learn pillow") from None
    try:
        data = load_sample_images()
    except (ImportError, OSError) as exc:
        raise DataError(f"scikit-learn cannot read its sample images: {exc}",
                        hint="scikit-learn needs pillow to decode them: pip install pillow") from None
    out = {}
    for name, arr in zip(data.filenames, data.images, strict=True):
        key = next((k for k in IMAGES if str(name).endswith(f"{k}.jpg")), None)
        if key is not None:
            out[key] = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float().div_(255.0)
    if set(out) != set(IMAGES):
        raise DataError(f"scikit-learn's sample images are {list(data.filenames)}; expected china.jpg and "
                        "flower.jpg.")
    return out


@functools.lru_cache(maxsize=16)
def _resized(image: str, short_side: int) -> torch.Tensor:
    img = _photos()[image]
    h, w = img.shape[1:]
    scale = short_side / min(h, w)
    size = (max(short_side, round(h * scale)), max(short_side, round(w * scale)))
    out = torch.nn.functional.interpolate(img[None], size=size, mode="bilinear", align_corners=False,
                                          antialias=True)[0]
    return out.clamp_(0.0, 1.0)


def _crop(spec: CropSpec, size: int) -> torch.Tensor:
    img = _resized(spec.image, round(spec.scale * size / 224))
    h, w = img.shape[1:]
    top, left = round((h - size) * spec.position[1]), round((w - size) * spec.position[0])
    out = img[:, top:top + size, left:left + size]
    return out.flip(-1) if spec.flip else out


def sample_image_crops(n: int | None = None, *, size: int = 224, normalize: bool = True,
                       scales: tuple[int, ...] = SCALES) -> torch.Tensor:
    """The first ``n`` (default all :data:`NUM_CROPS` = 96) crops of :func:`crop_specs` as a float32 tensor
    ``[n, 3, size, size]``, normalized with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD` unless
    ``normalize=False`` (then in [0, 1]). Deterministic: the same call gives the same tensor.
    ``size`` other than 224 scales the whole grid (short sides ``scale * size / 224``). ``scales`` picks another
    grid, e.g. :data:`CALIBRATION_SCALES` for calibration inputs that are not the evaluation inputs."""
    if not scales or min(scales) < 224:
        raise DataError(f"sample_image_crops: scales={scales!r}; every short side must be >= 224.")
    specs = crop_specs(tuple(scales))
    if n is None:
        n = len(specs)
    if not 1 <= n <= len(specs):
        raise DataError(f"sample_image_crops: n={n}, but there are {len(specs)} crops.",
                        hint=f"Ask for 1..{len(specs)}.")
    if size < 16:
        raise DataError(f"sample_image_crops: size={size} is too small; use 16 or more.")
    x = torch.stack([_crop(s, size) for s in specs[:n]]).contiguous()
    if normalize:
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x


def sample_image_batches(batch_size: int = 32, n: int | None = None, *, size: int = 224,
                         scales: tuple[int, ...] = SCALES) -> list[torch.Tensor]:
    """:func:`sample_image_crops` split into batches (the last one may be smaller); usable as calibration data
    and as fidelity inputs."""
    x = sample_image_crops(n, size=size, scales=scales)
    return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]


__all__ = ["CALIBRATION_SCALES", "FLIPS", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGES", "NUM_CROPS", "POSITIONS", "SCALES", "CropSpec",
           "crop_specs", "sample_image_batches", "sample_image_crops"]
