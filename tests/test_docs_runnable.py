"""Every code block of README.md and docs/*.md marked runnable runs as written.

A block is marked by an HTML comment on the line before its fence: ``<!-- runnable -->``. The blocks of one
file run in order, in one Python process (a block may use what an earlier one defined), in a fresh working
directory, so paths such as ``out/model.onnx`` land there. Blocks are kept small enough to run in seconds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"^<!-- runnable(?::[^>]*)? -->\s*\n```python\n(.*?)^```", re.S | re.M)


def runnable_blocks(path: Path) -> list[str]:
    return MARK.findall(path.read_text(encoding="utf-8"))


def test_marker_is_found():
    sample = "text\n<!-- runnable -->\n```python\nx = 1\n```\n\n```python\nnot marked\n```\n"
    assert MARK.findall(sample) == ["x = 1\n"]


def test_readme_has_runnable_blocks():
    assert len(runnable_blocks(ROOT / "README.md")) >= 2  # the quick start and the Quantize block


@pytest.mark.parametrize("path", [p for p in DOCS if runnable_blocks(p)], ids=lambda p: p.name)
def test_runnable_blocks_run(path, tmp_path):
    code = "\n".join(f"# --- block {i}\n{b}" for i, b in enumerate(runnable_blocks(path)))
    (tmp_path / "blocks.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "blocks.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, f"{path.name}:\n{r.stdout}\n{r.stderr}"
