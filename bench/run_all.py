"""Run every benchmark with the command that produced its committed result (``make bench``).

    .venv/bin/python bench/run_all.py                 # full runs; rewrites bench/results/*.json (about 3 hours)
    .venv/bin/python bench/run_all.py --quick         # smoke runs (a few minutes); results go under bench/_work/
    .venv/bin/python bench/run_all.py --only minilm prune_resnet

The command of each full run is read from its committed result file (``"command"``), so ``make bench``
reproduces exactly what docs/benchmarks.md shows; a benchmark without a result file runs with no options.
Each benchmark runs in its own process, one after another (they time things: never run two at once).
Exits 1 when any benchmark fails, after running the others.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# result file stem -> script; prune_mobilenet is bench/prune_resnet.py --mobilenet
BENCHES = {
    "quantize_cnn": "quantize_cnn.py",
    "prune_resnet": "prune_resnet.py",
    "prune_mobilenet": "prune_resnet.py",
    "prune_minilm": "prune_minilm.py",
    "distill": "distill.py",
    "lowrank": "lowrank.py",
    "minilm": "minilm.py",
    "mobilenetv2": "mobilenetv2.py",
    "quantize_recipes": "quantize_recipes.py",
    "posttrain": "posttrain.py",
    "posttrain_sparse": "posttrain_sparse.py",
    "posttrain_text": "posttrain.py",  # MiniLM calibrated on Debian's fortunes (make bench-data)
    "posttrain_text_final": "posttrain.py",
    "auto": "auto.py",
    "reliability": "reliability.py",
    "gpu": "gpu.py",  # on a machine without CUDA it says so and writes nothing
    "olive": "olive.py",  # without Olive's separate environment it says so and writes nothing
}
QUICK_SKIP = {"prune_mobilenet", "posttrain_text", "posttrain_text_final"}  # their quick forms: prune_resnet,
# posttrain --quick

# the options of a benchmark whose result is not committed yet, where its script's defaults write another file
_TEXT = ["--skip", "mobilenet", "resnet", "--sparse-only", "ffn-lowrank-50", "unstructured-50", "--minilm-text",
         "fortunes"]
DEFAULT_ARGS = {"prune_mobilenet": ["--mobilenet"], "posttrain_text": [*_TEXT, "--out", "posttrain_text"],
                "posttrain_text_final": [*_TEXT, "--minilm-final-steps", "800", "--minilm-final-lr", "1e-4",
                                         "--minilm-final-check", "100", "--out", "posttrain_text_final"]}


def command(name: str, quick: bool) -> list[str]:
    """The argv that runs benchmark ``name`` with this interpreter."""
    script = f"bench/{BENCHES[name]}"
    if quick:
        return [sys.executable, script, "--quick"]
    result = RESULTS / f"{name}.json"
    if result.exists():
        recorded = shlex.split(json.loads(result.read_text()).get("command", ""))
        if len(recorded) >= 2 and recorded[1] == script:
            return [sys.executable, *recorded[1:]]
    return [sys.executable, script, *DEFAULT_ARGS.get(name, [])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke runs; the committed results are not touched")
    ap.add_argument("--only", nargs="*", choices=sorted(BENCHES), default=None)
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)
    names = args.only or [n for n in BENCHES if not (args.quick and n in QUICK_SKIP)]
    failed: list[str] = []
    for name in names:
        argv_ = command(name, args.quick)
        print(f"== {name}: {shlex.join(argv_)}", flush=True)
        if args.dry_run:
            continue
        t0 = time.time()
        rc = subprocess.call(argv_, cwd=ROOT)
        print(f"== {name}: exit {rc} after {time.time() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
