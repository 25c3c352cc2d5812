"""The shipped prune -> distil -> quantize, distill and lowrank recipes run end to end in a small form:
each stage is the pass the recipe names, accuracy stays within a loose bound of the baseline, and
report.json follows the shared schema."""

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

# recipe -> (pass name of each stage, largest accuracy drop allowed in the small form)
RECIPES = {
    "prune-distill-quantize": (["prune:magnitude", "distill:logits", "quantize:ptq"], 0.08),
    "distill": (["prune:magnitude", "distill:feature"], 0.08),
    "lowrank": (["lowrank:svd", "distill:logits"], 0.08),
}


def small(name: str) -> dict:
    """The shipped recipe with fewer epochs and batches; the stages themselves are unchanged."""
    r = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())
    r["model"]["train"]["epochs"] = 6
    for stage in r["stages"]:
        body = next(iter(stage.values()))
        if "epochs" in body:
            body["epochs"] = 2
        if "calibration_batches" in body:
            body["calibration_batches"] = 4
    int8 = r.get("export", {}).get("onnx", {}).get("precision") == "int8"
    r["evaluate"]["latency"] = {"batch": 1, "warmup": 2, "repeats": 5, "threads": 1} if int8 else None
    if not int8:
        r["export"]["formats"] = ["safetensors"]
    return r


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_small(tmp_path, name):
    passes, max_drop = RECIPES[name]
    out = tmp_path / name
    report = run_recipe(small(name), out=out)
    data = json.loads((out / "report.json").read_text())
    if SCHEMA.exists():
        import jsonschema

        jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    assert [s["pass"] for s in data["stages"]] == passes
    base, final = report["baseline"]["accuracy"], report["final"]["accuracy"]
    assert base > 0.8
    assert final >= base - max_drop, (base, final)
    if name != "lowrank":  # the pruned weights stay at zero through distillation (and quantization)
        assert report["final"]["sparsity"] > 0.6
    if name == "prune-distill-quantize":
        pruned, distilled = (s["metrics"]["accuracy"] for s in data["stages"][:2])
        assert distilled > pruned  # distilling from the pre-compression model recovers the pruning loss
        onnx = [e for e in data["exports"] if e.get("precision") == "int8"]
        assert onnx and onnx[0]["parity"]["ok"]
        assert data["final"]["size_bytes"] < 0.4 * data["baseline"]["size_bytes"]
    if name == "lowrank":
        assert report["final"]["params"] < report["baseline"]["params"]
