"""QDQ ONNX export of slimkit fake-quant models (PTQ and QAT): the ONNX model runs in onnxruntime, carries
the model's own scales, stores weights as int8 codes and matches the PyTorch fake-quant model."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from models import ToyCNN, ToyResNet
from onnx import numpy_helper
from torch import nn

import slimkit
from slimkit.errors import ConfigError
from slimkit.exporters.onnx_int8 import export_fp32_onnx, int8_parity, onnx_size_bytes, ort_predict
from slimkit.exporters.onnx_qdq import export_qdq_from_fakequant, fold_weight_quantize

ptq_mod = pytest.importorskip("slimkit.passes.quantize.ptq", reason="PTQ pass (slimkit.passes.quantize.ptq) not there")
from slimkit.config.quantize import Int, PTQConfig  # noqa: E402


def data(n: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(10, 1, 8, 8, generator=g)
    return protos[torch.randint(0, 10, (n,), generator=g)] + 0.5 * torch.randn(n, 1, 8, 8, generator=g)


def calib(x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + 32], torch.zeros(len(x[i:i + 32]), dtype=torch.int64)) for i in range(0, len(x), 32)]


def int8_weights(path: Path) -> int:
    proto = onnx.load(str(path))
    return sum(int(np.prod(t.dims)) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2)


def test_ptq_int8_model_exports_to_qdq_and_matches(tmp_path: Path) -> None:
    model = ToyResNet(width=16).eval()
    x = data()
    float_model = copy.deepcopy(model)
    slimkit.quantize_(model, PTQConfig(), calibration=calib(x))
    path = export_qdq_from_fakequant(model, tmp_path / "ptq.onnx", model.example_inputs)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") >= 6 and "Conv" in ops  # layer inputs (b2 and proj share one)
    n_weights = sum(m.weight.numel() for m in float_model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    assert int8_weights(path) == n_weights  # every weight stored as int8 codes, none left in float
    stats = int8_parity(path, model, [x[:128]], min_top1=1.0)
    logits = model(x[:128]).detach().abs().max().item()
    assert stats["max_abs_diff"] <= 1e-3 * max(logits, 1.0), stats
    fp32 = export_fp32_onnx(float_model, tmp_path / "fp32.onnx", float_model.example_inputs)
    assert onnx_size_bytes(path) < 0.5 * onnx_size_bytes(fp32)
    assert ort_predict(path, [x[:5]]).shape == (5, 10)  # dynamic batch
    # the model itself is untouched by export
    assert type(model.stem[0]).__name__ == "QuantConv2d"


def test_scales_in_onnx_are_the_models(tmp_path: Path) -> None:
    model = ToyCNN(width=8).eval()
    slimkit.quantize_(model, PTQConfig(weights=Int(4, per_channel=True),
                                       activations=Int(4, symmetric=False, unsigned=True)), calibration=calib(data()))
    path = export_qdq_from_fakequant(model, tmp_path / "w4a4.onnx", model.example_inputs)
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    want = model.conv2.weight_fake_quant.scale.detach().numpy()
    assert any(v.shape == want.shape and np.allclose(v, want) for v in inits.values())
    codes = [v for v in inits.values() if v.dtype == np.int8 and v.size == model.conv2.module.weight.numel()]
    assert codes and np.abs(codes[0]).max() <= 7  # 4-bit symmetric codes in an int8 container
    stats = int8_parity(path, model, [data(128, seed=1)], min_top1=1.0)
    assert stats["max_abs_diff"] < 1e-3


def test_qat_model_exports_and_runs(tmp_path: Path) -> None:
    qat = pytest.importorskip("slimkit.passes.quantize.qat", reason="QAT pass (slimkit.passes.quantize.qat) not there")
    from slimkit.config.finetune import FinetuneConfig
    from slimkit.config.quantize import QATConfig

    del qat
    torch.manual_seed(0)
    model = ToyCNN(width=8)
    x = data(256)
    y = torch.randint(0, 10, (256,))
    loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    cfg = QATConfig(bits=4, activations=8, finetune=FinetuneConfig(epochs=1, lr=1e-3))
    slimkit.quantize_(model, cfg, train_loader=loader, calibration=loader, example_inputs=model.example_inputs)
    model.eval()
    path = export_qdq_from_fakequant(model, tmp_path / "qat.onnx", model.example_inputs)
    stats = int8_parity(path, model, [x[:128]], min_top1=0.98)
    assert stats["cosine"] > 0.999
    wq = next(m for m in model.modules() if type(m).__name__ == "QuantConv2d").weight_fake_quant
    inits = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    assert any(v.shape == tuple(wq.scale.shape) and np.allclose(v, wq.scale.detach().numpy()) for v in inits)


def test_log_binary_and_float_models_are_refused(tmp_path: Path) -> None:
    from slimkit.config.quantize import BinaryConfig, LogQuantConfig

    for cfg in (LogQuantConfig(bits=4), BinaryConfig()):
        model = ToyCNN(width=8).eval()
        slimkit.quantize_(model, cfg)
        model(data(8))
        with pytest.raises(ConfigError, match="no QDQ"):
            export_qdq_from_fakequant(model, tmp_path / "x.onnx", model.example_inputs)
    with pytest.raises(ConfigError, match="no fake-quant"):
        export_qdq_from_fakequant(ToyCNN(width=8).eval(), tmp_path / "x.onnx", (torch.randn(1, 1, 8, 8),))
    assert not (tmp_path / "x.onnx").exists()


def test_fold_weight_quantize_stores_codes() -> None:
    from onnx import TensorProto, helper

    w = np.array([[0.5, -0.25], [1.0, 0.0]], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], axis=0),
         helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], axis=0),
         helper.make_node("MatMul", ["x", "wd"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([0.25, 0.5], np.float32), "s"),
         numpy_helper.from_array(np.zeros(2, np.int8), "z")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert fold_weight_quantize(proto) == 1
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert "w" not in inits
    np.testing.assert_array_equal(inits["w_quantized"], np.array([[2, -1], [2, 0]], np.int8))
    assert [n.op_type for n in proto.graph.node] == ["DequantizeLinear", "MatMul"]
