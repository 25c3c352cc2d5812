"""One layer filter (slimkit.config.layers): the matcher's rules, the same fields on every pass config that
selects layers, and ``skip`` and ``filter_fn`` selecting the same layers in every such pass."""

from __future__ import annotations

import copy

import pytest
import torch
from models import ToyCNN, ToyMLP
from pydantic import ValidationError
from torch import nn

import slimkit as sk
from slimkit.config.layers import is_skipped, match_layer
from slimkit.config.recipe import parse_recipe
from slimkit.errors import RecipeError
from slimkit.registry import all_specs


def test_matcher_rules() -> None:
    lin, conv = nn.Linear(2, 2), nn.Conv2d(1, 1, 1)
    assert match_layer("fc", lin, ["fc"]) == "fc"
    assert match_layer("features.0.conv", conv, ["features.0"]) == "features.0"  # inside a matched module
    assert match_layer("features.0.conv", conv, ["features.0*"]) == "features.0*"
    assert match_layer("features.10", conv, ["features.1"]) is None  # not a prefix match
    assert match_layer("head", lin, ["Conv2d", "Linear"]) == "Linear"  # class name
    assert match_layer("fc", lin, ["FC", "linear"]) is None  # case-sensitive
    assert is_skipped("fc", lin, (), lambda m, n: n != "fc")
    assert not is_skipped("fc2", lin, ["fc"], lambda m, n: isinstance(m, nn.Linear))


def test_every_layer_selecting_config_has_skip_and_filter_fn() -> None:
    selecting = [s.config_cls for s in all_specs() if "skip" in s.config_cls.model_fields]
    assert len(selecting) >= 10
    for cls in selecting:
        assert "filter_fn" in cls.model_fields, cls.__name__
    for s in all_specs():
        fields = set(s.config_cls.model_fields)
        assert not fields & {"exclude", "protected"}, s.config_cls.__name__


def test_old_names_are_deprecated_aliases() -> None:
    assert sk.MagnitudePruneConfig(sparsity=0.5, exclude=["fc"]).skip == ["fc"]
    assert sk.NMSparsityConfig(exclude=["fc"]).skip == ["fc"]
    assert sk.StructuredPruneConfig(ratio=0.5, protected=["b1.*"]).skip == ["b1.*"]
    with pytest.raises(ValidationError, match="deprecated name"):
        sk.MagnitudePruneConfig(sparsity=0.5, exclude=["fc"], skip=["fc"])
    old = {"name": "t", "data": {"name": "digits"}, "model": {"arch": "mlp"},
           "stages": [{"prune": {"method": "magnitude", "sparsity": 0.5, "exclude": ["fc*"]}}]}
    assert parse_recipe(old).stages[0].skip == ["fc*"]
    with pytest.raises(RecipeError, match="filter_fn"):
        parse_recipe({**old, "stages": [{"prune": {"sparsity": 0.5, "filter_fn": "fc"}}]})


def test_filter_fn_is_never_serialized() -> None:
    cfg = sk.PTQConfig(filter_fn=lambda m, n: True)
    assert "filter_fn" not in cfg.stage_dict()["quantize"]


def _changed(before: nn.Module, after: nn.Module, *, weights: bool = True) -> set[str]:
    """Names of the Linear/Conv layers of ``before`` replaced in ``after`` (a wrapper, a factorization) or, with
    ``weights``, whose weight values differ."""
    out = set()
    mods = dict(after.named_modules())
    for name, m in before.named_modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            new = mods.get(name)
            w = getattr(new, "weight", None)
            if type(new) is not type(m) or type(w) is not type(m.weight) or (weights and not torch.equal(w, m.weight)):
                out.add(name)
    return out


PASSES = [
    ("PTQConfig", lambda **kw: sk.PTQConfig(**kw), "quantize", {"calibration": [torch.randn(8, 64)]}),
    ("QATConfig", lambda **kw: sk.QATConfig(bits=4, finetune=sk.FinetuneConfig(epochs=1, max_steps_per_epoch=1), **kw),
     "quantize", {"train_loader": [(torch.randn(8, 64), torch.randint(0, 10, (8,)))]}),
    ("LogQuantConfig", lambda **kw: sk.LogQuantConfig(**kw), "quantize", {}),
    ("BinaryConfig", lambda **kw: sk.BinaryConfig(**kw), "quantize", {}),
    ("WeightOnlyConfig", lambda **kw: sk.WeightOnlyConfig(bits=4, group_size=32, **kw), "quantize", {}),
    ("WeightOnlyConfig-int8", lambda **kw: sk.WeightOnlyConfig(bits=8, **kw), "quantize", {}),
    ("DynamicConfig", lambda **kw: sk.DynamicConfig(**kw), "quantize", {}),
    ("MagnitudePruneConfig", lambda **kw: sk.MagnitudePruneConfig(sparsity=0.5, **kw), "prune", {}),
    ("NMSparsityConfig", lambda **kw: sk.NMSparsityConfig(**kw), "prune", {}),
    ("SVDConfig", lambda **kw: sk.SVDConfig(rank_ratio=0.25, **kw), "lowrank", {}),
]


@pytest.mark.parametrize(("name", "make", "verb", "kwargs"), PASSES, ids=[p[0] for p in PASSES])
def test_skip_and_filter_fn_select_the_same_layers(name, make, verb, kwargs) -> None:
    torch.manual_seed(0)
    base = ToyMLP()
    verb_fn = getattr(sk, f"{verb}_")
    runs = {}
    for label, extra in (("none", {}), ("skip", {"skip": ["fc2"]}),
                         ("filter", {"filter_fn": lambda m, n: n != "fc2"})):
        model = copy.deepcopy(base)
        out = verb_fn(model, make(**extra), example_inputs=base.example_inputs, **kwargs)
        runs[label] = _changed(base, out, weights=name != "QATConfig")  # QAT trains every layer
    assert "fc2" in runs["none"], runs
    assert runs["skip"] == runs["filter"] == runs["none"] - {"fc2"}


def test_structured_skip_and_filter_fn_keep_width() -> None:
    torch.manual_seed(0)
    base = ToyCNN(width=16)
    x = base.example_inputs
    widths = {}
    for label, extra in (("none", {}), ("skip", {"skip": ["conv1"]}), ("class", {"skip": ["Conv2d"]}),
                         ("filter", {"filter_fn": lambda m, n: n != "conv1"})):
        m = sk.prune_(copy.deepcopy(base), sk.StructuredPruneConfig(ratio=0.5, **extra), example_inputs=x)
        widths[label] = (m.conv1.out_channels, m.conv2.out_channels)
    assert widths["none"] == (8, 16)
    assert widths["skip"] == widths["filter"] == (16, 16)
    assert widths["class"] == (16, 32)  # every conv kept (the classifier always keeps its width)
