"""The device path: ``device: auto|cpu|cuda`` in recipes and ``--device`` on the command line. CPU paths are
checked with numbers here; the CUDA checks skip with the reason on a machine without a CUDA device."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.config.recipe import parse_recipe
from slimkit.context import resolve_device
from slimkit.errors import DeviceError, RecipeError
from slimkit.evaluation.latency import measure_latency
from slimkit.pipeline.fit import check_fit
from slimkit.pipeline.runner import run_recipe
from slimkit.pipeline.state import recipe_hash

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device (torch.cuda.is_available() is False)")
without_cuda = pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")


def tiny_recipe(**over) -> dict:
    r = {"name": "dev", "seed": 2,
         "model": {"arch": "cnn-small", "kwargs": {"widths": [4, 8]}, "train": {"epochs": 1, "lr": 0.01}},
         "data": {"name": "digits", "batch_size": 128, "test_limit": 200},
         "stages": [{"prune": {"method": "magnitude", "sparsity": 0.5, "finetune": {"epochs": 1}}}],
         "evaluate": {"latency": {"batch": 2, "warmup": 1, "repeats": 3, "threads": 1}}}
    r.update(over)
    return r


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if HAS_CUDA else "cpu")
    for bad in ("tpu", "meta", "nonsense"):
        with pytest.raises(DeviceError):
            resolve_device(bad)


@without_cuda
def test_cuda_without_a_device_is_a_typed_error_at_validate_time():
    with pytest.raises(DeviceError, match="no CUDA device") as exc:
        resolve_device("cuda")
    assert "device: auto or cpu" in exc.value.hint
    recipe = parse_recipe(tiny_recipe(device="cuda"))  # valid as data: the machine decides
    with pytest.raises(RecipeError) as exc2:
        check_fit(recipe)  # what `slimkit validate` and every run do before any compute
    (path, msg), = exc2.value.problems
    assert path == "device" and "no CUDA device" in msg and "device: auto or cpu" in msg


def test_device_field_validation_and_hash():
    with pytest.raises(RecipeError) as exc:
        parse_recipe(tiny_recipe(device="gpu"))
    assert [p for p, _ in exc.value.problems] == ["device"]
    auto, cpu = parse_recipe(tiny_recipe()), parse_recipe(tiny_recipe(device="cpu"))
    assert "device" not in auto.resolved() and cpu.resolved()["device"] == "cpu"
    assert recipe_hash(auto.resolved()) == recipe_hash(cpu.resolved())  # the same checkpoints serve both


def test_cli_device_option(tmp_path, capsys, monkeypatch):
    from slimkit.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: d\nmodel: {arch: cnn-small}\n")
    for device, code in (("cpu", None), ("gpu", 2), *([] if HAS_CUDA else [("cuda", 2)])):
        monkeypatch.setattr(sys, "argv", ["slimkit", "validate", str(recipe), "--device", device])
        if code is None:
            app.main()
            assert "ok" in capsys.readouterr().out
        else:
            with pytest.raises(SystemExit) as exc:
                app.main()
            assert exc.value.code == code and "device" in capsys.readouterr().err


def test_cpu_host_timer_and_run_reports_device(tmp_path):
    out = measure_latency(lambda: None, warmup=0, repeats=3, device="cpu")
    assert "timer" not in out and out["median"] >= 0
    report = run_recipe(tiny_recipe(device="cpu"), out=tmp_path / "r")
    assert report["environment"]["device"] == "cpu" and "gpu" not in report["environment"]
    assert report["final"]["latency_ms"]["runtime"] == "torch" and "timer" not in report["final"]["latency_ms"]
    assert report["recipe"]["device"] == "cpu"
    assert 0 <= report["final"]["accuracy"] <= 1


# ------------------------------------------------------------------------------------------------ CUDA only
@needs_cuda
def test_cuda_latency_uses_cuda_events():
    x = torch.randn(256, 256, device="cuda")
    out = measure_latency(lambda: x @ x, warmup=2, repeats=5, device="cuda")
    assert out["timer"] == "cuda-events" and out["median"] > 0 and out["p90"] >= out["median"]


@needs_cuda
def test_cuda_run_matches_cpu_run_and_exports_from_a_cpu_copy(tmp_path):
    recipe = tiny_recipe(export={"formats": ["safetensors", "onnx"]})
    cpu = run_recipe({**recipe, "device": "cpu"}, out=tmp_path / "cpu")
    gpu = run_recipe({**recipe, "device": "cuda"}, out=tmp_path / "cuda")
    assert gpu["environment"]["device"] == "cuda" and gpu["environment"]["gpu"]
    assert gpu["final"]["latency_ms"]["runtime"] == "torch-cuda"
    assert gpu["final"]["latency_ms"]["timer"] == "cuda-events"
    assert abs(gpu["final"]["accuracy"] - cpu["final"]["accuracy"]) <= 0.05  # training order differs on GPU
    assert gpu["final"]["sparsity"] == pytest.approx(cpu["final"]["sparsity"], abs=0.01)
    onnx = next(e for e in gpu["exports"] if e["format"] == "onnx")
    assert onnx["parity"]["ok"]


@needs_cuda
def test_export_of_a_cuda_model_leaves_it_on_cuda(tmp_path):
    from slimkit.exporters import export_model

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).cuda()
    ref = copy.deepcopy(model)
    res = export_model(model, tmp_path / "m.onnx", example_inputs=(torch.randn(2, 8, device="cuda"),))
    assert res["parity"]["ok"] and next(model.parameters()).is_cuda
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=True))
    saved = export_model(model, tmp_path / "st", spec={})
    assert saved["parity"]["round_trip_exact"]


@needs_cuda
def test_finetune_amp_autocast_on_cuda():
    from slimkit.passes.finetune.loop import resolve_amp

    plan = resolve_amp(nn.Linear(4, 4).cuda(), "auto")
    assert plan.device_type == "cuda" and plan.dtype == torch.float16 and plan.use_scaler
    assert resolve_amp(nn.Linear(4, 4), "auto").dtype is None  # fp32 on CPU


def test_gpu_bench_says_why_without_cuda(capsys):
    """bench/gpu.py on a CPU-only machine: a clear message, exit status 0, nothing written."""
    if HAS_CUDA:
        pytest.skip("this machine has a CUDA device: bench/gpu.py would measure")
    from conftest import load_bench

    root = Path(__file__).resolve().parents[1]
    gpu = load_bench("gpu")
    written = [p.stat().st_mtime for p in (root / "bench" / "results").glob("*.json")]
    assert gpu.main(["--quick"]) == 0
    assert "skipped: no CUDA device" in capsys.readouterr().err
    assert [p.stat().st_mtime for p in (root / "bench" / "results").glob("*.json")] == written


def test_benchmarks_doc_has_a_gpu_table_only_with_a_result():
    root = Path(__file__).resolve().parents[1]
    has_result = (root / "bench" / "results" / "gpu.json").exists()
    has_section = "\n## GPU\n" in (root / "docs" / "benchmarks.md").read_text()
    assert has_section == has_result


@needs_cuda
def test_cuda_latency_forms_keeps_both_and_reports_the_fastest():
    from slimkit.evaluation.latency import cuda_latency_forms

    x = torch.randn(64, 64, device="cuda")
    out = cuda_latency_forms(lambda: torch.relu(x @ x + 1), warmup=2, repeats=10, device="cuda")
    assert out["forms"]["eager"] > 0 and out["forms"]["cuda-graph"] is not None and "graph_error" not in out
    assert out["median"] == min(out["forms"].values()) and out["form"] in ("eager", "cuda-graph")
    bad = cuda_latency_forms(lambda: float((x @ x).sum()), warmup=1, repeats=3, device="cuda")  # host sync
    assert bad["form"] == "eager" and bad["forms"]["cuda-graph"] is None and bad["graph_error"]


@needs_cuda
@pytest.mark.parametrize(("method", "precision"), [("fp16", "fp16"), ("bf16", "fp16"), ("ptq", "int8")])
def test_quantized_artifacts_from_a_cuda_run(tmp_path, method, precision):
    """fp16/bf16 and int8 artifacts of a run computed on CUDA: the safetensors checkpoint and the ONNX of the
    requested precision, parity-checked in onnxruntime, as small as the CPU run's."""
    recipe = tiny_recipe(stages=[{"quantize": {"method": method}}],
                         export={"formats": ["safetensors", "onnx"], "onnx": {"precision": precision}})
    gpu = run_recipe({**recipe, "device": "cuda"}, out=tmp_path / "cuda")
    cpu = run_recipe({**recipe, "device": "cpu"}, out=tmp_path / "cpu")
    assert gpu["environment"]["device"] == "cuda"
    by = {e["format"]: e for e in gpu["exports"]}
    ref = {e["format"]: e for e in cpu["exports"]}
    assert by["onnx"]["precision"] == precision and by["onnx"]["parity"]["ok"]
    assert (tmp_path / "cuda" / by["onnx"]["artifact"]).exists()
    for fmt in ("safetensors", "onnx"):
        assert by[fmt]["size_bytes"] == pytest.approx(ref[fmt]["size_bytes"], rel=0.02)
