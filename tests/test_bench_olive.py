"""bench/olive.py without Olive's separate environment or without the case's slimkit run: it says so, writes
nothing and exits 0; a case's rows merge into bench/results/olive.json keeping the other case's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, load_bench


@pytest.fixture(scope="module")
def olive():
    return load_bench("olive")


def test_olive_bench_without_its_environment_writes_nothing(tmp_path) -> None:
    out = tmp_path / "olive.json"
    res = subprocess.run([sys.executable, "bench/olive.py", "--olive-venv", str(tmp_path / "no-venv"),
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "environment was not found" in res.stdout and "nothing written" in res.stdout
    assert not out.exists()
    assert not any(tmp_path.iterdir())


def test_mobilenet_case_without_the_auto_run_writes_nothing(olive, tmp_path, capsys) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "olive").touch()  # an environment is found: the missing auto run is what stops the case
    out = tmp_path / "olive.json"
    assert olive.main(["--case", "mobilenet", "--olive-venv", str(venv), "--auto-dir", str(tmp_path / "none"),
                       "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "no finished slimkit auto run" in said and "bench/auto.py --case mobilenet" in said
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["venv"]


def _row(variant: str, ms: float) -> dict:
    return {"system": "olive", "variant": variant, "size_bytes": 10, "latency_ms": {"b1": ms}, "quality": {}}


def test_a_case_replaces_its_rows_and_keeps_the_other_case(olive, tmp_path) -> None:
    from _common import validate_result
    from _olive_run import merge

    path = tmp_path / "olive.json"  # a file from before the cases: one MiniLM run, details at the top level
    old = {"bench": "olive", "command": "bench/olive.py --olive-out X", "machine": {"cpu": "c", "threads": 1, "torch": "t"},
           "rows": [_row("minilm fp32", 290.0), _row("minilm olive auto-opt", 125.0)], "olive": {"runs": {"a": 1}},
           "latency_rounds_ms": {"fp32": [1.0]}, "notes": ["minilm note"]}
    path.write_text(json.dumps(old))
    info = {"command": "bench/olive.py --case mobilenet", "machine": old["machine"], "olive": {"runs": {}}}
    first = merge(path, "mobilenet", [_row("mobilenetv2-fmnist fp32", 0.3)], info)
    validate_result(first)
    assert [r["variant"] for r in first["rows"]] == ["minilm fp32", "minilm olive auto-opt", "mobilenetv2-fmnist fp32"]
    assert [r.get("run") for r in first["rows"][:2]] == ["bench/olive.py --olive-out X"] * 2
    assert first["cases"]["minilm"]["olive"] == {"runs": {"a": 1}} and first["cases"]["minilm"]["notes"] == ["minilm note"]
    assert first["cases"]["mobilenet"] is info
    path.write_text(json.dumps(first))
    second = merge(path, "mobilenet", [_row("mobilenetv2-fmnist fp32", 0.25), _row("mobilenetv2-fmnist x", 0.1)], info)
    assert [r["latency_ms"]["b1"] for r in second["rows"] if r["variant"].startswith("mobilenetv2")] == [0.25, 0.1]
    assert len(second["rows"]) == 4 and second["cases"]["minilm"] == first["cases"]["minilm"]
