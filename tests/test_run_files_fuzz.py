"""Issue 14 item 2 (short form), the loaders not covered by test_loader_fuzz.py: an ONNX file handed to
``slimkit.evaluate``, a run's ``report.json`` read by ``slimkit report`` and ``slimkit compare``, and a run's
``recipe.yaml`` read back by ``slimkit eval``/``export`` (:func:`slimkit.pipeline.artifacts.locate_stage`),
each truncated, bit-flipped or with values replaced. Each case ends in a typed error (exit 2) or a result
checked against an independent oracle: onnxruntime and onnx run directly on the same bytes, the report
schema (../shared/schemas/report.schema.json) and the values in the file, the recipe the run really used."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzzlog import fuzz_settings, outcome
from hypothesis import given
from hypothesis import strategies as st
from test_loader_fuzz import _json, _paths
from test_reliability import cli

_ROOT = Path(__file__).resolve().parents[1]
SCHEMA = next((p / "shared" / "schemas" / "report.schema.json" for p in (_ROOT.parent, _ROOT.parent.parent)
               if (p / "shared" / "schemas" / "report.schema.json").exists()), None)
_flips = st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 7)), min_size=1, max_size=4)


def _damage(raw: bytes, how: str, cut: int, flips: list[tuple[int, int]]) -> bytes:
    if how == "truncate":
        return raw[: cut % max(len(raw), 1)]
    out = bytearray(raw)
    for pos, bit in flips:
        out[pos % len(out)] ^= 1 << bit
    return bytes(out)


def _replace(obj: object, path: tuple, value: object) -> object:
    new = copy.deepcopy(obj)
    target = new
    for p in path[:-1]:
        target = target[p]  # type: ignore[index]
    target[path[-1]] = value  # type: ignore[index]
    return new


# ------------------------------------------------------------------------------------------------ ONNX
def _mlp_onnx() -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (8, 16)), ("b1", (16,)), ("w2", (16, 3)), ("b2", (3,)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["o"]),
             helper.make_node("Add", ["o", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


_X = torch.from_numpy(np.random.default_rng(1).standard_normal((48, 8)).astype(np.float32))
_Y = torch.arange(48) % 3


def _onnx_oracle(path: Path) -> tuple[float, int, int] | None:
    """Accuracy, elements and nonzero elements computed directly with onnxruntime and onnx (None: they
    cannot read it either)."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = sess.run(None, {sess.get_inputs()[0].name: _X.numpy()})[0]
        proto = onnx.load(str(path))
        arrays = [numpy_helper.to_array(t) for t in proto.graph.initializer]
        acc = float((np.asarray(out).reshape(len(_X), -1).argmax(-1) == _Y.numpy()).mean())
        return acc, sum(int(a.size) for a in arrays), sum(int(np.count_nonzero(a)) for a in arrays)
    except Exception:  # noqa: BLE001 - the oracle only says whether the file is readable
        return None


@st.composite
def _onnx_bytes(draw: st.DrawFn) -> bytes:
    import onnx
    from onnx import TensorProto

    raw = _mlp_onnx()
    how = draw(st.sampled_from(["truncate", "flip", "dims", "raw", "external", "op", "opset", "input"]))
    if how in ("truncate", "flip"):
        return _damage(raw, how, draw(st.integers(0, len(raw))), draw(_flips))
    m = onnx.load_from_string(raw)
    t = m.graph.initializer[draw(st.integers(0, 3))]
    if how == "dims":
        t.dims[:] = draw(st.lists(st.integers(-3, 2**40), max_size=3))
    elif how == "raw":
        t.raw_data = t.raw_data[: draw(st.integers(0, len(t.raw_data)))]
    elif how == "external":
        t.data_location = TensorProto.EXTERNAL
        t.ClearField("raw_data")
        for k, v in (("location", draw(st.sampled_from(["../../etc/passwd", "/etc/passwd", "missing.bin",
                                                         "model.onnx"]))),
                     ("offset", str(draw(st.integers(-5, 2**40)))), ("length", str(draw(st.integers(-5, 2**40))))):
            e = t.external_data.add()
            e.key, e.value = k, v
    elif how == "op":
        m.graph.node[draw(st.integers(0, 4))].op_type = draw(st.sampled_from(["Conv", "Nope", "MatMul", ""]))
    elif how == "opset":
        m.opset_import[0].version = draw(st.integers(-1, 10**6))
    else:
        m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = draw(st.integers(0, 2**31))
    return m.SerializeToString()


@fuzz_settings("onnx", 40)
@given(raw=_onnx_bytes())
def test_onnx_files_typed_error_or_the_measured_result(tmp_path_factory, raw):
    from slimkit.evaluation import evaluate_model

    d = tmp_path_factory.mktemp("onnx", numbered=True)
    path = d / "model.onnx"
    path.write_bytes(raw)
    loader = [(_X[i:i + 16], _Y[i:i + 16]) for i in range(0, 48, 16)]
    with outcome("onnx"):
        metrics = evaluate_model(path, loader)
        expected = _onnx_oracle(path)
        assert expected is not None, "slimkit measured a file that onnxruntime/onnx cannot read"
        assert (metrics["accuracy"], metrics["params"], metrics["nonzero_params"]) == expected
        assert metrics["size_bytes"] == len(raw)  # no file outside the model's directory is counted


def test_onnx_weights_pointing_at_zero_external_bytes_are_a_typed_error(tmp_path):
    """Found by the long form: onnxruntime runs this file, onnx cannot read its weights (was a raw ValueError)."""
    import onnx
    from onnx import TensorProto

    from slimkit.errors import ModelLoadError
    from slimkit.evaluation import evaluate_model

    m = onnx.load_from_string(_mlp_onnx())
    t = m.graph.initializer[0]
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("raw_data")
    for k, v in (("location", "model.onnx"), ("offset", "0"), ("length", "0")):
        e = t.external_data.add()
        e.key, e.value = k, v
    (tmp_path / "model.onnx").write_bytes(m.SerializeToString())
    with pytest.raises(ModelLoadError, match="cannot"):
        evaluate_model(tmp_path / "model.onnx", [(_X[:16], _Y[:16])])


# ------------------------------------------------------------------------------------------- report.json
@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slimkit.pipeline.runner import run_recipe

    d = tmp_path_factory.mktemp("finished") / "run"
    run_recipe({"name": "fz", "model": {"arch": "mlp"}, "data": {"name": "digits", "limit": 100, "test_limit": 60},
                "stages": [{"prune": {"method": "magnitude", "sparsity": 0.5}}], "evaluate": {"latency": None}},
               out=d)
    return d


def _copy_run(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


@st.composite
def _report_text(draw: st.DrawFn, original: dict) -> bytes:
    how = draw(st.sampled_from(["replace", "replace", "replace", "truncate", "flip", "random"]))
    raw = json.dumps(original, indent=2).encode()
    if how in ("truncate", "flip"):
        return _damage(raw, how, draw(st.integers(0, len(raw))), draw(_flips))
    if how == "random":
        return json.dumps(draw(_json)).encode()
    path = draw(st.sampled_from([p for p in _paths(original) if p and p[0] != "recipe"]))
    value = draw(_json | st.sampled_from([1.5, -1, 2**70, "NaN", float("nan"), float("inf"), "../../etc/passwd"]))
    return json.dumps(_replace(original, path, value)).encode()


def _cli_outcome(loader: str, code: int, text: str) -> bool:
    """True when the command succeeded (the caller checks and records the result); a typed error (exit 2,
    one paragraph) or a crash is recorded here."""
    if code == 0:
        return True
    with outcome(loader):
        if code == 2:
            assert "Traceback" not in text and "This is a bug" not in text and len(text) < 4000, text
            from slimkit.errors import SlimkitError
            raise SlimkitError(text)
        raise RuntimeError(f"exit {code}: {text[-2000:]}")
    return False


@fuzz_settings("report", 20)
@given(data=st.data())
def test_report_json_typed_error_or_exactly_what_it_says(finished, tmp_path_factory, data):
    if SCHEMA is None:
        pytest.skip("no shared schema here")
    import jsonschema

    original = json.loads((finished / "report.json").read_text())
    raw = data.draw(_report_text(original))
    root = tmp_path_factory.mktemp("rep", numbered=True)
    d = _copy_run(finished, root / "run")
    (d / "report.json").write_bytes(raw)
    if _cli_outcome("report", *cli("report", str(d))):
        with outcome("report"):  # accepted: it is a report as the schema defines it
            jsonschema.validate(json.loads(raw), json.loads(SCHEMA.read_text()))
    if _cli_outcome("compare", *cli("compare", str(d), str(finished), "--out", str(root / "cmp"))):
        with outcome("compare"):  # accepted: the comparison shows the file's own values
            report = json.loads(raw)
            jsonschema.validate(report, json.loads(SCHEMA.read_text()))
            row = json.loads((root / "cmp" / "compare.json").read_text())["runs"][0]
            for key in ("accuracy", "size_bytes", "macs"):
                assert row[key] == report["final"].get(key), key


# ------------------------------------------------------------------------------------ a run's recipe.yaml
@fuzz_settings("run_recipe", 40)
@given(how=st.sampled_from(["truncate", "flip"]), cut=st.integers(0, 10**5), flips=_flips)
def test_run_recipe_yaml_typed_error_or_the_recipe_the_run_used(finished, tmp_path_factory, how, cut, flips):
    from slimkit.config.recipe import parse_recipe
    from slimkit.pipeline.artifacts import locate_stage
    from slimkit.pipeline.state import RunState, recipe_hash

    d = _copy_run(finished, tmp_path_factory.mktemp("ry", numbered=True) / "run")
    raw = (d / "recipe.yaml").read_bytes()
    used = parse_recipe(json.loads((finished / "report.json").read_text())["recipe"]).resolved()
    (d / "recipe.yaml").write_bytes(_damage(raw, how, cut, flips))
    with outcome("run_recipe"):
        recipe, directory, upto = locate_stage(d, "final")
        assert recipe.resolved() == used and directory == d / "final" and upto == 1
        assert recipe_hash(recipe.resolved()) == RunState(d).data["recipe_hash"]
