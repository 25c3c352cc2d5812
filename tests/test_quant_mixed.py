"""Sensitivity-guided mixed-precision PTQ (``PTQConfig.mixed``): the ranking is the measured per-layer loss, the
floor is met (or the reason says why), the kept layers really stay at higher precision, analysis never mutates,
config errors come with their recipe path before any compute, and the shipped recipe, the report and the CLI."""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from models import ToyCNN, ToyMLP
from pydantic import ValidationError
from torch import nn

from slimkit.config.base import build
from slimkit.config.quantize import Int, MixedPrecision, PTQConfig
from slimkit.config.recipe import parse_recipe
from slimkit.context import PassContext
from slimkit.errors import ConfigError, RecipeError
from slimkit.passes.quantize.mixed import plan_mixed_ptq
from slimkit.passes.quantize.modules import QuantWrapper
from slimkit.passes.quantize.ptq import ptq

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT.parent / "shared" / "schemas" / "report.schema.json"


@pytest.fixture
def toy() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = ToyMLP().eval()
    with torch.no_grad():
        model.fc2.weight[0, :4] *= 400.0  # huge outliers: per-tensor 4-bit wipes out the rest of fc2
    x = torch.randn(256, 64)
    y = model(x).argmax(1)
    return model, [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]


def _cfg(weights: Int | None = None, **mixed) -> PTQConfig:
    return PTQConfig(weights=weights or Int(4, per_channel=False), activations=None, calibration_batches=4,
                     mixed=MixedPrecision(**{"metric": "cosine", "floor": 0.995, "keep_as": "float", **mixed}))


def _cosine(model: nn.Module, ref: nn.Module, batches) -> float:
    with torch.no_grad():
        cos = [nn.functional.cosine_similarity(model(x), ref(x), dim=1) for x, _ in batches]
    return float(torch.cat(cos).mean())


def test_ranking_is_the_measured_loss_of_each_layer_quantized_alone(toy):
    model, batches = toy
    ctx = PassContext(calibration=batches)
    _, res, _ = plan_mixed_ptq(model, _cfg(), ctx, ptq)
    table = res["table"]
    assert [r["unit"] for r in table][0] == "fc2"
    assert [r["loss"] for r in table] == sorted((r["loss"] for r in table), reverse=True)
    # each row is the fidelity of the model PTQ builds with only that layer quantized (every other one skipped)
    for row in table:
        others = [n for n in ("fc1", "fc2", "fc3") if n != row["unit"]]
        alone = ptq(copy.deepcopy(model), PTQConfig(weights=Int(4, per_channel=False), activations=None,
                                                    calibration_batches=4, skip=others), PassContext(calibration=batches))
        assert row["score"] == pytest.approx(_cosine(alone, model, batches), abs=1e-6)
        assert row["loss"] == pytest.approx(1.0 - row["score"], abs=1e-12)
    assert table[0]["loss"] > 5 * max(r["loss"] for r in table[1:])
    assert res["all_compressed"] < 0.995  # the floor is not met with every layer at 4 bits


def test_floor_met_and_kept_layers_stay_float(toy):
    model, batches = toy
    ref = copy.deepcopy(model)
    ctx = PassContext(calibration=batches)
    out = ptq(model, _cfg(), ctx)
    res = ctx.extras["sensitivity"]
    assert res["met"] and res["score"] >= 0.995 and res["keep"][0] == "fc2" and res["keep_as"] == "float"
    assert res["trace"][0]["keep"] == [] and res["trace"][-1]["keep"] == res["keep"]
    for name in ("fc1", "fc2", "fc3"):
        mod = out.get_submodule(name)
        if name in res["keep"]:
            assert type(mod) is nn.Linear
        else:
            assert isinstance(mod, QuantWrapper) and mod.weight_fake_quant.bits == 4
    # the plan's measured score is the score of the model the stage returned
    assert _cosine(out, ref, batches) == pytest.approx(res["score"], abs=1e-6)


def test_float_kept_layers_rebuild_from_the_checkpoint(toy, tmp_path):
    from slimkit.exporters import load_model, save_model
    from slimkit.registry import spec_for

    model, batches = toy
    cfg = _cfg()
    ctx = PassContext(calibration=batches)
    out = ptq(model, cfg, ctx)
    keep = ctx.extras["sensitivity"]["keep"]
    assert 0 < len(keep) < 3
    save_model(out, tmp_path / "ck")

    def build(_spec):
        fresh = ToyMLP().eval()
        return spec_for(cfg).rebuild(fresh, cfg, json.loads((tmp_path / "ck" / "manifest.json").read_text()))

    again = load_model(tmp_path / "ck", build)
    for name in ("fc1", "fc2", "fc3"):
        assert isinstance(again.get_submodule(name), QuantWrapper) == (name not in keep), name
    x = batches[0][0]
    with torch.no_grad():
        assert torch.equal(again(x), out(x))


def test_keep_as_int8_overrides_the_kept_layers_to_8_bits(toy):
    model, batches = toy
    ctx = PassContext(calibration=batches)
    out = ptq(model, _cfg(Int(2, per_channel=True), keep_as="auto", floor=0.95), ctx)
    res = ctx.extras["sensitivity"]
    assert res["keep_as"] == "int8" and res["met"] and res["score"] >= 0.95
    assert res["keep"] == ["fc1", "fc2"] and res["keep"] == [r["unit"] for r in res["table"]][:2]
    for name in ("fc1", "fc2", "fc3"):
        mod = out.get_submodule(name)
        assert isinstance(mod, QuantWrapper)
        assert mod.weight_fake_quant.bits == (8 if name in res["keep"] else 2)


def test_accuracy_metric_is_relative_to_the_input_model(toy):
    model, batches = toy
    ref = copy.deepcopy(model)
    ctx = PassContext(calibration=batches, val_loader=batches[:2])
    out = ptq(model, _cfg(metric="accuracy", floor=0.9), ctx)
    res = ctx.extras["sensitivity"]
    assert res["data"] == "val" and res["samples"] == 128
    with torch.no_grad():
        acc = [(out(x).argmax(1) == y).double().mean() for x, y in batches[:2]]
        ref_acc = [(ref(x).argmax(1) == y).double().mean() for x, y in batches[:2]]
    assert res["reference_accuracy"] == pytest.approx(float(sum(ref_acc) / 2))
    assert res["score"] == pytest.approx(float(sum(acc) / 2) / res["reference_accuracy"])
    assert res["met"] and res["score"] >= 0.9 and res["keep"] == ["fc2", "fc3"]


def test_a_plan_that_keeps_every_layer_in_float_returns_the_float_model(toy):
    model, batches = toy
    ref = copy.deepcopy(model)
    ctx = PassContext(calibration=batches)
    out = ptq(model, _cfg(floor=1.0), ctx)
    res = ctx.extras["sensitivity"]
    assert sorted(res["keep"]) == ["fc1", "fc2", "fc3"] and not any(isinstance(m, QuantWrapper) for m in out.modules())
    assert torch.equal(out(batches[0][0]), ref(batches[0][0]))


def test_max_keep_stops_and_the_reason_says_why(toy):
    model, batches = toy
    ctx = PassContext(calibration=batches)
    out = ptq(model, _cfg(floor=1.0, max_keep=1), ctx)
    res = ctx.extras["sensitivity"]
    assert not res["met"] and res["keep"] == ["fc2"] and "max_keep=1" in res["reason"]
    assert type(out.fc2) is nn.Linear and isinstance(out.fc1, QuantWrapper)


def test_analysis_never_mutates_and_top1_on_a_cnn_with_batchnorm():
    torch.manual_seed(0)
    model = ToyCNN().eval()
    batches = [(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))) for _ in range(3)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = PTQConfig(weights=Int(2, per_channel=True), calibration_batches=3,
                    mixed=MixedPrecision(metric="top1_agreement", floor=0.9, layers=["conv*"]))
    resolved, res, calib = plan_mixed_ptq(model, cfg, PassContext(calibration=batches), ptq)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, QuantWrapper) for m in model.modules()) and isinstance(model.bn1, nn.BatchNorm2d)
    assert {r["unit"] for r in res["table"]} == {"conv1", "conv2"}  # fc is not a candidate: always quantized
    assert resolved.mixed is None and set(resolved.overrides) >= set(res["keep"]) and len(calib) == 3
    assert res["data"] == "calibration" and res["samples"] == 96


def test_bad_layer_name_is_a_config_error_before_anything_changes(toy):
    model, batches = toy
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="'fc9' matches no quantized layer.*Did you mean"):
        ptq(model, _cfg(layers=["fc9"]), PassContext(calibration=batches))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, QuantWrapper) for m in model.modules())
    with pytest.raises(ConfigError, match="needs labelled"):
        ptq(model, _cfg(metric="accuracy"), PassContext(calibration=[x for x, _ in batches]))


@pytest.mark.parametrize("mixed,needle", [
    ({"floor": 0}, r"stages\[0\]\.quantize\.mixed\.floor: must be > 0"),
    ({"floor": 1.5}, r"stages\[0\]\.quantize\.mixed\.floor: must be <= 1"),
    ({"metric": "acuracy"}, r"stages\[0\]\.quantize\.mixed\.metric"),
    ({"max_keep": -1}, r"stages\[0\]\.quantize\.mixed\.max_keep"),
    ({"flor": 0.9}, r"stages\[0\]\.quantize\.mixed\.flor: unknown key 'flor'.*floor"),
])
def test_bad_mixed_fields_are_recipe_errors_with_paths(mixed, needle):
    r = {"name": "m", "model": {"arch": "mlp"}, "data": {"name": "digits"},
         "stages": [{"quantize": {"method": "ptq", "weights": {"bits": 4}, "mixed": mixed}}]}
    with pytest.raises(RecipeError, match=needle):
        parse_recipe(r)


def test_keep_as_int8_needs_lower_bit_weights():
    with pytest.raises(RecipeError, match="keep_as 'int8' needs weights below 8 bits"):
        build(PTQConfig, {"weights": {"bits": 8}, "mixed": {"keep_as": "int8"}})
    cfg = build(PTQConfig, {"mixed": {}})
    assert cfg.mixed.keep_as == "auto" and cfg.mixed.metric == "top1_agreement" and cfg.mixed.floor == 0.99
    with pytest.raises(ValidationError):
        cfg.mixed.floor = 0.5  # frozen


def _small_recipe() -> dict:
    r = yaml.safe_load((ROOT / "recipes" / "quantize-mixed.yaml").read_text())
    r["model"]["kwargs"] = {"widths": [8, 16]}
    r["model"]["train"]["epochs"] = 3
    body = r["stages"][0]["quantize"]
    body["calibration_batches"] = 4
    body["weights"]["bits"] = 2  # lossy enough that some layer must be kept
    body["mixed"]["floor"] = 0.97
    r["evaluate"]["latency"] = None
    r["constraints"] = {}
    return r


def test_shipped_recipe_small_report_plot_and_rebuild(tmp_path):
    from slimkit.pipeline.artifacts import evaluate_saved, load_saved
    from slimkit.pipeline.runner import run_recipe

    out = tmp_path / "mixed"
    report = run_recipe(_small_recipe(), out=out)
    data = json.loads((out / "report.json").read_text())
    if SCHEMA.exists():
        import jsonschema

        jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    res = data["stages"][0]["sensitivity"]
    assert res["keep_as"] == "int8" and res["bits"] == 2 and res["data"] == "val"
    assert [r["loss"] for r in res["table"]] == sorted((r["loss"] for r in res["table"]), reverse=True)
    assert res["met"] == (res["score"] >= res["floor"])
    assert res["keep"] and res["reason"]  # 2-bit loses enough that at least one layer is kept
    assert res["keep"] == [r["unit"] for r in res["table"]][:len(res["keep"])]
    assert "Mixed precision (stage 0)" in report["verdict"]
    # the kept layers are 8-bit in the saved stage model, the others 2-bit; it rebuilds to the same accuracy
    model, _ = load_saved(out, "0")
    for row in res["table"]:
        mod = model.get_submodule(row["unit"])
        assert isinstance(mod, QuantWrapper)
        assert mod.weight_fake_quant.bits == (8 if row["unit"] in res["keep"] else 2), row
    assert evaluate_saved(out, "0")["accuracy"] == data["stages"][0]["metrics"]["accuracy"]
    md = (out / "report.md").read_text()
    assert "## Per-layer sensitivity: stage 0 quantize:ptq" in md
    assert f"| 1 | {res['table'][0]['unit']} |" in md
    html = (out / "report.html").read_text()
    imgs = re.findall(r'<img class="sensitivity"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == 1 and base64.b64decode(imgs[0])[:8] == b"\x89PNG\r\n\x1a\n"


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI entry point in this process; returns (exit code, stderr with whitespace collapsed, stdout)."""
    import sys

    from slimkit.cli import app as cli

    argv = sys.argv
    sys.argv = ["slimkit", *args]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, " ".join(captured.err.split()), captured.out


def _base_recipe(tmp_path) -> str:
    r = {"name": "base", "seed": 1, "model": {"arch": "mlp", "kwargs": {"hidden": [32]}, "train": {"epochs": 2}},
         "data": {"name": "digits"}, "evaluate": {"latency": None}, "stages": []}
    p = tmp_path / "base.yaml"
    p.write_text(yaml.safe_dump(r))
    return str(p)


def test_cli_user_errors_exit_2_before_any_compute(tmp_path, capsys):
    src = _base_recipe(tmp_path)
    cases = [
        (["--layer", "fc9"], "'fc9' matches no quantized layer"),
        (["--floor", "1.5"], "stages[0].quantize.mixed.floor: must be <= 1"),
        (["--floor", "0"], "stages[0].quantize.mixed.floor: must be > 0"),
        (["--metric", "acc"], "stages[0].quantize.mixed.metric"),
        (["--bits", "9"], "bits: must be <= 8, got 9"),
        (["--bits", "8", "--keep-as", "int8"], "needs weights below 8 bits"),
    ]
    for args, needle in cases:
        out = tmp_path / "run"
        code, err, _ = _main(capsys, "sensitivity", src, "--out", str(out), *args)
        assert code == 2, (args, err)
        assert needle in err and "Traceback" not in err, (args, err)
        assert not out.exists(), args


def test_cli_sensitivity_writes_table_png_and_json(tmp_path, capsys):
    out = tmp_path / "run"
    code, err, stdout = _main(capsys, "sensitivity", _base_recipe(tmp_path), "--bits", "2", "--floor", "0.95",
                      "--layer", "features.*,fc", "--out", str(out))
    assert code == 0, err[-2000:]
    res = json.loads((out / "sensitivity.json").read_text())
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert "per-layer sensitivity" in stdout and res["table"][0]["unit"] in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["stages"][0]["sensitivity"] == res
    assert report["stages"][0]["config"]["mixed"]["floor"] == 0.95
