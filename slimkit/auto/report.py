"""auto.md and auto.html: the verdict, why each constraint binds, the Pareto front plot (quality against
measured latency, marker area by bytes), the front as a table and the measured per-layer profile."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from slimkit._io import atomic_write_text


def front_png(data: dict[str, Any]) -> str | None:
    """Every finished trial (quality vs measured latency; area ~ bytes), the front joined, as base64 PNG."""
    pts = data["points"]
    if not pts:
        return None
    from slimkit.analysis.figures import figure, png_bytes

    front = {p["number"] for p in data["front"]}
    big = max(p["bytes"] for p in pts) or 1
    with figure((6, 4), dpi=110) as (fig, ax):
        for feas, color, label in ((True, "#2ca02c", "meets the constraints"), (False, "#d62728", "does not")):
            sel = [p for p in pts if p["feasible"] is feas]
            if sel:
                ax.scatter([p["latency_ms"] for p in sel], [p["quality"] for p in sel], s=[20 + 180 * p["bytes"] / big for p in sel],
                           c=color, alpha=0.7, label=label, zorder=2)
        fpts = sorted((p for p in pts if p["number"] in front), key=lambda p: p["latency_ms"])
        ax.plot([p["latency_ms"] for p in fpts], [p["quality"] for p in fpts], "k--", lw=1, label="Pareto front")
        chosen = (data.get("chosen") or {}).get("number")
        for p in pts:
            ax.annotate(str(p["number"]) + (" chosen" if p["number"] == chosen and data["feasible"] else ""),
                        (p["latency_ms"], p["quality"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        base = data.get("baseline") or {}
        blat = (base.get("latency_ms") or {}).get("median")
        ratio = data["settings"].get("max_latency_ratio")
        if blat and ratio and data["runtime"] == "torch":
            ax.axvline(blat * ratio, color="#999", ls=":", lw=1, label="latency limit")
        ax.set_xlabel(f"measured latency (ms, {data['runtime']}, batch {data['settings']['batch']})")
        ax.set_ylabel(data["quality"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        png = png_bytes(fig)
    return base64.b64encode(png).decode()


def _front_rows(data: dict[str, Any]) -> list[list[str]]:
    return [[str(p["number"]), ", ".join(p.get("stages") or []) or "-", f"{p['quality']:.4f}",
             f"{p['latency_ms']:.4g}", str(p["bytes"]), "yes" if p["feasible"] else "no"] for p in data["front"]]


_HEAD = ["trial", "stages", "quality", "latency ms", "bytes", "feasible"]


def render_markdown(data: dict[str, Any], profile: dict[str, Any]) -> str:
    lines = [f"# slimkit auto: {data['name']}", "", f"**Verdict.** {data['verdict']}", "",
             f"Runtime {data['runtime']}; quality is {data['quality']}.", "",
             f"## Pareto front (of {data.get('front_of', 'every finished trial')})", "",
             "| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
    lines += ["| " + " | ".join(r) + " |" for r in _front_rows(data)]
    lines += ["", "## Constraints", ""]
    lines += [f"- {c['name']}: limit {c['limit']}, value {c['value']}, slack {c['slack']}, "
              f"excluded alone {c['excluded_alone']} trial(s){' (binds)' if c['binds'] else ''}"
              for c in data["constraints"]]
    if data.get("deploy"):
        d = data["deploy"]
        lines += ["", f"Deployable artifact: `{d['artifact']}` ({d['precision']}, {d['size_bytes']} bytes). {d['verdict']}"]
    lines += ["", f"Layer latency table and sensitivity: `profile.json` ({len(profile['cost']['layers'])} layers, "
              f"model {profile['cost']['model_ms']:.4g} ms on {profile['cost']['runtime']})."]
    return "\n".join(lines) + "\n"


def render_html(data: dict[str, Any], profile: dict[str, Any]) -> str:
    e = html.escape
    png = front_png(data)
    parts = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>slimkit auto: {e(data['name'])}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}.binds{background:#fff3e0}</style>"
             "</head><body>", f"<h1>slimkit auto: {e(data['name'])}</h1>",
             f"<p><b>Verdict.</b> {e(data['verdict'])}</p>"]
    if png:
        parts.append("<h2>Pareto front: quality, measured latency, bytes (marker area)</h2>"
                     f"<p>The front is {e(data.get('front_of', 'every finished trial'))}.</p><img alt='Pareto front' src='data:image/png;base64,{png}'>")
    parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in _HEAD) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in _front_rows(data)]
    parts.append("</table><h2>Why each constraint binds</h2><table><tr><th>constraint</th><th>limit</th>"
                 "<th>value</th><th>slack</th><th>trials it alone excluded</th></tr>")
    for c in data["constraints"]:
        slack = "n/a" if c["slack"] is None else f"{100 * c['slack']:+.1f}%"
        parts.append(f"<tr class='{'binds' if c['binds'] else ''}'><td>{e(c['name'])}</td><td>{e(str(c['limit']))}</td>"
                     f"<td>{e(str(c['value']))}</td><td>{e(slack)}</td><td>{c['excluded_alone']}</td></tr>")
    parts.append("</table>")
    if data.get("deploy"):
        d = data["deploy"]
        parts.append(f"<h2>Deployable artifact</h2><p><code>{e(d['artifact'])}</code> ({e(str(d['precision']))}, "
                     f"{d['size_bytes']} bytes). {e(d['verdict'])}</p>")
    parts.append("<h2>Measured layer latency (most expensive first)</h2><table><tr><th>layer</th><th>type</th>"
                 "<th>ms</th><th>share</th></tr>")
    for r in profile["cost"]["layers"][:30]:
        share = "n/a" if r["share"] is None else f"{100 * r['share']:.1f}%"
        parts.append(f"<tr><td>{e(r['unit'])}</td><td>{e(r['type'])}</td><td>{r['ms']:.4g}</td><td>{share}</td></tr>")
    parts.append("</table><p>Trials, per-trial reports and the search's own plot: <a href='search.html'>search.html</a>."
                 " The chosen recipe: <code>chosen.yaml</code> (<code>slimkit run chosen.yaml</code>).</p></body></html>")
    return "\n".join(parts)


def write_auto_report(out: Path, data: dict[str, Any], profile: dict[str, Any]) -> None:
    atomic_write_text(out / "auto.md", render_markdown(data, profile))
    atomic_write_text(out / "auto.html", render_html(data, profile))


__all__ = ["front_png", "render_html", "render_markdown", "write_auto_report"]
