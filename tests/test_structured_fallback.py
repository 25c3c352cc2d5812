"""Tracing fallback: submodules torch.fx cannot trace become opaque leaves whose channels stay fixed, while
the rest of the model is still pruned; a failure in the top-level forward falls back to torch.export
(specialized to the example shapes, the pruned model checked to take the same branches); value-dependent
control flow is still refused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.context import PassContext
from slimkit.errors import GraphError
from slimkit.graph import build_dependency_graph
from slimkit.passes.prune.structured import structured_prune


class ShapeBranch(nn.Module):
    """fx fails: Python control flow on a shape, a loop over a size, len() and an assert on a shape."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == self.conv.in_channels
        if x.shape[-1] > 12:
            x = nn.functional.avg_pool2d(x, 2)
        for _ in range(len(x) // x.size(0)):
            x = x + 0.5
        return torch.relu(self.bn(self.conv(x)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.block = ShapeBranch(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)
        self.example_inputs = (torch.randn(1, 3, 16, 16),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(torch.relu(self.bn0(self.stem(x))))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


def _trained_bn(m: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
    return m.eval()


def test_untraceable_submodule_is_opaque_and_the_rest_is_pruned(tmp_path) -> None:
    torch.manual_seed(0)
    m = _trained_bn(Net())
    x = m.example_inputs
    with pytest.raises(Exception):  # noqa: B017 - the premise: plain torch.fx fails on this model
        torch.fx.symbolic_trace(m)
    g = build_dependency_graph(m, x)
    assert g.tracer == "fx+opaque" and list(g.opaque) == ["block"]
    producers = {p for gr in g.groups for p in gr.producers}
    assert producers == {"conv2", "conv3"}  # stem feeds the opaque block: fixed

    ref = copy.deepcopy(m)
    ctx = PassContext(example_inputs=x)
    structured_prune(m, sk.StructuredPruneConfig(ratio=0.5), ctx)
    assert ctx.extras["structured"]["trace"] == "fx+opaque"
    assert "block" in ctx.extras["structured"]["opaque"]
    assert (m.conv2.out_channels, m.conv3.out_channels) == (16, 16)
    assert m.stem.out_channels == 16 and m.block.conv.in_channels == m.block.conv.out_channels == 16
    for shape in ((1, 3, 16, 16), (2, 3, 8, 8)):  # both branches of the shape test still run
        assert m(torch.randn(shape)).shape == ref(torch.randn(shape)).shape

    pytest.importorskip("onnxruntime")
    from slimkit.exporters import check_parity, export_onnx

    path = export_onnx(m, tmp_path / "fallback.onnx", x)
    res = check_parity(m, path, x, atol=1e-4, rtol=1e-3)
    assert res["ok"], res


def test_ratio_zero_is_identical_with_opaque_leaves() -> None:
    m = _trained_bn(Net())
    ref = copy.deepcopy(m)
    sk.prune_(m, sk.StructuredPruneConfig(ratio=0.0), example_inputs=m.example_inputs)
    y = torch.randn(2, 3, 16, 16)
    assert torch.equal(m(y), ref(y))


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if x.size(1) == 8 else x


class Outer(nn.Module):
    """Traceable except for ``inner``: only the innermost failing module becomes opaque."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.inner = Inner()
        self.b = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.inner(torch.relu(self.a(x))))


class Consumer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.outer = Outer()
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.outer(torch.relu(self.first(x)))
        # the opaque module's own layer is also called from outside: it must keep its channels
        return self.head(torch.relu(y) + self.outer.inner.conv(y))


def test_channels_into_opaque_module_stay_fixed() -> None:
    torch.manual_seed(0)
    m = Consumer().eval()
    x = (torch.randn(1, 3, 8, 8),)
    g = build_dependency_graph(m, x)
    assert list(g.opaque) == ["outer.inner"]
    producers = {p for gr in g.groups for p in gr.producers}
    assert "outer.a" not in producers  # feeds the opaque module
    assert "outer.inner.conv" not in producers  # inside it, though called outside too
    assert "first" in producers  # a traceable layer elsewhere is still prunable
    ref = copy.deepcopy(m)
    sk.prune_(m, sk.StructuredPruneConfig(ratio=0.5), example_inputs=x)
    assert m.first.out_channels == 4
    assert m.outer.a.out_channels == 8 and m.outer.inner.conv.out_channels == 8
    assert m(x[0]).shape == ref(x[0]).shape


class TopLevel(nn.Module):
    """fx fails in the top-level forward (no submodule to make opaque): traced with torch.export."""

    def __init__(self, channel_branch: bool = False) -> None:
        super().__init__()
        self.channel_branch = channel_branch
        self.conv = nn.Conv2d(3, 8, 3, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        if y.shape[-1] > 4:
            y = y[..., :4, :4]
        if self.channel_branch and y.shape[1] == 8:  # control flow on a channel count
            y = y * 2
        return self.fc(self.conv2(y).mean((2, 3)))


def test_top_level_shape_control_flow_uses_torch_export(tmp_path) -> None:
    m = _trained_bn(TopLevel())
    x = (torch.randn(1, 3, 8, 8),)
    g = build_dependency_graph(m, x)
    assert g.tracer == "export" and g.export_ops
    assert {p for gr in g.groups for p in gr.producers} == {"conv", "conv2"}
    ref = copy.deepcopy(m)
    sk.prune_(m, sk.StructuredPruneConfig(ratio=0.0), example_inputs=x)
    assert torch.equal(m(x[0]), ref(x[0]))
    ctx = PassContext(example_inputs=x)
    structured_prune(m, sk.StructuredPruneConfig(ratio=0.5), ctx)
    assert ctx.extras["structured"]["trace"] == "export"
    assert (m.conv.out_channels, m.conv2.out_channels) == (4, 8) and m.fc.in_features == 8
    assert m(x[0]).shape == ref(x[0]).shape

    pytest.importorskip("onnxruntime")
    from slimkit.exporters import check_parity, export_onnx

    res = check_parity(m, export_onnx(m, tmp_path / "export.onnx", x), x, atol=1e-4, rtol=1e-3)
    assert res["ok"], res


def test_export_trace_refuses_a_pruned_model_that_takes_another_branch() -> None:
    m = _trained_bn(TopLevel(channel_branch=True))
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(GraphError, match="different ops"):
        sk.prune_(m, sk.StructuredPruneConfig(ratio=0.5), example_inputs=(torch.randn(1, 3, 8, 8),))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_data_dependent_top_level_control_flow_is_still_refused() -> None:
    class ValueBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            if y.mean() > 0:  # on values: neither torch.fx nor torch.export can trace it
                y = -y
            return self.fc(y.mean((2, 3)))

    m = ValueBranch()
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(GraphError, match="ValueBranch.*top-level forward.*torch.export"):
        sk.prune_(m, sk.StructuredPruneConfig(ratio=0.5), example_inputs=(torch.randn(1, 3, 8, 8),))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
