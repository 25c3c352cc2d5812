"""int8 / fp16 ONNX through onnxruntime.quantization: static QDQ for CNNs, dynamic for MLPs, sizes,
agreement with fp32, parity checks and typed errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from models import ToyCNN, ToyMLP, ToyResNet
from torch import nn

from slimkit.config.base import build
from slimkit.config.quantize_ort import OrtInt8Config
from slimkit.errors import ConfigError, DataError, ExportError, RecipeError
from slimkit.exporters.onnx_int8 import (
    compare_outputs,
    convert_fp16,
    export_fp32_onnx,
    int8_parity,
    onnx_size_bytes,
    ort_predict,
    quantize_onnx,
)
from slimkit.exporters.ort_int8 import export_int8_onnx


def structured_data(n: int, shape: tuple[int, ...], classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten fixed prototypes plus noise: inputs with the structure of real data (clear classes)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = protos[y] + 0.5 * torch.randn(n, *shape, generator=g)
    return x, y


def train_briefly(model: nn.Module, shape: tuple[int, ...], steps: int = 60) -> nn.Module:
    x, y = structured_data(512, shape, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for i in range(steps):
        idx = slice((i * 64) % 512, (i * 64) % 512 + 64)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def batches(x: torch.Tensor, size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + size], torch.zeros(len(x[i:i + size]), dtype=torch.int64)) for i in range(0, len(x), size)]


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, Path]:
    """ToyCNN of ~75k parameters (weights dominate the file), briefly trained, exported fp32 and int8."""
    torch.manual_seed(0)
    model = train_briefly(ToyCNN(width=64), (1, 8, 8))
    d = tmp_path_factory.mktemp("cnn")
    fp32 = export_fp32_onnx(model, d / "fp32.onnx", model.example_inputs)
    calib, _ = structured_data(256, (1, 8, 8), seed=2)
    int8 = quantize_onnx(fp32, d / "int8.onnx", mode="static", calibration=batches(calib))
    return model, fp32, int8


def test_static_qdq_cnn_is_small_and_agrees(cnn: tuple[nn.Module, Path, Path]) -> None:
    model, fp32, int8 = cnn
    assert sum(p.numel() for p in model.parameters()) > 70_000
    ratio = onnx_size_bytes(int8) / onnx_size_bytes(fp32)
    assert ratio <= 0.30, ratio
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    weights = [t for t in onnx.load(str(int8)).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(int(np.prod(t.dims)) for t in weights) > 70_000  # weights stored as int8
    x, _ = structured_data(512, (1, 8, 8), seed=3)
    stats = int8_parity(int8, model, batches(x), min_top1=0.9, min_cosine=0.98)
    assert stats["top1_agreement"] >= 0.9 and stats["cosine"] > 0.98
    # random inputs too (no structure): still close in cosine
    rnd = compare_outputs(ort_predict(int8, [torch.randn(128, 1, 8, 8)]), ort_predict(fp32, [torch.randn(128, 1, 8, 8)]))
    assert rnd["n"] == 128


def test_static_qdq_resnet_agrees_with_fp32(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = train_briefly(ToyResNet(width=16), (1, 8, 8))
    fp32 = export_fp32_onnx(model, tmp_path / "fp32.onnx", model.example_inputs)
    calib, _ = structured_data(256, (1, 8, 8), seed=2)
    int8 = quantize_onnx(fp32, tmp_path / "int8.onnx", calibration=batches(calib), calibrate_method="percentile")
    x, _ = structured_data(512, (1, 8, 8), seed=4)
    stats = int8_parity(int8, fp32, batches(x))
    assert stats["top1_agreement"] >= 0.9, stats
    assert stats["cosine"] > 0.98, stats
    # the ONNX int8 model takes any batch size (dynamic batch)
    assert ort_predict(int8, [x[:3]]).shape == (3, 10)


def test_dynamic_int8_mlp_matches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = train_briefly(ToyMLP(d_in=64, hidden=256), (64,))
    fp32 = export_fp32_onnx(model, tmp_path / "fp32.onnx", model.example_inputs)
    int8 = quantize_onnx(fp32, tmp_path / "dyn.onnx", mode="dynamic")
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops, ops
    assert onnx_size_bytes(int8) / onnx_size_bytes(fp32) <= 0.35
    x, _ = structured_data(512, (64,), seed=5)
    stats = int8_parity(int8, model, [x], min_top1=0.95, min_cosine=0.99)
    scale = float(np.abs(ort_predict(fp32, [x])).max())
    assert stats["max_abs_diff"] <= 0.05 * scale, stats


def test_fp16_onnx_is_half_and_close(cnn: tuple[nn.Module, Path, Path], tmp_path: Path) -> None:
    model, fp32, _ = cnn
    fp16 = convert_fp16(fp32, tmp_path / "fp16.onnx")
    assert 0.45 <= onnx_size_bytes(fp16) / onnx_size_bytes(fp32) <= 0.56
    x, _ = structured_data(128, (1, 8, 8), seed=6)
    stats = int8_parity(fp16, model, [x])
    assert stats["top1_agreement"] >= 0.99 and stats["max_abs_diff"] < 0.05


def test_static_without_calibration_is_config_error(cnn: tuple[nn.Module, Path, Path], tmp_path: Path) -> None:
    model, fp32, _ = cnn
    with pytest.raises(ConfigError, match="calibration"):
        quantize_onnx(fp32, tmp_path / "x.onnx", mode="static")
    with pytest.raises(ConfigError, match="calibration"):
        export_int8_onnx(model, tmp_path / "y.onnx", example_inputs=model.example_inputs, config=OrtInt8Config())
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()


def test_bad_inputs_are_typed_errors(cnn: tuple[nn.Module, Path, Path], tmp_path: Path) -> None:
    _, fp32, int8 = cnn
    with pytest.raises(DataError, match="shape"):
        quantize_onnx(fp32, tmp_path / "x.onnx", calibration=[torch.randn(4, 3, 8, 8)])
    with pytest.raises(DataError, match="no batches"):
        quantize_onnx(fp32, tmp_path / "x.onnx", calibration=[])
    with pytest.raises(ConfigError, match="mode"):
        quantize_onnx(fp32, tmp_path / "x.onnx", mode="int4", calibration=[torch.randn(4, 1, 8, 8)])
    with pytest.raises(ConfigError, match="op_types"):
        quantize_onnx(fp32, tmp_path / "x.onnx", calibration=[torch.randn(4, 1, 8, 8)], op_types=["Conv2d"])
    with pytest.raises(ExportError, match="not found"):
        quantize_onnx(tmp_path / "missing.onnx", tmp_path / "x.onnx", mode="dynamic")
    with pytest.raises(ExportError, match="parity"):  # int8 CNN vs an unrelated model
        int8_parity(int8, ToyCNN(width=64).eval(), [torch.randn(64, 1, 8, 8)], min_top1=0.99)
    with pytest.raises(RecipeError, match="mode"):
        build(OrtInt8Config, {"mode": "int4"})
    with pytest.raises(RecipeError, match="op_types"):
        build(OrtInt8Config, {"op_types": []})


def test_export_int8_onnx_end_to_end(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = train_briefly(ToyCNN(width=16), (1, 8, 8))
    calib, _ = structured_data(128, (1, 8, 8), seed=7)
    art = export_int8_onnx(model, tmp_path / "m.int8.onnx", example_inputs=model.example_inputs,
                           config=OrtInt8Config(calibration_batches=4), calibration=batches(calib))
    assert Path(art["path"]).exists() and art["size_bytes"] < art["fp32_size_bytes"]
    assert art["parity"]["top1_agreement"] >= 0.9
    assert art["config"]["mode"] == "static"


def test_slimkit_export_with_quantize_hook(tmp_path: Path) -> None:
    import slimkit

    torch.manual_seed(0)
    model = train_briefly(ToyCNN(width=16), (1, 8, 8))
    calib, _ = structured_data(128, (1, 8, 8), seed=8)
    out = slimkit.export(model, tmp_path / "m.onnx", example_inputs=model.example_inputs,
                         quantize=OrtInt8Config(calibration_batches=4), calibration=batches(calib))
    assert out["parity"]["top1_agreement"] >= 0.9
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    with pytest.raises(ConfigError, match="calibration"):
        slimkit.export(model, tmp_path / "n.onnx", example_inputs=model.example_inputs, quantize=OrtInt8Config())
    dyn = slimkit.export(model, tmp_path / "d.onnx", example_inputs=model.example_inputs,
                         quantize=OrtInt8Config(mode="dynamic"))
    assert dyn["parity"]["cosine"] > 0.98
