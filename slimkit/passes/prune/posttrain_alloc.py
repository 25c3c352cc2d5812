"""How many units each post-training pruning group gives up for a MACs target: a Lagrangian choice over the
groups' measured cost curves (:func:`allocate_units`), a greedy fill of the gaps the convex hull leaves
(:func:`fill_units`), both corrected against MACs counted on a pruned copy (:func:`solve_allocation`).
Used by :func:`slimkit.passes.prune.posttrain.posttrain_prune`."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from slimkit.config.posttrain import PostTrainPruneConfig
from slimkit.errors import ConstraintError
from slimkit.graph import pruned_copy
from slimkit.passes.prune.reconstruct import Target
from slimkit.passes.prune.structured import count_macs


def allocate_units(targets: list[Target], curves: dict[int, dict[int, float]], need: float) -> dict[int, int]:
    """Units to remove per group so that ``sum k * macs_per_unit >= need`` at the least total cost (Lagrangian
    bisection over the cost curves)."""
    def pick(lam: float) -> dict[int, int]:
        return {t.group.index: min(curves[t.group.index], key=lambda k: curves[t.group.index][k]
                                   - lam * k * t.macs_per_unit) for t in targets}

    def saved(sol: dict[int, int]) -> float:
        return sum(sol[t.group.index] * t.macs_per_unit for t in targets)

    lo, hi = 0.0, 1.0
    while saved(pick(hi)) < need and hi < 1e30:
        hi *= 4
    for _ in range(60):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 1e6
        if saved(pick(mid)) >= need:
            hi = mid
        else:
            lo = mid
    return pick(hi)


def fill_units(targets: list[Target], curves: dict[int, dict[int, float]], ks: dict[int, int],
               more: float) -> dict[int, int]:
    """``ks`` with more units removed, one allowed step at a time, until the estimated saving reaches ``more``
    MACs: each time in the group with the least cost increase per MAC saved, and for the last step the
    cheapest one that is enough (so that a large step does not overshoot when a small one would do)."""
    by = {t.group.index: t for t in targets}
    saved = 0.0
    while saved < more:
        steps = []
        for g, t in by.items():
            nxt = [k for k in sorted(curves[g]) if k > ks[g]]
            if nxt and t.macs_per_unit > 0:
                k = nxt[0]
                cost, gain = curves[g][k] - curves[g][ks[g]], (k - ks[g]) * t.macs_per_unit
                steps.append((cost / gain, cost, gain, g, k))
        if not steps:
            break
        enough = [st for st in steps if saved + st[2] >= more]
        _, _, _, g, k = min(enough, key=lambda st: st[1]) if enough else min(steps)
        saved += (k - ks[g]) * by[g].macs_per_unit
        ks[g] = k
    return ks


def solve_allocation(model: nn.Module, graph: Any, targets: list[Target], curves: dict[int, dict[int, float]],
                     orders: dict[int, list[int]], cfg: PostTrainPruneConfig, inputs: tuple[Any, ...],
                     base: int) -> dict[int, int]:
    """Allocation for ``target_macs``, corrected against MACs measured on the sliced copy."""
    assert cfg.target_macs is not None

    def counted(ks: dict[int, int]) -> int:  # MACs of the model with each group's first ks units removed
        removed = {u for t in targets for u in orders[t.group.index][: ks[t.group.index]]}
        return count_macs(pruned_copy(model, graph, removed)[0], inputs)

    target = cfg.target_macs * base
    need = base - target
    most = sum(max(curves[t.group.index]) * t.macs_per_unit for t in targets)
    if most < need * (1 - cfg.macs_tolerance):
        raise ConstraintError(
            f"target_macs={cfg.target_macs} cannot be reached by pruning the reconstructable groups (at most "
            f"{1 - most / base:.1%} of the MACs would remain). Nothing was changed.",
            hint="Ask for a milder target, raise max_group_ratio, or use method: structured.")
    best: tuple[float, dict[int, int], int] | None = None
    for _ in range(6):
        ks = allocate_units(targets, curves, need)
        macs = counted(ks)
        gap = abs(macs / target - 1)
        if best is None or gap < best[0]:
            best = (gap, ks, macs)
        if gap <= cfg.macs_tolerance / 2:
            break
        need += macs - target
    assert best is not None
    for _ in range(6):  # the Lagrangian picks only points on each curve's convex hull: fill the gap greedily
        if best[2] <= target * (1 + cfg.macs_tolerance):
            break
        ks = fill_units(targets, curves, dict(best[1]), best[2] - target)
        macs = counted(ks)
        if ks == best[1] or macs >= best[2]:
            break
        best = (abs(macs / target - 1), ks, macs)
    if best[2] > target * (1 + cfg.macs_tolerance):
        raise ConstraintError(
            f"target_macs={cfg.target_macs} cannot be reached by pruning the reconstructable groups: the closest "
            f"allocation keeps {best[2] / base:.1%} of the MACs. Nothing was changed.",
            hint="Ask for a milder target, raise max_group_ratio, or use method: structured.")
    return best[1]


__all__ = ["allocate_units", "fill_units", "solve_allocation"]
