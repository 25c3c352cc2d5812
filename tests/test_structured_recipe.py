"""Structured pruning inside the recipe runner: checkpoints rebuild through the pass's rebuild hook (also for
attention heads and parameters read in forward), a saved stage re-evaluates to the same accuracy, a run resumes
after the prune stage, and the shipped recipe runs in a small form."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from slimkit.pipeline.artifacts import evaluate_saved, load_saved
from slimkit.pipeline.runner import run_recipe
from slimkit.pipeline.state import RunState


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tensors_file(tmp_path: Path) -> Path:
    """A learnable 4-class task on 3x32x32 inputs (the class is the brightest quadrant of channel 0)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    x = torch.randn(320, 3, 32, 32, generator=g) * 0.5
    y = torch.randint(0, 4, (320,), generator=g)
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, 0, 16 * r:16 * r + 16, 16 * q:16 * q + 16] += 1.0
    path = tmp_path / "quadrants.safetensors"
    save_file({"x": x, "y": y}, str(path))
    return path


def test_vit_heads_recipe_rebuilds_and_resumes_after_prune(tmp_path: Path, caplog) -> None:
    recipe = {
        "name": "vit-heads", "seed": 0,
        "model": {"arch": "vit-small", "train": {"epochs": 2, "lr": 0.003}},
        "data": {"name": "tensors", "path": str(_tensors_file(tmp_path)), "batch_size": 32, "test_fraction": 0.25},
        "stages": [{"prune": {"method": "structured", "ratio": 0.5}},
                   {"finetune": {"epochs": 1, "lr": 0.001}}],
        "evaluate": {"latency": None},
        "export": {"formats": ["safetensors"]},
    }
    out = tmp_path / "run"
    report = run_recipe(recipe, out=out)
    stage0 = report["stages"][0]["metrics"]
    assert stage0["params"] < report["baseline"]["params"]
    manifest = json.loads((out / "stages" / "0-prune" / "manifest.json").read_text())
    assert manifest["tensors"]["blocks.0.attn.in_proj_weight"]["shape"][0] == 3 * 2 * 16  # 2 of 4 heads left

    # the saved stage rebuilds from its files alone (heads, pos_embed, cls_token) and scores exactly the same
    model, _ = load_saved(out, "0")
    assert model.blocks[0].attn.num_heads == 2 and model.pos_embed.shape[-1] == 32
    again = evaluate_saved(out, "0")
    assert again["accuracy"] == stage0["accuracy"] and again["f1"] == stage0["f1"]

    # resume after stage 0: the prune checkpoint is restored (not recomputed) and stage 1 repeats exactly
    state = RunState(out)
    state.forget_from(1)
    with caplog.at_level(logging.INFO, logger="slimkit.pipeline.runner"):
        resumed = run_recipe(recipe, out=out, resume=True)
    assert "resumed after stage 0" in caplog.text and "cannot restore" not in caplog.text
    assert resumed["stages"][0]["metrics"]["accuracy"] == stage0["accuracy"]
    assert resumed["final"]["accuracy"] == report["final"]["accuracy"]
    assert resumed["final"]["params"] == report["final"]["params"]


def test_shipped_structured_recipe_small(tmp_path: Path, monkeypatch) -> None:
    """recipes/prune-structured.yaml with less training: it runs, halves the MACs and rebuilds its stages."""
    data = yaml.safe_load(Path("recipes/prune-structured.yaml").read_text())
    data["model"]["train"]["epochs"] = 2
    data["data"]["limit"] = 400
    for stage in data["stages"]:
        body = next(iter(stage.values()))
        if "epochs" in body:
            body["epochs"] = 1
        if isinstance(body.get("finetune"), dict):
            body["finetune"]["epochs"] = 1
    data["evaluate"] = {"latency": None}
    data["export"] = {"formats": ["safetensors"]}
    data["constraints"] = {}
    out = tmp_path / "run"
    report = run_recipe(data, out=out)
    macs = report["stages"][0]["metrics"]["macs"] / report["baseline"]["macs"]
    assert 0.45 <= macs <= 0.55
    assert evaluate_saved(out, "final")["accuracy"] == report["final"]["accuracy"]


@pytest.mark.parametrize("name", ["vit-small", "crnn"])
def test_rebuild_hook_reads_tensor_shapes(name: str, tmp_path: Path) -> None:
    """Without a ``structure`` in the spec, the hook infers heads, hidden sizes and direct parameters from the
    saved tensor shapes; the rebuilt model gives identical outputs."""
    import slimkit as sk
    from slimkit.exporters import load_model, save_model
    from slimkit.models.zoo import build
    from slimkit.passes.prune.structured import rebuild_structure as _rebuild

    model, x = build(name)
    model.eval()
    cfg = sk.StructuredPruneConfig(ratio=0.5)
    sk.prune_(model, cfg, example_inputs=x)
    save_model(model, tmp_path, spec={"arch": name})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    back = load_model(tmp_path, lambda spec: _rebuild(build(spec["arch"])[0], cfg, manifest)).eval()
    with torch.no_grad():
        assert torch.equal(back(*x), model(*x))
