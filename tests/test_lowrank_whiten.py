"""Activation-aware (whitened) low-rank factorization: output error on the calibration inputs at or below
plain SVD's at every rank, exact error accounting, conv layers, budget allocation, the verb and recipe."""

from __future__ import annotations

import copy

import pytest
import torch
from models import ToyCNN
from torch import nn

import slimkit as sk
from slimkit.analysis.calibration import collect_input_stats
from slimkit.config.lowrank import SVDConfig
from slimkit.context import PassContext
from slimkit.errors import ConfigError
from slimkit.passes.lowrank.svd import factorize, lowrank_model, whitener
from slimkit.registry import parse_stage


def _inputs(n: int = 1024, d: int = 48, seed: int = 0) -> torch.Tensor:
    """Correlated inputs whose column scales span two decades (outlier features)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d // 3, generator=g) @ torch.randn(d // 3, d, generator=g) + 0.3 * torch.randn(n, d, generator=g)
    return x * torch.logspace(-1, 1, d)[torch.randperm(d, generator=g)]


def test_whitened_error_is_at_most_plain_at_every_rank():
    torch.manual_seed(0)
    lin = nn.Linear(48, 32).double()
    x = _inputs().double()
    stats = collect_input_stats(nn.Sequential(lin), list(x.split(128)), ["0"])["0"]
    s = whitener(stats.xtx[0], 1e-8)
    y = lin(x).detach()
    plain, white = [], []
    for r in (2, 4, 8, 16, 24):
        for out, w in ((plain, None), (white, s)):
            fac = factorize(lin, r, w)
            out.append(float(((fac(x).detach() - y) ** 2).sum() / (y ** 2).sum()))
    # measured: rank 2, 8, 24: plain 0.84, 0.47, 0.028; whitened 0.47, 0.052, 0.00002
    assert all(w <= p for w, p in zip(white, plain, strict=True)), (white, plain)
    assert white[2] < 0.2 * plain[2]
    # the output error equals the dropped singular values of W S (bias kept exactly)
    ws = torch.linalg.svdvals(lin.weight.detach() @ s)
    fac = factorize(lin, 8, s)
    err = float(((fac(x) - y) ** 2).sum())
    assert err == pytest.approx(float((ws[8:] ** 2).sum()), rel=1e-6)
    # full rank is exact
    torch.testing.assert_close(factorize(lin, 32, s)(x), y, atol=1e-9, rtol=0)


def test_whitened_conv_matches_output_error():
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 12, 3, padding=1).double()
    x = torch.randn(8, 6, 7, 7, dtype=torch.float64)
    x[:, 3] = x[:, 0] * 2 + 0.01 * x[:, 3]  # a correlated channel
    st = collect_input_stats(nn.Sequential(conv), [x], ["0"])["0"]
    s = whitener(st.xtx[0], 1e-10)
    y = conv(x).detach()
    errs = {}
    for name, w in (("plain", None), ("white", s)):
        errs[name] = float(((factorize(conv, 6, w)(x) - y) ** 2).sum() / (y ** 2).sum())
    assert errs["white"] < errs["plain"]
    ws = torch.linalg.svdvals(conv.weight.detach().reshape(12, -1) @ s)
    assert errs["white"] * float((y ** 2).sum()) == pytest.approx(float((ws[6:] ** 2).sum()), rel=1e-6)


def test_pass_records_errors_and_budget_follows_output_error():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    x = _inputs(512)
    calib = [(b, torch.zeros(len(b))) for b in x.split(64)]
    ref = copy.deepcopy(model)
    outs = {}
    for whiten in (False, True):
        m = copy.deepcopy(model)
        ctx = PassContext(calibration=calib)
        sk.apply_pass(m, SVDConfig(param_budget=0.5, whiten=whiten, dampening=1e-6), ctx)
        y, y0 = m(x), ref(x)
        outs[whiten] = float(((y - y0) ** 2).sum() / (y0 ** 2).sum())
        rows = ctx.extras["layers"]
        planned = [r for r in rows if r["rank"] is not None]
        assert sum(r["params_after"] for r in rows) <= 0.5 * sum(r["params_before"] for r in rows)
        if whiten:
            assert all(0 <= r["rel_error"] < 1 for r in planned)
        else:
            assert all(r["rel_error"] is None for r in rows)
    assert outs[True] < outs[False], outs


def test_whiten_needs_calibration_and_parses():
    cfg, problems = parse_stage({"lowrank": {"method": "svd", "rank_ratio": 0.5, "whiten": True}}, 0)
    assert not problems and cfg.whiten
    model = ToyCNN(width=8)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="calibration"):
        sk.lowrank_(model, cfg)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    plans = lowrank_model(model, cfg, [torch.randn(8, 1, 8, 8) for _ in range(2)])
    assert any(p.rank is not None and p.rel_error is not None for p in plans)
    assert isinstance(model.conv2, nn.Sequential)
