"""Post-training structured pruning with reconstruction: the greedy/refit math against direct least squares,
the pass on toy models (fidelity better than one-shot l2 at the same ratio, MACs target, records, BatchNorm
intercept, Fisher criterion), recipe parsing and typed errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.config.base import build
from slimkit.errors import ConstraintError, RecipeError
from slimkit.passes.prune.reconstruct import greedy_order, refit, refit_no_worse, relative_error
from slimkit.passes.prune.structured import count_macs
from slimkit.registry import parse_stage


def _moments(x: torch.Tensor) -> torch.Tensor:
    z = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    return z.T @ z / len(z)


def test_greedy_and_refit_match_least_squares_on_the_data() -> None:
    torch.manual_seed(0)
    n, d, o = 4000, 24, 6
    x = (torch.randn(n, d) @ torch.randn(d, d) + 0.5).double()
    w = torch.cat([torch.randn(o, d), torch.randn(o, 1)], 1).double()
    h = _moments(x)
    cols = {i: torch.tensor([i]) for i in range(d)}
    order, errors = greedy_order(w, h, cols, ridge=0.0, max_remove=10)
    assert len(set(order)) == 10 and all(b >= a - 1e-12 for a, b in zip(errors, errors[1:], strict=False))
    keep = torch.tensor(sorted(set(range(d)) - set(order)))
    z = torch.cat([keep, torch.tensor([d])])
    v = refit(w, h[:, z], h[z][:, z], ridge=0.0)
    # the refit is the least-squares solution on the rows themselves
    y = x @ w[:, :d].T + w[:, d]
    xz = torch.cat([x[:, keep], torch.ones(n, 1, dtype=x.dtype)], 1)
    direct = torch.linalg.lstsq(xz, y).solution.T
    assert torch.allclose(v, direct, atol=1e-8)
    measured = float((xz @ v.T - y).pow(2).sum() / y.pow(2).sum())
    assert relative_error(w, v, h, h[:, z], h[z][:, z]) == pytest.approx(measured, rel=1e-6)
    # the greedy's running error is the refit error of the removed set
    assert errors[-1] == pytest.approx(measured, rel=1e-6)
    # and it beats dropping the same columns without refit (the mean is not even compensated there)
    plain = x[:, keep] @ w[:, keep].T + w[:, d]
    assert measured < 0.5 * float((plain - y).pow(2).sum() / y.pow(2).sum())


def test_block_greedy_removes_whole_channels() -> None:
    torch.manual_seed(1)
    x = torch.randn(2000, 12).double()
    x[:, 8:] = x[:, :4] * 2  # channels 4..5 (columns 8..11) copy channels 0..1: free to remove with refit
    w = torch.randn(3, 13).double()
    cols = {c: torch.arange(2 * c, 2 * c + 2) for c in range(6)}
    order, errors = greedy_order(w, _moments(x), cols, ridge=1e-9, max_remove=2)
    assert errors[-1] < 1e-6
    assert len(set(order) & {0, 4}) == 1 and len(set(order) & {1, 5}) == 1


class Redundant(nn.Module):
    """conv-bn-relu, a 1x1 conv (bias-free, read by a BatchNorm), pool, linear; the first conv has filters
    that are near copies of each other, as trained CNNs do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv1.weight[16:] = self.conv1.weight[:16] * 1.5 + 0.01 * torch.randn(16, 3, 3, 3)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 24, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 10)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _data(seed: int, n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 3, 12, 12, generator=g) for _ in range(n)]


def _rel_mse(model: nn.Module, ref: nn.Module, batches: list[torch.Tensor]) -> float:
    with torch.no_grad():
        a = torch.cat([model(b) for b in batches])
        b = torch.cat([ref(b) for b in batches])
    return float((a - b).pow(2).sum() / b.pow(2).sum())


def test_posttrain_beats_one_shot_l2_on_held_out_inputs() -> None:
    base = Redundant()
    calib, held = _data(0), _data(1)
    x = (calib[0][:1],)
    post = copy.deepcopy(base)
    ctx_cfg = sk.PostTrainPruneConfig(ratio=0.5, loss="mse", refit_passes=1)
    sk.prune_(post, ctx_cfg, calibration=calib, example_inputs=x)
    l2 = copy.deepcopy(base)
    sk.prune_(l2, sk.StructuredPruneConfig(ratio=0.5), example_inputs=x)
    assert post.conv1.out_channels == 16 and post.conv2.out_channels == 12
    err_post, err_l2 = _rel_mse(post, base, held), _rel_mse(l2, base, held)
    assert err_post < 0.05, err_post
    assert err_post < 0.25 * err_l2, (err_post, err_l2)


def test_macs_target_records_and_bn_intercept() -> None:
    base = Redundant()
    calib = _data(0)
    x = (calib[0][:1],)
    from slimkit.context import PassContext
    from slimkit.registry import spec_for

    model = copy.deepcopy(base)
    cfg = sk.PostTrainPruneConfig(target_macs=0.6, loss="mse", refit_passes=2, round_to=2, sensitivity_points=3,
                                  macs_tolerance=0.05)
    ctx = PassContext(example_inputs=x, calibration=calib)
    spec_for(cfg).handler(model, cfg, ctx)
    macs0, macs1 = count_macs(base, x), count_macs(model, x)
    assert macs1 / macs0 == pytest.approx(0.6, abs=0.6 * cfg.macs_tolerance)
    info = ctx.extras["posttrain"]
    assert info["macs_after"] == macs1 and info["macs_before"] == macs0
    recs = {r["consumer"]: r for r in info["groups"]}
    assert set(recs) == {"conv2", "fc"}
    assert recs["conv2"]["intercept"] == "bn2" and recs["fc"]["intercept"] == "bias"
    for r in recs.values():
        assert len(r["relative_error"]) == 1 + cfg.refit_passes
        assert (r["units"] - r["removed"]) % 2 == 0
        assert len(r["removed_consumer_channels"]) == r["removed"]
    assert model.conv1.out_channels == 32 - recs["conv2"]["removed"]
    rows = {r["layer"]: r for r in ctx.extras["layers"]}  # what the run report renders per layer
    assert set(rows) == {"conv2", "fc"} and rows["conv2"]["rel_error"] == recs["conv2"]["relative_error"][-1]
    # the BN that reads the bias-free consumer absorbed the intercept: its running mean changed
    assert not torch.allclose(model.bn2.running_mean, base.bn2.running_mean)


def test_fisher_criterion_on_a_linear_consumer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    base = copy.deepcopy(model)
    calib = [torch.randn(64, 8) for _ in range(4)]
    sk.prune_(model, sk.PostTrainPruneConfig(ratio=0.5, criterion="fisher", loss="kl", refit_passes=1),
              calibration=calib)
    assert model[0].out_features == 32 and model[2].in_features == 32
    held = [torch.randn(64, 8) for _ in range(2)]
    with torch.no_grad():
        agree = torch.cat([(model(b).argmax(1) == base(b).argmax(1)) for b in held]).float().mean()
    assert agree > 0.8


def test_a_consumer_with_fewer_calibration_rows_than_inputs_keeps_its_group() -> None:
    """The fc after global pooling sees one row per image: 8 fit rows for 24 inputs would make its refit exact on
    the calibration images and its cost curve look free, so its group is kept whole (with why); conv2 sees 8 x
    144 positions per image and is pruned; min_rows_per_input=0 prunes the fc group anyway."""
    from slimkit.context import PassContext
    from slimkit.registry import spec_for

    calib = [b[:8] for b in _data(0, 2)]  # the first batch scores the sensitivity, the second is fit
    x = (calib[0][:1],)
    model = Redundant()
    cfg = sk.PostTrainPruneConfig(ratio=0.5, loss="mse", refit_passes=1)
    ctx = PassContext(example_inputs=x, calibration=calib)
    spec_for(cfg).handler(model, cfg, ctx)
    info = ctx.extras["posttrain"]
    assert [r["consumer"] for r in info["groups"]] == ["conv2"]
    kept = [k for k in info["kept_groups"] if "min_rows_per_input" in k["kept"]]
    assert len(kept) == 1 and "8 calibration rows for 24 inputs" in kept[0]["kept"]
    assert (kept[0]["consumer"], kept[0]["rows"], kept[0]["inputs"]) == ("fc", 8, 24)
    assert model.conv2.out_channels == 24 and model.fc.in_features == 24 and model.conv1.out_channels == 16
    anyway = Redundant()
    sk.prune_(anyway, cfg.model_copy(update={"min_rows_per_input": 0.0}), calibration=calib, example_inputs=x)
    assert anyway.conv2.out_channels == 12 and anyway.fc.in_features == 12
    with pytest.raises(ConstraintError, match="too little calibration data") as err:
        sk.prune_(nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4)).eval(), cfg,
                  calibration=[torch.randn(16, 8), torch.randn(16, 8)])
    assert "16 rows, 64 inputs" in str(err.value) and "min_rows_per_input" in err.value.hint


def test_recipe_stage_and_errors() -> None:
    cfg, problems = parse_stage({"prune": {"method": "posttrain", "target_macs": 0.75, "round_to": 8}}, 0)
    assert not problems and isinstance(cfg, sk.PostTrainPruneConfig) and cfg.target_macs == 0.75
    _, problems = parse_stage({"prune": {"method": "posttrain", "target_macs": 0.75, "ratio": 0.2}}, 0)
    assert problems and "exactly one" in problems[0][1]
    with pytest.raises(RecipeError, match="ridge"):
        build(sk.PostTrainPruneConfig, {"target_macs": 0.5, "ridge": -1})
    with pytest.raises(ConstraintError, match="no reconstructable group"):
        sk.prune_(nn.Sequential(nn.Linear(4, 3)), sk.PostTrainPruneConfig(ratio=0.5),
                  calibration=[torch.randn(8, 4)])
    with pytest.raises(ConstraintError, match="cannot be reached"):
        sk.prune_(Redundant(), sk.PostTrainPruneConfig(target_macs=0.05), calibration=_data(0, 1))


class InvertedResidual(nn.Module):
    """Two MobileNetV2 inverted-residual blocks (expand 1x1 - BN - ReLU6 - depthwise 3x3 - BN - ReLU6 - project 1x1
    - BN, the second with a residual add) and a linear head: the hidden channels are the reconstructable groups,
    the project convs their consumers. BN statistics are made uneven, as trained ones are."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)

        def block(cin: int, hidden: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
                                 nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
                                 nn.BatchNorm2d(hidden), nn.ReLU6(), nn.Conv2d(hidden, cout, 1, bias=False),
                                 nn.BatchNorm2d(cout))
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.b1, self.b2 = block(8, 32, 12), block(12, 48, 12)
        self.fc = nn.Linear(12, 5)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.05, 3.0)
                m.weight.data.uniform_(0.2, 2.0)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b1(torch.relu(self.stem(x)))
        h = h + self.b2(h)
        return self.fc(h.mean((2, 3)))


def test_refit_never_increases_the_consumers_error_on_calibration_data() -> None:
    from slimkit.graph import build_dependency_graph
    from slimkit.passes.prune.reconstruct import (
        consumer_stats,
        find_intercepts,
        find_targets,
        moments,
        weight_aug,
    )

    model = InvertedResidual()
    calib = _data(2)
    x = (calib[0][:1],)
    targets, _ = find_targets(model, build_dependency_graph(model, x))
    find_intercepts(model, targets, x)
    found = {t.consumer: t.intercept for t in targets}
    assert found["b1.6"] == "b1.7" and found["b2.6"] == "b2.7"  # the BN reading each project conv
    stats = consumer_stats(model, targets, calib, None)
    for t in targets:
        if t.consumer not in ("b1.6", "b2.6"):
            continue
        assert t.row_scale is not None and t.row_scale.shape == (model.get_submodule(t.consumer).out_channels,)
        w, h = weight_aug(model, t), moments(stats[t.consumer])
        d = h.shape[0] - 1
        order, errors = greedy_order(w * t.row_scale[:, None], h, t.cols, 1e-3, len(t.cols) // 2)
        for k in (1, len(order) // 2, len(order)):
            drop = {int(c) for u in order[:k] for c in t.cols[u]}
            keep = torch.tensor([c for c in range(d) if c not in drop])
            z = torch.cat([keep, torch.tensor([d])])
            plain = w[:, z]  # the kept columns as they were, original intercept: no refit
            fitted, e_fit = refit_no_worse(w, plain, h, h[:, z], h[z][:, z], 1e-3)
            assert e_fit == pytest.approx(relative_error(w, fitted, h, h[:, z], h[z][:, z]), rel=1e-9, abs=1e-15)
            e_plain = relative_error(w, plain, h, h[:, z], h[z][:, z])
            assert e_fit <= e_plain, (t.consumer, k, e_fit, e_plain)
            if e_plain > 1e-6:  # something was lost: the least-squares refit wins back most of it
                assert e_fit < 0.5 * e_plain, (t.consumer, k, e_fit, e_plain)


def test_posttrain_on_inverted_residuals_keeps_shapes_and_onnx_parity(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from slimkit.context import PassContext
    from slimkit.exporters import check_parity, export_onnx
    from slimkit.registry import spec_for

    base = InvertedResidual()
    calib, held = _data(2, 6), _data(5, 2)
    x = (calib[0][:1],)
    model = copy.deepcopy(base)
    cfg = sk.PostTrainPruneConfig(target_macs=0.7, loss="mse", refit_passes=1, round_to=4, macs_tolerance=0.05)
    ctx = PassContext(example_inputs=x, calibration=calib)
    spec_for(cfg).handler(model, cfg, ctx)
    info = ctx.extras["posttrain"]
    assert 0.6 < count_macs(model, x) / count_macs(base, x) <= 0.7 * (1 + cfg.macs_tolerance)
    recs = {r["consumer"]: r for r in info["groups"]}
    for blk, rec in (("b1", recs["b1.6"]), ("b2", recs["b2.6"])):
        hidden = rec["units"] - rec["removed"]
        seq = model.get_submodule(blk)
        # expand, both BNs, the depthwise conv and the project conv agree on the kept hidden width
        assert (seq[0].out_channels, seq[1].num_features, seq[3].in_channels, seq[3].out_channels, seq[3].groups,
                seq[4].num_features, seq[6].in_channels) == (hidden,) * 7
        assert hidden % 4 == 0 and seq[6].out_channels == 12
        # the refit on the pruned model's own inputs did not make the consumer worse than the first refit
        assert rec["relative_error"][-1] <= rec["relative_error"][0] * 1.05 + 1e-6, rec["relative_error"]
    out = model(held[0])
    assert out.shape == base(held[0]).shape
    assert _rel_mse(model, base, held) < 0.2
    path = export_onnx(model, tmp_path / "m.onnx", x)
    parity = check_parity(model, path, held[0][:4], atol=1e-4, rtol=1e-4)
    assert parity["ok"], parity


def test_sequential_refit_takes_the_consumers_one_at_a_time_in_execution_order(monkeypatch) -> None:
    # sequential: one paired forward per consumer and pass, in the order they run, each seeing the refits
    # before it; joint: one paired forward per pass for all of them. Both keep the output close on held-out data.
    import slimkit.passes.prune.posttrain as pt

    base = InvertedResidual()
    calib, held = _data(2, 6), _data(5, 2)
    x = (calib[0][:1],)
    calls: list[list[str]] = []
    real = pt.paired_stats

    def spy(reference, current, names, calibration, max_batches, **kw):  # noqa: ANN001, ANN003, ANN202
        calls.append(list(names))
        return real(reference, current, names, calibration, max_batches, **kw)

    monkeypatch.setattr(pt, "paired_stats", spy)
    errs = {}
    for order in ("joint", "sequential"):
        calls.clear()
        model = copy.deepcopy(base)
        sk.prune_(model, sk.PostTrainPruneConfig(ratio=0.5, loss="mse", refit_passes=2, refit_order=order),
                  calibration=calib, example_inputs=x)
        errs[order] = _rel_mse(model, base, held)
        if order == "joint":
            assert len(calls) == 2 and sorted(calls[0]) == ["b1.0", "b1.6", "b2.6"], calls
        else:
            assert calls == [["b1.0"], ["b1.6"], ["b2.6"]] * 2, calls
    assert errs["sequential"] < 0.05 and errs["joint"] < 0.05, errs


class ResidualBlocks(nn.Module):
    """Inverted-residual blocks whose residual add happens inside the block module, as in torchvision's
    MobileNetV2 (``InvertedResidual.forward``: ``x + self.conv(x)``)."""

    class Block(nn.Module):
        def __init__(self, c: int, hidden: int) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
                                      nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
                                      nn.BatchNorm2d(hidden), nn.ReLU6(), nn.Conv2d(hidden, c, 1, bias=False),
                                      nn.BatchNorm2d(c))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(*[self.Block(16, 32) for _ in range(3)])
        self.fc = nn.Linear(16, 5)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.05, 3.0)
                m.weight.data.uniform_(-2.0, 2.0)  # negative scales too: the drift is divided by the signed one
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))


def test_stream_target_finds_residual_blocks_and_corrects_the_drift() -> None:
    from slimkit.context import PassContext
    from slimkit.registry import spec_for

    base = ResidualBlocks()
    calib, held = _data(2, 6), _data(5, 4)
    x = (calib[0][:1],)
    errs, streams = {}, {}
    for on in (False, True):
        model = copy.deepcopy(base)
        cfg = sk.PostTrainPruneConfig(ratio=0.75, loss="mse", refit_passes=1, stream_target=on)
        ctx = PassContext(example_inputs=x, calibration=calib)
        spec_for(cfg).handler(model, cfg, ctx)
        streams[on] = {r["consumer"]: r["stream"] for r in ctx.extras["posttrain"]["groups"]}
        with torch.no_grad():  # the residual stream at the last block, before pooling
            feats = [(model.blocks(torch.relu(model.stem(b))), base.blocks(torch.relu(base.stem(b)))) for b in held]
        errs[on] = sum(float((a - b).pow(2).sum()) for a, b in feats) / sum(float(b.pow(2).sum()) for _, b in feats)
    # each project conv's BN output is added to its block's input inside the block module
    assert streams[True] == {f"blocks.{i}.conv.6": f"blocks.{i}" for i in range(3)}, streams
    assert set(streams[False].values()) == {None}
    # refitting each block to the original stream (not only its own branch) leaves less error at the output
    assert errs[True] < errs[False], errs


def test_stream_drift_is_absorbed_by_the_next_blocks_refit() -> None:
    # a shift of the residual stream after block 0 (its last BN's beta): block 1's project conv refit to the
    # original output plus the stream drift (divided by its BN's signed scale) cancels it at block 1's output;
    # refit to its own branch output only, it cannot
    from slimkit.analysis.paired import Stream, paired_stats
    from slimkit.graph import build_dependency_graph
    from slimkit.passes.prune.reconstruct import (
        find_intercepts,
        find_streams,
        find_targets,
        install,
        joint_moments,
        refit,
        stream_factor,
        weight_aug,
    )

    base = ResidualBlocks()
    calib, held = _data(2, 6), _data(5, 4)
    x = (calib[0][:1],)
    cur = copy.deepcopy(base)
    with torch.no_grad():
        cur.blocks[0].conv[7].bias += 0.3 * torch.randn(16, generator=torch.Generator().manual_seed(0))
    targets, _ = find_targets(cur, build_dependency_graph(cur, x))
    find_intercepts(cur, targets, x)
    find_streams(cur, targets, x)
    t = next(t for t in targets if t.consumer == "blocks.1.conv.6")
    assert t.stream == "blocks.1" and t.intercept == "blocks.1.conv.7"

    def stream_error(m: nn.Module) -> float:
        with torch.no_grad():
            pairs = [(m.blocks[:2](torch.relu(m.stem(b))), base.blocks[:2](torch.relu(base.stem(b)))) for b in held]
        return sum(float((a - b).pow(2).sum()) for a, b in pairs) / sum(float(b.pow(2).sum()) for _, b in pairs)

    errs = {}
    for on in (False, True):
        m = copy.deepcopy(cur)
        streams = {t.consumer: Stream(t.stream, factor=stream_factor(m, t))} if on else {}
        st = paired_stats(base, m, [t.consumer], calib, None, streams=streams)[t.consumer]
        _, hxz, hzz = joint_moments(st, m.get_submodule(t.consumer).weight[0].numel())
        w = weight_aug(base, t)
        if on:
            w = torch.cat([w[:, :-1], torch.eye(w.shape[0], dtype=w.dtype), w[:, -1:]], 1)
        install(m, t, refit(w, hxz, hzz, 1e-6))
        errs[on] = stream_error(m)
    assert errs[True] < 0.01 * errs[False], errs  # measured: 0.245 -> 0.00026
