"""Toy models for tests. Each has ``example_inputs`` (a tuple, batch 1) and ``num_classes``."""

from __future__ import annotations

import torch
from torch import nn


class ToyMLP(nn.Module):
    def __init__(self, d_in: int = 64, hidden: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)
        self.example_inputs = (torch.randn(1, d_in),)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


class ToyCNN(nn.Module):
    """conv-bn-relu x2, pool, linear; 1x8x8 input like digits."""

    def __init__(self, in_ch: int = 1, width: int = 16, num_classes: int = 10, size: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)
        self.example_inputs = (torch.randn(1, in_ch, size, size),)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


class ToyResNet(nn.Module):
    """A stem and two residual blocks (one with a 1x1 projection)."""

    def __init__(self, in_ch: int = 1, width: int = 8, num_classes: int = 10, size: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.b2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                nn.BatchNorm2d(2 * width), nn.ReLU(),
                                nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width))
        self.proj = nn.Sequential(nn.Conv2d(width, 2 * width, 1, stride=2, bias=False), nn.BatchNorm2d(2 * width))
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)
        self.example_inputs = (torch.randn(1, in_ch, size, size),)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.relu(x + self.b1(x))
        x = self.relu(self.proj(x) + self.b2(x))
        return self.fc(self.pool(x).flatten(1))


def all_toys() -> list[nn.Module]:
    torch.manual_seed(0)
    return [ToyMLP(), ToyCNN(), ToyResNet()]


def tiny_bert(seed: int = 0) -> nn.Module:
    """A random 2-layer BERT encoder (hidden 32, 4 heads, FFN 64, no pooler) with trained-like weight scales
    (6x the 0.02 init outside the embeddings); needs transformers."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32)
    model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 2 and "embeddings" not in name:
                p.mul_(6.0)
    return model


def token_batches(seed: int, n: int = 6, bs: int = 8, seq: int = 16) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of random token ids for :func:`tiny_bert`, half of each batch padded from mid-sequence."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 128, (bs, seq), generator=g)
        mask = torch.ones(bs, seq, dtype=torch.long)
        mask[: bs // 2, seq // 2:] = 0  # padding that must not reach the statistics
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def hidden_rel_err(model: nn.Module, ref: nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Relative squared error of ``model``'s last hidden state against ``ref``'s over the unpadded tokens."""
    num = den = 0.0
    with torch.no_grad():
        for b in batches:
            keep = b["attention_mask"].bool()
            a, r = model(**b).last_hidden_state[keep], ref(**b).last_hidden_state[keep]
            num += float((a - r).pow(2).sum())
            den += float(r.pow(2).sum())
    return num / den
