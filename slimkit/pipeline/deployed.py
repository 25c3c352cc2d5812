"""A run's final numbers measured on the deployed artifact: ``evaluate.latency.runtime: onnxruntime``.

The baseline is exported to ``baseline.onnx`` (fp32) beside the run's ``model.onnx``; both are timed in
onnxruntime alternately in this process (:func:`slimkit.evaluation.latency.ort_compare`), and the
artifact's accuracy, F1 and fidelity are measured by running the ONNX file itself, so int8 rounding done
at export counts against the constraints like any other change."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from slimkit.errors import RunError


def deployed_metrics(run_dir: Path, recipe: Any, bundle: Any, baseline_model: nn.Module, exports: list[dict[str, Any]],
                     baseline: dict[str, Any], final: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (baseline, final) METRICS with accuracy, f1, fidelity, size_bytes, artifact, latency_ms and
    throughput taken from the ONNX files in onnxruntime (params and MACs stay the PyTorch model's)."""
    from slimkit.evaluation import evaluate_model
    from slimkit.evaluation.latency import ort_compare, throughput
    from slimkit.exporters import export_model

    onnx = next((e for e in exports if e.get("format") == "onnx"), None)
    if onnx is None:
        raise RunError("evaluate.latency.runtime: onnxruntime, but no ONNX was exported.",
                       hint="Add onnx to export.formats.")
    artifact = run_dir / onnx["artifact"]
    base_onnx = run_dir / "baseline.onnx"
    ex = recipe.export.onnx
    export_model(copy.deepcopy(baseline_model), base_onnx, example_inputs=bundle.example_inputs, precision="fp32",
                 opset=ex.opset, atol=ex.parity_atol)
    loader = bundle.test if recipe.evaluate.split == "test" else (bundle.val or bundle.test)
    labelled = baseline.get("accuracy") is not None
    reference = baseline_model if (recipe.evaluate.fidelity or not labelled) else None
    b = evaluate_model(base_onnx, loader if labelled else None, example_inputs=bundle.example_inputs,
                       artifact=base_onnx, run_dir=run_dir)
    f = evaluate_model(artifact, loader if labelled else None, example_inputs=bundle.example_inputs,
                       artifact=artifact, run_dir=run_dir, reference=reference,
                       fidelity_loader=loader if reference is not None else None)
    lat, xs = recipe.evaluate.latency, bundle.example_inputs
    timed = ort_compare({"fp32": base_onnx, "artifact": artifact}, xs, lat, rounds=3)
    b_lat, f_lat = timed["fp32"], timed["artifact"]
    baseline, final = dict(baseline), dict(final)
    keys = ("accuracy", "f1", "size_bytes", "artifact")
    baseline.update({k: b[k] for k in keys}, latency_ms=b_lat, throughput=throughput(b_lat))
    final.update({k: f[k] for k in keys}, latency_ms=f_lat, throughput=throughput(f_lat))
    if reference is not None:
        final["fidelity"] = f["fidelity"]
    return baseline, final


__all__ = ["deployed_metrics"]
