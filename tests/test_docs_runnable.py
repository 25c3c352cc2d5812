"""Every code block of README.md and docs/*.md marked runnable runs as written.

A block is marked by an HTML comment on the line before its fence: ``<!-- runnable -->``. The blocks of one
file run in order, in one Python process (a block may use what an earlier one defined), in a fresh working
directory, so paths such as ``out/model.onnx`` land there. The marker may name literal replacements that make
the block small for the test, ``<!-- runnable; small: epochs=10 -> epochs=2 -->`` (each must match, so a stale
rule fails); everything else runs as written.
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
MARK = re.compile(r"^<!-- runnable([^\n]*?)-->[ \t]*\n```python\n(.*?)^```", re.S | re.M)


def _small(marker: str, code: str) -> str:
    rules = marker.split("small:", 1)[1] if "small:" in marker else ""
    for rule in filter(None, (r.strip() for r in rules.split(","))):
        old, new = (part.strip() for part in rule.split("->"))
        assert old in code, f"small-form rule {rule!r} matches nothing in:\n{code}"
        code = code.replace(old, new)
    return code


def runnable_blocks(path: Path) -> list[str]:
    return [_small(marker, code) for marker, code in MARK.findall(path.read_text(encoding="utf-8"))]


def test_marker_is_found():
    sample = "text\n<!-- runnable -->\n```python\nx = 1\n```\n\n```python\nnot marked\n```\n"
    assert [code for _, code in MARK.findall(sample)] == ["x = 1\n"]
    assert _small("; small: epochs=10 -> epochs=1, steps=4 -> steps=2", "f(epochs=10, steps=4)") == "f(epochs=1, steps=2)"
    with pytest.raises(AssertionError, match="matches nothing"):
        _small("; small: lr=1 -> lr=2", "f(epochs=10)")


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
