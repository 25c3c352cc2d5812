"""Recipe validation: every problem reported at once with its path, before any compute."""

from __future__ import annotations

import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimkit.config.recipe import load_recipe, parse_recipe
from slimkit.errors import RecipeError

GOOD = {
    "name": "t",
    "model": {"arch": "cnn-small"},
    "data": {"name": "digits"},
    "stages": [{"prune": {"method": "magnitude", "sparsity": 0.5}}, {"finetune": {"epochs": 1}}],
}


def test_good_recipe_parses_and_resolves():
    r = parse_recipe(GOOD)
    assert [s.kind for s in r.stages] == ["prune", "finetune"]
    res = r.resolved()
    assert res["stages"][0]["prune"]["sparsity"] == 0.5
    assert res["stages"][0]["prune"]["scope"] == "global"  # defaults filled in
    assert res["data"]["batch_size"] == 64
    # the resolved form parses back to the same recipe
    assert parse_recipe(res).resolved() == res


def test_all_problems_listed_with_paths():
    bad = {
        "name": "t",
        "model": {"arch": "cnn-small", "wieghts": "x.pt"},
        "data": {"name": "digits", "batch_size": 0},
        "stages": [
            {"prune": {"method": "magnitude", "sparsity": 1.5}},
            {"quantise": {}},
            {"prune": {"method": "magnitude", "sparsity": 0.5, "scop": "global"}},
        ],
        "evaluat": {},
    }
    with pytest.raises(RecipeError) as ei:
        parse_recipe(bad)
    probs = dict(ei.value.problems)
    assert "stages[0].prune.sparsity" in probs and "1.5" in probs["stages[0].prune.sparsity"]
    assert "must be < 1" in probs["stages[0].prune.sparsity"]
    assert "stages[1]" in probs and "quantise" in probs["stages[1]"]
    assert "Did you mean 'scope'" in probs["stages[2].prune.scop"]
    assert "Did you mean 'weights'" in probs["model.wieghts"]
    assert "data.batch_size" in probs
    assert "Did you mean 'evaluate'" in probs["evaluat"]
    assert len(ei.value.problems) == 6


def test_unknown_method_has_suggestion():
    with pytest.raises(RecipeError) as ei:
        parse_recipe({**GOOD, "stages": [{"prune": {"method": "magnitud", "sparsity": 0.5}}]})
    assert "Did you mean 'magnitude'" in str(ei.value)


def test_model_needs_exactly_one_source():
    with pytest.raises(RecipeError) as ei:
        parse_recipe({**GOOD, "model": {"arch": "mlp", "entry_point": "a.b:c"}})
    assert "exactly one of arch, entry_point, hf" in str(ei.value)


def test_missing_files_named(tmp_path):
    with pytest.raises(RecipeError) as ei:
        parse_recipe({**GOOD, "model": {"arch": "mlp", "weights": "nope.safetensors"}}, base_dir=tmp_path)
    assert "nope.safetensors" in str(ei.value)
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_bad_yaml_says_where(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: t\nmodel: {arch: mlp\n")
    with pytest.raises(RecipeError, match="line"):
        load_recipe(p)


def test_shipped_recipes_validate():
    from pathlib import Path

    for path in sorted(Path("recipes").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        parse_recipe(data, source=str(path))


_keys = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=8)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=5))
_values = st.recursive(_scalars, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(_keys, c, max_size=3)),
                       max_leaves=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["name", "model", "data", "stages", "evaluate", "constraints", "export",
                                        "seed", "extra"]), _values, max_size=7))
def test_any_invalid_recipe_gives_recipe_error(data):
    try:
        parse_recipe(data)
    except RecipeError as exc:
        assert exc.problems
        assert all(isinstance(p, str) and isinstance(m, str) for p, m in exc.problems)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["prune", "finetune", "quantize", "x"]),
                                st.dictionaries(st.sampled_from(["method", "sparsity", "epochs", "lr", "steps"]),
                                                _scalars, max_size=4), min_size=0, max_size=2), max_size=4))
def test_any_stage_list_gives_recipe_error_or_parses(stages):
    try:
        parse_recipe({**GOOD, "stages": stages})
    except RecipeError:
        pass
