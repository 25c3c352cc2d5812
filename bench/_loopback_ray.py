"""A two-node Ray cluster on the loopback address for bench/auto.py's Ray case: ``ray start --head`` and a
worker node on 127.0.0.1, one CPU each, token authentication with a token of its own, in a temp dir of its own;
stopped by the process ids it started (their command lines name its temp dir or port), never ``ray stop``,
which would stop other clusters on the machine. tests/test_auto_ray.py starts the same cluster in a fixture."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_with(marker: str) -> list[int]:
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


@contextmanager
def loopback_cluster(root: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield (address, environment for driver processes) of a running two-node cluster; stop it on exit."""
    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))  # short: Ray's socket paths have a length limit
    (tmp / "token").write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp / "token"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
           "RAY_USAGE_STATS_ENABLED": "0"}
    markers = [str(tmp), f"127.0.0.1:{port}"]
    try:
        for args in (["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={tmp}"],
                     [f"--address=127.0.0.1:{port}"]):
            r = subprocess.run([str(RAY), "start", *args, "--node-ip-address=127.0.0.1", "--num-cpus=1",
                                "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
            if r.returncode != 0:
                raise RuntimeError(f"ray start {' '.join(args)} failed: {r.stderr[-1000:]}")
        yield f"127.0.0.1:{port}", env
    finally:
        for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
            for marker in markers:
                for pid in _pids_with(marker):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            time.sleep(1)
        shutil.rmtree(tmp, ignore_errors=True)
