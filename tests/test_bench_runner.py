"""`make bench` runs bench/run_all.py: every benchmark script exists and runs with its recorded command."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_run_all_lists_every_result_with_its_recorded_command() -> None:
    out = subprocess.run([sys.executable, "bench/run_all.py", "--dry-run"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    lines = [ln for ln in out.splitlines() if ln.startswith("== ")]
    results = sorted(p.stem for p in (ROOT / "bench" / "results").glob("*.json"))
    listed = sorted(ln.split(":")[0][3:] for ln in lines)
    assert set(results) <= set(listed), "a committed result that `make bench` does not reproduce"
    for ln in lines:
        name, cmd = ln[3:].split(": ", 1)
        assert (ROOT / cmd.split()[1]).is_file(), (name, cmd)
        if name not in results:  # a benchmark whose result is not committed yet runs its script's defaults
            continue
        recorded = json.loads((ROOT / "bench" / "results" / f"{name}.json").read_text())["command"]
        assert cmd.endswith(recorded.split(" ", 1)[1]), (name, cmd, recorded)
        assert (ROOT / cmd.split()[1]).is_file()


def test_run_all_quick_never_targets_committed_results() -> None:
    out = subprocess.run([sys.executable, "bench/run_all.py", "--dry-run", "--quick"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    cmds = [ln.split(": ", 1)[1] for ln in out.splitlines() if ln.startswith("== ")]
    assert cmds and all(c.endswith("--quick") for c in cmds)
