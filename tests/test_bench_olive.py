"""bench/olive.py without Olive's separate environment: it says so, writes nothing and exits 0."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_olive_bench_without_its_environment_writes_nothing(tmp_path) -> None:
    out = tmp_path / "olive.json"
    res = subprocess.run([sys.executable, "bench/olive.py", "--olive-venv", str(tmp_path / "no-venv"),
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "environment was not found" in res.stdout and "nothing written" in res.stdout
    assert not out.exists()
    assert not any(tmp_path.iterdir())
