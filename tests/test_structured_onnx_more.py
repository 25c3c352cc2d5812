"""Pruned zoo models export to ONNX and match PyTorch under onnxruntime (second half of the zoo)."""

from __future__ import annotations

import pytest

import slimkit as sk
from slimkit.models.zoo import ZOO, build

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("name", list(ZOO)[5:])
def test_pruned_exports_and_matches(name: str, tmp_path) -> None:
    from slimkit.exporters import check_parity, export_onnx

    model, x = build(name)
    model.eval()
    sk.prune_(model, sk.StructuredPruneConfig(ratio=0.5), example_inputs=x)
    path = export_onnx(model, tmp_path / f"{name}.onnx", x)
    res = check_parity(model, path, x, atol=1e-4, rtol=1e-3)
    assert res["ok"], res
