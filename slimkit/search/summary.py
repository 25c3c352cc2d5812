"""A search's summary: ``search.md`` (a table of trials) and a self-contained ``search.html`` with a plot of
the objective against accuracy, feasible and infeasible trials told apart, the best one marked."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from slimkit._io import atomic_write_text
from slimkit.pipeline.report.render import fmt

_COLS = [("accuracy", "accuracy"), ("size_bytes", "bytes"), ("sparsity", "sparsity"), ("latency_median", "ms")]


def _obj(v: Any) -> str:
    return "n/a" if v is None else f"{v:.6g}"


def _param(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _rows(data: dict[str, Any]) -> list[list[str]]:
    best = (data.get("best") or {}).get("number")
    out = []
    for r in data["trials"]:
        m = r.get("metrics") or {}
        params = ", ".join(f"{k}={_param(v)}" for k, v in r["params"].items())
        status = r["state"] if r["state"] != "complete" else ("feasible" if r.get("feasible") else "infeasible")
        if r.get("proposed_by") == "refine":  # a secant step along a knob (slimkit.search.refine)
            status += f" (refined from {r.get('refined_from')})"
        out.append([f"{r['number']}{' (best)' if r['number'] == best else ''}", status, params,
                    _obj(r.get("objective")), *(fmt(k, m) if m else "n/a" for k, _ in _COLS),
                    (r.get("error") or "")[:160]])
    return out


def render_markdown(data: dict[str, Any]) -> str:
    o = data["objective"]
    lines = [f"# slimkit search: {data['name']}", "", f"**Verdict.** {data['verdict']}", "",
             f"Objective: {o['direction']} `{o['metric']}` subject to "
             + (", ".join(f"`{k}` {v}" for k, v in data["constraints"].items()) or "no constraints") + ".", ""]
    head = ["trial", "status", "params", o["metric"], *(c for _, c in _COLS), "error"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|---" * len(head) + "|")
    for row in _rows(data):
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    if data.get("baseline"):
        b = data["baseline"]
        lines += ["", "Baseline (shared by every trial): " + ", ".join(f"{c} {fmt(k, b)}" for k, c in _COLS) + "."]
    lines.append("")
    return "\n".join(lines)


def plot(data: dict[str, Any]) -> str | None:
    """Objective against accuracy, one point per finished trial, as a base64 PNG (None: nothing to plot)."""
    pts = [(r["number"], r["objective"], 100 * r["metrics"]["accuracy"], bool(r.get("feasible")))
           for r in data["trials"] if r["state"] == "complete" and r.get("objective") is not None
           and (r.get("metrics") or {}).get("accuracy") is not None]
    if not pts:
        return None
    from slimkit.analysis.figures import figure, png_bytes

    best = (data.get("best") or {}).get("number")
    with figure((5.5, 3.6), dpi=110) as (fig, ax):
        for feasible, color, label in ((True, "#2ca02c", "meets the constraints"), (False, "#d62728", "does not")):
            sel = [p for p in pts if p[3] is feasible]
            if sel:
                ax.scatter([p[1] for p in sel], [p[2] for p in sel], c=color, label=label, zorder=2,
                           marker="o" if feasible else "x")
        for n, x, y, _ in pts:
            ax.annotate(str(n) + (" best" if n == best else ""), (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
        if data.get("baseline") and data["baseline"].get("accuracy") is not None:
            ax.axhline(100 * data["baseline"]["accuracy"], color="#999", ls="--", lw=1, label="baseline accuracy")
        o = data["objective"]
        ax.set_xlabel(f"{o['metric']} ({o['direction']})")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        return base64.b64encode(png_bytes(fig)).decode()


def render_html(data: dict[str, Any]) -> str:
    o = data["objective"]
    e = html.escape
    head = ["trial", "status", "params", o["metric"], *(c for _, c in _COLS), "error"]
    png = plot(data)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>slimkit search: {e(data['name'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}tr.best{background:#e8f5e9}"
        ".infeasible{color:#b71c1c}</style></head><body>",
        f"<h1>slimkit search: {e(data['name'])}</h1>",
        f"<p><b>Verdict.</b> {e(data['verdict'])}</p>",
        f"<p>Objective: {e(o['direction'])} <code>{e(o['metric'])}</code> subject to "
        + (", ".join(f"<code>{e(k)}</code> {e(str(v))}" for k, v in data["constraints"].items()) or "no constraints")
        + ".</p>",
    ]
    if png:
        parts.append(f"<h2>{e(o['metric'])} against accuracy</h2><img alt='objective against accuracy' "
                     f"src='data:image/png;base64,{png}'>")
    parts.append("<h2>Trials</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
    for row in _rows(data):
        cls = "best" if "(best)" in row[0] else ("infeasible" if row[1] != "feasible" else "")
        parts.append(f"<tr class='{cls}'>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
    parts.append("</table>")
    if data.get("best"):
        parts.append("<p>The best trial's run (its report.html, model and ONNX) is copied to <code>best/</code>.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_summary(out: Path, data: dict[str, Any]) -> dict[str, Path]:
    return {"md": atomic_write_text(out / "search.md", render_markdown(data)),
            "html": atomic_write_text(out / "search.html", render_html(data))}


__all__ = ["plot", "render_html", "render_markdown", "write_summary"]
