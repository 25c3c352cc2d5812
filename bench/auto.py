"""slimkit auto beside the best hand-written recipe, on a MobileNetV2 trained on Fashion-MNIST, with the
deployed artifacts (ONNX) re-timed together in onnxruntime at the end of the run (interleaved rounds, median
of rounds) so every row's latency is measured in the same process on the same inputs.

    .venv/bin/python bench/auto.py --quick   # mobilenet_v2-tiny, 2000 training images, 3 trials, 6 min budget
                                             # (writes bench/_work/auto-quick.json; the shared file is untouched)
    .venv/bin/python bench/auto.py           # mobilenet_v2 (full width) on all of Fashion-MNIST, 30 min budget

The quick form proves the script end to end; the full form is what the issue's 2.0x / -1 point target is
measured with and was NOT run on the shared 2-core machine (see docs/auto.md). The MiniLM (no labels) half of
the issue is not here yet: a recipe cannot hold a sentence dataset, so auto cannot load it (docs/auto.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, WORK, command_line, machine_info, ort_latency_ms, write_result  # noqa: E402


def recipe(quick: bool) -> dict[str, Any]:
    return {"name": "auto-fmnist-quick" if quick else "auto-fmnist",
            "model": {"arch": "mobilenet_v2-tiny" if quick else "mobilenet_v2",
                      "train": {"epochs": 2 if quick else 6, "lr": 0.003}},
            "data": {"name": "fashion-mnist", "batch_size": 64, **({"limit": 2000} if quick else {})}}


def hand_recipe(quick: bool, threads: int) -> dict[str, Any]:
    """The best hand-written recipe on main for this model: structured pruning to half the MACs, a short
    fine-tune, int8 ONNX (docs/benchmarks.md: pruned + int8 1.96x at -3.55 points)."""
    r = recipe(quick)
    r["name"] += "-hand"
    r["stages"] = [{"prune": {"method": "structured", "target_macs": 0.5, "importance": "l2", "round_to": 8,
                              "unreached": "ignore", "finetune": {"epochs": 1 if quick else 2, "lr": 0.001}}}]
    r["evaluate"] = {"fidelity": True, "latency": {"batch": 1, "repeats": 20, "threads": threads, "runtime": "onnxruntime"}}
    r["export"] = {"formats": ["safetensors", "onnx"], "onnx": {"precision": "int8"}}
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import slimkit
    from slimkit.config.recipe import DataConfig
    from slimkit.data import load_data

    work = WORK / ("auto-quick" if args.quick else "auto")
    settings = {"runtime": "onnxruntime", "max_latency_ratio": 0.5, "max_accuracy_drop": 0.01,
                "budget": "6m" if args.quick else "30m", "trials": 3 if args.quick else 40,
                "threads": args.threads, "finetune_epochs": 1 if args.quick else 3,
                "profile_units": 8 if args.quick else 24, "latency_repeats": 10 if args.quick else 30}
    t0 = time.perf_counter()
    result = slimkit.auto(recipe(args.quick), out=work / "auto", resume=(work / "auto" / "auto-search.yaml").exists(),
                          **settings)
    auto_s = time.perf_counter() - t0
    hand = slimkit.run_recipe(hand_recipe(args.quick, args.threads), out=work / "hand",
                              resume=(work / "hand" / "state.json").exists())
    chosen = result["chosen"]
    if chosen is None:
        raise SystemExit(f"no auto trial finished: {result['verdict']}")
    tdir = work / "auto" / chosen["dir"]
    files = {"fp32": tdir / "baseline.onnx", "auto": tdir / "model.onnx", "hand": work / "hand" / "model.onnx"}
    bundle = load_data(DataConfig.model_validate(recipe(args.quick)["data"]))
    example = bundle.example_inputs
    times: dict[str, list[float]] = {k: [] for k in files}
    for _ in range(args.rounds):
        for k, f in files.items():
            times[k].append(ort_latency_ms(f, example, batch=1, threads=args.threads, repeats=30))
    lat = {k: statistics.median(v) for k, v in times.items()}
    trial = json.loads((tdir / "report.json").read_text())
    precision = next(e.get("precision") for e in trial["exports"] if e.get("format") == "onnx")
    stages = ", ".join(s["pass"] for s in trial["stages"]) or "no stage"
    rows = [
        {"system": "onnxruntime", "variant": "fp32", "size_bytes": trial["baseline"]["size_bytes"],
         "latency_ms": {"b1": lat["fp32"]}, "quality": {"accuracy": trial["baseline"]["accuracy"]},
         "notes": "the baseline's fp32 ONNX"},
        {"system": "slimkit", "variant": f"auto ({'chosen' if result['feasible'] else 'closest'}: {stages}, {precision})",
         "size_bytes": trial["final"]["size_bytes"], "latency_ms": {"b1": lat["auto"]},
         "quality": {"accuracy": trial["final"]["accuracy"], "cosine": (trial["final"]["fidelity"] or {}).get("cosine")},
         "notes": f"speedup {lat['fp32'] / lat['auto']:.2f}x; {result['trials']['finished']} trials, "
                  f"{auto_s / 60:.1f} min with profiling; {result['verdict']}"},
        {"system": "slimkit", "variant": "hand recipe: structured target_macs 0.5 + fine-tune + int8",
         "size_bytes": hand["final"]["size_bytes"], "latency_ms": {"b1": lat["hand"]},
         "quality": {"accuracy": hand["final"]["accuracy"], "cosine": (hand["final"]["fidelity"] or {}).get("cosine")},
         "notes": f"speedup {lat['fp32'] / lat['hand']:.2f}x"},
    ]
    out = {"bench": "auto", "command": command_line(), "machine": machine_info(args.threads), "rows": rows,
           "quick": args.quick, "load_note": "2 shared CPU cores, about 8 engineers working at once"}
    path = write_result("auto", out, path=WORK / "auto-quick.json" if args.quick else None)
    print(json.dumps(rows, indent=1))
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
