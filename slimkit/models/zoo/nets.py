"""Small architectures that stress structured pruning: concatenation (DenseNet, U-Net), channel split and
shuffle (ShuffleNetV2), recurrent layers (CRNN) and multi-head attention (ViT)."""

from __future__ import annotations

import torch
from torch import nn

from slimkit.errors import ConfigError


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseNetSmall(nn.Module):
    """A DenseNet-style network: one dense block (concatenation of every layer's output) and a transition."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, growth: int = 8, layers: int = 4,
                 stem: int = 16) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, stem)
        self.block = nn.ModuleList(DenseLayer(stem + i * growth, growth) for i in range(layers))
        cout = stem + layers * growth
        self.transition = nn.Sequential(nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.Conv2d(cout, cout // 2, 1),
                                        nn.AvgPool2d(2))
        self.norm = nn.BatchNorm2d(cout // 2)
        self.fc = nn.Linear(cout // 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.stem(x)]
        for layer in self.block:
            feats.append(layer(feats))
        x = self.transition(torch.cat(feats, 1))
        x = torch.relu(self.norm(x))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


class UNetSmall(nn.Module):
    """A 3-level U-Net: skip concatenations, max-pool down, ConvTranspose up; per-pixel class logits."""

    def __init__(self, num_classes: int = 2, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(_cbr(in_channels, w), _cbr(w, w))
        self.enc2 = nn.Sequential(_cbr(w, 2 * w), _cbr(2 * w, 2 * w))
        self.mid = nn.Sequential(_cbr(2 * w, 4 * w), _cbr(4 * w, 4 * w))
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = nn.Sequential(_cbr(4 * w, 2 * w), _cbr(2 * w, 2 * w))
        self.up1 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec1 = nn.Sequential(_cbr(3 * w, w), _cbr(w, w))
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: stride 1 splits channels in half; stride 2 runs two branches; then shuffles."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        bin_ = cin if stride > 1 else half
        self.branch2 = nn.Sequential(
            nn.Conv2d(bin_, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2Small(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 64),
                 repeats: tuple[int, ...] = (2, 2)) -> None:
        super().__init__()
        self.conv1 = _cbr(in_channels, widths[0], stride=1)
        stages: list[nn.Module] = []
        cin = widths[0]
        for cout, n in zip(widths[1:], repeats, strict=False):
            stages.append(nn.Sequential(ShuffleUnit(cin, cout, 2), *[ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.conv5 = _cbr(cin, 2 * cin, k=1)
        self.fc = nn.Linear(2 * cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stages(self.conv1(x)))
        return self.fc(x.mean([2, 3]))


class CRNN(nn.Module):
    """Convolutions over a text-line image, columns as time steps, a bidirectional multi-layer LSTM and a
    per-step classifier (CTC-style logits of shape (T, N, classes)).

    ``head="flatten"`` feeds the LSTM the (C * H) features of each column; ``head="pool"`` is the other common
    recognizer head: the (N, C, H, W) map is permuted to (N, W, C, H), pooled over H with
    ``AdaptiveAvgPool2d((None, 1))``, squeezed to (N, W, C) and read by a batch-first LSTM."""

    def __init__(self, num_classes: int = 11, in_channels: int = 1, height: int = 16, width: int = 16,
                 hidden: int = 32, layers: int = 2, head: str = "flatten") -> None:
        super().__init__()
        if head not in ("flatten", "pool"):
            raise ConfigError(f"CRNN head must be 'flatten' or 'pool', got {head!r}.",
                              hint="head='flatten' (C*H features per column) or head='pool' (pool over H).")
        self.head = head
        self.cnn = nn.Sequential(_cbr(in_channels, width), nn.MaxPool2d(2), _cbr(width, 2 * width),
                                 nn.MaxPool2d((2, 1)))
        feat = 2 * width * (height // 4) if head == "flatten" else 2 * width
        self.pool = nn.AdaptiveAvgPool2d((None, 1)) if head == "pool" else None
        self.rnn = nn.LSTM(feat, hidden, num_layers=layers, bidirectional=True, batch_first=head == "pool")
        self.fc = nn.Linear(2 * hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.cnn(x)                           # N, C, H, W
        if self.pool is None:
            f = f.permute(3, 0, 1, 2).flatten(2)  # W, N, C*H
            seq, _ = self.rnn(f)
            return self.fc(seq)
        f = self.pool(f.permute(0, 3, 1, 2)).squeeze(3)  # N, W, C, H -> N, W, C, 1 -> N, W, C
        seq, _ = self.rnn(f)
        return self.fc(seq).transpose(0, 1)              # W, N, classes


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViTSmall(nn.Module):
    """A small Vision Transformer: patch conv, class token, learned positions, nn.MultiheadAttention blocks."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image: int = 32, patch: int = 8, dim: int = 64,
                 depth: int = 2, heads: int = 4, mlp: int = 128) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        n = (image // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
