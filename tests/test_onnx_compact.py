"""Lossless compaction of ONNX artifacts (slimkit.exporters.onnx_compact, quantize_onnx(compact=True)): smaller
files, the same outputs bit for bit, the same onnxruntime kernels (every Conv still fused to QLinearConv)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from models import ToyResNet
from test_onnx_int8 import batches, structured_data, train_briefly
from torch import nn

from slimkit.config.quantize_ort import OrtInt8Config
from slimkit.exporters.onnx_compact import compact_onnx, onnx_byte_breakdown
from slimkit.exporters.onnx_int8 import (
    export_fp32_onnx,
    onnx_size_bytes,
    ort_kernel_counts,
    ort_predict,
    quantize_onnx,
)
from slimkit.exporters.ort_int8 import compacted_copy as _compacted_copy
from slimkit.exporters.ort_int8 import export_int8_onnx


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """ToyResNet of ~77k parameters (6 convs, 2 residual adds), briefly trained; fp32 (as exported and
    compacted) and int8 with and without compaction, quantized from the same fp32 file and calibration."""
    torch.manual_seed(0)
    model = train_briefly(ToyResNet(width=32), (1, 8, 8))
    d = tmp_path_factory.mktemp("compact")
    fp32 = export_fp32_onnx(model, d / "fp32.onnx", model.example_inputs)
    fp32_compact = _compacted_copy(fp32, d / "fp32-compact.onnx")
    calib, _ = structured_data(256, (1, 8, 8), seed=2)
    compact = quantize_onnx(fp32, d / "int8.onnx", calibration=batches(calib))
    loose = quantize_onnx(fp32, d / "int8-loose.onnx", calibration=batches(calib), compact=False)
    return {"model": model, "fp32": fp32, "fp32_compact": fp32_compact, "compact": compact, "loose": loose}


def test_compact_int8_is_smaller_by_a_measured_amount(resnet: dict[str, object]) -> None:
    compact, loose = onnx_size_bytes(resnet["compact"]), onnx_size_bytes(resnet["loose"])
    fp32c = onnx_size_bytes(resnet["fp32_compact"])
    # measured (onnxruntime 1.31): 84855 vs 91489 bytes, 27.2% vs 29.2% of fp32 (312394 compacted / 313095 B)
    assert loose - compact >= 5000, (loose, compact)
    assert compact / fp32c <= 0.28, compact / fp32c
    assert fp32c < onnx_size_bytes(resnet["fp32"])  # the baseline is compacted too (names), so the ratio is fair
    # int8 weights are still a quarter of fp32 weights: the difference is all overhead
    weights = sum(int(np.prod(t.dims)) for t in onnx.load(str(resnet["compact"])).graph.initializer
                  if t.data_type == onnx.TensorProto.INT8)
    assert weights >= 0.98 * sum(p.numel() for n, p in resnet["model"].named_parameters() if p.dim() > 1)


def test_compact_int8_gives_identical_outputs_and_kernels(resnet: dict[str, object]) -> None:
    x = [torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(5))]
    a, b = ort_predict(resnet["compact"], x), ort_predict(resnet["loose"], x)
    np.testing.assert_array_equal(a, b)  # float biases are requantized to the same int32 at load time
    fp32 = ort_predict(resnet["fp32"], x)
    assert float(np.corrcoef(a.ravel(), fp32.ravel())[0, 1]) > 0.98
    kc, kl, kf = (ort_kernel_counts(resnet[k]) for k in ("compact", "loose", "fp32"))
    n_conv = kf.get("Conv", 0) + kf.get("FusedConv", 0)
    assert n_conv == 6
    assert kc.get("QLinearConv") == kl.get("QLinearConv") == n_conv  # every conv runs as an integer kernel
    assert kc.get("QGemm") == kl.get("QGemm") == 1 and kc.get("QLinearAdd") == kl.get("QLinearAdd") == 2
    assert kc.get("DequantizeLinear", 0) <= kl.get("DequantizeLinear", 0)


def test_compact_int8_graph_is_valid_and_keeps_io_names(resnet: dict[str, object]) -> None:
    proto = onnx.load(str(resnet["compact"]))
    onnx.checker.check_model(proto, full_check=True)
    loose = onnx.load(str(resnet["loose"]))
    assert [i.name for i in proto.graph.input] == [i.name for i in loose.graph.input]
    assert [o.name for o in proto.graph.output] == [o.name for o in loose.graph.output]
    assert all(len(t.name) <= 3 for t in proto.graph.initializer)
    assert not any(n.name for n in proto.graph.node)
    # no int32 biases; the Conv weights' all-zero zero points are gone, the Gemm's (needed for QGemm) stay
    assert not [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT32]
    producers = {o: n for n in proto.graph.node for o in n.output}
    for node in proto.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            dq = producers[node.input[1]]
            assert dq.op_type == "DequantizeLinear"
            assert len(dq.input) == (2 if node.op_type == "Conv" else 3)
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"} | {n.domain for n in proto.graph.node}


def test_compact_onnx_on_fp32_is_lossless(resnet: dict[str, object]) -> None:
    x = [torch.randn(16, 1, 8, 8)]
    np.testing.assert_array_equal(ort_predict(resnet["fp32"], x), ort_predict(resnet["fp32_compact"], x))
    proto = onnx.load(str(resnet["fp32"]))
    before = proto.ByteSize()
    compact_onnx(proto)
    onnx.checker.check_model(proto)
    assert proto.ByteSize() < before
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["output"]


def test_byte_breakdown_accounts_for_the_file(resnet: dict[str, object]) -> None:
    for key in ("compact", "loose", "fp32"):
        b = onnx_byte_breakdown(resnet[key])
        parts = (b["initializer_bytes"] + b["node_bytes"] + b["io_bytes"] + b["opset_import_bytes"]
                 + b["metadata_bytes"] + b["value_info_bytes"])
        fields = b["nodes"] + sum(r["count"] for r in b["initializers"].values())
        assert 0 <= b["file_bytes"] - parts < 4 * fields + 64, (key, b["file_bytes"], parts)  # field headers
        assert sum(r["bytes"] for r in b["initializers"].values()) == b["initializer_bytes"]
    loose = onnx_byte_breakdown(resnet["loose"])["initializers"]
    assert "DequantizeLinear.x int32" in loose  # int32 biases before compaction
    assert "DequantizeLinear.x int32" not in onnx_byte_breakdown(resnet["compact"])["initializers"]


def test_export_int8_onnx_compares_against_compacted_fp32(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model: nn.Module = train_briefly(ToyResNet(width=16), (1, 8, 8), steps=20)
    calib, _ = structured_data(128, (1, 8, 8), seed=2)
    on = export_int8_onnx(model, tmp_path / "a.onnx", example_inputs=model.example_inputs,
                          calibration=batches(calib), config=OrtInt8Config(parity_min_top1=None))
    off = export_int8_onnx(model, tmp_path / "b.onnx", example_inputs=model.example_inputs,
                           calibration=batches(calib), config=OrtInt8Config(compact=False, parity_min_top1=None))
    assert on["size_bytes"] < off["size_bytes"]
    assert on["fp32_size_bytes"] < off["fp32_size_bytes"]  # same compaction on both sides of the ratio
    assert on["size_bytes"] / on["fp32_size_bytes"] < off["size_bytes"] / off["fp32_size_bytes"]
    assert on["parity"]["top1_agreement"] == off["parity"]["top1_agreement"]
