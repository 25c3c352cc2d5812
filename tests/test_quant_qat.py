"""QAT on a tiny separable task: trains, stays accurate, learned scales are exportable buffers/parameters."""

from __future__ import annotations

import copy

import torch
from torch import nn

import slimkit as sk
from slimkit.passes.quantize.fake_quant import FakeQuantize
from slimkit.passes.quantize.modules import QuantWrapper, quant_wrappers
from slimkit.passes.quantize.ptq import fold_bn
from slimkit.passes.quantize.qat import prepare_qat


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.bn(self.conv(x)))).flatten(1))


def _data(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 1, 6, 6, generator=g) * 0.5
    x[:, :, :3] += (y * 2 - 1).float()[:, None, None, None]  # class = sign of the top half
    return x, y


def _loader(x: torch.Tensor, y: torch.Tensor, bs: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]


def _acc(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    m.eval()
    with torch.no_grad():
        return (m(x).argmax(1) == y).float().mean().item()


def test_qat_4bit_trains_and_stays_accurate() -> None:
    torch.manual_seed(0)
    x, y = _data()
    xt, yt = _data(128, seed=1)
    model = _Net()
    sk.finetune(model, _loader(x, y), sk.FinetuneConfig(epochs=3, lr=1e-2))
    base = _acc(model, xt, yt)
    assert base > 0.95
    cfg = sk.QATConfig(bits=4, activations=8, freeze_observers_epoch=1, fold_bn_epoch=1,
                       finetune=sk.FinetuneConfig(epochs=2, lr=1e-3))
    q = sk.quantize_(copy.deepcopy(model), cfg, train_loader=_loader(x, y))
    assert isinstance(q.bn, nn.Identity)  # folded at epoch 1
    assert _acc(q, xt, yt) >= base - 0.03
    wfq = q.conv.weight_fake_quant
    assert isinstance(wfq.scale, nn.Parameter) and wfq.scale.shape == (8,) and not bool(wfq.observer_enabled)
    w = q.conv.quantized_weight()
    assert (w / wfq.scale[:, None, None, None]).sub((w / wfq.scale[:, None, None, None]).round()).abs().max() < 1e-4
    assert q.fc.input_fake_quant.scale.shape == () and q.fc.input_fake_quant.qmax == 255


def test_lsq_scales_move_during_training() -> None:
    torch.manual_seed(0)
    x, y = _data(64)
    model = _Net()
    cfg = sk.QATConfig(bits=3, activations=None, finetune=sk.FinetuneConfig(epochs=1, lr=1e-2))
    probe = copy.deepcopy(model).eval()
    fold_bn(probe)  # as the pass does before training (fold_bn_epoch=None)
    prepare_qat(probe, cfg)
    probe(x)
    q = sk.quantize_(model, cfg, train_loader=_loader(x, y))
    moved = [not torch.allclose(w.weight_fake_quant.scale, p.weight_fake_quant.scale)
             for (_, w), (_, p) in zip(quant_wrappers(q), quant_wrappers(probe), strict=True)]
    assert any(moved)
    assert all(isinstance(m, QuantWrapper) for m in (q.conv, q.fc))
    assert all(isinstance(m.weight_fake_quant, FakeQuantize) for m in (q.conv, q.fc))
