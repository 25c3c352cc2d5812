"""Issue 14 item 2 (short form): files a user hands in or a run left behind (``model.safetensors`` +
``manifest.json``, ``state.json``), truncated, bit-flipped, with absurd shapes, wrong dtypes, path-like names
or random JSON in place of any manifest value: each loader raises a typed error or returns exactly what was
saved; never a raw exception and never a different tensor presented as valid."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from fuzzlog import fuzz_settings, outcome
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from slimkit.exporters.safetensors_io import MANIFEST, WEIGHTS, load_state, save_model

_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63), st.floats(allow_nan=False),
              st.text(max_size=8), st.sampled_from(["../../etc/passwd", "float32", "int8", "bitmask", "alias",
                                                     "codec", "dense", "0.weight", "os", "slimkit.x"])),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=6), c, max_size=3)),
    max_leaves=6)
_shapes = st.lists(st.one_of(st.integers(-3, 2**40), st.just(2**62)), max_size=4)


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        m[0].weight[:, :3] = 0  # sparse enough for the bitmask encoding
    return m


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    d = tmp_path_factory.mktemp("saved")
    m = _model()
    save_model(m, d, spec={"arch": "mlp"})
    return d, {k: v.clone() for k, v in m.state_dict().items()}


def _check(d: Path, original: dict[str, torch.Tensor], loader: str) -> None:
    """Typed error, or exactly the saved state."""
    with outcome(loader):
        state = load_state(d)
        assert set(state) == set(original)
        for k, v in original.items():
            assert state[k].dtype == v.dtype and state[k].shape == v.shape and torch.equal(state[k], v), k


def _copy(saved: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path, tag: str) -> Path:
    d = tmp_path / tag
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(saved[0], d)
    return d


def _paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@fuzz_settings("manifest", 150)
@given(data=st.data())
def test_manifest_values_replaced(saved, tmp_path, data) -> None:
    d = _copy(saved, tmp_path, "m")
    manifest = json.loads((d / MANIFEST).read_text())
    path = data.draw(st.sampled_from([p for p in _paths(manifest) if p]))
    key = path[-1]
    value = data.draw(_shapes if key == "shape" else st.one_of(
        _json, st.sampled_from(["bfloat16", "int64", "uint8", "float16", "bool", "Tensor", "../../etc/passwd"])))
    target = manifest
    for p in path[:-1]:
        target = target[p]
    new = copy.deepcopy(manifest)
    t = new
    for p in path[:-1]:
        t = t[p]
    t[key] = value
    (d / MANIFEST).write_text(json.dumps(new))
    _check(d, saved[1], "manifest")


@fuzz_settings("safetensors", 150)
@given(cut=st.integers(0, 4000), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), max_size=4),
       which=st.sampled_from([WEIGHTS, MANIFEST]))
def test_files_truncated_or_bit_flipped(saved, tmp_path, cut, flips, which) -> None:
    d = _copy(saved, tmp_path, "b")
    raw = bytearray((d / which).read_bytes())
    if flips:
        for pos, bit in flips:
            raw[pos % len(raw)] ^= 1 << bit
    else:
        raw = raw[: cut % len(raw)]
    (d / which).write_bytes(bytes(raw))
    _check(d, saved[1], "safetensors")


@fuzz_settings("state", 150)
@given(body=st.one_of(_json.map(json.dumps), st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
                      st.sampled_from(['{"recipe_hash": "x", "baseline": null, "stages": {"0": 1}}',
                                       '{"recipe_hash": "x", "baseline": null, "stages": {"../0": {}}}',
                                       '[' * 100000, '{"recipe_hash": 1}'])))
def test_state_json_garbage(tmp_path, body) -> None:
    from slimkit.pipeline.state import RunState

    d = tmp_path / "run"
    d.mkdir(exist_ok=True)
    (d / "state.json").write_text(body, encoding="utf-8", errors="surrogateescape")
    with outcome("state"):
        st_ = RunState(d)
        assert isinstance(st_.data, dict) and isinstance(st_.data["stages"], dict)
