"""The CLI: exit code 2 and one clear paragraph for user errors, never a traceback."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def slimkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "slimkit.cli.app", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def write(tmp_path: Path, data: dict, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


BASE = {"name": "cli", "model": {"arch": "mlp"}, "data": {"name": "digits"}, "stages": []}


def test_validate_ok(tmp_path):
    r = slimkit("validate", str(write(tmp_path, {**BASE, "stages": [{"prune": {"sparsity": 0.5}}]})))
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_bad_recipe_exit_2_lists_every_problem_and_computes_nothing(tmp_path):
    bad = {**BASE, "stages": [{"prune": {"sparsity": 1.5, "scop": "x"}}, {"prnue": {}}], "dataa": 1}
    p = write(tmp_path, bad)
    for cmd in ("validate", "run"):
        r = slimkit(cmd, str(p), cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        for path in ("stages[0].prune.sparsity", "stages[0].prune.scop", "stages[1]", "dataa"):
            assert path in r.stderr, (path, r.stderr)
    assert not (tmp_path / "runs").exists()  # nothing computed, nothing written


def test_missing_recipe_file(tmp_path):
    r = slimkit("run", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "nope.yaml" in r.stderr and "Traceback" not in r.stderr


def test_missing_weights_named(tmp_path):
    deep = tmp_path / ("a-long-folder-name-" * 6)  # the whole path, unbroken, even where it is wider than 80 columns
    deep.mkdir()
    r = slimkit("run", str(write(deep, {**BASE, "model": {"arch": "mlp", "weights": "gone.safetensors"}})),
                cwd=deep)
    assert r.returncode == 2 and str(deep / "gone.safetensors") in r.stderr


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_malicious_pickle_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    _Evil.marker = marker
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"fc.weight": _Evil()}, f)
    r = slimkit("run", str(write(tmp_path, {**BASE, "model": {"arch": "mlp", "weights": str(evil)}})), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "refused" in r.stderr.lower() or "cannot read" in r.stderr.lower()
    assert "Traceback" not in r.stderr
    assert not marker.exists()


def test_truncated_checkpoint_is_typed_error(tmp_path):
    import torch

    from slimkit.config.recipe import ModelConfig
    from slimkit.models import build_model

    good = tmp_path / "w.pt"
    torch.save(build_model(ModelConfig(arch="mlp"), input_shape=(1, 8, 8), num_classes=10).state_dict(), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    r = slimkit("run", str(write(tmp_path, {**BASE, "model": {"arch": "mlp", "weights": str(cut)}})), cwd=tmp_path)
    assert r.returncode == 2 and "cut.pt" in r.stderr and "Traceback" not in r.stderr


def test_missing_dataset_names_the_package(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = slimkit("run", str(write(tmp_path, {**BASE, "data": {"name": "fashion-mnist", "path": str(empty)}})),
                cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "dataset-fashion-mnist" in r.stderr and "Traceback" not in r.stderr


def test_unknown_arch_suggests(tmp_path):
    r = slimkit("run", str(write(tmp_path, {**BASE, "model": {"arch": "cnn-smal"}})), cwd=tmp_path)
    assert r.returncode == 2 and "cnn-small" in r.stderr


def test_inspect_builtin():
    r = slimkit("inspect", "mlp", "--input", "1,8,8")
    assert r.returncode == 0, r.stderr
    assert "MACs" in r.stdout


@pytest.mark.parametrize("args", [["run"], ["frobnicate"]])
def test_usage_errors_exit_2(args):
    r = slimkit(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
