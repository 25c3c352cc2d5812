"""The one export path for quantized models (``slimkit.export(..., precision=...)``) and the registry rules
it relies on: routes read from the export forms the passes declare, lists generated from the registry, the
same ``finetune`` rule for every pass."""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import pytest
import torch
from models import ToyCNN, ToyMLP
from torch import nn

import slimkit as sk
from slimkit import registry
from slimkit.context import PassContext
from slimkit.errors import ConfigError
from slimkit.evaluation.latency import ort_feed, ort_session


def _data(shape: tuple[int, ...], n: int = 96, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    return [(x[i:i + 32], torch.zeros(32, dtype=torch.int64)) for i in range(0, n, 32)]


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _run(path: Path, x: torch.Tensor) -> torch.Tensor:
    sess = ort_session(path, threads=1)
    return torch.from_numpy(sess.run(None, ort_feed(sess, x))[0])


def test_int8_of_a_ptq_model_carries_its_own_scales(tmp_path: Path) -> None:
    model = ToyCNN(width=8).eval()
    calib = _data((1, 8, 8))
    sk.quantize_(model, sk.PTQConfig(), calibration=calib)
    entry = sk.export(model, tmp_path / "m.onnx", example_inputs=model.example_inputs, precision="int8",
                      calibration=calib)
    assert entry["route"] == "fakequant-qdq" and entry["parity"]["ok"]
    assert entry["parity"]["reference"] == "pytorch fake-quant model"
    assert "QuantizeLinear" in _ops(tmp_path / "m.onnx")
    assert entry["fp32"]["artifact"] == tmp_path / "m.fp32.onnx" and (tmp_path / "m.fp32.onnx").exists()
    assert 0 < entry["size_ratio"] < 0.6 and entry["size_bytes"] == (tmp_path / "m.onnx").stat().st_size
    assert "latency not measured" in entry["note"]


def test_fp32_of_a_packed_model_is_its_float_equivalent(tmp_path: Path) -> None:
    model = ToyMLP().eval()
    sk.quantize_(model, sk.WeightOnlyConfig(bits=4, group_size=32, backend="slimkit"))
    entry = sk.export(model, tmp_path / "w.onnx", example_inputs=model.example_inputs)
    assert entry["source"] == "float copy of the packed model" and "float equivalent" in entry["note"]
    assert "MatMulNBits" not in _ops(tmp_path / "w.onnx")
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.allclose(_run(tmp_path / "w.onnx", x), model(x), atol=1e-4)  # the quantized weights


def test_float_model_int8_needs_a_quantizer_and_auto_picks_dynamic_for_linear(tmp_path: Path) -> None:
    model = ToyMLP().eval()
    with pytest.raises(ConfigError, match="quantize='auto'"):
        sk.export(model, tmp_path / "a.onnx", example_inputs=model.example_inputs, precision="int8")
    entry = sk.export(model, tmp_path / "a.onnx", example_inputs=model.example_inputs, precision="int8",
                      quantize="auto")
    assert entry["route"] == "onnxruntime-dynamic" and entry["quantize"]["mode"] == "dynamic"
    assert entry["size_ratio"] < 0.5 and entry["parity"]["cosine"] > 0.98
    with pytest.raises(ConfigError, match="calibration"):
        sk.export(ToyCNN(), tmp_path / "c.onnx", example_inputs=ToyCNN().example_inputs, precision="int8",
                  quantize="auto")


def test_an_explicit_quantizer_gets_the_float_equivalent_of_a_quantized_model(tmp_path: Path) -> None:
    from slimkit.config.quantize_ort import OrtInt8Config

    model = ToyMLP().eval()
    sk.quantize_(model, sk.PTQConfig(), calibration=_data((64,)))  # fake quant: torch.export cannot trace it
    out = sk.export(model, tmp_path / "o.onnx", example_inputs=model.example_inputs,
                    quantize=OrtInt8Config(mode="dynamic"))
    assert out["parity"]["cosine"] > 0.98 and "MatMulInteger" in _ops(tmp_path / "o.onnx")


def test_float_copy_follows_the_declared_forms() -> None:
    from slimkit.exporters.quantized import float_copy, quant_kind

    model = ToyMLP().eval()
    assert quant_kind(model) is None
    q = copy.deepcopy(model)
    sk.quantize_(q, sk.LogQuantConfig(bits=4))
    assert quant_kind(q) == "fakequant-nonlinear"
    f = float_copy(q)
    assert quant_kind(f) is None and quant_kind(q) == "fakequant-nonlinear"  # the input is not modified
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert torch.allclose(f(x), q(x), atol=1e-5)


def test_finetune_section_needs_a_train_loader_for_every_pass() -> None:
    ft = sk.FinetuneConfig(epochs=1)
    model = ToyCNN(width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="train loader"):  # structured pruning used to skip fine-tuning
        sk.prune_(model, sk.StructuredPruneConfig(ratio=0.5, finetune=ft), example_inputs=model.example_inputs)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for spec in registry.all_specs():
        if "finetune" in spec.config_cls.model_fields:
            cfg = spec.config_cls.model_construct(finetune=ft)
            assert "train_loader" in spec.required(cfg), spec.method


def test_needs_may_depend_on_the_config() -> None:
    from typing import ClassVar, Literal

    from slimkit.config.base import PassConfig

    class ScaledConfig(PassConfig):
        kind: ClassVar[str] = "finetune"
        method: Literal["scaled-test"] = "scaled-test"
        calibrated: bool = False

    calls: list[int] = []
    registry.register_pass(ScaledConfig, needs=lambda cfg: ("calibration",) if cfg.calibrated else ())(
        lambda model, cfg, ctx: calls.append(1))
    try:
        sk.apply_pass(ToyMLP(), ScaledConfig())
        with pytest.raises(ConfigError, match="needs calibration"):
            sk.apply_pass(ToyMLP(), ScaledConfig(calibrated=True))
        sk.apply_pass(ToyMLP(), ScaledConfig(calibrated=True), PassContext(calibration=[torch.zeros(1, 64)]))
        assert calls == [1, 1]
    finally:
        registry.unregister_pass(ScaledConfig)


def test_lists_are_generated_from_the_registry() -> None:
    from slimkit.cli.quantize import stage_for

    quantize = registry.methods("quantize")
    assert {"ptq", "dynamic", "qat", "weight-only", "fp16", "bf16", "log", "binary"} <= set(quantize)
    with pytest.raises(ConfigError, match="Expected one of " + ", ".join(quantize)):
        stage_for("quantise", None)
    assert stage_for("weight-only", 4, 32) == {"quantize": {"method": "weight-only", "bits": 4, "group_size": 32}}
    public = sk._LAZY
    assert "OrtInt8Config" in public and "Int" in public
    assert {s.config_cls.__name__ for s in registry.all_specs()} <= set(public)
    assert set(public) <= set(sk.__all__)


def test_lowrank_record_is_stored_whole_and_gives_notes() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    ctx = PassContext(example_inputs=(torch.randn(1, 8),))
    sk.lowrank_(model, sk.SVDConfig(energy=0.9), ctx=ctx)
    rec = ctx.records[-1]
    assert rec.key == "lowrank" and ctx.extras["lowrank"] is rec and len(rec.layers) == 2
    js = rec.to_json()
    assert [p["name"] for p in js["layers"]] == ["0", "2"] and all("rank" in p for p in js["layers"])
    assert rec.notes(3)[0].startswith("Low-rank (stage 3): ")
