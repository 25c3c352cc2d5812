"""slimkit auto on a two-node Ray cluster on the loopback address: `ray start --head` and a worker node on
127.0.0.1 (each with one CPU, in their own temp dir; bench/_loopback_ray.py), two tiny trials as Ray tasks, the
cluster stopped in teardown by the process ids it started (never `ray stop`, which would stop other clusters too).
The driver runs in a subprocess: Ray keeps its authentication settings for the life of a process, and this
cluster's token must not leak into the other Ray tests of the same pytest process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")


@pytest.fixture
def cluster():
    if not RAY.exists():
        pytest.skip("the ray command is not installed")
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from _loopback_ray import (
            loopback_cluster,  # the one loopback cluster (bench/auto.py --case ray uses it)
        )
    finally:
        sys.path.remove(str(ROOT / "bench"))
    cm = loopback_cluster(ROOT)
    try:
        address, env = cm.__enter__()
    except RuntimeError as exc:  # the head cannot start on this machine: skip; a worker that cannot join: fail
        if "--head" in str(exc):
            pytest.skip(str(exc)[-500:])
        raise
    try:
        yield address, env
    finally:
        cm.__exit__(None, None, None)


DRIVER = """
import json, sys
import ray
from slimkit.auto import auto

address, out = sys.argv[1], sys.argv[2]
recipe = {"name": "tiny", "model": {"arch": "cnn-small", "kwargs": {"widths": [8, 16]},
                                    "train": {"epochs": 4, "lr": 0.01}}, "data": {"name": "digits"}}
settings = {"runtime": "torch", "max_latency_ratio": 0.9, "max_accuracy_drop": 0.5, "trials": 2,
            "profile_units": 1, "latency_repeats": 5, "finetune_epochs": 1, "backend": "ray",
            "address": address, "workers": 2}
ray.init(address=address, logging_level="WARNING", log_to_driver=False)
try:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    result = auto(recipe, out=out, **settings)
finally:
    ray.shutdown()
print(json.dumps({"nodes": len(nodes), "cpus": sum(n["Resources"].get("CPU", 0) for n in nodes),
                  "points": len(result["points"]), "front": len(result["front"])}))
"""


@pytest.mark.timeout(600)
def test_auto_on_a_two_node_loopback_cluster(cluster, tmp_path):
    address, env = cluster
    out = tmp_path / "a"
    r = subprocess.run([sys.executable, "-c", DRIVER, address, str(out)], env=env, capture_output=True, text=True,
                       timeout=540)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["nodes"] == 2 and seen["cpus"] == 2
    data = json.loads((out / "search.json").read_text())
    assert data["backend"] == "ray" and [t["state"] for t in data["trials"]] == ["complete", "complete"]
    assert seen["points"] == 2 and seen["front"] >= 1
    for t in data["trials"]:
        assert (out / t["dir"] / "report.json").exists()
