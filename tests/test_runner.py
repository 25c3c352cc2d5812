"""The runner end to end on digits: report contract, artifacts, resume after a kill, lock, reproducibility."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slimkit.errors import RunError
from slimkit.pipeline.runner import run_recipe

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT.parent / "shared" / "schemas" / "report.schema.json"


def small_recipe(name: str = "t", **over) -> dict:
    r = {
        "name": name,
        "seed": 3,
        "model": {"arch": "cnn-small", "kwargs": {"widths": [8, 16]}, "train": {"epochs": 3, "lr": 0.01}},
        "data": {"name": "digits", "batch_size": 64},
        "stages": [
            {"prune": {"method": "magnitude", "sparsity": 0.8, "steps": 2, "finetune": {"epochs": 1}}},
            {"finetune": {"epochs": 1, "lr": 0.0005}},
        ],
        "evaluate": {"latency": {"batch": 1, "warmup": 2, "repeats": 5, "threads": 1}},
        "constraints": {"min_sparsity": 0.8, "max_size_ratio": 0.6, "max_accuracy_drop": 0.5},
    }
    r.update(over)
    return r


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    report = run_recipe(small_recipe(), out=out)
    return out, report


def test_report_contract(finished_run):
    out, report = finished_run
    data = json.loads((out / "report.json").read_text())
    assert data == json.loads(json.dumps(report, default=str))
    if SCHEMA.exists():
        import jsonschema

        jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    assert [s["index"] for s in data["stages"]] == [0, 1]
    assert data["stages"][0]["pass"] == "prune:magnitude"
    for m in [data["baseline"], data["final"], *[s["metrics"] for s in data["stages"]]]:
        assert 0 <= m["accuracy"] <= 1
        # size_bytes is exactly the bytes of the artifact it names
        assert m["size_bytes"] == (out / m["artifact"]).stat().st_size
    assert data["final"]["sparsity"] >= 0.8 - 1e-6
    assert data["final"]["nonzero_params"] < 0.35 * data["final"]["params"]
    assert data["final"]["size_bytes"] < 0.6 * data["baseline"]["size_bytes"]
    assert data["final"]["macs"] == data["baseline"]["macs"]  # unstructured: same dense MACs
    assert {c["name"] for c in data["constraints"]} == {"min_sparsity", "max_size_ratio", "max_accuracy_drop"}
    assert all(c["met"] for c in data["constraints"])
    assert "constraints met" in data["verdict"]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    assert (out / "report.md").read_text().startswith("# slimkit report")
    onnx = [e for e in data["exports"] if e["format"] == "onnx"]
    assert (out / "model.onnx").exists() or onnx == []
    resolved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert resolved["stages"][0]["prune"]["scope"] == "global"


def test_metrics_reproduced_from_saved_artifact(finished_run):
    from slimkit.pipeline.artifacts import evaluate_saved

    out, report = finished_run
    again = evaluate_saved(out, "final")
    assert again["accuracy"] == pytest.approx(report["final"]["accuracy"], abs=1e-12)
    assert again["sparsity"] == pytest.approx(report["final"]["sparsity"], abs=1e-12)
    assert again["size_bytes"] == report["final"]["size_bytes"]
    stage0 = evaluate_saved(out, "0")
    assert stage0["accuracy"] == pytest.approx(report["stages"][0]["metrics"]["accuracy"], abs=1e-12)


def test_second_run_into_same_dir_refused(finished_run):
    out, _ = finished_run
    with pytest.raises(RunError, match="--resume"):
        run_recipe(small_recipe(), out=out)


def test_resume_with_changed_recipe_refused(finished_run):
    out, _ = finished_run
    changed = small_recipe(seed=4)
    with pytest.raises(RunError, match="changed"):
        run_recipe(changed, out=out, resume=True)


def test_live_lock_refused(tmp_path):
    out = tmp_path / "locked"
    out.mkdir()
    import socket

    # a live process that recorded itself without flock (an older slimkit): still refused
    (out / ".lock").write_text(f"pid={os.getppid()} host={socket.gethostname()}\n")
    with pytest.raises(RunError, match="another slimkit run"):
        run_recipe(small_recipe(), out=out)


def test_killed_run_resumes_without_recomputing(tmp_path):
    """SIGKILL a real run after stage 0 is checkpointed; --resume finishes with the same final metrics."""
    # stage 1 is long enough (many epochs) that the kill lands inside it
    rec = small_recipe("kill", stages=[
        {"prune": {"method": "magnitude", "sparsity": 0.8, "steps": 2, "finetune": {"epochs": 1}}},
        {"finetune": {"epochs": 60, "lr": 0.0005}},
    ])
    uninterrupted = run_recipe(rec, out=tmp_path / "whole")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(rec))
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "slimkit.cli.app", "run", str(recipe), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # same threads as this process
    state = out / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        if state.exists():
            try:
                if "0" in json.loads(state.read_text()).get("stages", {}):
                    break
            except json.JSONDecodeError:
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "report.json").exists()
    stage0_mtime = (out / "stages" / "0-prune" / "model.safetensors").stat().st_mtime_ns

    report = run_recipe(rec, out=out, resume=True)
    # stage 0 was not recomputed: its checkpoint is untouched
    assert (out / "stages" / "0-prune" / "model.safetensors").stat().st_mtime_ns == stage0_mtime
    for key in ("accuracy", "f1", "sparsity", "nonzero_params", "size_bytes"):
        assert report["final"][key] == uninterrupted["final"][key], key
