"""What a user sees: report.html and search.html checked in headless Chromium, per-layer views read from the
checkpoints, axes that do not stretch noise, and ``slimkit compare`` with the Pareto front."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_runner import small_recipe

from slimkit.errors import ReportError
from slimkit.pipeline.report.browser import check_page, external_references, find_chromium
from slimkit.pipeline.report.compare import compare_runs, dominates, write_comparison
from slimkit.pipeline.report.layers import layer_profile, layer_views, run_layers
from slimkit.pipeline.report.plotting import latency_noise, mark_if_within_noise, within_noise
from slimkit.pipeline.runner import run_recipe

ROOT = Path(__file__).resolve().parents[1]
needs_chromium = pytest.mark.skipif(
    find_chromium() is None, reason="Debian's chromium is not installed (make setup installs it when run as root)")
PNG = b"\x89PNG\r\n\x1a\n"


def _tiny(name: str, stages: list, **over) -> dict:
    return small_recipe(name, model={"arch": "cnn-small", "kwargs": {"widths": [8, 16]},
                                     "train": {"epochs": 2, "lr": 0.01}},
                        stages=stages, **over)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four small finished runs: magnitude pruning, a structured prune, 4-bit QAT, dynamic int8."""
    root = tmp_path_factory.mktemp("views")
    recipes = {
        "magnitude": _tiny("magnitude", [{"prune": {"method": "magnitude", "sparsity": 0.8, "steps": 1}}]),
        "structured": _tiny("structured", [{"prune": {"method": "structured", "ratio": 0.5, "round_to": 4}}],
                            constraints={}),
        "qat4": _tiny("qat4", [{"quantize": {"method": "qat", "bits": 4, "finetune": {"epochs": 1}}}],
                      constraints={}),
        "dynamic": _tiny("dynamic", [{"quantize": {"method": "dynamic"}}], constraints={}),  # torchao Int8Tensor
    }
    out = {}
    for key, rec in recipes.items():
        run_recipe(rec, out=root / key)
        out[key] = root / key
    return out


# ---------------------------------------------------------------- axes


def _ax():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    return plt, fig, ax


def test_latency_axis_within_noise_is_drawn_from_zero_and_marked():
    # the demo's case: medians 0.0669..0.0678 ms, the fastest varying by 0.002 ms run to run
    metrics = [{"latency_ms": {"median": 0.0678, "p90": 0.0701}}, {"latency_ms": {"median": 0.0669, "p90": 0.0689}}]
    noise = latency_noise(metrics)
    assert noise == pytest.approx(0.0020)
    xs = [m["latency_ms"]["median"] for m in metrics]
    plt, fig, ax = _ax()
    ax.scatter(xs, [97.0, 96.5])
    note = mark_if_within_noise(ax, xs, noise, unit=" ms")
    assert note and "no measurable difference" in note
    assert ax.get_xlim()[0] == 0.0 and ax.get_xlim()[1] >= max(xs)
    assert "no measurable difference" in ax.get_title()
    plt.close(fig)


def test_latency_axis_with_a_real_difference_is_left_alone():
    metrics = [{"latency_ms": {"median": 0.087, "p90": 0.090}}, {"latency_ms": {"median": 0.852, "p90": 3.09}}]
    xs = [0.087, 0.852]
    # one noisy point (the slow one) does not hide a difference far beyond the fastest point's spread
    assert not within_noise(xs, latency_noise(metrics))
    plt, fig, ax = _ax()
    ax.scatter(xs, [1, 2])
    before = ax.get_xlim()
    assert mark_if_within_noise(ax, xs, latency_noise(metrics)) is None
    assert ax.get_xlim() == before and ax.get_title() == ""
    plt.close(fig)
    assert not within_noise([0.1], 1.0) and not within_noise([0.1, 0.2], None)


# ---------------------------------------------------------------- per-layer views


def test_layer_profile_matches_the_rebuilt_model(runs):
    from slimkit.pipeline.artifacts import load_saved

    model, _ = load_saved(runs["magnitude"], "final")
    mods = dict(model.named_modules())
    rows = layer_profile(runs["magnitude"] / "final")
    assert [r["layer"] for r in rows] == ["features.0.0", "features.1.0", "fc"]
    for r in rows:
        w = mods[r["layer"]].weight.detach()
        assert list(w.shape) == r["shape"] and r["params"] == w.numel()
        assert r["nonzero"] == int(torch.count_nonzero(w)) and r["bits"] == 32
    report = json.loads((runs["magnitude"] / "report.json").read_text())
    biases_and_norms = report["final"]["params"] - sum(r["params"] for r in rows)
    assert sum(r["nonzero"] for r in rows) + biases_and_norms >= report["final"]["nonzero_params"]
    assert sum(r["nonzero"] for r in rows) / sum(r["params"] for r in rows) < 0.3  # 80% of the weights pruned


def test_structured_widths_and_quantized_bits(runs):
    s = run_layers(runs["structured"])
    before = {r["layer"]: r["out"] for r in s["baseline"]}
    after = {r["layer"]: r["out"] for r in s["final"]}
    assert before == {"features.0.0": 8, "features.1.0": 16, "fc": 10}
    assert after["features.0.0"] < 8 and after["features.1.0"] < 16 and after["fc"] == 10  # classes stay
    titles = [t for t, _ in layer_views(s, pruned=True)]
    assert titles == ["Output channels per layer, before and after"]
    q = run_layers(runs["qat4"])
    assert [r["bits"] for r in q["final"]] == [4, 4, 4] and all(r["bits"] == 32 for r in q["baseline"])
    titles = [t for t, _ in layer_views(q, pruned=False)]
    assert titles == ["Stored bits per layer (final model)"]  # zeros from rounding are not shown as pruning
    d = run_layers(runs["dynamic"])  # torchao's int8 weight (a tensor subclass) is counted dequantized
    fc = next(r for r in d["final"] if r["layer"] == "fc")
    assert fc["bits"] == 8 and fc["nonzero"] is not None and fc["nonzero"] > 0.9 * fc["params"]
    assert "| fc | 10x16 | 10 |" in (runs["dynamic"] / "report.md").read_text()
    m = run_layers(runs["magnitude"])
    assert [t for t, _ in layer_views(m, pruned=True)] == ["Weights kept per layer (final model)"]
    md = (runs["structured"] / "report.md").read_text()
    assert f"| features.1.0 | {after['features.1.0']}x{after['features.0.0']}x3x3 | 16 -> {after['features.1.0']} |" in md


# ---------------------------------------------------------------- headless Chromium


def test_checker_catches_broken_images_console_errors_and_outside_requests(tmp_path):
    assert external_references("<img src='https://cdn.example.com/a.png'><script src=//cdn.x.org/y.js>") == [
        "//cdn.x.org/y.js", "https://cdn.example.com/a.png"]
    if find_chromium() is None:
        pytest.skip("Debian's chromium is not installed (make setup installs it when run as root)")
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><html><head><script>console.error('boom')</script></head><body>"
                    "<img src='data:image/png;base64,AAAA'><img src='http://example.invalid/x.png'></body></html>")
    result = check_page(page)
    assert not result.ok and result.images == 2
    assert len(result.broken_images) == 2
    assert any("boom" in c for c in result.console)
    assert "http://example.invalid/x.png" in result.external
    assert not list(tmp_path.glob(".slimkit-check-*"))  # the probe copy is removed


@needs_chromium
def test_reports_render_cleanly_in_chromium(runs):
    for key, run_dir in runs.items():
        result = check_page(run_dir / "report.html")
        assert result.ok, (key, result.problems)
        assert result.images >= 3, key  # two trade-off plots and at least one per-layer view
        assert result.height > 800


@needs_chromium
def test_search_html_renders_cleanly_in_chromium(tmp_path):
    from test_search import small_search

    from slimkit.search.runner import search

    cfg = small_search(trials=2)
    cfg["base"]["model"]["train"] = {"epochs": 3, "lr": 0.01}
    search(cfg, out=tmp_path / "s")
    result = check_page(tmp_path / "s" / "search.html")
    assert result.ok, result.problems
    assert result.images == 1


def _slimkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "slimkit", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


@needs_chromium
def test_report_cli_keeps_a_screenshot(runs, tmp_path):
    run_dir = runs["structured"]
    r = _slimkit("report", str(run_dir), "--screenshot", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    png = run_dir / "report.png"
    assert png.read_bytes()[:8] == PNG
    width, height = int.from_bytes(png.read_bytes()[16:20], "big"), int.from_bytes(png.read_bytes()[20:24], "big")
    assert width >= 1200 and height > 800
    assert "no request outside the file" in " ".join(r.stdout.split())  # rich wraps at 80 columns


def test_report_cli_rerenders_and_refuses_a_non_run(runs, tmp_path):
    run_dir = runs["qat4"]
    (run_dir / "report.html").unlink()
    r = _slimkit("report", str(run_dir), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Stored bits per layer" in (run_dir / "report.html").read_text()
    r = _slimkit("report", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "holds no report.json" in " ".join(r.stderr.split())


# ---------------------------------------------------------------- compare


def test_dominates():
    objs = [("quality", "q", "max"), ("size_bytes", "b", "min")]
    a, b, c = {"quality": 0.9, "size_bytes": 10}, {"quality": 0.8, "size_bytes": 12}, {"quality": 0.95, "size_bytes": 20}
    assert dominates(a, b, objs) and not dominates(b, a, objs)
    assert not dominates(a, c, objs) and not dominates(c, a, objs)
    assert not dominates(a, dict(a), objs)  # equal is not better


def test_compare_runs_marks_the_front(runs, tmp_path):
    dirs = [runs["magnitude"], runs["structured"], runs["qat4"], runs["dynamic"]]
    cmp = compare_runs(dirs)
    assert cmp["quality"] == "accuracy"
    assert [o["key"] for o in cmp["objectives"]] == ["quality", "size_bytes", "macs", "latency"]
    for row, d in zip(cmp["runs"], dirs, strict=True):
        final = json.loads((d / "report.json").read_text())["final"]
        assert row["accuracy"] == final["accuracy"] and row["size_bytes"] == final["size_bytes"]
        assert row["macs"] == final["macs"] and row["latency"] == final["latency_ms"]["median"]
    objs = [(o["key"], o["name"], o["direction"]) for o in cmp["objectives"]]
    for row in cmp["runs"]:  # the front is exactly the runs no other run dominates
        others = [o for o in cmp["runs"] if o is not row]
        assert row["pareto"] == (not any(dominates(o, row, objs) for o in others))
    # the structured prune has the fewest MACs, so nothing dominates it
    assert next(r for r in cmp["runs"] if r["run"] == "structured")["pareto"]
    paths = write_comparison(tmp_path / "cmp", cmp)
    md = paths["md"].read_text()
    assert "| structured |" in md and "Pareto front over: quality" in md
    assert json.loads(paths["json"].read_text())["runs"][0]["run"] == "magnitude"
    if find_chromium():
        result = check_page(paths["html"])
        assert result.ok and result.images == 2, result.problems


def test_compare_a_dominated_copy(runs, tmp_path):
    """A run that is worse on every objective is marked dominated (a copy of a report with more bytes)."""
    worse = tmp_path / "worse"
    worse.mkdir()
    rep = json.loads((runs["magnitude"] / "report.json").read_text())
    rep["name"] = "worse"
    rep["final"]["size_bytes"] += 1000
    rep["final"]["accuracy"] -= 0.01
    (worse / "report.json").write_text(json.dumps(rep))
    cmp = compare_runs([runs["magnitude"], worse])
    assert [r["pareto"] for r in cmp["runs"]] == [True, False]
    assert cmp["runs"][1]["dominated_by"] == ["magnitude"]


def test_compare_cli_and_errors(runs, tmp_path):
    r = _slimkit("compare", str(runs["magnitude"]), str(runs["qat4"]), "--out", "c", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "front" in r.stdout and "qat4" in r.stdout
    assert (tmp_path / "c" / "compare.html").is_file() and (tmp_path / "c" / "compare.md").is_file()
    with pytest.raises(ReportError, match="two or more"):
        compare_runs([runs["qat4"]])
    with pytest.raises(ReportError, match="no report.json"):
        compare_runs([runs["qat4"], tmp_path])
