"""Channels that survive a permute: a recognizer's (N, C, H, W) map permuted to (N, W, C, H), pooled, normed or
reduced over the other axes, squeezed to (N, W, C) and read by a bidirectional LSTM (issue 13, item 3)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from structured_helpers import zeroed
from torch import nn

import slimkit as sk
from slimkit.errors import GraphError
from slimkit.graph import apply_removal, build_dependency_graph
from slimkit.passes.prune.structured import count_macs, plan_removal
from slimkit.passes.prune.structured_importance import unit_scores

C, HID = 16, 12


def _pool(x: torch.Tensor) -> torch.Tensor:  # the issue's pattern: (N, W, C, H) -> (N, W, C)
    return F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), (None, 1)).squeeze(3)


HEADS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "adaptive_avg_pool2d": _pool,
    "adaptive_max_pool2d": lambda x: F.adaptive_max_pool2d(x.permute(0, 3, 1, 2), (None, 1)).squeeze(-1),
    "max_pool2d_window": lambda x: F.max_pool2d(x.permute(0, 3, 1, 2), (1, x.shape[2])).flatten(2),
    "transpose_pool_h": lambda x: F.adaptive_avg_pool2d(x.transpose(1, 3), (1, None)).squeeze(2),  # N, W, H, C
    "mean": lambda x: x.permute(0, 3, 1, 2).mean(3),
    "amax_reshape": lambda x: x.permute(0, 3, 1, 2).amax(3, keepdim=True).reshape(x.shape[0], x.shape[3], -1),
}


class Recognizer(nn.Module):
    """CNN -> permute to (N, W, C, H) -> pool/reduce over H -> (N, W, C) -> bidirectional LSTM -> Linear."""

    def __init__(self, head: str = "adaptive_avg_pool2d", norm: nn.Module | None = None) -> None:
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(1, C // 2, 3, padding=1), nn.BatchNorm2d(C // 2), nn.ReLU(),
                                 nn.MaxPool2d(2), nn.Conv2d(C // 2, C, 3, padding=1), nn.BatchNorm2d(C), nn.ReLU())
        self.head = HEADS[head]
        self.norm = norm
        self.rnn = nn.LSTM(C, HID, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * HID, 11)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.cnn(x)
        if self.norm is not None:
            f = self.norm(f.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # normalized in the (N, W, C, H) layout
        seq, _ = self.rnn(self.head(f))
        return self.fc(seq)


def _model(head: str = "adaptive_avg_pool2d", norm: nn.Module | None = None) -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    m = Recognizer(head, norm).eval()
    for bn in (m.cnn[1], m.cnn[5]):  # non-trivial statistics, so zeroing must hit the right channels
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.bias.data.uniform_(-0.5, 0.5)
    return m, (torch.randn(2, 1, 16, 40),)


def _conv_plan(m: nn.Module, x: tuple, ratio: float = 0.5) -> tuple:
    """Remove half of the units of the last conv's group (its channels cross the permute into the LSTM)."""
    graph = build_dependency_graph(m, x)
    group = next(g for g in graph.groups if "cnn.4" in g.producers)
    removed = plan_removal(graph, unit_scores(m, graph, "l2"), ratio) & set(group.units)
    assert len(removed) == len(group) // 2
    return graph, removed


@pytest.mark.parametrize("head", list(HEADS))
def test_channels_cross_the_permute(head: str) -> None:
    m, x = _model(head)
    graph, removed = _conv_plan(m, x)
    group = next(g for g in graph.groups if "cnn.4" in g.producers)
    # one group: the conv's output channels, their BN and the LSTM's input columns, pruned together
    assert len(group) == C and {"cnn.4"} == set(group.producers)
    expected = zeroed(m, graph, removed)
    apply_removal(m, graph, removed, x)
    assert m.cnn[4].out_channels == C // 2 and m.cnn[5].num_features == C // 2 and m.rnn.input_size == C // 2
    with torch.no_grad():
        torch.testing.assert_close(m(*x), expected(*x), rtol=1e-5, atol=1e-6)


def test_prune_issue_pattern_to_half_macs() -> None:
    m, x = _model()
    ref = copy.deepcopy(m)
    base = count_macs(m, x)
    sk.prune_(m, sk.StructuredPruneConfig(target_macs=0.5), example_inputs=x)
    assert 0.45 <= count_macs(m, x) / base <= 0.5 + 1e-9  # the budget, met within the channel granularity
    assert m.rnn.input_size == m.cnn[4].out_channels < C  # the LSTM reads the pruned channels
    with torch.no_grad():
        assert m(*x).shape == ref(*x).shape == (2, 20, 11)
        x2 = (torch.randn(3, 1, 16, 24),)  # other batch and width: nothing was specialized
        assert m(*x2).shape == (3, 12, 11)


def test_layernorm_over_height_keeps_channels() -> None:
    """LayerNorm over H of the (N, W, C, H) map normalizes each channel on its own: it passes the channels
    through (its weight, along H, is not sliced) and removal equals zeroing the LSTM's reading columns."""
    m, x = _model(norm=nn.LayerNorm(8))
    with torch.no_grad():
        m.norm.weight.uniform_(0.5, 1.5)
        m.norm.bias.uniform_(-0.5, 0.5)
    graph, removed = _conv_plan(m, x)
    gone = [i for i, r in enumerate(graph.slots.roots(next(mm for mm in graph.members if mm.role == "rnn.in").labels)
                                    .tolist()) if r in removed]
    expected = copy.deepcopy(m)
    with torch.no_grad():
        expected.rnn.weight_ih_l0[:, gone] = 0.0
        expected.rnn.weight_ih_l0_reverse[:, gone] = 0.0
    apply_removal(m, graph, removed, x)
    assert m.norm.normalized_shape == (8,) and m.rnn.input_size == C // 2
    with torch.no_grad():
        torch.testing.assert_close(m(*x), expected(*x), rtol=1e-5, atol=1e-6)


MIXING: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    # pooled to 4 along C: every output position averages 4 channels
    "pool_over_channels": (lambda f: F.adaptive_avg_pool2d(f.permute(0, 3, 1, 2), (4, 1)).squeeze(3)
                           .repeat(1, 1, C // 4), r"combines positions along axis \[2\]"),
    # same size along C, but a window of 3 channels
    "window_over_channels": (lambda f: F.max_pool2d(f.permute(0, 3, 1, 2), (3, 8), (1, 1), (1, 0)).squeeze(3),
                             r"combines positions along axis \[2\]"),
    # BatchNorm over W of the (N, W, C, H) map: its statistics run across the channels
    "batchnorm_over_width": (nn.BatchNorm2d(20).eval(), "statistics are taken across those channels"),
    "instancenorm": (nn.InstanceNorm2d(20, affine=True), "statistics are taken across those channels"),
}


@pytest.mark.parametrize("case", list(MIXING))
def test_mixing_is_refused(case: str) -> None:
    op, message = MIXING[case]
    if isinstance(op, nn.Module):
        m, x = _model(norm=op)
    else:
        m, x = _model()
        m.head = op
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(GraphError, match=message) as info:
        sk.prune_(m, sk.StructuredPruneConfig(ratio=0.5), example_inputs=x)
    assert "cnn.4" in str(info.value) and info.value.hint
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # nothing was changed


def test_pruned_recognizer_exports_to_onnx(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from slimkit.exporters import check_parity, export_onnx

    m, x = _model()
    sk.prune_(m, sk.StructuredPruneConfig(ratio=0.5), example_inputs=x)
    assert m.rnn.input_size < C
    path = export_onnx(m, tmp_path / "recognizer.onnx", x)
    res = check_parity(m, path, x, atol=1e-4, rtol=1e-3)
    assert res["ok"], res
    res2 = check_parity(m, path, (torch.randn(5, 1, 16, 40),), atol=1e-4, rtol=1e-3)  # dynamic batch
    assert res2["ok"], res2
