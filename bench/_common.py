"""Helpers shared by the benchmarks in bench/: machine facts, the result file (validated against
../shared/schemas/bench-result.schema.json when it is there, written atomically), the Markdown table
rendered from a result file, and onnxruntime latency at fixed threads.

Benchmarks are scripts (they may print); run them from the repository root:
``.venv/bin/python bench/<name>.py``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "bench" / "_work"
SCHEMA_CANDIDATES = (ROOT.parent / "shared" / "schemas" / "bench-result.schema.json",
                     ROOT / "docs" / "schemas" / "bench-result.schema.json")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
    """The CPU model name and the SIMD features that matter for int8 (avx2, avx512, VNNI)."""
    from slimkit.evaluation.latency import cpu_flags

    name = platform.processor() or platform.machine()
    if name in ("", platform.machine(), "x86_64"):
        try:
            name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name")), name)
        except OSError:
            pass
    flags = cpu_flags() or set()
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    vnni = "VNNI" if {"avx512_vnni", "avx_vnni"} & flags else "no VNNI"
    return f"{name} ({', '.join(simd) or 'no avx2'}; {vnni})" if flags else name


def has_vnni() -> bool:
    """Whether the CPU has VNNI (int8 dot products without the u8s8 saturation of vpmaddubsw)."""
    from slimkit.evaluation.latency import cpu_has_vnni

    return bool(cpu_has_vnni())


def machine_info(threads: int) -> dict[str, Any]:
    """``{"cpu", "threads", "torch", "onnxruntime", "gpu"}`` for the result file."""
    import torch

    try:
        import onnxruntime

        ort_version: str | None = onnxruntime.__version__
    except ImportError:
        ort_version = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_name(), "threads": int(threads), "torch": torch.__version__,
            "onnxruntime": ort_version, "gpu": gpu, "logical_cpus": os.cpu_count()}


def command_line() -> str:
    """The command that reproduces this run, relative to the repository root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return " ".join([".venv/bin/python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def load_schema() -> dict[str, Any] | None:
    for path in SCHEMA_CANDIDATES:
        if path.exists():
            return json.loads(path.read_text())
    return None


def validate_result(result: dict[str, Any]) -> None:
    """Validate against the bench-result schema (jsonschema); raises ``jsonschema.ValidationError``."""
    schema = load_schema()
    if schema is None:
        print("warning: bench-result.schema.json not found; result not validated", file=sys.stderr)
        return
    import jsonschema

    jsonschema.validate(result, schema)


def write_result(name: str, result: dict[str, Any], path: Path | None = None) -> Path:
    """Validate and write ``bench/results/<name>.json`` atomically."""
    from slimkit._io import atomic_write_json

    validate_result(result)
    return atomic_write_json(path or RESULTS / f"{name}.json", result)


def ort_latency_ms(onnx_path: str | Path, example: Any, *, batch: int, threads: int, warmup: int = 10,
                   repeats: int = 50) -> float:
    """Median onnxruntime latency (ms) of one call at ``batch``, with ``threads`` intra-op threads."""
    from slimkit.config.recipe import LatencyConfig
    from slimkit.evaluation.latency import ort_latency

    res = ort_latency(onnx_path, example, LatencyConfig(batch=batch, warmup=warmup, repeats=repeats,
                                                         threads=threads))
    return round(float(res["median"]), 4)


def torch_latency_ms(model: Any, example: Any, *, batch: int, threads: int, warmup: int = 5,
                     repeats: int = 20) -> float:
    """Median PyTorch eager latency (ms) of one call at ``batch`` with ``threads`` threads."""
    from slimkit.config.recipe import LatencyConfig
    from slimkit.evaluation.latency import torch_latency

    res = torch_latency(model, example, LatencyConfig(batch=batch, warmup=warmup, repeats=repeats, threads=threads))
    return round(float(res["median"]), 4)


# --------------------------------------------------------------------------------------------- tables

def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "—"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "bytes":
        return f"{value / 1024:.1f} KiB"
    if kind == "ms":
        return f"{value:.3f}"
    if kind == "x":
        return f"{value:.2f}x"
    return str(value)


def render_table(result: dict[str, Any], *, baseline_variant: str = "fp32", quality_key: str = "accuracy") -> str:
    """A Markdown table of a result file: one row per system/variant with quality, size (and ratio to the
    baseline row), latency per batch setting (and speedup against the baseline)."""
    rows = result["rows"]
    base = next((r for r in rows if r["variant"] == baseline_variant), rows[0])
    batches = sorted({k for r in rows for k in r["latency_ms"]}, key=lambda k: (len(k), k))
    head = ["system", "variant", quality_key, "Δ vs fp32", "size", "size / fp32"]
    for b in batches:
        head += [f"latency {b} (ms)", f"speedup {b}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    bq = base["quality"].get(quality_key)
    for r in rows:
        q = r["quality"].get(quality_key)
        delta = f"{100 * (q - bq):+.2f} pt" if q is not None and bq is not None else "—"
        ratio = (r["size_bytes"] / base["size_bytes"]) if r["size_bytes"] and base["size_bytes"] else None
        cells = [r["system"], r["variant"], _fmt(q, "pct"), delta, _fmt(r["size_bytes"], "bytes"),
                 f"{100 * ratio:.1f}%" if ratio is not None else "—"]
        for b in batches:
            lat, blat = r["latency_ms"].get(b), base["latency_ms"].get(b)
            cells += [_fmt(lat, "ms"), _fmt(blat / lat, "x") if lat and blat else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_doc_section(doc: Path, heading: str, body: str) -> None:
    """Replace the section ``## heading`` of a Markdown file with ``body`` (adding it at the end if absent),
    leaving the other sections alone."""
    from slimkit._io import atomic_write_text

    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    marker = f"## {heading}"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == marker), None)
    section = [marker, "", *body.strip("\n").splitlines(), ""]
    if start is None:
        new = [*lines, "", *section] if lines and lines[-1] != "" else [*lines, *section]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = [*lines[:start], *section, *lines[end:]]
    atomic_write_text(doc, "\n".join(new).rstrip("\n") + "\n")
