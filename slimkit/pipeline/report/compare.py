"""Several runs side by side: quality (accuracy, fidelity), bytes on disk, MACs and measured latency of each
run's final model, with the Pareto front marked (no other run is at least as good on every objective and
better on one). Written as compare.json, compare.md and a self-contained compare.html.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from slimkit._io import atomic_write_json, atomic_write_text
from slimkit.errors import ReportError
from slimkit.pipeline.report import read_report
from slimkit.pipeline.report.plotting import latency_noise, mark_if_within_noise
from slimkit.pipeline.report.render import fmt

#: (key, column title, direction) of every objective the front is computed over, when every run measured it
OBJECTIVES = [("quality", "quality", "max"), ("size_bytes", "bytes", "min"), ("macs", "MACs", "min"),
              ("latency", "latency ms", "min")]


def _latency(m: dict[str, Any]) -> float | None:
    lat = m.get("latency_ms") or {}
    return lat.get("median")


def dominates(a: dict[str, Any], b: dict[str, Any], objectives: list[tuple[str, str, str]]) -> bool:
    """True when run ``a`` is at least as good as ``b`` on every objective and strictly better on one."""
    better = False
    for key, _, direction in objectives:
        x, y = a[key], b[key]
        if (x < y if direction == "max" else x > y):
            return False
        better = better or x != y
    return better


def compare_runs(run_dirs: list[Path]) -> dict[str, Any]:
    """Read each run's report.json and return the comparison (rows, objectives used, Pareto front, notes)."""
    if len(run_dirs) < 2:
        raise ReportError(f"compare needs two or more run directories, got {len(run_dirs)}.",
                          hint="Example: slimkit compare runs/a runs/b")
    reports = [(Path(d), read_report(Path(d))) for d in run_dirs]
    names = [r["name"] for _, r in reports]
    rows = []
    for (d, r), name in zip(reports, names, strict=True):
        f, b = r["final"], r["baseline"]
        label = name if names.count(name) == 1 else f"{name} ({d.name})"
        lat, b_lat = _latency(f), _latency(b)
        rows.append({"run": label, "dir": str(d), "accuracy": f.get("accuracy"), "fidelity": f.get("fidelity"),
                     "size_bytes": f.get("size_bytes"), "macs": f.get("macs"), "latency": lat,
                     "latency_ms": f.get("latency_ms"), "baseline_accuracy": b.get("accuracy"),
                     "speedup_vs_baseline": (b_lat / lat) if lat and b_lat else None,
                     "size_ratio": (f["size_bytes"] / b["size_bytes"]) if f.get("size_bytes") and b.get("size_bytes")
                     else None, "verdict": r.get("verdict", "")})
    quality = next((k for k in ("accuracy", "fidelity") if all(row[k] is not None for row in rows)), None)
    notes = []
    for row in rows:
        row["quality"] = row[quality] if quality else None
    objectives = [o for o in OBJECTIVES if all(row[o[0]] is not None for row in rows)]
    left_out = [o[1] for o in OBJECTIVES if o not in objectives]
    if left_out:
        notes.append("Not every run measured " + ", ".join(left_out) + ", so the front leaves "
                     + ("it" if len(left_out) == 1 else "them") + " out.")
    if quality:
        notes.append(f"Quality is {quality} of each final model (higher is better).")
    for row in rows:
        row["dominated_by"] = [o["run"] for o in rows if o is not row and dominates(o, row, objectives)]
        row["pareto"] = not row["dominated_by"]
    noise = latency_noise([{"latency_ms": row["latency_ms"]} for row in rows])
    lats = [row["latency"] for row in rows if row["latency"] is not None]
    if noise is not None and len(lats) >= 2:
        span = max(lats) - min(lats)
        notes.append(f"Each run measured its latency in its own process: the latencies span {span:.3g} ms "
                     f"against a run-to-run spread (p90 - median) of {noise:.3g} ms for the fastest"
                     + ("; no measurable difference." if span <= noise else ".")
                     + " The speed-up against each run's own baseline was measured in one process.")
    return {"runs": rows, "quality": quality, "objectives": [{"key": k, "name": n, "direction": d}
                                                             for k, n, d in objectives], "notes": notes}


_COLS = [("accuracy", "accuracy"), ("fidelity", "fidelity"), ("size_bytes", "bytes"), ("macs", "MACs"),
         ("latency_median", "latency ms"), ("speedup", "vs own baseline"), ("size_ratio", "size vs baseline")]


def cells(row: dict[str, Any]) -> list[str]:
    """The formatted cells of one compared run, in the order of :data:`COLUMNS`."""
    m = {"accuracy": row["accuracy"], "fidelity": row["fidelity"], "size_bytes": row["size_bytes"],
         "macs": row["macs"], "latency_ms": row["latency_ms"]}
    out = []
    for key, _ in _COLS:
        if key == "speedup":
            out.append("n/a" if row["speedup_vs_baseline"] is None else f"{row['speedup_vs_baseline']:.2f}x")
        elif key == "size_ratio":
            out.append("n/a" if row["size_ratio"] is None else f"{row['size_ratio']:.3f}x")
        elif key == "fidelity" and row["fidelity"] is not None:
            out.append(f"{row['fidelity']:.4f}")
        else:
            out.append(fmt(key, m))
    return out


COLUMNS = [title for _, title in _COLS]


def render_markdown(cmp: dict[str, Any]) -> str:
    lines = ["# slimkit: runs compared", "", "| run | " + " | ".join(COLUMNS) + " | Pareto front |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for row in cmp["runs"]:
        front = "**yes**" if row["pareto"] else "no (dominated by " + ", ".join(row["dominated_by"]) + ")"
        lines.append(f"| {row['run']} | " + " | ".join(cells(row)) + f" | {front} |")
    objs = ", ".join(f"{o['name']} ({'higher' if o['direction'] == 'max' else 'lower'} is better)"
                     for o in cmp["objectives"]) or "none (no objective measured by every run)"
    lines += ["", f"Pareto front over: {objs}.", "", *(f"- {n}" for n in cmp["notes"]), ""]
    return "\n".join(lines)


def plot(cmp: dict[str, Any], x_key: str) -> str | None:
    """Quality against bytes (``size_bytes``) or latency (``latency``), the front joined and in red."""
    pts = [r for r in cmp["runs"] if r["quality"] is not None and r[x_key] is not None]
    if len(pts) < 2:
        return None
    from slimkit.analysis.figures import figure, png_bytes

    with figure((5.5, 3.6), dpi=110) as (fig, ax):
        q = 100.0 if cmp["quality"] == "accuracy" else 1.0
        # the front is over every objective: a point on it may look dominated in this 2-D view, so no line joins them
        for on, color, marker, label in ((True, "#d62728", "o", "on the Pareto front (all objectives)"),
                                         (False, "#7f7f7f", "x", "dominated")):
            sel = [r for r in pts if r["pareto"] is on]
            if sel:
                ax.scatter([r[x_key] for r in sel], [q * r["quality"] for r in sel], c=color, marker=marker, label=label,
                           zorder=2)
        for r in pts:
            ax.annotate(r["run"], (r[x_key], q * r["quality"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if x_key == "latency":
            mark_if_within_noise(ax, [r["latency"] for r in pts], latency_noise(pts), unit=" ms")
        if x_key == "size_bytes":
            from matplotlib.ticker import FuncFormatter, MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt("size_bytes", {"size_bytes": int(v)})))
        ax.set_xlabel("bytes on disk" if x_key == "size_bytes" else "latency (ms, median, each run's own process)")
        ax.set_ylabel(f"{cmp['quality']}" + (" (%)" if q == 100.0 else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        return base64.b64encode(png_bytes(fig)).decode()


def render_html(cmp: dict[str, Any]) -> str:
    e = html.escape
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>slimkit: runs compared</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;"
             "text-align:right}td:first-child,th:first-child,td:last-child{text-align:left}"
             "tr.front{background:#fdecea}img{max-width:48%;margin-right:1%}</style></head><body>",
             "<h1>slimkit: runs compared</h1>",
             "<table><tr><th>run</th>" + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "<th>Pareto front</th></tr>"]
    for row in cmp["runs"]:
        front = "<b>yes</b>" if row["pareto"] else "no (dominated by " + e(", ".join(row["dominated_by"])) + ")"
        parts.append(f"<tr class='{'front' if row['pareto'] else ''}'><td>{e(row['run'])}</td>"
                     + "".join(f"<td>{e(c)}</td>" for c in cells(row)) + f"<td>{front}</td></tr>")
    parts.append("</table>")
    objs = ", ".join(f"{o['name']} ({'higher' if o['direction'] == 'max' else 'lower'} is better)"
                     for o in cmp["objectives"]) or "none (no objective measured by every run)"
    parts.append(f"<p>Pareto front over: {e(objs)}.</p><ul>" + "".join(f"<li>{e(n)}</li>" for n in cmp["notes"])
                 + "</ul>")
    pngs = [(t, p) for t, p in (("quality against bytes on disk", plot(cmp, "size_bytes")),
                                ("quality against latency", plot(cmp, "latency"))) if p]
    if pngs:
        parts.append("<h2>Trade-offs</h2><div>" + "".join(
            f"<img alt='{e(t)}' title='{e(t)}' src='data:image/png;base64,{p}'>" for t, p in pngs) + "</div>")
    parts.append("<h2>Verdicts</h2><ul>" + "".join(f"<li><b>{e(r['run'])}</b> (<code>{e(r['dir'])}</code>): "
                                                   f"{e(r['verdict'])}</li>" for r in cmp["runs"]) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_comparison(out: Path, cmp: dict[str, Any]) -> dict[str, Path]:
    """Write compare.json, compare.md and compare.html into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return {"json": atomic_write_json(out / "compare.json", cmp),
            "md": atomic_write_text(out / "compare.md", render_markdown(cmp)),
            "html": atomic_write_text(out / "compare.html", render_html(cmp))}


__all__ = ["COLUMNS", "OBJECTIVES", "cells", "compare_runs", "dominates", "plot", "render_html",
           "render_markdown", "write_comparison"]
