"""Observers against closed forms, streaming memory, and fake-quant gradients (STE, LSQ)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimkit.passes.quantize import qscheme as qs
from slimkit.passes.quantize.fake_quant import (
    BinaryFakeQuantize,
    FakeQuantize,
    LogFakeQuantize,
    SignActivation,
    ste_fake_quantize,
)
from slimkit.passes.quantize.observers import (
    EntropyObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    make_observer,
)


def _batches(n: int = 10, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 32, generator=g) * 2 + 0.5 for _ in range(n)]


def test_minmax_exact() -> None:
    xs = _batches()
    o = MinMaxObserver(bits=8, symmetric=False)
    for x in xs:
        o(x)
    allx = torch.cat(xs)
    assert o.min_val == allx.min() and o.max_val == allx.max()
    s, z = o.calculate_qparams()
    es, ez = qs.compute_qparams(allx.min(), allx.max(), 8, False)
    assert torch.equal(s, es) and torch.equal(z, ez)
    pc = MinMaxObserver(axis=1)
    pc(allx)
    assert torch.equal(pc.max_val, allx.amax(0))


def test_ema_closed_form() -> None:
    xs = _batches(3)
    o = MovingAverageMinMaxObserver(averaging_constant=0.1)
    for x in xs:
        o(x)
    lo = xs[0].min()
    for x in xs[1:]:
        lo = lo + 0.1 * (x.min() - lo)
    assert torch.allclose(o.min_val, lo)


@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_matches_numpy(p: float) -> None:
    xs = _batches(20)
    o = PercentileObserver(bits=8, symmetric=False, percentile=p)
    for x in xs:
        o(x * (1 + len(xs) / 10))  # growing range exercises the re-binning
    allx = torch.cat([x * (1 + len(xs) / 10) for x in xs]).numpy()
    lo, hi = o.range()
    width = float(allx.max() - allx.min())
    assert abs(float(hi) - np.percentile(allx, p)) < 0.01 * width
    assert abs(float(lo) - np.percentile(allx, 100 - p)) < 0.01 * width


def test_percentile_with_growing_range() -> None:
    o = PercentileObserver(percentile=99.0)
    xs = [torch.randn(2000) * (2.0**i) for i in range(6)]
    for x in xs:
        o(x)
    allx = torch.cat(xs).numpy()
    assert abs(float(o.range()[1]) - np.percentile(allx, 99.0)) < 0.02 * float(np.abs(allx).max())


def test_mse_range_within_minmax_and_lower_error() -> None:
    xs = _batches()
    allx = torch.cat(xs)
    for axis in (None, 1):
        mse, mm = MSEObserver(bits=4, symmetric=True, axis=axis), MinMaxObserver(bits=4, symmetric=True, axis=axis)
        mse(allx)
        mm(allx)
        lo, hi = mse.range()
        assert (hi <= mm.max_val + 1e-6).all() and (lo >= mm.min_val - 1e-6).all()
        errs = []
        for o in (mse, mm):
            s, z = o.calculate_qparams()
            errs.append(float((qs.fake_quantize(allx, s, z, o.qmin, o.qmax, axis=axis) - allx).pow(2).mean()))
        assert errs[0] < errs[1]


def test_entropy_clips_outliers() -> None:
    torch.manual_seed(0)
    x = torch.randn(20000)
    x[:5] = 40.0  # rare outliers
    o = EntropyObserver(bits=8, symmetric=True)
    o(x)
    lo, hi = o.range()
    assert 2.0 < float(hi) < 40.0
    s, z = o.calculate_qparams()
    assert s < 40.0 / 127


@pytest.mark.parametrize("name", ["percentile", "entropy", "mse", "ema", "minmax"])
def test_streaming_memory_constant(name: str) -> None:
    xs = _batches(100)
    sizes = []
    for n in (1, 100):
        o = make_observer(name, bits=8, symmetric=False)
        for x in xs[:n]:
            o(x)
        o.calculate_qparams()
        sizes.append({k: tuple(v.shape) for k, v in o.named_buffers()})
    assert sizes[0] == sizes[1]


def test_ste_gradient_one_inside_zero_outside() -> None:
    s, z = torch.tensor(0.1), torch.tensor(0.0)
    x = torch.tensor([-20.0, -0.5, 0.0, 0.33, 12.7, 12.8, 30.0], requires_grad=True)
    y = ste_fake_quantize(x, s, z, -127, 127)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert torch.allclose(y.detach(), qs.fake_quantize(x.detach(), s, z, -127, 127))


def test_fake_quantize_module_observer_and_switches() -> None:
    fq = FakeQuantize(bits=8, symmetric=False, unsigned=True)
    x = torch.randn(100, requires_grad=True)
    y = fq(x)
    s, z = qs.compute_qparams(x.min(), x.max(), 8, False, True)
    assert torch.equal(fq.scale, s) and torch.equal(fq.zero_point, z)
    fq.enable_fake_quant(False)
    assert torch.equal(fq(x), x)
    fq.freeze()
    big = fq(x * 10)
    assert fq.scale == s  # frozen: the scale no longer follows the data
    assert big.max() <= (255 - z) * s + 1e-6
    y.sum().backward()
    assert torch.all(x.grad == 1)


def test_lsq_scale_and_zero_point_get_gradients() -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 16, requires_grad=True)
    fq = FakeQuantize(bits=4, symmetric=True, axis=0, learnable=True, observer="mse")
    fq(w)
    assert isinstance(fq.scale, torch.nn.Parameter) and fq.scale.shape == (8,)
    (fq(w) ** 2).sum().backward()
    assert fq.scale.grad is not None and fq.scale.grad.abs().min() > 0
    assert w.grad is not None and w.grad.abs().sum() > 0
    act = FakeQuantize(bits=8, symmetric=False, unsigned=True, learnable=True)
    x = torch.rand(32, 10) * 3 - 1
    act(x)
    (act(x) - 0.3).pow(2).sum().backward()
    assert act.scale.grad.abs() > 0 and act.zero_point.grad is not None


def test_group_fake_quant_and_state_dict_resizing_load() -> None:
    w = torch.randn(4, 64, requires_grad=True)
    fq = FakeQuantize(bits=4, axis=0, group_size=16)
    y = fq(w)
    assert fq.scale.shape == (4, 4)
    y.sum().backward()
    assert w.grad.shape == w.shape
    fresh = FakeQuantize(bits=4, axis=0, group_size=16)
    fresh.load_state_dict(fq.state_dict())
    fresh.freeze()
    assert torch.equal(fresh(w), y)


def test_log_and_binary_fake_quant_modules() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 10, requires_grad=True)
    b = BinaryFakeQuantize()
    wb = b(w)
    assert torch.equal(wb.detach().abs(), b.scale[:, None].expand_as(w))
    wb.sum().backward()
    assert torch.all(w.grad == 1)
    lq = LogFakeQuantize(3)
    assert torch.equal(lq(w).detach(), qs.log_fake_quantize(w.detach(), qs.log_scale(w), 3))
    x = torch.tensor([-2.0, -0.5, 0.0, 0.7, 3.0], requires_grad=True)
    y = SignActivation()(x)
    y.sum().backward()
    assert y.tolist() == [-1, -1, 1, 1, 1] and x.grad.tolist() == [0, 1, 1, 1, 0]
