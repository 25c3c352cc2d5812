"""Real photographs available offline, as ImageNet-style inputs for fidelity checks of image models.

scikit-learn ships two JPEG photographs (``china.jpg``, a temple, and ``flower.jpg``, 427x640 each).
:func:`sample_image_crops` cuts a deterministic grid of 224x224 crops from them — 4 scales (short side
resized to 256, 320, 400, 480 px) x 6 positions x 2 horizontal flips x 2 images = 96 inputs — and normalizes
them with the ImageNet mean and std. Crop 0 is the standard evaluation view of ``china.jpg`` (short side 256,
centre crop, no flip); crop 1 is the same view of ``flower.jpg``. They are *not* labelled data: use them to
compare a compressed model with its original (top-1 agreement, logits cosine), not to measure accuracy.

    x = sample_image_crops()            # float32 [96, 3, 224, 224]
    batches = sample_image_batches(32)  # list of [32, 3, 224, 224] tensors

Those two photographs are too narrow to *calibrate* anything (re-estimating BatchNorm on them breaks
MobileNetV2). :func:`photo_crops` draws on every natural photograph that installed packages ship
(:data:`PHOTOS`: scikit-learn's two, matplotlib's ``grace_hopper.jpg``, and 15 of scikit-image's bundled
``skimage/data`` images when scikit-image is installed) and splits each photo into two halves along its long
side: one half gives the ``"calibration"`` crops, the other the ``"heldout"`` crops (which half alternates
from photo to photo), so no calibration pixel is ever part of a held-out crop. Each half is cropped at 4
scales x up to 5 positions x 2 flips, photo varying fastest:

    calib = photo_crops("calibration", 512)   # float32 [512, 3, 224, 224], never overlapping ...
    check = photo_crops("heldout")            # ... these
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Literal, NamedTuple

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
    return _resize_short_side(_photos()[image], short_side)


def _resize_short_side(img: torch.Tensor, short_side: int) -> torch.Tensor:
    """``img`` (C, H, W) in [0, 1] scaled (antialiased bilinear) so that its shorter side is ``short_side``."""
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


# ------------------------------------------------------------------ natural photos from installed packages


class Photo(NamedTuple):
    """A photograph shipped inside an installed package: ``package`` (import name), ``path`` inside it."""

    name: str
    package: str
    path: str


PHOTOS = (
    Photo("china", "sklearn", "datasets/images/china.jpg"),
    Photo("flower", "sklearn", "datasets/images/flower.jpg"),
    Photo("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    Photo("astronaut", "skimage", "data/astronaut.png"),
    Photo("chelsea", "skimage", "data/chelsea.png"),
    Photo("coffee", "skimage", "data/coffee.png"),
    Photo("rocket", "skimage", "data/rocket.jpg"),
    Photo("motorcycle", "skimage", "data/motorcycle_left.png"),
    Photo("camera", "skimage", "data/camera.png"),
    Photo("coins", "skimage", "data/coins.png"),
    Photo("moon", "skimage", "data/moon.png"),
    Photo("brick", "skimage", "data/brick.png"),
    Photo("grass", "skimage", "data/grass.png"),
    Photo("gravel", "skimage", "data/gravel.png"),
    Photo("clock", "skimage", "data/clock_motion.png"),
    Photo("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg"),
    Photo("retina", "skimage", "data/retina.jpg"),
    Photo("ihc", "skimage", "data/ihc.png"),
)
"""Every photograph :func:`photo_crops` may use, in order. Grey ones are copied to 3 channels. Packages:
scikit-learn (``sklearn``), matplotlib, scikit-image (``skimage``, the images bundled in its wheel)."""
PACKAGES = {"sklearn": "scikit-learn", "matplotlib": "matplotlib", "skimage": "scikit-image"}
PHOTO_SCALES = (224, 272, 336, 416)
"""Short side of a photo half after resizing, before the 224 crop (times ``size / 224``)."""
PHOTO_POSITIONS = ((0.5, 0.5), (0.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0))
Part = Literal["calibration", "heldout"]


class PhotoCrop(NamedTuple):
    photo: str
    half: int
    """0: the top/left half along the photo's long side, 1: the other half."""
    scale: int
    position: tuple[float, float]
    flip: bool


def _package_dir(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def available_photos() -> list[Photo]:
    """The photographs of :data:`PHOTOS` whose package is installed (found without importing it)."""
    out = []
    for photo in PHOTOS:
        root = _package_dir(photo.package)
        if root is not None and (root / photo.path).is_file():
            out.append(photo)
    return out


@functools.lru_cache(maxsize=32)
def load_photo(name: str) -> torch.Tensor:
    """The photograph ``name`` of :data:`PHOTOS` as float32 ``[3, H, W]`` in [0, 1] (grey copied to RGB)."""
    photo = next((p for p in PHOTOS if p.name == name), None)
    if photo is None:
        raise DataError(f"unknown photo '{name}'.", hint=f"Known photos: {', '.join(p.name for p in PHOTOS)}.")
    root = _package_dir(photo.package)
    if root is None or not (root / photo.path).is_file():
        raise DataError(f"photo '{name}' ships with {PACKAGES[photo.package]}, which is not installed.",
                        hint=f"pip install {PACKAGES[photo.package]}")
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading the sample photographs needs pillow.", hint="pip install pillow") from None
    with Image.open(root / photo.path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _half(img: torch.Tensor, half: int) -> torch.Tensor:
    h, w = img.shape[1:]
    if w >= h:
        return img[:, :, : w // 2] if half == 0 else img[:, :, w // 2:]
    return img[:, : h // 2] if half == 0 else img[:, h // 2:]


def part_half(photo_index: int, part: Part) -> int:
    """Which half of photo number ``photo_index`` (in :data:`PHOTOS`) belongs to ``part``: alternating, so
    calibration sees left and right halves alike."""
    cal = photo_index % 2
    return cal if part == "calibration" else 1 - cal


def photo_specs(part: Part, photos: list[Photo] | None = None, size: int = 224) -> list[PhotoCrop]:
    """The crops of ``part`` in order (photo fastest, then flip, position, scale), without duplicates (a
    position that falls on the same pixels as an earlier one at the same scale is dropped)."""
    if part not in ("calibration", "heldout"):
        raise DataError(f"part={part!r}; expected 'calibration' or 'heldout'.")
    photos = available_photos() if photos is None else photos
    index = {p.name: i for i, p in enumerate(PHOTOS)}
    seen: set[tuple[str, int, int, int, bool]] = set()
    out = []
    for scale in PHOTO_SCALES:
        for pos in PHOTO_POSITIONS:
            for flip in FLIPS:
                for photo in photos:
                    half = part_half(index[photo.name], part)
                    key = (photo.name, scale, *_corner(photo.name, half, scale, pos, size), flip)
                    if key in seen:
                        continue
                    seen.add(key)
                    out.append(PhotoCrop(photo.name, half, scale, pos, flip))
    return out


@functools.lru_cache(maxsize=256)
def _half_resized(name: str, half: int, short_side: int) -> torch.Tensor:
    return _resize_short_side(_half(load_photo(name), half), short_side)


def _corner(name: str, half: int, scale: int, pos: tuple[float, float], size: int) -> tuple[int, int]:
    img = _half(load_photo(name), half)
    h, w = img.shape[1:]
    short = round(scale * size / 224)
    rh, rw = max(short, round(h * short / min(h, w))), max(short, round(w * short / min(h, w)))
    return round((rh - size) * pos[1]), round((rw - size) * pos[0])


def photo_crops(part: Part, n: int | None = None, *, size: int = 224, normalize: bool = True) -> torch.Tensor:
    """The first ``n`` (default all) crops of :func:`photo_specs` as float32 ``[n, 3, size, size]``,
    ImageNet-normalized unless ``normalize=False``. Deterministic. Raises DataError when no package that
    ships photographs is installed or ``n`` is out of range."""
    photos = available_photos()
    if not photos:
        raise DataError("no sample photograph is available: none of scikit-learn, matplotlib or scikit-image "
                        "(the packages that ship them) is installed.",
                        hint="pip install scikit-image scikit-learn matplotlib (any of them; all give 18 photos).")
    if size < 16:
        raise DataError(f"photo_crops: size={size} is too small; use 16 or more.")
    specs = photo_specs(part, photos, size)
    n = len(specs) if n is None else n
    if not 1 <= n <= len(specs):
        raise DataError(f"photo_crops: n={n}, but the {part} part has {len(specs)} crops from {len(photos)} "
                        "photos.", hint=f"Ask for 1..{len(specs)}, or install scikit-image for more photos.")
    out = []
    for spec in specs[:n]:
        img = _half_resized(spec.photo, spec.half, round(spec.scale * size / 224))
        top, left = _corner(spec.photo, spec.half, spec.scale, spec.position, size)
        crop = img[:, top:top + size, left:left + size]
        out.append(crop.flip(-1) if spec.flip else crop)
    x = torch.stack(out).contiguous()
    if normalize:
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return x


def photo_batches(part: Part, batch_size: int = 32, n: int | None = None, *, size: int = 224) -> list[torch.Tensor]:
    """:func:`photo_crops` split into batches (the last one may be smaller)."""
    x = photo_crops(part, n, size=size)
    return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]


__all__ = ["CALIBRATION_SCALES", "FLIPS", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGES", "NUM_CROPS", "PACKAGES",
           "PHOTOS", "PHOTO_POSITIONS", "PHOTO_SCALES", "POSITIONS", "SCALES", "CropSpec", "Photo", "PhotoCrop",
           "available_photos", "crop_specs", "load_photo", "part_half", "photo_batches", "photo_crops",
           "photo_specs", "sample_image_batches", "sample_image_crops"]
