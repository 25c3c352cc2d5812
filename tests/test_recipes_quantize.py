"""Every shipped quantize recipe runs end to end in a small form: stage sizes really shrink, accuracy stays in
a loose bound, the report follows the schema, a stage checkpoint reloads to the reported accuracy, and int8
ONNX exports carry size, parity and onnxruntime latency next to fp32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from slimkit.pipeline.runner import run_recipe

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT.parent / "shared" / "schemas" / "report.schema.json"

# recipe -> (largest stage/baseline size ratio, largest accuracy drop in the small form)
RECIPES = {
    "quantize-ptq-int8": (0.35, 0.05),
    "quantize-dynamic": (0.35, 0.05),
    "quantize-weight-only-int4": (0.20, 0.08),
    "quantize-qat-4bit": (0.22, 0.10),
    "quantize-log-4bit": (0.20, 0.15),
    "quantize-binary": (0.15, 0.40),
    "quantize-fp16": (0.55, 0.02),
}


def small(name: str) -> dict:
    r = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())
    r["model"]["train"]["epochs"] = 4
    for stage in r["stages"]:
        body = next(iter(stage.values()))
        if "finetune" in body:
            body["finetune"]["epochs"] = 1
        if "epochs" in body:
            body["epochs"] = 1
        if "calibration_batches" in body:
            body["calibration_batches"] = 4
    int8 = r.get("export", {}).get("onnx", {}).get("precision") == "int8"  # latency only where int8 is compared
    r["evaluate"]["latency"] = {"batch": 1, "warmup": 2, "repeats": 5, "threads": 1} if int8 else None
    return r


def _check_report(out: Path, report: dict) -> None:
    data = json.loads((out / "report.json").read_text())
    if SCHEMA.exists():
        import jsonschema

        jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    for m in [data["baseline"], data["final"], *[s["metrics"] for s in data["stages"]]]:
        assert m["size_bytes"] == (out / m["artifact"]).stat().st_size


@pytest.mark.parametrize("name", list(RECIPES))
def test_quantize_recipe_small(tmp_path, name):
    max_ratio, max_drop = RECIPES[name]
    out = tmp_path / name
    report = run_recipe(small(name), out=out)
    _check_report(out, report)
    base = report["baseline"]
    q = report["stages"][0]
    assert q["pass"].startswith("quantize:")
    ratio = q["metrics"]["size_bytes"] / base["size_bytes"]
    assert ratio <= max_ratio, (name, ratio)
    assert report["final"]["accuracy"] >= base["accuracy"] - max_drop, (base["accuracy"], report["final"])
    assert base["accuracy"] > 0.5
    for e in report["exports"]:
        assert e["size_bytes"] == sum(p.stat().st_size for p in [out / e["artifact"]])
        assert e["format"] == "safetensors" or e["parity"]["ok"]
        if e.get("precision") == "int8":
            assert e["latency_ms"]["runtime"] == "onnxruntime" and e["fp32"]["latency_ms"]["median"] > 0
            assert e["size_bytes"] < 0.5 * e["fp32"]["size_bytes"]
            assert "faster" in e["note"]
    if name == "quantize-ptq-int8":
        # the quantized stage checkpoint rebuilds from its files alone and gives the reported accuracy
        from slimkit.pipeline.artifacts import evaluate_saved

        again = evaluate_saved(out, "0")
        assert again["accuracy"] == q["metrics"]["accuracy"]
        assert again["size_bytes"] == q["metrics"]["size_bytes"]


def test_ptq_then_finetune_resumes_from_the_quantized_checkpoint(tmp_path, caplog):
    """Stage 0 (PTQ) is restored from its packed checkpoint through the rebuild hook; the finetune stage runs
    again on it. The restored stage reproduces the reported accuracy exactly."""
    import logging

    from slimkit.pipeline.artifacts import evaluate_saved
    from slimkit.pipeline.state import RunState

    rec = {"name": "ptq-resume", "seed": 2,
           "model": {"arch": "cnn-small", "kwargs": {"widths": [8, 16]}, "train": {"epochs": 2, "lr": 0.01}},
           "data": {"name": "digits"}, "evaluate": {"latency": None},
           "stages": [{"quantize": {"method": "ptq", "calibration_batches": 2}},
                      {"finetune": {"epochs": 1, "lr": 0.0005}}]}
    out = tmp_path / "run"
    whole = run_recipe(rec, out=out)
    assert evaluate_saved(out, "0")["accuracy"] == whole["stages"][0]["metrics"]["accuracy"]
    state = RunState(out)
    state.forget_from(1)  # as if the run had been killed during the finetune stage
    with caplog.at_level(logging.INFO, logger="slimkit.pipeline.runner"):
        resumed = run_recipe(rec, out=out, resume=True)
    assert "resumed after stage 0" in caplog.text
    assert resumed["stages"][0] == whole["stages"][0]
    # the float shadow weights are not in the packed checkpoint: the resumed finetune starts from the
    # quantized weights, so it lands close to, not exactly on, the uninterrupted result
    assert abs(resumed["final"]["accuracy"] - whole["final"]["accuracy"]) < 0.03
