"""Issue 14 item 1 (short form): hypothesis-generated recipe files, valid and hostile, through the one YAML
reader, validation and the CLI entry point: only typed errors (exit 2, one paragraph), never a traceback."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import yaml
from fuzzlog import fuzz_settings, outcome
from hypothesis import given
from hypothesis import strategies as st

from slimkit.config.recipe import load_recipe
from slimkit.config.search import load_search

GOOD = {"name": "fz", "model": {"arch": "mlp"}, "data": {"name": "digits"},
        "stages": [{"prune": {"sparsity": 0.5}}, {"finetune": {"epochs": 1, "lr": 0.001}}]}

_keys = st.one_of(st.sampled_from(["name", "model", "arch", "kwargs", "stages", "prune", "finetune", "quantize",
                                   "method", "sparsity", "lr", "epochs", "seed", "data", "bits", "constraints"]),
                  st.text(min_size=1, max_size=6))
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=8), st.sampled_from(["mlp", "magnitude", "\u00e9\u4e2d\U0001f600", "\x00"]))
_values = st.recursive(_scalars, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(_keys, c, max_size=3)),
                       max_leaves=10)


def _mutate_good(draw: st.DrawFn) -> str:
    """A valid recipe with one value replaced (wrong type, out of range, NaN/inf, unknown key, unicode)."""
    import copy

    data = copy.deepcopy(GOOD)
    where = draw(st.sampled_from(["top", "model", "stage0", "stage1", "data"]))
    target = {"top": data, "model": data["model"], "data": data["data"],
              "stage0": data["stages"][0]["prune"], "stage1": data["stages"][1]["finetune"]}[where]
    target[draw(_keys)] = draw(_values)
    return yaml.safe_dump(data, allow_unicode=True)


_HOSTILE = [
    "",  # empty file
    "---\n...\n",
    "name: x\nmodel: !!python/object/apply:os.system [\"true\"]\n",
    "name: x\nmodel: !!python/name:os.system\n",
    "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True)),
    "x: " + "[" * 5000 + "]" * 5000,
    "x: " + "{a: " * 300 + "1" + "}" * 300,
    "name: x\nname: y\nmodel: {arch: mlp}\n",
    "name: x\nmodel: {arch: mlp}\nstages: 0\n",
    "name: x\nmodel: {arch: mlp}\nseed: 1e400\n",
    "name: x\nmodel: {arch: mlp}\nstages: [{finetune: {lr: .nan}}]\n",
    "name: x\nmodel: {arch: mlp}\nstages: [{finetune: {lr: .inf, epochs: true}}]\n",
    "\t\tname: x",
    "name: [unclosed",
    "name: x\nmodel: {arch: mlp}\ndate: 2001-13-45\n",
]


@st.composite
def _recipe_text(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["mutated", "random", "hostile", "binary", "truncated"]))
    if kind == "mutated":
        return _mutate_good(draw).encode()
    if kind == "random":
        return yaml.safe_dump(draw(_values), allow_unicode=True).encode()
    if kind == "hostile":
        return draw(st.sampled_from(_HOSTILE)).encode()
    if kind == "binary":
        return draw(st.binary(max_size=64))
    text = yaml.safe_dump(GOOD).encode()
    return text[: draw(st.integers(0, len(text)))]


@fuzz_settings("recipe", 300)
@given(_recipe_text())
def test_recipe_files_give_only_typed_errors(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("fz", numbered=True) / "r.yaml"
    path.write_bytes(raw)
    with outcome("recipe"):
        recipe = load_recipe(path)
        # accepted: every number in it is finite and every stage is a known pass
        for st_ in recipe.stages:
            for v in st_.model_dump().values():
                assert not (isinstance(v, float) and not math.isfinite(v)), (st_, raw)


SEARCH = {"name": "sz", "trials": 2, "objective": "minimize size_bytes", "base": GOOD,
          "space": {"stages[0].prune.sparsity": {"low": 0.5, "high": 0.9},
                    "stages[1].finetune.lr": {"low": 1e-4, "high": 1e-2, "log": True},
                    "stages": {"choices": [["prune"], ["prune", "finetune"]]}}}


@st.composite
def _search_text(draw: st.DrawFn) -> bytes:
    """A valid search config with one value replaced, or a hostile/random/truncated file."""
    import copy

    kind = draw(st.sampled_from(["valid", "mutated", "space", "base", "other"]))
    data = copy.deepcopy(SEARCH)
    if kind == "valid":  # in range: must be accepted with what it says
        data["trials"] = draw(st.integers(1, 10_000))
        data["space"]["stages[0].prune.sparsity"] = {"low": draw(st.floats(0.01, 0.5)), "high": 0.9}
    elif kind == "mutated":
        data[draw(st.sampled_from(["name", "trials", "objective", "backend", "seed", "space", "base",
                                   "workers", "storage"]) | _keys)] = draw(_values)
    elif kind == "space":
        key = draw(st.sampled_from([*SEARCH["space"], "stages[5].prune.sparsity", "model.arch", "seed"]) | _keys)
        data["space"][key] = draw(_values | st.fixed_dictionaries({"low": _scalars, "high": _scalars}))
    elif kind == "base":
        data["base"] = {**GOOD, draw(_keys): draw(_values)}
    else:
        return draw(_recipe_text())
    return yaml.safe_dump(data, allow_unicode=True).encode()


@fuzz_settings("search", 100)
@given(_search_text())
def test_search_configs_give_only_typed_errors(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("sz", numbered=True) / "s.yaml"
    path.write_bytes(raw)
    with outcome("search"):
        plan = load_search(path)
        # accepted: every bound of the space is finite and ordered, and the budget is positive
        assert plan.config.trials >= 1, raw
        if b"trials: " in raw and yaml.safe_load(raw).get("trials") is not None:
            assert plan.config.trials == yaml.safe_load(raw)["trials"], raw
        for p in plan.params:
            if p.kind != "categorical":
                assert math.isfinite(p.low) and math.isfinite(p.high) and p.low <= p.high, (p, raw)
            else:
                assert p.values, (p, raw)


def test_cli_exits_2_with_one_paragraph_on_hostile_files(tmp_path):
    import contextlib

    from rich.console import Console

    import slimkit.cli.app as app_mod

    for i, text in enumerate([*_HOSTILE, b"\x00\xff\xfe binary"]):
        p = tmp_path / f"h{i}.yaml"
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        buf = io.StringIO()
        old = sys.argv, app_mod.err_console
        sys.argv, app_mod.err_console = ["slimkit", "validate", str(p)], Console(file=buf, width=200)
        try:
            with contextlib.redirect_stderr(buf):
                app_mod.main()
            code = 0
        except SystemExit as exc:
            code = exc.code
        finally:
            sys.argv, app_mod.err_console = old
        out = buf.getvalue()
        assert code == 2, (text[:80], out)
        assert "Traceback" not in out and "This is a bug" not in out and out.count("error:") == 1, out
        assert not Path(tmp_path / "runs").exists()
