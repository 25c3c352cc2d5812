"""Dependency graph: couplings, refusals (GraphError naming the op/module), analysis never mutates."""

from __future__ import annotations

import copy

import pytest
import torch
from models import ToyResNet
from torch import nn

import slimkit as sk
from slimkit.errors import GraphError
from slimkit.graph import build_dependency_graph
from slimkit.models.zoo import build


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, model: nn.Module) -> bool:
    b = model.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_residual_add_couples_producers() -> None:
    m = ToyResNet()
    g = build_dependency_graph(m, m.example_inputs)
    producers = {tuple(gr.producers) for gr in g.groups}
    assert ("b1.3", "stem.0") in producers and ("b2.3", "proj.0") in producers
    assert all(gr.kind == "channels" for gr in g.groups)


def test_analysis_does_not_mutate() -> None:
    m, x = build("mobilenet_v2-tiny")
    m.train()
    before = _state(m)
    build_dependency_graph(m, x)
    assert _same(before, m) and m.training  # BN running stats untouched, train flag restored


def test_mha_heads_are_units() -> None:
    m, x = build("vit-small")
    g = build_dependency_graph(m, x)
    heads = [gr for gr in g.groups if gr.kind == "heads"]
    assert len(heads) == 2 and all(len(h) == 4 for h in heads)


def test_lstm_hidden_group() -> None:
    m, x = build("crnn")
    g = build_dependency_graph(m, x)
    assert [len(gr) for gr in g.groups if gr.kind == "hidden"] == [32]


def test_shuffle_couples_channels_across_groups() -> None:
    m, x = build("shufflenet_v2-small")
    g = build_dependency_graph(m, x)  # Torch-Pruning raises ZeroDivisionError here
    assert g.groups and sum(len(gr) for gr in g.groups) > 0


class MixingView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        b, c, h, w = x.shape
        x = x.reshape(b, h, c, w).transpose(1, 2)  # mixes channels with rows
        return self.fc(self.conv2(x).mean((2, 3)))


def test_view_mixing_channels_is_refused_and_model_unchanged() -> None:
    m = MixingView()
    x = (torch.randn(1, 3, 8, 8),)
    before = _state(m)
    with pytest.raises(GraphError, match="conv2"):
        sk.prune_(m, sk.StructuredPruneConfig(ratio=0.5), example_inputs=x)
    assert _same(before, m)


class FunctionalConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.w = nn.Parameter(torch.randn(4, 8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(self.conv(x), self.w).mean((2, 3))


def test_unknown_op_on_channels_is_refused() -> None:
    m = FunctionalConv()
    with pytest.raises(GraphError, match="conv2d"):
        build_dependency_graph(m, (torch.randn(1, 3, 8, 8),))


class WithPooler(nn.Module):
    """Like BERT's pooler: a layer outside the traced forward that reads the features."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.head = nn.Linear(16, 4)
        self.pooler = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.pooler(self.body(x))


def test_module_outside_trace_is_refused() -> None:
    m = WithPooler()
    before = _state(m)
    with pytest.raises(GraphError, match="pooler"):
        sk.prune_(m, sk.StructuredPruneConfig(ratio=0.5), example_inputs=(torch.randn(1, 8),))
    assert _same(before, m)


class HardCoded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(-1, 8, 16).flatten(1))


def test_hard_coded_sizes_pin_channels() -> None:
    m = HardCoded()
    g = build_dependency_graph(m, (torch.randn(1, 3, 4, 4),))
    assert g.prunable_units == 0  # the literal 8 in view() fixes conv's width


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.b(torch.relu(self.a(x))))


def test_tied_weights_are_kept() -> None:
    m = Tied()
    g = build_dependency_graph(m, (torch.randn(1, 8),))
    assert g.prunable_units == 0


def test_untraceable_model_names_it() -> None:
    class Dyn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(GraphError, match="Dyn"):
        build_dependency_graph(Dyn(), (torch.randn(1, 4),))


def test_protected_keeps_width() -> None:
    m, x = build("resnet18-tiny")
    ref = copy.deepcopy(m)
    sk.prune_(m, sk.StructuredPruneConfig(ratio=0.5, protected=["layer2.*"]), example_inputs=x)
    assert m.layer2[0].conv1.out_channels == ref.layer2[0].conv1.out_channels
    assert m.layer3[0].conv1.out_channels < ref.layer3[0].conv1.out_channels
