"""The docs: every relative link in README.md and docs/ resolves, and `make docs` (mkdocs, strict, with the API
reference generated from the docstrings) builds a site in which every public config shows each of its fields
and every verb appears."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import slimkit

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
VERBS = ["prune_", "quantize_", "lowrank_", "distill", "finetune", "evaluate", "export", "run_recipe"]


def _pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_relative_link_resolves():
    broken = []
    for page in _pages():
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)  # not in code blocks
        for target in LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # web/mail links and anchors within the page
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


DOC_PATH = re.compile(r"(?<![\w/.])(docs/[\w/-]+\.md)\b")


def test_every_docs_page_named_in_prose_exists():
    """A page named as a path (``see docs/lowrank.md``), not as a link, must exist too: a renamed page left
    such mentions behind (``docs/minilm.md`` after it became docs/transformers.md)."""
    missing = []
    for page in [*_pages(), *sorted((ROOT / "slimkit").rglob("*.py"))]:
        for name in DOC_PATH.findall(page.read_text(encoding="utf-8")):
            if not (ROOT / name).exists():
                missing.append(f"{page.relative_to(ROOT)}: {name}")
    assert not missing, missing
    assert DOC_PATH.findall("see docs/minilm.md, or `docs/a/b.md`; not mydocs/x.md") == ["docs/minilm.md", "docs/a/b.md"]


def test_link_checker_catches_a_broken_link(tmp_path, monkeypatch):
    page = tmp_path / "p.md"
    page.write_text("see [x](missing.md) and [y](https://example.org)")
    target = LINK.findall(page.read_text())
    assert target == ["missing.md", "https://example.org"] and not (tmp_path / target[0]).exists()


def test_docs_site_builds_with_the_reference(tmp_path):
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed (make setup installs it)")
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    configs = (site / "reference" / "configs" / "index.html").read_text(encoding="utf-8")
    missing = []
    for name, module in slimkit._LAZY.items():
        cls = getattr(slimkit, name)
        if f'id="{module}.{name}"' not in configs:
            missing.append(name)
            continue
        for field in getattr(cls, "model_fields", {}):
            if f'id="{module}.{name}.{field}"' not in configs:
                missing.append(f"{name}.{field}")
    assert not missing, missing
    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert all(f'id="slimkit.api.{v}"' in api for v in VERBS), [v for v in VERBS if f'id="slimkit.api.{v}"' not in api]
    assert 'id="slimkit.config.recipe.Recipe"' in (site / "reference" / "recipe" / "index.html").read_text()
