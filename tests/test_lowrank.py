"""Low-rank factorization by SVD: exactness at full rank, rank selection, parameter counts, skips, ONNX,
the verb and recipe stages."""

from __future__ import annotations

import math

import pytest
import torch
from models import ToyCNN, ToyMLP
from torch import nn

import slimkit
from slimkit.config.lowrank import SVDConfig
from slimkit.errors import ConfigError, RecipeError
from slimkit.passes.lowrank.svd import (
    energy_rank,
    factorize_conv2d,
    factorize_linear,
    lowrank_model,
    plan_lowrank,
    retained_energy,
    saves_params,
)
from slimkit.registry import parse_stage


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("bias", [True, False])
def test_linear_full_rank_is_exact(bias):
    layer = nn.Linear(24, 40, bias=bias).double()
    fac = factorize_linear(layer, 24)
    x = torch.randn(7, 24, dtype=torch.float64)
    assert isinstance(fac, nn.Sequential) and len(fac) == 2
    assert fac[0].bias is None and (fac[1].bias is not None) == bias
    torch.testing.assert_close(fac(x), layer(x), atol=1e-10, rtol=0)
    layer32 = nn.Linear(24, 40, bias=bias)
    torch.testing.assert_close(factorize_linear(layer32, 24)(x.float()), layer32(x.float()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=2, dilation=2, bias=False),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2)),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=1),
])
def test_conv2d_full_rank_is_exact(kw):
    conv = nn.Conv2d(4, 6, **kw)
    full = min(6, 4 * math.prod(conv.kernel_size))
    fac = factorize_conv2d(conv, full)
    x = torch.randn(2, 4, 11, 9)
    assert fac[0].stride == conv.stride and fac[0].padding == conv.padding and fac[0].dilation == conv.dilation
    assert fac[1].kernel_size == (1, 1) and (fac[1].bias is not None) == (conv.bias is not None)
    torch.testing.assert_close(fac(x), conv(x), atol=1e-5, rtol=1e-5)


def test_truncation_error_is_the_dropped_singular_values():
    layer = nn.Linear(30, 20, bias=False)
    s = torch.linalg.svdvals(layer.weight.detach().double())
    fac = factorize_linear(layer, 5)
    w_hat = (fac[1].weight @ fac[0].weight).double()
    err = torch.linalg.matrix_norm(layer.weight.detach().double() - w_hat)  # Frobenius (Eckart-Young)
    assert math.isclose(float(err.detach()), float(s[5:].pow(2).sum().sqrt()), rel_tol=1e-4)


def test_energy_rank_reaches_energy_and_is_minimal():
    torch.manual_seed(1)
    for _ in range(20):
        s = torch.rand(50).sort(descending=True).values
        for e in (0.3, 0.5, 0.9, 0.99, 1.0):
            r = energy_rank(s, e)
            assert retained_energy(s, r) >= e - 1e-12
            if r > 1:
                assert retained_energy(s, r - 1) < e


def _decaying(layer: nn.Linear, rate: float) -> None:
    with torch.no_grad():
        u, s, vh = torch.linalg.svd(layer.weight, full_matrices=False)
        layer.weight.copy_(u @ torch.diag(rate ** torch.arange(float(s.numel()))) @ vh)


def test_energy_plan_on_layers():
    model = ToyMLP()
    _decaying(model.fc1, 0.9)
    _decaying(model.fc2, 0.95)
    plans = {p.name: p for p in plan_lowrank(model, SVDConfig(energy=0.9))}
    for name in ("fc1", "fc2"):
        p = plans[name]
        s = torch.linalg.svdvals(model.get_submodule(name).weight.detach().double())
        assert p.rank is not None
        assert retained_energy(s, p.rank) >= 0.9 and retained_energy(s, p.rank - 1) < 0.9


def test_no_saving_means_left_alone():
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10))
    before = [type(m) for m in model]
    plans = lowrank_model(model, SVDConfig(rank_ratio=0.5))  # r=5: 5*(10+10) = 100 >= 100
    assert all(p.rank is None and "would not save" in p.reason for p in plans)
    assert [type(m) for m in model] == before
    assert saves_params(10, 10, 4) and not saves_params(10, 10, 5)


def test_param_counts_follow_the_formula():
    model = ToyMLP()  # fc1 64->128, fc2 128->128, fc3 128->10
    n0 = _params(model)
    slimkit.lowrank_(model, SVDConfig(rank_ratio=0.25))
    r1, r2 = 16, 32  # ceil(0.25*64), ceil(0.25*128)
    r3 = 3  # ceil(0.25*10); 3*(128+10) < 1280, so fc3 is factorized too
    expected = n0 - 64 * 128 - 128 * 128 - 10 * 128 + r1 * (64 + 128) + r2 * (128 + 128) + r3 * (128 + 10)
    assert _params(model) == expected
    assert isinstance(model.fc1, nn.Sequential) and model.fc1[0].out_features == r1
    assert model.fc1[1].bias is not None and model.fc1[0].bias is None


def test_conv_param_counts():
    cnn = ToyCNN()
    n0 = _params(cnn)
    plans = {p.name: p for p in lowrank_model(cnn, SVDConfig(rank_ratio=0.25, include=["Conv2d"]))}
    delta = 0
    for name, (out_c, cols) in {"conv1": (16, 9), "conv2": (32, 144)}.items():
        r = math.ceil(0.25 * min(out_c, cols))
        if r * (out_c + cols) < out_c * cols:
            assert plans[name].rank == r
            delta += r * (out_c + cols) - out_c * cols
        else:
            assert plans[name].rank is None
    assert _params(cnn) == n0 + delta
    assert isinstance(cnn.conv2, nn.Sequential) and cnn.conv2[0].out_channels == 8
    assert not isinstance(cnn.fc, nn.Sequential)  # Linear not included


def test_param_budget_is_met_and_allocated_per_layer():
    torch.manual_seed(0)
    model = ToyMLP()
    _decaying(model.fc1, 0.95)
    _decaying(model.fc2, 0.7)  # a faster-decaying spectrum: fc2 should get a smaller rank than fc1
    dense = sum(m.weight.numel() for m in (model.fc1, model.fc2, model.fc3))
    plans = plan_lowrank(model, SVDConfig(param_budget=0.3))
    kept = sum(p.params for p in plans)
    assert 0.25 * dense <= kept <= 0.3 * dense  # within the budget, and not wastefully below it
    ranks = {p.name: p.rank for p in plans}
    assert ranks["fc2"] is not None and ranks["fc1"] is not None and ranks["fc2"] < ranks["fc1"]
    # better (smaller summed relative error) than a uniform rank ratio that even costs more
    uniform = plan_lowrank(model, SVDConfig(rank_ratio=0.2))
    assert sum(p.params for p in uniform) > kept
    assert sum(1 - p.energy for p in plans) < sum(1 - p.energy for p in uniform)


def test_skips_globs_groups_and_tied_weights():
    emb = nn.Embedding(100, 32)
    head = nn.Linear(32, 100, bias=False)
    head.weight = emb.weight  # tied
    model = nn.ModuleDict({"emb": emb, "head": head, "dw": nn.Conv2d(8, 8, 3, groups=8),
                           "keep": nn.Linear(64, 64), "other": nn.Linear(64, 64)})
    plans = {p.name: p for p in lowrank_model(model, SVDConfig(rank_ratio=0.1, skip=["kee*"]))}
    assert "tied" in plans["head"].reason and "grouped" in plans["dw"].reason
    assert "skip" in plans["keep"].reason and plans["other"].rank == 7
    assert isinstance(model["other"], nn.Sequential) and isinstance(model["keep"], nn.Linear)


def test_shared_module_is_replaced_everywhere():
    shared = nn.Linear(64, 64)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    lowrank_model(model, SVDConfig(rank_ratio=0.25))
    assert model[0] is model[2] and isinstance(model[0], nn.Sequential)


def test_verb_energy_and_output_close():
    model = ToyCNN(width=16).eval()
    x = torch.randn(4, 1, 8, 8)
    ref = model(x)
    out = slimkit.lowrank_(model, slimkit.SVDConfig(energy=0.999))
    assert out is model
    rel = (model(x) - ref).norm() / ref.norm()
    assert rel < 0.1


def test_finetune_without_loader_raises_before_touching():
    from slimkit.config.finetune import FinetuneConfig

    model = ToyMLP()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="train loader"):
        slimkit.lowrank_(model, SVDConfig(energy=0.9, finetune=FinetuneConfig(epochs=1)))
    assert model.state_dict().keys() == state.keys()


def test_finetune_after_factorization_runs():
    from slimkit.config.finetune import FinetuneConfig

    torch.manual_seed(0)
    x = torch.randn(64, 64)
    y = (x[:, 0] > 0).long()
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    model = ToyMLP()
    slimkit.lowrank_(model, SVDConfig(rank_ratio=0.25, finetune=FinetuneConfig(epochs=2, lr=1e-2)),
                     train_loader=loader)
    assert isinstance(model.fc1, nn.Sequential)


def test_onnx_export_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = ToyCNN(width=16)
    slimkit.lowrank_(model, SVDConfig(rank_ratio=0.3))
    assert isinstance(model.conv2, nn.Sequential) and isinstance(model.fc, nn.Sequential)
    model.eval()
    x = torch.randn(3, 1, 8, 8)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False,
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), model(x).detach(), atol=1e-5, rtol=1e-4)


def test_slimkit_exporter_parity_on_factorized_resnet(tmp_path):
    pytest.importorskip("onnxruntime")
    from models import ToyResNet

    from slimkit.exporters import check_parity, export_onnx

    model = ToyResNet(width=16)
    slimkit.lowrank_(model, SVDConfig(energy=0.8))
    assert any(isinstance(m, nn.Sequential) and isinstance(m[0], nn.Conv2d) and m[1].kernel_size == (1, 1)
               for m in model.modules())
    x = torch.randn(4, 1, 8, 8)
    path = export_onnx(model, tmp_path / "r.onnx", (x[:1],))
    res = check_parity(model, path, (x,), atol=1e-5, rtol=1e-4)
    assert res["ok"], res


def test_recipe_stage_parses_and_bad_values_have_paths():
    cfg, problems = parse_stage({"lowrank": {"energy": 0.9}}, 0)
    assert problems == [] and isinstance(cfg, SVDConfig) and cfg.energy == 0.9
    _, problems = parse_stage({"lowrank": {"energy": 1.5, "min_rank": 0}}, 2)
    paths = dict(problems)
    assert "stages[2].lowrank.energy" in paths and "stages[2].lowrank.min_rank" in paths
    _, problems = parse_stage({"lowrank": {"energy": 0.5, "rank_ratio": 0.5}}, 0)
    assert problems and "exactly one" in problems[0][1]
    from slimkit.config.recipe import parse_recipe

    with pytest.raises(RecipeError) as exc:
        parse_recipe({"name": "t", "model": {"arch": "mlp"}, "data": {"name": "digits"},
                      "stages": [{"lowrank": {"energy": 0.9, "finetune": {"epochs": -1}}}]})
    assert "stages[0].lowrank.finetune.epochs" in dict(exc.value.problems)


def test_rebuild_from_manifest_shapes():
    from slimkit.passes.lowrank.svd import _rebuild

    cfg = SVDConfig(energy=0.8)
    model = ToyMLP()
    lowrank_model(model, cfg)
    shapes = {n: {"out_features": m.out_features, "in_features": m.in_features}
              for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    fresh = _rebuild(ToyMLP(), cfg, {"module_shapes": shapes})
    fresh.load_state_dict(model.state_dict())  # same structure
    x = torch.randn(2, 64)
    torch.testing.assert_close(fresh(x), model(x))


def test_recipe_lowrank_then_distill_runs_and_resumes(tmp_path, caplog):
    """lowrank then distil back from the model before the recipe (the runner's default teacher); a resumed
    run restores the factorized checkpoint through the rebuild hook instead of recomputing it."""
    import logging

    from slimkit.pipeline.runner import run_recipe

    recipe = {
        "name": "lr", "seed": 1,
        "model": {"arch": "cnn-small", "kwargs": {"widths": [8, 16]}, "train": {"epochs": 2, "lr": 0.01}},
        "data": {"name": "digits", "batch_size": 64},
        "stages": [{"lowrank": {"rank_ratio": 0.3}}, {"distill": {"temperature": 4, "epochs": 1}}],
    }
    out = tmp_path / "run"
    report = run_recipe(recipe, out=out)
    assert [s["pass"] for s in report["stages"]] == ["lowrank:svd", "distill:logits"]
    assert report["stages"][0]["metrics"]["params"] < report["baseline"]["params"]
    # distilling back recovers part of what factorizing lost
    assert report["stages"][1]["metrics"]["accuracy"] > report["stages"][0]["metrics"]["accuracy"]
    with caplog.at_level(logging.INFO, logger="slimkit.pipeline.runner"):
        again = run_recipe(recipe, out=out, resume=True)
    assert "resumed after stage 1" in caplog.text and "cannot restore" not in caplog.text
    assert again["final"]["params"] == report["final"]["params"]
