"""Render a report dict as Markdown or as one self-contained HTML page with inlined plots."""

from __future__ import annotations

import base64
import html
from typing import Any

from slimkit.pipeline.report.plotting import latency_noise, mark_if_within_noise

COLUMNS = [
    ("accuracy", "accuracy"), ("f1", "F1"), ("params", "params"), ("nonzero_params", "non-zero"),
    ("macs", "MACs"), ("size_bytes", "bytes"), ("sparsity", "sparsity"), ("latency", "latency ms (p90)"),
]


FIDELITY_COLUMNS = [("fidelity_cosine", "cosine"), ("fidelity_top1", "top-1 agr.")]


def columns(report: dict[str, Any], base: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``base`` plus the fidelity columns when a row measured fidelity (unlabelled data, evaluate.fidelity)."""
    fid = [m.get("fidelity") or {} for _, m in rows(report)]
    extra = [c for c, key in zip(FIDELITY_COLUMNS, ("cosine", "top1_agreement"), strict=True)
             if any(f.get(key) is not None for f in fid)]
    return [*base, *extra]


def fmt(key: str, m: dict[str, Any]) -> str:
    """Format one metric of a METRICS dict for a table; 'n/a' for what was not measured."""
    if key in ("fidelity_cosine", "fidelity_top1"):
        v = (m.get("fidelity") or {}).get("cosine" if key == "fidelity_cosine" else "top1_agreement")
        return "n/a" if v is None else (f"{v:.4f}" if key == "fidelity_cosine" else f"{100 * v:.2f}%")
    if key == "latency_median":
        lat = m.get("latency_ms")
        return f"{lat['median']:.3f}" if lat else "n/a"
    if key == "latency":
        lat = m.get("latency_ms")
        if not lat:
            return "n/a"
        return f"{lat['median']:.3f} ({lat['p90']:.3f})"
    v = m.get(key)
    if v is None:
        return "n/a"
    if key in ("accuracy", "f1", "sparsity"):
        return f"{100 * v:.2f}%"
    if key == "size_bytes":
        return _bytes(v)
    if key == "macs":
        return _si(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _si(n: int) -> str:
    """313984 -> '314.0K' (exact values are in report.json)."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, metrics) for the baseline, each stage and the final model."""
    out = [("baseline", report["baseline"])]
    for s in report["stages"]:
        out.append((f"{s['index']} {s['pass']}", s["metrics"]))
    out.append(("final", report["final"]))
    return out


def seconds(report: dict[str, Any]) -> list[str]:
    """Wall-clock seconds of each row of :func:`rows` ('' where it does not apply)."""
    return ["", *[f"{s['seconds']:.1f}" for s in report["stages"]], ""]


def render_markdown(report: dict[str, Any], layers: dict[str, list[dict[str, Any]]] | None = None) -> str:
    lines = [f"# slimkit report: {report['name']}", "", f"**Verdict.** {report['verdict']}", ""]
    cols = columns(report, COLUMNS)
    lines.append("| model | " + " | ".join(label for _, label in cols) + " | seconds |")
    lines.append("|---" * (len(cols) + 2) + "|")
    for (label, m), sec in zip(rows(report), seconds(report), strict=True):
        lines.append(f"| {label} | " + " | ".join(fmt(k, m) for k, _ in cols) + f" | {sec} |")
    if report.get("constraints"):
        lines += ["", "## Constraints", "", "| constraint | limit | value | met |", "|---|---|---|---|"]
        for c in report["constraints"]:
            val = "n/a" if c["value"] is None else f"{c['value']:.4g}"
            met = {True: "yes", False: "NO", None: "not measured"}[c["met"]]
            lines.append(f"| {c['name']} | {c['limit']} | {val} | {met} |")
    if report.get("exports"):
        lines += ["", "## Exports", ""]
        for e in report["exports"]:
            diff = (e.get("parity") or {}).get("max_abs_diff")
            fp32 = e.get("fp32") or {}
            lines.append(f"- {e.get('format')} {e.get('precision') or ''}".rstrip()
                         + f": `{e.get('artifact')}` ({_bytes(e.get('size_bytes') or 0)})"
                         + (f", parity max |diff| {diff:.2e}" if diff is not None else "")
                         + (", exact round trip" if (e.get("parity") or {}).get("round_trip_exact") else "")
                         + (f"; fp32 ONNX for comparison: `{fp32['artifact']}` ({_bytes(fp32.get('size_bytes') or 0)})"
                            if fp32.get("artifact") else ""))
    for s in sensitivity_stages(report):
        lines += ["", *sensitivity_markdown(s)]
    if layers:
        from slimkit.pipeline.report.layers import layers_markdown

        lines += ["", *layers_markdown(layers)]
    for s in report.get("stages") or []:
        if isinstance(s.get("layers"), list) and s["layers"]:
            lines += ["", *stage_layers_markdown(s)]
    env = report.get("environment") or {}
    if env:
        lines += ["", f"Measured on {env.get('cpu')} with torch {env.get('torch')}, {env.get('threads')} threads."]
    lines += ["", "Latency is the median of repeated runs after warm-up, baseline and final measured alternately in "
              "the same process. Sizes are bytes on disk of each stage's artifact.", ""]
    return "\n".join(lines)


def _change(row: dict[str, Any]) -> str:
    if row.get("skipped"):
        return f"left as it was: {row['skipped']}"
    if row.get("change"):
        return str(row["change"])
    if row.get("rank") is not None:
        return f"rank {row['rank']}, weights {row['params_before']} -> {row['params_after']}"
    if "removed" in row:
        return f"{row['removed']}/{row['numel']} zero ({row['removed'] / max(row['numel'], 1):.1%}, {row['pattern']})"
    return ""


def stage_layers_markdown(stage: dict[str, Any]) -> list[str]:
    """Markdown lines for one stage's per-layer rows (``stage["layers"]``: one-shot pruning, low-rank)."""
    lines = [f"## Per-layer changes: stage {stage['index']} {stage['pass']}", "",
             "Relative output error: ||(W - W') x||^2 / ||W x + b||^2 summed over the calibration inputs the "
             "layer saw (blank: not measured).", "", "| layer | change | relative output error |", "|---|---|---|"]
    for row in stage["layers"]:
        err = row.get("rel_error")
        lines.append(f"| {row.get('layer')} | {_change(row)} | {'' if err is None else f'{err:.3g}'} |")
    return lines


def sensitivity_stages(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The stages that ran a per-layer sensitivity analysis (``stage["sensitivity"]``, e.g. PTQ ``mixed``)."""
    return [s for s in report.get("stages") or [] if isinstance(s.get("sensitivity"), dict)]


def _sens_summary(stage: dict[str, Any]) -> str:
    r = stage["sensitivity"]
    kept = ", ".join(f"`{u}`" for u in r["keep"]) or "none"
    met = "met" if r["met"] else "NOT met"
    return (f"Metric {r['metric']} on {r['samples']} {r['data']} samples, floor {r['floor']:.4g}: "
            f"{r['score']:.4f} with the plan ({met}; {r['all_compressed']:.4f} with every layer quantized). "
            f"Kept as {r['keep_as']}: {kept}. {r['reason'][:1].upper()}{r['reason'][1:]}.")


def sensitivity_markdown(stage: dict[str, Any]) -> list[str]:
    """Markdown lines for one stage's sensitivity table (most sensitive first)."""
    r = stage["sensitivity"]
    kept = set(r["keep"])
    lines = [f"## Per-layer sensitivity: stage {stage['index']} {stage['pass']}", "", _sens_summary(stage), "", f"| rank | layer | {r['metric']} alone | loss | kept |", "|---|---|---|---|---|"]
    for row in r["table"]:
        lines.append(f"| {row['rank']} | {row['unit']} | {row['score']:.4f} | {row['loss']:.4g} | "
                     f"{'yes (' + r['keep_as'] + ')' if row['unit'] in kept else ''} |")
    return lines


def sensitivity_png(stage: dict[str, Any]) -> str:
    """Base64 PNG of one stage's sensitivity bar plot (kept layers in red)."""
    from slimkit.analysis.sensitivity import UnitSensitivity, sensitivity_plot

    r = stage["sensitivity"]
    units = [UnitSensitivity(row["unit"], row["score"], row["loss"], row.get("cost")) for row in r["table"]]
    png = sensitivity_plot(units, keep=r["keep"], title=f"Stage {stage['index']} {stage['pass']}: "
                           f"{r['metric']} loss per layer")
    return base64.b64encode(png).decode()


def _plot(report: dict[str, Any], x_key: str, x_label: str) -> str | None:
    pts = []
    measured = []
    for label, m in rows(report):
        x = m.get("size_bytes") if x_key == "size" else (m.get("latency_ms") or {}).get("median")
        y = m.get("accuracy")
        if x is not None and y is not None:
            pts.append((label, x, 100 * y))
            measured.append(m)
    if not pts:
        return None
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    from slimkit.analysis.figures import figure, png_bytes

    with figure((6.4, 4.0), dpi=110) as (fig, ax):
        path = pts[:-1] if len(pts) > 1 else pts  # baseline and stages, joined in order
        ax.plot([p[1] for p in path], [p[2] for p in path], "-", color="#bbb", zorder=1)
        ax.scatter([p[1] for p in path], [p[2] for p in path], c=["#1f77b4"] + ["#ff7f0e"] * (len(path) - 1), s=36,
                   zorder=2)
        final = pts[-1]  # often on top of the last stage: a star around it, labelled below
        ax.scatter([final[1]], [final[2]], marker="*", s=180, facecolors="none", edgecolors="#2ca02c",
                   linewidths=1.5, zorder=3)
        ax.margins(x=0.18, y=0.22)  # room for the labels inside the axes
        xs = [p[1] for p in pts]
        mid = (min(xs) + max(xs)) / 2
        for i, (label, x, y) in enumerate(pts):
            right_half = x > mid and max(xs) > min(xs)
            below = i == len(pts) - 1
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(-6 if right_half else 6, -12 if below else 6),
                        ha="right" if right_half else "left", fontsize=9, annotation_clip=False)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _bytes(int(v)) if x_key == "size" else f"{v:.3g}"))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.4g}"))
        if x_key == "latency":  # a latency axis spanning less than the run-to-run spread: from zero, marked
            mark_if_within_noise(ax, xs, latency_noise(measured), unit=" ms")
        ax.set_xlabel(x_label)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        return base64.b64encode(png_bytes(fig)).decode()


def render_html(report: dict[str, Any], layers: dict[str, list[dict[str, Any]]] | None = None) -> str:
    """The self-contained report page; ``layers`` (:func:`slimkit.pipeline.report.layers.run_layers`) adds the
    per-layer views."""
    import jinja2

    from slimkit.pipeline.report.layers import layer_views

    env = jinja2.Environment(loader=jinja2.PackageLoader("slimkit.pipeline.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    tmpl = env.get_template("report.html.j2")
    plots = [p for p in (
        ("Accuracy against size on disk", _plot(report, "size", "bytes on disk")),
        ("Accuracy against latency", _plot(report, "latency", "latency (ms, median)")),
    ) if p[1]]
    cols = columns(report, COLUMNS)
    table = [(label, [*(fmt(k, m) for k, _ in cols), sec])
             for (label, m), sec in zip(rows(report), seconds(report), strict=True)]
    import yaml

    sensitivity = [{"title": f"Stage {st['index']} {st['pass']}", "summary": _sens_summary(st).replace("`", ""),
                    "png": sensitivity_png(st), "r": st["sensitivity"]} for st in sensitivity_stages(report)]
    recipe_yaml = yaml.safe_dump(report.get("recipe") or {}, sort_keys=False, default_flow_style=False)
    return tmpl.render(r=report, recipe_yaml=recipe_yaml, columns=[*(c for _, c in cols), "seconds"], table=table, plots=plots,
                       sensitivity=sensitivity, layer_views=layer_views(layers or {}, pruned=any(
                           str(st.get("pass", "")).startswith("prune") for st in report["stages"])),
                       constraints=report.get("constraints") or [], exports=report.get("exports") or [],
                       env=report.get("environment") or {}, esc=html.escape)
