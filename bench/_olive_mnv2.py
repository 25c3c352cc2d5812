"""bench/olive.py --case mobilenet: Olive beside slimkit auto on bench/auto.py's MobileNetV2-FMNIST case.

The constraints are bench/auto.py's: at least 2.0x faster than the transferred model's fp32 ONNX on onnxruntime
at batch 1 with one intra-op thread, at most one point of accuracy below it (Fashion-MNIST test images).

Inputs: the run directory ``bench/auto.py --case mobilenet`` keeps (``--auto-dir``, default
bench/_work/auto/mobilenet/auto): auto's chosen trial gives the fp32 ``baseline.onnx`` (the file every
speedup is measured against) and auto's deployed ONNX; ``../hand/model.onnx`` is the hand recipe's; the search
base (``auto-search.yaml``) gives the data (the same Fashion-MNIST preprocessing: 3 channels, ImageNet
normalization, the case's size; the same test images, slimkit's calibration images drawn from the training
set) and the latency settings (batch 1, one thread, example input, calls per round).

Olive starts from the same ``baseline.onnx``:

- ``olive auto-opt`` with an ONNX input (CPU EP, int8): peephole optimization, transformer fusion (nothing to
  fuse in a CNN) and dynamic int8, Olive's fixed pipeline, no data, no search;
- ``olive run``: ``OnnxPeepholeOptimizer`` then ``OnnxQuantization`` over Olive's default search space, static
  points calibrated on slimkit's calibration images (``images.npz``, bench/_olive_user.py ``fmnist_images``),
  TPE, two goals resolved by Olive against its own measurement of the input model: accuracy (custom metric
  ``image_accuracy`` on the test images) at most 0.01 below (``max-degradation``), latency at batch 1 at least
  50% lower (``percent-min-improvement``, i.e. 2x).

Then every file is timed here by ``slimkit.auto.retime.time_deployed`` (bench/auto.py's re-timing:
``ort_compare`` with the search's latency settings, files alternated, each timed call warm, median of rounds) and scored
by ``slimkit.evaluation.evaluate_model`` (onnxruntime, the test images).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from _common import ROOT
from _olive_run import (
    USER_SCRIPT_COPY,
    collect,
    custom_metric,
    data_config,
    latency_metric,
    ops,
    run_both,
    runs_lines,
    search_workflow,
    table_rows,
)

SECTION = "Olive beside slimkit (MobileNetV2-FMNIST)"
MAX_DROP, MIN_SPEEDUP = 0.01, 2.0
CALIB_BATCH = 16


def prepare(auto_dir: Path, work: Path) -> dict[str, Any]:
    """The case's files, its data saved for Olive (``work/images.npz``) and the test loader and latency
    settings of auto's search base."""
    import numpy as np
    import onnx
    import torch
    import yaml

    from slimkit.auto.retime import deployed_files
    from slimkit.config.recipe import parse_recipe
    from slimkit.data import load_data

    auto = json.loads((auto_dir / "auto.json").read_text())
    chosen = auto["chosen"]
    deployed = deployed_files(auto_dir, chosen)
    base = yaml.safe_load((auto_dir / "auto-search.yaml").read_text())["base"]
    recipe = parse_recipe(base, source="auto-search.yaml base")
    bundle = load_data(recipe.data)
    calib = torch.cat([b[0] for b in bundle.calibration])
    test_x, test_y = (torch.cat(t) for t in zip(*((b[0], b[1]) for b in bundle.test), strict=True))
    np.savez(work / "images.npz", calib_x=calib.numpy(), calib_y=np.zeros(len(calib), np.int64),
             test_x=test_x.numpy(), test_y=test_y.numpy())
    files = {"fp32": deployed["fp32"], "slimkit-auto": deployed["artifact"]}
    hand = auto_dir.parent / "hand" / "model.onnx"
    if hand.exists():
        files["slimkit-hand"] = hand
    tdir = auto_dir / chosen["dir"]
    trial = json.loads((tdir / "report.json").read_text())
    input_name = onnx.load(str(deployed["fp32"]), load_external_data=False).graph.input[0].name
    return {"files": files, "auto": auto, "trial": trial, "test": bundle.test, "input_name": input_name,
            "n_calib": len(calib), "n_test": len(test_x), "image": list(test_x.shape[1:])}


def workflow(work: Path, model: Path, out: Path, threads: int, input_name: str, max_iter: int,
             max_time: int) -> dict[str, Any]:
    """Olive's search workflow (see the module docstring)."""
    data, script = str(work / "images.npz"), str(work / USER_SCRIPT_COPY)
    metrics = [
        custom_metric("accuracy", [{"name": "accuracy", "priority": 1, "higher_is_better": True,
                                    "goal": {"type": "max-degradation", "value": MAX_DROP}}],
                      script, "image_accuracy", {"data_path": data, "threads": threads}),
        latency_metric("fmnist_b1", {"type": "percent-min-improvement", "value": 100 * (1 - 1 / MIN_SPEEDUP)},
                       threads, 20, 300),
    ]
    passes = {"peephole": {"type": "OnnxPeepholeOptimizer"},
              "quantization": {"type": "OnnxQuantization", "data_config": "fmnist_calib"}}

    def params(split: str) -> dict[str, Any]:
        return {"data_path": data, "split": split, "input_name": input_name}

    dcs = [data_config("fmnist_calib", script, "fmnist_images", params("calib"), CALIB_BATCH),
           data_config("fmnist_b1", script, "fmnist_images", params("test"), 1)]
    return search_workflow({"type": "ONNXModel", "model_path": str(model)}, dcs, "accuracy_latency", metrics,
                           passes, out, max_iter, max_time)


def last_error(log: Path) -> str | None:
    """The last line of an Olive log that names an exception, or None."""
    if not log.exists():
        return None
    hits = [ln for ln in log.read_text(errors="replace").splitlines() if re.search(r"\w(Error|Exception)\b", ln)]
    return hits[-1][:400] if hits else None


def _op_summary(counts: dict[str, int]) -> str:
    keys = ("QLinearConv", "ConvInteger", "Conv", "QuantizeLinear", "DequantizeLinear", "com.microsoft:FusedConv",
            "com.microsoft:QLinearAdd", "QLinearMatMul", "MatMulInteger", "Gemm")
    return ", ".join(f"{k.split(':')[-1]} {counts[k]}" for k in keys if counts.get(k)) or "no conv"


def run_mobilenet(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The MobileNetV2-FMNIST case (module docstring). Returns the rows and the case's details."""
    from slimkit.auto.retime import time_deployed
    from slimkit.evaluation import evaluate_model
    from slimkit.exporters.onnx_int8 import onnx_size_bytes

    prep = prepare(args.auto_dir, work)
    files = dict(prep["files"])
    olive_out = args.olive_out or work / "olive-out"
    if args.olive_out is None:
        wf = None if args.skip_search else workflow(work, files["fp32"], olive_out / "search", args.threads,
                                                    prep["input_name"], args.max_iter, args.max_time)
        runs = run_both(args.olive_venv, work, olive_out, str(files["fp32"]), [], wf, args.max_time + 900)
    else:
        runs = json.loads((olive_out / "runs.json").read_text()) if (olive_out / "runs.json").exists() else {}
    acc = {"fp32": evaluate_model(files["fp32"], prep["test"])["accuracy"]}
    got = collect(olive_out, "accuracy-accuracy", acc["fp32"] - MAX_DROP - 1e-9)
    files |= {f"olive-{k}": v for k, v in got["models"].items()}
    fastest, steps = got["fastest"], got["steps"]
    if fastest is not None:
        files["olive-fastest"] = Path(fastest["model_path"])
    rounds = args.rounds
    timed = time_deployed(args.auto_dir, files, rounds=rounds)
    med = {k: v["median"] for k, v in timed.items()}
    cpu = {k: v["cpu_median"] for k, v in timed.items()}
    acc |= {k: evaluate_model(p, prep["test"])["accuracy"] for k, p in files.items() if k != "fp32"}
    size = {k: onnx_size_bytes(p) for k, p in files.items()}
    counts = {k: ops(p) for k, p in files.items()}
    chosen = prep["auto"]["chosen"]
    params = ", ".join(f"{k.split('.')[-1]} {v}" for k, v in (chosen.get("params") or {}).items())
    variant = {"fp32": "mobilenetv2-fmnist fp32 (auto's baseline.onnx, the input of every system)",
               "slimkit-auto": f"mobilenetv2-fmnist slimkit auto, chosen trial {chosen['number']} ({params})",
               "slimkit-hand": "mobilenetv2-fmnist slimkit hand recipe (structured target_macs 0.5 + 1 epoch + int8)",
               "olive-auto-opt": "mobilenetv2-fmnist olive auto-opt int8 (peephole, fusion, dynamic int8; no search)",
               "olive-search": f"mobilenetv2-fmnist olive search output ({len(steps)} TPE steps over "
                               "OnnxQuantization's space after OnnxPeepholeOptimizer, goals accuracy -0.01 and 2x)",
               "olive-fastest": "mobilenetv2-fmnist olive search, the candidate Olive measured fastest within 1 point "
                                f"({json.dumps((fastest or {}).get('config'))})"}
    rows = []
    for key, path in files.items():
        speed, drop = med["fp32"] / med[key], 100 * (acc["fp32"] - acc[key])
        met = speed >= MIN_SPEEDUP and drop <= 100 * MAX_DROP + 1e-9
        rows.append({"system": "onnxruntime" if key == "fp32" else key.split("-")[0], "variant": variant[key],
                     "size_bytes": size[key], "latency_ms": {"b1": round(med[key], 4)},
                     "quality": {"accuracy": acc[key], "accuracy_drop_points": round(drop, 3)},
                     "notes": f"{speed:.2f}x vs the fp32 ONNX (bench/auto.py's re-timing, {rounds} rounds, files "
                              f"alternated, warm calls; by CPU time per call {cpu['fp32'] / cpu[key]:.2f}x); target "
                              f"{'met' if met else 'not met'} (>= {MIN_SPEEDUP}x, <= {100 * MAX_DROP:g} point below); "
                              f"ops: {_op_summary(counts[key])}; "
                              f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"})
    errors = {k: last_error(ROOT / r["log"] if not Path(r["log"]).is_absolute() else Path(r["log"]))
              for k, r in runs.items() if r.get("rc") != 0 or k not in got["models"]}
    info = {"olive": {"runs": runs, "errors": errors, "tried": got["points"], "steps": steps, "ops": counts},
            "data": {"calibration_images": prep["n_calib"], "test_images": prep["n_test"], "image": prep["image"],
                     "auto_dir": str(args.auto_dir.relative_to(ROOT) if args.auto_dir.is_relative_to(ROOT)
                                     else args.auto_dir)},
            "latency_rounds_ms": {k: v["rounds"] for k, v in timed.items()}, "cpu_ms_per_call": cpu,
            "trial_accuracy": {"baseline": prep["trial"]["baseline"]["accuracy"],
                               "final": prep["trial"]["final"]["accuracy"]},
            "notes": ["2 shared CPU cores; latencies are noisy (interleaved rounds, medians), accuracy and bytes are "
                      "not. Every file timed in one slimkit process by slimkit.auto.retime.time_deployed (bench/auto.py's "
                      "re-timing: ort_compare with auto's latency settings, batch 1, one intra-op thread, all ORT graph "
                      "optimizations, files alternated, each timed call right after an untimed call of the same file) and scored by slimkit.evaluation.evaluate_model on the same Fashion-MNIST test "
                      "images; cpu_ms_per_call is each file's median process CPU time per call."]}
    return rows, info


def tried_lines(olive: dict[str, Any]) -> list[str]:
    """Doc bullets: what Olive's search tried, grouped by quantization mode, format and per-channel (points,
    failures, the best accuracy, Olive's fastest latency and the fastest within the accuracy goal), as Olive
    measured them during its niced search (every point: bench/results/olive.json ``cases.mobilenet.olive``)."""
    points = [t for t in olive.get("tried", []) if (t.get("pass") or "").lower().endswith("quantization")]
    if not points:
        return []
    base = next((t["metrics"] for t in olive["tried"] if t.get("pass") is None and t["metrics"]), {})
    floor = (base.get("accuracy-accuracy") or 0) - MAX_DROP - 1e-9
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in points:
        c = t["config"]
        key = f"{c.get('quant_mode')} {c.get('quant_format') or ''} per_channel={c.get('per_channel')}".replace("  ", " ")
        groups.setdefault(key, []).append(t)
    steps = olive.get("steps", [])
    lines = [f"- What Olive's search tried: {len(steps)} steps, {len(points)} distinct quantization points "
             f"({sum(t['failed'] for t in points)} failed), input model as Olive measured it: accuracy "
             f"{base.get('accuracy-accuracy')}, latency {base.get('latency-avg')} ms (its 2x goal: half of that). "
             "By group (Olive's own numbers, taken during its niced search: compare within the list only):"]
    for key, ts in sorted(groups.items()):
        ok = [t for t in ts if t["metrics"]]
        best = max((t["metrics"]["accuracy-accuracy"] for t in ok), default=None)
        fast = min((t["metrics"]["latency-avg"] for t in ok), default=None)
        fast_ok = min((t["metrics"]["latency-avg"] for t in ok if t["metrics"]["accuracy-accuracy"] >= floor), default=None)
        def ms(v: float | None) -> str:
            return "none" if v is None else f"{v:.3g} ms"

        lines.append(f"  - {key}: {len(ts)} points, {len(ts) - len(ok)} failed or not evaluated; best accuracy "
                     f"{best}; fastest {ms(fast)}; fastest within one point {ms(fast_ok)}")
    errors = sorted({st["error"][:160] for st in steps if st["error"]})
    lines += [f"  - failure: `{e}`" for e in errors]
    return lines


def render(rows: list[dict[str, Any]], case: dict[str, Any]) -> str:
    """The docs/benchmarks.md section of the case: the rows, Olive's runs and what its search tried."""
    olive, data = case["olive"], case.get("data", {})
    lines = [f"Written by `bench/olive.py --case mobilenet` from `bench/results/olive.json`: Microsoft Olive (its own "
             "environment, offline) beside slimkit on bench/auto.py's MobileNetV2 transferred to Fashion-MNIST, all "
             "starting from the same fp32 ONNX (auto's baseline.onnx); target >= 2.0x faster than it at batch 1, "
             "one thread, at most one point of accuracy below it. Every file re-timed in one slimkit process "
             "(bench/auto.py's re-timing) on a shared 2-core machine; accuracy on the same "
             f"{data.get('test_images', '?')} test images ({'x'.join(map(str, data.get('image', [])))}).", "",
             "| system | variant | accuracy (drop, points) | bytes | b1 ms | speedup | notes |",
             "|---|---|---|---|---|---|---|"]
    lines += table_rows(rows, "b1", lambda q: f"{q['accuracy']:.4f} ({q['accuracy_drop_points']:+.2f})", ".4g", "); ")
    versions = ", ".join(f"{k} {v}" for k, v in (olive.get("versions") or {}).items())
    lines += ["", f"- Olive environment: {versions or 'not recorded'} (made as in 'Olive beside slimkit (MiniLM)'). "
                  f"Static points calibrated on slimkit's {data.get('calibration_images', '?')} calibration images "
                  "(training set, the baseline's preprocessing); goals resolved by Olive against its own measurement "
                  "of the input model (accuracy max-degradation 0.01, latency percent-min-improvement 50)."]
    lines += runs_lines(olive) + tried_lines(olive)
    lines += [f"- {n}" for n in case.get("notes", [])]
    return "\n".join(lines)
