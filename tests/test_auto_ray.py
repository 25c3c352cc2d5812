"""slimkit auto on a two-node Ray cluster on the loopback address: `ray start --head` and a worker node on
127.0.0.1 (each with one CPU, in their own temp dir), two tiny trials as Ray tasks, the cluster stopped in
teardown by the process ids this test started (never `ray stop`, which would stop other clusters too).
The driver runs in a subprocess: Ray keeps its authentication settings for the life of a process, and this
cluster's token must not leak into the other Ray tests of the same pytest process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_with(marker: str) -> list[int]:
    """Processes whose command line names this test's Ray temp dir or port (the ones it started)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            out.append(int(d.name))
    return out


def _signal(markers: list[str], sig: int) -> None:
    for marker in markers:
        for pid in _pids_with(marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


@pytest.fixture
def cluster():
    if not RAY.exists():
        pytest.skip("the ray command is not installed")
    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))  # short: Ray's socket paths have a length limit
    # token authentication with a token of this test's own (Ray 2.60 refuses a second node without one
    # when a ~/.ray/auth_token exists); the driver subprocess gets the same variables
    import secrets

    (tmp / "token").write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp / "token"), "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                    os.environ.get("PYTHONPATH")])),
           "RAY_USAGE_STATS_ENABLED": "0"}
    markers = [str(tmp), f"127.0.0.1:{port}"]
    try:
        head = subprocess.run([str(RAY), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                               "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={tmp}", "--disable-usage-stats"],
                              env=env, capture_output=True, text=True, timeout=180)
        if head.returncode != 0:
            pytest.skip(f"ray start --head failed here: {head.stderr[-500:]}")
        worker = subprocess.run([str(RAY), "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                                 "--num-cpus=1", "--disable-usage-stats"], env=env, capture_output=True, text=True,
                                timeout=180)
        assert worker.returncode == 0, worker.stderr[-2000:]
        yield f"127.0.0.1:{port}", env
    finally:
        for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
            _signal(markers, sig)
            time.sleep(1)
        shutil.rmtree(tmp, ignore_errors=True)


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
