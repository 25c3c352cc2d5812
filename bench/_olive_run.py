"""Running Microsoft Olive (olive-ai) in its own environment and reading back what it did, for bench/olive.py's
cases (MiniLM, MobileNetV2-FMNIST): one way to launch ``olive auto-opt`` and the patched ``olive run`` search,
to list what the search tried (footprint.json, its log), to pick the candidate Olive measured fastest at the
quality goal, and to merge a case's rows into bench/results/olive.json keeping the other case's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import ROOT

DEFAULT_VENV = Path(os.environ.get("SLIMKIT_OLIVE_VENV", "/work/olive-venv"))
USER_SCRIPT = Path(__file__).resolve().parent / "_olive_user.py"
# Olive gets a copy outside bench/: there, olive.py would shadow the olive package
USER_SCRIPT_COPY = "olive_user.py"
QUANT_KEYS = ("quant_mode", "precision", "per_channel", "reduce_range", "quant_preprocess", "calibrate_method",
              "quant_format", "activation_type")
OLIVE_ENV = {"OLIVE_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
             "HF_DATASETS_OFFLINE": "1"}
CASES = {"minilm": "minilm", "mobilenet": "mobilenetv2"}  # case -> the prefix of its rows' variants


def has_olive(venv: Path) -> bool:
    return (venv / "bin" / "olive").exists()


def olive_versions(venv: Path) -> dict[str, str]:
    """The versions of the packages that matter, as installed in Olive's environment."""
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('olive-ai', 'onnxruntime', 'onnx', 'torch', 'transformers', 'optuna', 'onnxscript', 'pydantic')}))")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def run_olive(argv: list[str], log: Path, timeout: int) -> dict[str, Any]:
    """One Olive command in its environment; its output goes to ``log``. Returns seconds and exit code."""
    t0 = time.perf_counter()
    env = {**os.environ, **OLIVE_ENV}
    env.pop("PYTHONPATH", None)
    with log.open("w") as fh:
        try:
            rc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT,
                                env=env, timeout=timeout, cwd=log.parent).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return {"seconds": round(time.perf_counter() - t0, 1), "rc": rc,
            "log": str(log.relative_to(ROOT) if log.is_relative_to(ROOT) else log)}


def run_both(venv: Path, work: Path, olive_out: Path, model: str, auto_opt_args: list[str],
             workflow: dict[str, Any] | None, search_timeout: int, search_info: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """``olive auto-opt`` (CPU EP, int8) on ``model``, then, unless ``workflow`` is None, Olive's search
    (``olive run`` on ``workflow`` through the user script's launcher, which patches four Olive 0.13.0 bugs
    that stop a custom metric: bench/_olive_user.py; ``search_info`` is recorded with it). Writes
    ``olive_out/runs.json`` and returns it."""
    olive_out.mkdir(parents=True, exist_ok=True)
    runs = {"auto-opt": run_olive([
        str(venv / "bin" / "olive"), "auto-opt", "-m", model, *auto_opt_args, "--device", "cpu", "--provider",
        "CPUExecutionProvider", "--precision", "int8", "-o", str(olive_out / "auto-opt"), "--log_level", "1",
        "--disable_telemetry"], olive_out / "auto-opt.log", timeout=1200)}
    if workflow is not None:
        (olive_out / "search-workflow.json").write_text(json.dumps(workflow, indent=1))
        shutil.copyfile(USER_SCRIPT, work / USER_SCRIPT_COPY)
        runs["search"] = run_olive([str(venv / "bin" / "python"), str(work / USER_SCRIPT_COPY),
                                    str(olive_out / "search-workflow.json")], olive_out / "search.log",
                                   timeout=search_timeout) | (search_info or {})
    (olive_out / "runs.json").write_text(json.dumps(runs, indent=1))
    return runs


def data_config(name: str, script: str, dataset: str, params: dict[str, Any], batch: int) -> dict[str, Any]:
    """An Olive data config: the user script's registered ``dataset`` with ``params``, whole batches only
    (onnxruntime's calibrator stacks the batches' outputs: a short last batch fails every static point with
    "inhomogeneous shape")."""
    return {"name": name, "user_script": script, "load_dataset_config": {"type": dataset, "params": params},
            "dataloader_config": {"type": "default_dataloader", "params": {"batch_size": batch, "drop_last": True}}}


def custom_metric(name: str, sub_types: list[dict[str, Any]], script: str, func: str,
                  kwargs: dict[str, Any]) -> dict[str, Any]:
    """Olive's custom metric ``name``: ``func`` of the user script ``script`` called with ``kwargs``, scoring
    ``sub_types`` (each needs a ``metric_config``, even empty: Olive 0.13.0 fails to serialize a custom
    sub-metric without one)."""
    return {"name": name, "type": "custom", "sub_types": [{"metric_config": {}, **st} for st in sub_types],
            "user_config": {"user_script": script, "evaluate_func": func, "evaluate_func_kwargs": kwargs}}


def latency_metric(data_config: str, goal: dict[str, Any], threads: int, warmup: int, repeats: int) -> dict[str, Any]:
    """Olive's latency metric (``avg`` with ``goal``, second priority; ``p50`` recorded) on the first batch of
    ``data_config``, in a session of ``threads`` intra-op threads and one inter-op thread."""
    session = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    return {"name": "latency", "type": "latency", "data_config": data_config,
            "sub_types": [{"name": "avg", "priority": 2, "goal": goal,
                           "metric_config": {"warmup_num": warmup, "repeat_test_num": repeats}}, {"name": "p50"}],
            "user_config": {"inference_settings": {"onnx": {"session_options": session}}}}


def search_workflow(input_model: dict[str, Any], data_configs: list[dict[str, Any]], evaluator: str,
                    metrics: list[dict[str, Any]], passes: dict[str, Any], out: Path, max_iter: int,
                    max_time: int) -> dict[str, Any]:
    """An ``olive run`` workflow: ``passes`` on ``input_model`` on the local CPU EP, searched jointly by TPE
    (seed 0, ``max_iter`` samples, ``max_time`` seconds), every candidate scored by ``metrics`` (the
    evaluator ``evaluator``); Olive's cache beside ``out``. No OrtSessionParamsTuning: with the thread count
    fixed by the constraints its default space (execution mode, optimization level: [None]) is empty, and it
    cost 2.5 min a step on MiniLM."""
    return {
        "input_model": input_model,
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": data_configs, "evaluators": {evaluator: {"metrics": metrics}}, "passes": passes,
        "search_strategy": {"execution_order": "joint", "sampler": "tpe", "max_iter": max_iter,
                            "max_time": max_time, "sampler_config": {"seed": 0}},
        "evaluator": evaluator, "host": "local_system", "target": "local_system",
        "cache_dir": str(out.parent / ".olive-cache"), "output_dir": str(out), "log_severity_level": 1,
    }


def tried(search_out: Path) -> list[dict[str, Any]]:
    """Every model Olive's search made (footprint.json: model id -> node): the pass and its settings, whether
    it failed, its metrics when evaluated, and whether it met both goals."""
    fp = search_out / "footprint.json"
    if not fp.exists():
        return []
    data = json.loads(fp.read_text())
    nodes = data.get("nodes", data)
    rows = []
    for mid, node in nodes.items():
        config = node.get("pass_run_config") or {}
        metrics = ((node.get("metrics") or {}).get("value") or {})
        model = node.get("model_config_data") or node.get("model_config") or {}
        rows.append({"model_id": mid, "parent": node.get("parent_model_id"), "pass": node.get("from_pass"),
                     "config": {k: config[k] for k in QUANT_KEYS if k in config and not isinstance(config[k], dict)},
                     "model_path": ((model.get("config") or {}).get("model_path") if isinstance(model, dict) else None),
                     "failed": bool(model.get("is_pruned")) if isinstance(model, dict) else False,
                     "metrics": {k: (v.get("value") if isinstance(v, dict) else v) for k, v in metrics.items()},
                     "goals_met": (node.get("metrics") or {}).get("if_goals_met"),
                     "pareto": node.get("is_pareto_frontier")})
    return rows


def search_steps(log: Path) -> list[dict[str, Any]]:
    """The steps of Olive's search from its log: the quantization settings of each sampled point (values
    Olive marks ignored left out) and the error that stopped it, if any."""
    if not log.exists():
        return []
    steps: list[dict[str, Any]] = []
    for line in log.read_text(errors="replace").splitlines():
        m = re.search(r"Step (\d+) with search point SearchPoint\(\d+, (.*)\) \.\.\.$", line)
        if m:
            q = re.search(r"quantization\[0\]: \{([^}]*)\}", m.group(2))
            pairs = re.findall(r"(\w+)\[\d+\]: ([^,]+)", q.group(1) if q else "")
            steps.append({"step": int(m.group(1)), "error": None,
                          "settings": {k: v.strip() for k, v in pairs if "IGNORED" not in v and k in QUANT_KEYS}})
        elif steps and steps[-1]["error"] is None and re.match(r"^(\w+\.)*\w*(Error|Exception)\b", line):
            steps[-1]["error"] = line[:300]
    return steps


def find_model(out: Path) -> Path | None:
    """Olive's output model: ``model.onnx`` in its output folder (or the first one below it)."""
    direct = out / "model.onnx"
    return direct if direct.exists() else next(iter(sorted(out.rglob("model.onnx"))), None)


def collect(olive_out: Path, quality_key: str, quality_min: float) -> dict[str, Any]:
    """What Olive made in ``olive_out``: its output models (``{"auto-opt", "search"}``, those that exist), what
    the search tried and its steps, and the search candidate Olive measured fastest among those whose
    ``quality_key`` metric is at least ``quality_min`` (``fastest``: its footprint row, or None)."""
    points, steps = tried(olive_out / "search"), search_steps(olive_out / "search.log")
    ok = [t for t in points if (t["metrics"].get(quality_key) or 0) >= quality_min and t["pass"]
          and t.get("model_path") and Path(t["model_path"]).exists()]
    fastest = min(ok, key=lambda t: t["metrics"].get("latency-avg") or float("inf"), default=None)
    models = {k: find_model(olive_out / k) for k in ("auto-opt", "search")}
    return {"models": {k: v for k, v in models.items() if v is not None}, "points": points, "steps": steps,
            "fastest": fastest}


def ops(path: Path) -> dict[str, int]:
    """Operator counts of an ONNX file, contrib ops (com.microsoft) prefixed with their domain."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return dict(Counter(f"{n.domain}:{n.op_type}" if n.domain else n.op_type for n in proto.graph.node))


def runs_lines(olive: dict[str, Any]) -> list[str]:
    """Doc bullets: each Olive command's exit, minutes, log and (when it made no model) its last error."""
    lines = []
    for name, run in olive.get("runs", {}).items():
        err = (olive.get("errors") or {}).get(name)
        lines.append(f"- `{name}`: exit {run['rc']} after {run['seconds'] / 60:.1f} min (log: {run['log']})"
                     + (f"; last error: `{err}`" if err else "") + ".")
    return lines


def steps_lines(olive: dict[str, Any]) -> list[str]:
    """Doc bullets: each search step's settings and the metrics Olive measured for it (or its error)."""
    quant = [t for t in olive.get("tried", []) if (t.get("pass") or "").lower().endswith("quantization")]

    def measured(settings: dict[str, str]) -> str:
        for t in quant:
            if all(str(t["config"].get(k)).lower() == v.lower() for k, v in settings.items() if k in t["config"]):
                m = {k: round(v, 4) for k, v in t["metrics"].items() if isinstance(v, (int, float))}
                return json.dumps(m) if m else "not evaluated"
        return "no footprint node"

    steps = olive.get("steps", [])
    if not steps:
        return []
    lines = [f"- What Olive's search tried ({len(steps)} steps; search.log, footprint.json; latency as Olive "
             "measured it during its niced search, not comparable with the table):"]
    for st in steps:
        what = f"failed: {st['error'][:160]}" if st["error"] else measured(st["settings"])
        lines.append(f"  - step {st['step']} {json.dumps(st['settings'])}: {what.replace('|', '/')}")
    return lines


def table_rows(rows: list[dict[str, Any]], latency_key: str, quality: Any, ms_format: str, notes_after: str
               ) -> list[str]:
    """A case's markdown table rows: system, variant, ``quality(row["quality"])``, bytes, latency (``ms_format``),
    speedup over the onnxruntime baseline row, and the notes after their first ``notes_after``."""
    base = next(r for r in rows if r["system"] == "onnxruntime")["latency_ms"][latency_key]
    out = []
    for r in rows:
        ms = r["latency_ms"][latency_key]
        notes = r.get("notes", "").split(notes_after, 1)[-1].replace("|", "/")
        out.append(f"| {r['system']} | {r['variant']} | {quality(r['quality'])} | {r['size_bytes']:,} | "
                   f"{ms:{ms_format}} | {base / ms:.2f}x | {notes} |")
    return out


def case_of(row: dict[str, Any]) -> str | None:
    return next((c for c, prefix in CASES.items() if row["variant"].startswith(prefix)), None)


def merge(path: Path, case: str, rows: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    """bench/results/olive.json with ``case``'s rows and ``cases[case]`` replaced and the other case's kept.
    A file from before the cases (one MiniLM run, its details at the top level) is read as the MiniLM case."""
    old = json.loads(path.read_text()) if path.exists() else {"rows": []}
    cases = dict(old.get("cases") or {})
    if "cases" not in old and old.get("olive"):
        cases["minilm"] = {k: old[k] for k in ("command", "machine", "olive", "latency_rounds_ms", "cpu_ms_per_call",
                                              "load_average", "notes") if k in old}
    kept = [r | {"run": r.get("run") or cases.get(case_of(r) or "", {}).get("command")}
            for r in old["rows"] if case_of(r) != case]
    cases[case] = info
    order = list(CASES)
    every = sorted(kept + rows, key=lambda r: order.index(case_of(r) or order[0]))
    return {"bench": "olive", "command": info["command"], "machine": info["machine"], "rows": every,
            "cases": {c: cases[c] for c in order if c in cases},
            "notes": ["One case per run (bench/olive.py --case minilm / --case mobilenet); each row's `run` is the "
                      "command that measured it and `cases.<case>` holds that run's details (Olive's versions, runs, "
                      "what it tried, the latency rounds, the load average). 2 shared CPU cores: latencies are "
                      "noisy (interleaved rounds, medians), qualities and bytes are not."]}
