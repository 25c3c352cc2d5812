"""The package people install: the wheel carries the templates and every shipped recipe, and once installed into
a virtual environment outside the repository, ``slimkit`` and ``python -m slimkit`` run recipes from there.

What the small form (``make test``) proves, and what it does not: the wheel is built from the repository's
files and installed with ``--no-deps`` into a fresh venv (no system site-packages) whose only other path entry
is a folder of links to the test interpreter's installed distributions, minus slimkit itself; ``pip check``
then proves that the wheel's dependency ranges accept the versions we test with. The heavy dependencies are
shared, not downloaded again. The full form (``make test-full``, ``SLIMKIT_FULL=1``) installs the wheel into a
truly clean venv, letting pip resolve every dependency from its configured indexes, and runs the real
``slimkit demo`` and ``slimkit run quantize-dynamic`` there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import FULL

ROOT = Path(__file__).resolve().parents[1]
BUILD_FILES = ["slimkit", "recipes", "pyproject.toml", "setup.py", "README.md"]


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", COLUMNS="120")
    r = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, argv))} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _can_build_in_place() -> bool:
    try:
        import setuptools
        import wheel  # noqa: F401
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 68


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the files a release holds (no runs, venvs or build leftovers)."""
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_FILES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(p, src / name)
    dist = tmp_path_factory.mktemp("dist")
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)]
    if _can_build_in_place():
        argv.insert(5, "--no-build-isolation")
    _run(argv, cwd=src)
    wheels = list(dist.glob("slimkit-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_templates_recipes_and_main(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "slimkit/pipeline/report/templates/report.html.j2" in names
    assert "slimkit/__main__.py" in names and "slimkit/py.typed" in names
    shipped = {p.relative_to(ROOT / "recipes").as_posix() for p in (ROOT / "recipes").rglob("*.yaml")}
    inside = {n.removeprefix("slimkit/recipes/shipped/") for n in names if n.startswith("slimkit/recipes/shipped/")}
    assert shipped and inside == shipped
    with zipfile.ZipFile(wheel) as z:  # the very same bytes, not a stale copy
        for rel in shipped:
            assert z.read(f"slimkit/recipes/shipped/{rel}") == (ROOT / "recipes" / rel).read_bytes(), rel
    assert not any(n.startswith(("tests/", "bench/", "recipes/")) for n in names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    heavy = [r for r in requires if r.split(">")[0].split("<")[0].split("=")[0].strip()
             in ("torch", "onnxruntime", "transformers", "ray", "optuna")]
    assert len(heavy) == 5 and not any("==" in r for r in heavy), heavy  # ranges; make setup pins torch


RANGES_MET = """
from importlib.metadata import PackageNotFoundError, requires, version
from packaging.requirements import Requirement
unmet, n = [], 0
for req in map(Requirement, requires("slimkit")):
    if req.marker and not req.marker.evaluate({"extra": ""}):
        continue
    n += 1
    try:
        v = version(req.name)
    except PackageNotFoundError:
        unmet.append(f"{req} (not installed)")
        continue
    if not req.specifier.contains(v, prereleases=True):
        unmet.append(f"{req} (have {v})")
print(f"checked {n}", *(f"unmet: {u}" for u in unmet))
"""


def _shared_deps(dest: Path) -> Path:
    """A folder of links to this interpreter's installed distributions, slimkit's own entries left out."""
    site = Path(sysconfig.get_paths()["purelib"])
    dest.mkdir()
    for entry in site.iterdir():
        low = entry.name.lower()
        if low.startswith(("slimkit", "__editable__", "_slimkit")) or low.endswith(".pth"):
            continue
        (dest / entry.name).symlink_to(entry)
    return dest


def _venv(path: Path, *, with_pip: bool) -> Path:
    argv = [sys.executable, "-m", "venv", str(path)]
    if not with_pip:
        argv.insert(3, "--without-pip")
    _run(argv, cwd=path.parent)
    return path / "bin" / "python"


def _small_demo(python: Path, work: Path) -> Path:
    """The demo recipe as installed inside the package, with less training (the full one is in test-full)."""
    r = _run([str(python), "-c", "from slimkit.recipes import shipped_recipe; print(shipped_recipe('demo'))"], work)
    installed = Path(r.stdout.strip())
    assert installed.is_relative_to(python.parent.parent), installed  # inside the venv, not the repository
    data = yaml.safe_load(installed.read_text())
    data["name"] = "demo-small"
    data["model"]["kwargs"] = {"widths": [8, 16]}
    data["model"]["train"]["epochs"] = 2
    data["stages"] = [{"prune": {**data["stages"][0]["prune"], "steps": 1, "finetune": {"epochs": 1}}}]
    data["evaluate"]["latency"] = {"batch": 1, "warmup": 2, "repeats": 5, "threads": 1}
    data["constraints"] = {}
    path = work / "demo-small.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_installed_wheel_runs_outside_the_repository(wheel, tmp_path):
    python = _venv(tmp_path / "venv", with_pip=False)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     tmp_path).stdout.strip())
    (site / "shared-deps.pth").write_text(str(_shared_deps(tmp_path / "shared")) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    _run([*pip, "install", "-q", "--no-index", "--no-deps", str(wheel)], tmp_path)
    # the wheel's dependency ranges accept the versions we test with (pip check would also judge unrelated
    # distributions of the shared folder, e.g. the offline weights package installed with --no-deps)
    unmet = _run([str(python), "-c", RANGES_MET], tmp_path).stdout.strip()
    assert unmet.startswith("checked") and "unmet" not in unmet, unmet

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([str(python), "-c", "import slimkit; print(slimkit.__file__)"], work).stdout.strip()
    assert Path(where).is_relative_to(site) and not Path(where).is_relative_to(ROOT)
    assert "compare" in _run([str(python), "-m", "slimkit", "--help"], work).stdout
    slimkit = str(python.parent / "slimkit")
    assert "ok" in _run([slimkit, "validate", "quantize-dynamic"], work).stdout  # a shipped recipe, by name
    _run([slimkit, "run", str(_small_demo(python, work)), "--out", "run"], work)
    report = json.loads((work / "run" / "report.json").read_text())
    assert report["final"]["sparsity"] > 0.5 and (work / "run" / "model.onnx").is_file()
    page = (work / "run" / "report.html").read_text()
    assert "Per layer" in page and "data:image/png;base64," in page  # templates and plots from the package


@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason="installs every dependency into a clean venv (minutes): make test-full")
def test_clean_install_resolves_dependencies_and_runs_the_demo(wheel, tmp_path):
    python = _venv(tmp_path / "venv", with_pip=True)
    _run([str(python), "-m", "pip", "install", "-q", str(wheel)], tmp_path, timeout=3000)
    _run([str(python), "-m", "pip", "check"], tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    slimkit = str(python.parent / "slimkit")
    out = _run([slimkit, "demo"], work, timeout=3000).stdout
    assert "All 3 constraints met" in " ".join(out.split())
    _run([slimkit, "run", "quantize-dynamic", "--out", "q"], work, timeout=3000)
    assert json.loads((work / "q" / "report.json").read_text())["final"]["size_bytes"] > 0


def test_shipped_recipes_by_name(tmp_path, monkeypatch):
    from slimkit.errors import RecipeError
    from slimkit.recipes import resolve_recipe, shipped_recipes

    names = shipped_recipes()
    assert {"demo", "quantize-dynamic", "search/digits"} <= set(names)
    assert resolve_recipe("quantize-dynamic.yaml") == ROOT / "recipes" / "quantize-dynamic.yaml"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text("a local file wins over a shipped name")
    assert resolve_recipe("demo") == Path("demo")
    with pytest.raises(RecipeError, match="Did you mean 'quantize-dynamic'"):
        resolve_recipe("quantize-dynamc")
