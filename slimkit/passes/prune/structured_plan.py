"""Which units structured pruning removes: the lowest-scored units of each dependency group (or globally),
capped per group and rounded so kept channel counts are multiples of ``round_to``. Pure planning on the
dependency graph and the scores; nothing here changes a model."""

from __future__ import annotations

import math

from slimkit.graph import DependencyGraph

__all__ = ["plan_removal"]


def plan_removal(graph: DependencyGraph, scores: dict[int, float], ratio: float, *, scope: str = "layer",
                 round_to: int = 1, max_group_ratio: float = 0.9) -> set[int]:
    """The units to remove for ``ratio`` (lowest scores first), per group or globally."""
    if ratio <= 0:
        return set()
    removed: set[int] = set()
    caps = {g.index: int(math.floor(len(g) * max_group_ratio)) for g in graph.groups}
    if scope == "global":
        ranked = sorted((scores.get(u, 0.0), g.index, u) for g in graph.groups for u in g.units)
        budget = int(round(ratio * len(ranked)))
        taken: dict[int, list[int]] = {g.index: [] for g in graph.groups}
        for _, gi, u in ranked:
            if budget <= 0:
                break
            if len(taken[gi]) < caps[gi]:
                taken[gi].append(u)
                budget -= 1
    else:
        taken = {}
        for g in graph.groups:
            n = min(int(math.floor(ratio * len(g) + 1e-9)), caps[g.index])
            taken[g.index] = sorted(g.units, key=lambda u: scores.get(u, 0.0))[:n]
    for g in graph.groups:
        drop = taken[g.index]
        if round_to > 1 and g.kind == "channels" and g.width == 1 and drop:
            kept = len(g) - len(drop)
            kept = min(len(g), int(math.ceil(kept / round_to)) * round_to)
            drop = sorted(drop, key=lambda u: scores.get(u, 0.0))[: len(g) - kept]
        removed.update(drop)
    return removed
