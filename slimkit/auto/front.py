"""The Pareto front of an auto search (quality vs measured latency vs bytes) and why each constraint binds."""

from __future__ import annotations

from typing import Any


def point(record: dict[str, Any], labelled: bool) -> dict[str, Any] | None:
    """A finished trial as ``{"number", "quality", "latency_ms", "bytes", "speedup", "feasible"}`` (None when
    a coordinate was not measured)."""
    m = record.get("metrics") or {}
    quality = m.get("accuracy") if labelled else (m.get("fidelity") or {}).get("cosine")
    lat = (m.get("latency_ms") or {}).get("median")
    if record.get("state") != "complete" or quality is None or lat is None or m.get("size_bytes") is None:
        return None
    return {"number": record["number"], "quality": float(quality), "latency_ms": float(lat),
            "bytes": int(m["size_bytes"]), "feasible": bool(record.get("feasible")), "stages": record.get("stages"),
            "objectives": record.get("objectives") or [record.get("objective")]}


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` is at least as good as ``b`` everywhere (quality up, latency and bytes down) and better somewhere."""
    ge = a["quality"] >= b["quality"] and a["latency_ms"] <= b["latency_ms"] and a["bytes"] <= b["bytes"]
    gt = a["quality"] > b["quality"] or a["latency_ms"] < b["latency_ms"] or a["bytes"] < b["bytes"]
    return ge and gt


def pareto_front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The non-dominated points, fastest first."""
    front = [p for p in points if not any(dominates(q, p) for q in points if q is not p)]
    return sorted(front, key=lambda p: (p["latency_ms"], -p["quality"]))


def binding(records: list[dict[str, Any]], chosen: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per constraint: its limit, the chosen (or closest) trial's value and slack (relative; < 0 violated),
    and how many finished trials it alone excluded. ``binds`` marks the constraint(s) that limit the result:
    the violated ones, or, when all are met, the one with the least slack."""
    done = [r for r in records if r.get("state") == "complete" and r.get("constraints")]
    names = [c["name"] for c in (done[0]["constraints"] if done else [])]
    rows = []
    for i, name in enumerate(names):
        alone = sum(1 for r in done if r["constraints"][i]["met"] is not True
                    and all(c["met"] is True for j, c in enumerate(r["constraints"]) if j != i))
        row: dict[str, Any] = {"name": name, "limit": None, "value": None, "slack": None, "excluded_alone": alone,
                               "binds": False}
        if chosen is not None and chosen.get("constraints"):
            c = chosen["constraints"][i]
            row.update(limit=c["limit"], value=c["value"])
            if c["value"] is not None:
                lim, v = float(c["limit"]), float(c["value"])
                row["slack"] = ((lim - v) if name.startswith("max_") else (v - lim)) / max(abs(lim), 1e-9)
        rows.append(row)
    slacks = [r for r in rows if r["slack"] is not None]
    violated = [r for r in slacks if r["slack"] < 0]
    for r in violated or ([min(slacks, key=lambda r: r["slack"])] if slacks else []):
        r["binds"] = True
    return rows


def closest(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The finished trial with the smallest summed constraint violation (ties: the earlier)."""
    done = [r for r in records if r.get("state") == "complete" and r.get("violations") is not None]
    return min(done, key=lambda r: (sum(r["violations"]), r["number"])) if done else None


def explain(rows: list[dict[str, Any]], feasible: bool) -> str:
    parts = []
    for r in rows:
        if r["value"] is None:
            parts.append(f"{r['name']} was not measured")
            continue
        state = "violated" if r["slack"] < 0 else "met"
        parts.append(f"{r['name']} {state} (limit {r['limit']:.4g}, got {r['value']:.4g}, slack {100 * r['slack']:+.1f}%"
                     f"{', binds' if r['binds'] else ''}; it alone excluded {r['excluded_alone']} trial(s))")
    head = "All constraints met: " if feasible else "NOT MET, closest point found: "
    return head + "; ".join(parts) + "."


__all__ = ["binding", "closest", "dominates", "explain", "pareto_front", "point"]
