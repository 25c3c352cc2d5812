"""ResNet (basic and bottleneck blocks) and ResNeXt, with torchvision's state-dict keys."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-compatible ResNet. ``width`` scales every stage (64 = torchvision); ``small_input`` uses a
    3x3 stem without max-pool for 28-32 px images (``stem_stride`` 2 halves the resolution there)."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: Sequence[int], num_classes: int = 1000,
                 in_channels: int = 3, width: int = 64, groups: int = 1, width_per_group: int = 64,
                 small_input: bool = False, stem_stride: int = 1) -> None:
        super().__init__()
        self.inplanes = width
        self.groups, self.base_width = groups, width_per_group
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make(block, width, layers[0])
        self.layer2 = self._make(block, width * 2, layers[1], 2)
        self.layer3 = self._make(block, width * 4, layers[2], 2)
        self.layer4 = self._make(block, width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, down, self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, **kw: object) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, **kw)  # type: ignore[arg-type]


def resnet50(num_classes: int = 1000, **kw: object) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, **kw)  # type: ignore[arg-type]


def resnext50_32x4d(num_classes: int = 1000, **kw: object) -> ResNet:
    kw.setdefault("groups", 32)
    kw.setdefault("width_per_group", 4)
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, **kw)  # type: ignore[arg-type]


def resnet_tiny(num_classes: int = 10, in_channels: int = 3, width: int = 8, bottleneck: bool = False) -> ResNet:
    """A small ResNet for tests and Fashion-MNIST (one block per stage, 3x3 stem)."""
    block = Bottleneck if bottleneck else BasicBlock
    return ResNet(block, [1, 1, 1, 1], num_classes, in_channels=in_channels, width=width, small_input=True)


def resnet_fmnist(num_classes: int = 10, in_channels: int = 1, width: int = 64,
                  layers: Sequence[int] = (1, 1, 1, 1)) -> ResNet:
    """A ResNet-10-style net for 28x28 images with full ResNet width (64..512): 3x3 stride-2 stem, stages at
    14, 7, 4 and 2 px. Wide enough that the convolutions, not per-op overhead, dominate CPU latency at batch 1,
    so removing channels shows in measured time (bench/prune_resnet.py)."""
    return ResNet(BasicBlock, list(layers), num_classes, in_channels=in_channels, width=width, small_input=True,
                  stem_stride=2)


def resnext_tiny(num_classes: int = 10, in_channels: int = 3, groups: int = 4, width_per_group: int = 32) -> ResNet:
    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes, in_channels=in_channels, width=8, groups=groups,
                  width_per_group=width_per_group, small_input=True)
