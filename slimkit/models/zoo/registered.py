"""Importing this module registers the zoo with slimkit.models (listed in registry._ARCH_MODULES).

Full-size torchvision-compatible architectures (their state-dict keys load torchvision weights):
``resnet18``, ``resnet50``, ``resnext50_32x4d``, ``mobilenet_v2`` (kwargs pass through, e.g. ``width_mult``,
``small_input``). Small test-sized variants: see :data:`slimkit.models.zoo.ZOO`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from slimkit.models.registry import register_arch
from slimkit.models.zoo import register
from slimkit.models.zoo.mobilenet import MobileNetV2
from slimkit.models.zoo.resnet import resnet18, resnet50, resnext50_32x4d

register()


@register_arch("resnet18")
def _resnet18(*, input_shape: tuple[int, ...], num_classes: int, **kw: Any) -> nn.Module:
    return resnet18(num_classes=num_classes, in_channels=input_shape[0], **kw)


@register_arch("resnet50")
def _resnet50(*, input_shape: tuple[int, ...], num_classes: int, **kw: Any) -> nn.Module:
    return resnet50(num_classes=num_classes, in_channels=input_shape[0], **kw)


@register_arch("resnext50_32x4d")
def _resnext50(*, input_shape: tuple[int, ...], num_classes: int, **kw: Any) -> nn.Module:
    return resnext50_32x4d(num_classes=num_classes, in_channels=input_shape[0], **kw)


@register_arch("mobilenet_v2")
def _mobilenet_v2(*, input_shape: tuple[int, ...], num_classes: int, **kw: Any) -> nn.Module:
    return MobileNetV2(num_classes=num_classes, in_channels=input_shape[0], **kw)
