"""Per-layer views of a run, read from the checkpoints it saved (``baseline/``, ``stages/<i>-<pass>/``,
``final/``: safetensors + manifest, never a pickle): how many weights each layer keeps, how many output
channels it has before and after, and at how many bits its weights are stored.

Read-only: nothing here changes a run. The plots are base64 PNGs for the self-contained report.html.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

from slimkit.analysis.figures import figure, png_bytes

_DTYPE_BITS = {"float64": 64, "float32": 32, "float16": 16, "bfloat16": 16, "int8": 8, "uint8": 8}


def _layer_name(tensor: str) -> str:
    name = tensor.removesuffix(".weight")
    return name.removesuffix(".module")  # a fake-quant wrapper keeps the layer as ``<layer>.module``


def _bits(entry: dict[str, Any]) -> int | None:
    info = entry.get("info") or {}
    if entry.get("encoding") == "codec":
        if isinstance(info.get("bits"), int):
            return int(info["bits"])
        if "torchao" in str(entry.get("codec")) or "uint8" in str(entry.get("codec")):
            return 8
        return None
    return _DTYPE_BITS.get(str(entry.get("dtype")))


def layer_profile(checkpoint: Path) -> list[dict[str, Any]]:
    """One row per weight matrix or kernel (2-D or more) of a saved checkpoint, in storage order:
    ``{"layer", "shape", "out", "params", "nonzero", "sparsity", "bits"}``. ``bits`` is the stored width of
    the weights (32 for float32, the codec's bits for a packed quantized weight; None when unknown);
    ``nonzero``/``sparsity`` are None for a tensor subclass that cannot be dequantized (not invented)."""
    import torch

    from slimkit.exporters import load_manifest, load_state

    manifest = load_manifest(checkpoint)
    state = load_state(checkpoint, verify=False)
    out = []
    for name, entry in manifest["tensors"].items():
        shape = list(entry.get("shape") or [])
        if not name.endswith("weight") or len(shape) < 2 or name not in state:
            continue
        t = state[name]
        if type(t) is not torch.Tensor:  # a tensor subclass (torchao's Int8Tensor): count its dequantized values
            t = t.dequantize() if callable(getattr(t, "dequantize", None)) else None
        params = math.prod(shape)
        nonzero = int(torch.count_nonzero(t)) if t is not None else None
        out.append({"layer": _layer_name(name), "shape": shape, "out": shape[0], "params": params,
                    "nonzero": nonzero, "sparsity": None if nonzero is None else 1.0 - nonzero / params,
                    "bits": _bits(entry)})
    return out


def run_layers(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """:func:`layer_profile` of the baseline and the final checkpoint of a run ({} when either is missing)."""
    run_dir = Path(run_dir)
    if not ((run_dir / "baseline" / "manifest.json").is_file() and (run_dir / "final" / "manifest.json").is_file()):
        return {}
    return {"baseline": layer_profile(run_dir / "baseline"), "final": layer_profile(run_dir / "final")}


def layer_views(layers: dict[str, list[dict[str, Any]]], *, pruned: bool = True) -> list[tuple[str, str]]:
    """(title, base64 PNG) for each per-layer view that shows a change: weights kept per layer (when the run
    ``pruned`` and a layer is sparse; zeros that rounding to a few bits makes are not shown as pruning),
    output channels before and after (when a structured prune changed any width), bits per layer (when any
    layer is stored below 32 bits)."""
    if not layers:
        return []
    base = {r["layer"]: r for r in layers["baseline"]}
    final = layers["final"]
    views = []
    counted = [r for r in final if r["sparsity"] is not None]
    if pruned and any(r["sparsity"] > 0.001 for r in counted):
        views.append(("Weights kept per layer (final model)", _bars(
            [r["layer"] for r in counted], [100 * (1 - r["sparsity"]) for r in counted], "weights kept (%)",
            note=f"{sum(r['nonzero'] for r in counted):,} of {sum(r['params'] for r in counted):,} weights kept",
            limit=100)))
    common = [r for r in final if r["layer"] in base]
    if any(base[r["layer"]]["out"] != r["out"] for r in common):
        views.append(("Output channels per layer, before and after", _pair(
            [r["layer"] for r in common], [base[r["layer"]]["out"] for r in common], [r["out"] for r in common])))
    if any((r["bits"] or 32) < 32 for r in final):
        views.append(("Stored bits per layer (final model)", _bars(
            [r["layer"] for r in final], [float(r["bits"] or 0) for r in final], "bits per weight",
            note="0 = not known from the checkpoint" if any(r["bits"] is None for r in final) else
            f"{sum(r['params'] for r in final if (r['bits'] or 32) < 32):,} of {sum(r['params'] for r in final):,} "
            "weights stored below 32 bits", limit=32)))
    return views


def layers_markdown(layers: dict[str, list[dict[str, Any]]]) -> list[str]:
    """A Markdown table: per layer, output channels before -> after, weights kept, stored bits."""
    if not layers:
        return []
    base = {r["layer"]: r for r in layers["baseline"]}
    lines = ["## Per layer", "", "| layer | shape | out channels | weights kept | bits |", "|---|---|---|---|---|"]
    for r in layers["final"]:
        before = base.get(r["layer"], {}).get("out")
        out = f"{before} -> {r['out']}" if before not in (None, r["out"]) else str(r["out"])
        bits = "?" if r["bits"] is None else str(r["bits"])
        kept = "n/a" if r["nonzero"] is None else (f"{r['nonzero']:,} / {r['params']:,} "
                                                   f"({100 * (1 - r['sparsity']):.1f}%)")
        lines.append(f"| {r['layer']} | {'x'.join(map(str, r['shape']))} | {out} | {kept} | {bits} |")
    return lines


def _size(n: int) -> tuple[float, float]:
    return (6.4, max(2.4, 0.9 + 0.22 * n))


def _bars(names: list[str], values: list[float], xlabel: str, *, note: str, limit: float) -> str:
    with figure(_size(len(names)), dpi=110) as (fig, ax):
        ys = range(len(names))
        ax.barh(list(ys), values, color="#1f77b4")
        ax.set_yticks(list(ys), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, limit * 1.08)  # from zero: bar lengths compare
        for y, v in zip(ys, values, strict=True):
            ax.annotate(f"{v:.3g}", (v, y), textcoords="offset points", xytext=(3, -3), fontsize=6)
        ax.set_xlabel(xlabel)
        ax.set_title(note, fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        return base64.b64encode(png_bytes(fig)).decode()


def _pair(names: list[str], before: list[int], after: list[int]) -> str:
    with figure(_size(len(names)), dpi=110) as (fig, ax):
        ys = list(range(len(names)))
        ax.barh([y - 0.2 for y in ys], before, height=0.4, color="#bbbbbb", label="before")
        ax.barh([y + 0.2 for y in ys], after, height=0.4, color="#ff7f0e", label="after")
        for y, b, a in zip(ys, before, after, strict=True):
            ax.annotate(f"{b} -> {a}", (max(a, b), y), textcoords="offset points", xytext=(3, -3), fontsize=6)
        ax.set_yticks(ys, names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, max(before + after) * 1.25)
        ax.set_xlabel("output channels / features")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(axis="x", alpha=0.3)
        return base64.b64encode(png_bytes(fig)).decode()


__all__ = ["layer_profile", "layer_views", "layers_markdown", "run_layers"]
