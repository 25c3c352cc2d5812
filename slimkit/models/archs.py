"""Built-in architectures for small images: ``mlp``, ``cnn-small`` and ``resnet-mini``.

Each works for any ``input_shape`` (C, H, W), from digits' 1x8x8 up; spatial downsampling stops before
the feature map would get smaller than 4x4. Module names follow torchvision where natural (``conv1``,
``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc``). Every activation is its own module (no
in-place ReLU, none shared between call sites), which keeps tracing, surgery and observers simple.
Initialisation is deterministic when built through :func:`slimkit.models.build_model` (which seeds it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from slimkit.errors import ConfigError
from slimkit.models.registry import register_arch


def _image_shape(name: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"{name} needs input_shape (C, H, W), got {shape}.",
                          hint="Use arch 'mlp' for flat feature vectors.")
    return shape  # type: ignore[return-value]


def _ints(name: str, key: str, value: Sequence[int] | int, *, allow_empty: bool = False) -> tuple[int, ...]:
    vals = (value,) if isinstance(value, int) else tuple(value)
    if (not vals and not allow_empty) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in vals):
        raise ConfigError(f"{name}: {key} must be a list of positive integers, got {value!r}.")
    return vals


def _dropout(name: str, p: float) -> float:
    if not 0.0 <= float(p) < 1.0:
        raise ConfigError(f"{name}: dropout must be in [0, 1), got {p!r}.")
    return float(p)


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_arch("mlp")
class MLP(nn.Module):
    """Flatten, then ``Linear -> ReLU (-> Dropout)`` per hidden width, then ``fc``.

    Parameters: ``sum(d_in * h + h)`` over the hidden layers plus ``h_last * num_classes + num_classes``.
    """

    def __init__(self, *, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (128, 64),
                 dropout: float = 0.0) -> None:
        super().__init__()
        hidden = _ints("mlp", "hidden", hidden, allow_empty=True)
        dropout = _dropout("mlp", dropout)
        d = math.prod(int(s) for s in input_shape)
        layers: list[nn.Module] = [nn.Flatten(1)]
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            d = h
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class ConvBNReLU(nn.Sequential):
    """``conv (0) -> bn (1) -> relu (2)``, like torchvision's Conv2dNormActivation."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


@register_arch("cnn-small")
class CNNSmall(nn.Module):
    """``features`` = one ConvBNReLU block per width (stride 2 from the second block on while the map is at
    least 8x8), then global average pool, dropout and ``fc``."""

    def __init__(self, *, input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (16, 32),
                 dropout: float = 0.0) -> None:
        super().__init__()
        c, h, w = _image_shape("cnn-small", input_shape)
        widths = _ints("cnn-small", "widths", widths)
        blocks: list[nn.Module] = []
        size = min(h, w)
        for i, width in enumerate(widths):
            stride = 2 if i > 0 and size >= 8 else 1
            size = (size + stride - 1) // stride
            blocks.append(ConvBNReLU(c, width, stride))
            c = width
        self.features = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(_dropout("cnn-small", dropout))
        self.fc = nn.Linear(c, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x)).flatten(1)
        return self.fc(self.dropout(x))


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: ``conv1-bn1-relu-conv2-bn2`` plus the identity, or a 1x1 conv + bn
    ``downsample`` when the stride or width changes."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))
        self.relu2 = nn.ReLU()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


@register_arch("resnet-mini")
class ResNetMini(nn.Module):
    """A CIFAR-style ResNet: a 3x3 stem (``conv1``/``bn1``), one stage ``layerN`` of BasicBlocks per width
    (the first block of stages 2.. has stride 2 while the map is at least 8x8), global pool and ``fc``.
    Inputs of 64 pixels or more get a stride-2 stem and a max pool, as in ImageNet ResNets.

    The defaults (widths 16/32/64, one block each, about 78k parameters) reached 91.4% Fashion-MNIST test
    accuracy after 4 epochs of AdamW (one-cycle, max lr 3e-3, batch 128, no augmentation; ~80 s per epoch
    on one CPU thread).
    """

    def __init__(self, *, input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (16, 32, 64),
                 blocks: Sequence[int] | int = (1, 1, 1), zero_init_residual: bool = False) -> None:
        super().__init__()
        c, h, w = _image_shape("resnet-mini", input_shape)
        widths = _ints("resnet-mini", "widths", widths)
        blocks = _ints("resnet-mini", "blocks", blocks)
        if len(blocks) == 1 and len(widths) > 1:
            blocks = blocks * len(widths)
        if len(blocks) != len(widths):
            raise ConfigError(f"resnet-mini: blocks {list(blocks)} and widths {list(widths)} must have the same "
                              "length (one entry per stage).")
        size = min(h, w)
        big = size >= 64
        stem_stride = 2 if big else 1
        self.conv1 = nn.Conv2d(c, widths[0], 3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1) if big else nn.Identity()
        size = (size + stem_stride - 1) // stem_stride
        if big:
            size = (size + 1) // 2
        inplanes = widths[0]
        self.num_stages = len(widths)
        for i, (planes, n) in enumerate(zip(widths, blocks, strict=True)):
            stride = 2 if i > 0 and size >= 8 else 1
            size = (size + stride - 1) // stride
            layer = [BasicBlock(inplanes, planes, stride)]
            layer += [BasicBlock(planes, planes) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        _init(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.avgpool(x).flatten(1))
