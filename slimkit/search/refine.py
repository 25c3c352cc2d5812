"""Refinement along a knob that trades quality for speed (or size): the next point to try when no trial
is feasible yet.

A search config's ``refine`` entries name such a knob (e.g. ``stages[prune].target_macs``: lower is faster and
less accurate) and the constraints it helps (``min_speedup``, ``max_size_ratio``). When the trials queued so
far are done and none meets every constraint, :func:`next_point` looks at the finished trials and proposes
one point on the knob, the rest of the settings copied from the closest trial:

- the closest trial misses only constraints the knob helps (too slow, accuracy to spare): the knob moves
  toward ``faster``, to where the straight line through that trial and its nearest neighbour with the same
  other settings reaches the limit with a ``margin``; with no neighbour, a fixed step;
- it misses only the other constraints (too inaccurate): the same toward the slower end;
- it meets every constraint but a helped one by less than half the margin: as if that one were missed;
- it misses both kinds, or the point was tried already: nothing (the sampler goes on alone).

This is analysis only (records in, a parameter set out); the Optuna study queues the point
(:mod:`slimkit.search.optuna_backend`). A sampler that models the whole space needs many trials to find a
limit that one secant step reaches: auto's MobileNetV2 search ended 1% short of its speed limit with 6 points
of accuracy to spare, its coarse points 0.35/0.5/0.65 of the MACs measured 1.98x/1.67x/1.47x.
"""

from __future__ import annotations

from typing import Any

STEP = 0.1  # the fixed step with no neighbour to draw a line through, as a fraction of the knob's range
MAX_JUMP = 0.5  # the most one step moves the knob, as a fraction of its range


def _rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in record.get("constraints") or [] if r.get("limit") is not None]


def _target(row: dict[str, Any], margin: float) -> float:
    limit = float(row["limit"])
    return limit + margin * abs(limit) if row["name"].startswith("min_") else limit - margin * abs(limit)


def _slack(row: dict[str, Any]) -> float:
    """How far a constraint's value is inside its limit, relative to the limit (negative when missed)."""
    if row["value"] is None:
        return float("-inf")
    limit, value = float(row["limit"]), float(row["value"])
    inside = limit - value if row["name"].startswith("max_") else value - limit
    return inside / max(abs(limit), 1e-6)


def next_point(records: list[dict[str, Any]], *, param: str, faster: str, helps: list[str], low: float,
               high: float, integer: bool = False, margin: float = 0.1) -> tuple[dict[str, Any], int] | None:
    """The next parameter set along ``param`` and the number of the trial it starts from, or None.

    ``records``: the search's trial records (state, params, constraints rows with name/limit/value/met).
    ``faster``: ``"low"`` or ``"high"``, the end of the knob that helps the constraints named in ``helps``.
    A helped constraint met by less than ``margin / 2`` of its limit counts as short too: measured latency
    moves by a few percent between the search and the re-timing of its finalists, so a point that just
    passes is stepped past the limit by ``margin``."""
    done = [r for r in records if r.get("state") == "complete" and param in (r.get("params") or {}) and _rows(r)]

    def short(r: dict[str, Any], helped: bool) -> list[dict[str, Any]]:
        return [row for row in _rows(r) if (row["name"] in helps) == helped
                and (row["met"] is not True or (helped and _slack(row) < margin / 2))]

    if not done or any(r.get("feasible") and not short(r, True) for r in records if r.get("state") == "complete"):
        return None
    # too slow but accurate enough -> toward `faster`; else accurate-enough-missing -> toward the other end
    for helped in (True, False):
        cands = [r for r in done if short(r, helped) and not short(r, not helped)]
        if cands:
            break
    else:
        return None
    best = max(cands, key=lambda r: min(_slack(row) for row in short(r, helped)))
    row = min(short(best, helped), key=_slack)
    if row["value"] is None:
        return None
    toward_low = (faster == "low") == helped
    def others(r: dict[str, Any]) -> dict[str, Any]:  # every setting but the knob
        return {k: v for k, v in (r.get("params") or {}).items() if k != param}

    group = [r for r in done if others(r) == others(best)]
    x0, v0 = float(best["params"][param]), float(row["value"])
    span = high - low
    step = -STEP * span if toward_low else STEP * span
    neighbours = []
    for r in group:
        other = next((o for o in _rows(r) if o["name"] == row["name"] and o["value"] is not None), None)
        x = float(r["params"][param])
        if other is not None and abs(x - x0) > 1e-9 * max(span, 1.0):
            neighbours.append((abs(x - x0), x, float(other["value"])))
    if neighbours:
        _, x1, v1 = min(neighbours)
        if v1 != v0:
            dx = (_target(row, margin) - v0) * (x1 - x0) / (v1 - v0)
            if (dx < 0) == toward_low and dx != 0:  # the line points the way the knob should move
                step = dx
    step = max(-MAX_JUMP * span, min(MAX_JUMP * span, step))
    x = min(high, max(low, x0 + step))
    if integer:
        x = float(round(x))
    tried = [float(r["params"][param]) for r in records
             if param in (r.get("params") or {}) and others(r) == others(best)]
    if any(abs(x - t) <= 1e-3 * max(span, 1e-9) for t in tried):
        return None
    return {**best["params"], param: int(x) if integer else round(x, 6)}, int(best["number"])


__all__ = ["next_point"]
