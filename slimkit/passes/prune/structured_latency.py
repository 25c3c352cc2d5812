"""Latency target for structured pruning: bisection on the ratio, every candidate *measured*.

Latency is never inferred from MACs. Each candidate (a pruned copy) is timed with
:func:`slimkit.evaluation.latency.torch_latency` (warm-up, median of repeats, threads pinned, batch from
``cfg.latency``) back to back with the model it is pruned from, in the order model, candidate, candidate,
model; the candidate's latency relative to the model is the ratio of the two means of medians. Timing the
pair together cancels most of the drift of a shared machine (another process starting, frequency changes).
The result holds on the machine the pass runs on; other hardware can rank the same widths differently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimkit.config.structured import StructuredPruneConfig
from slimkit.errors import ConstraintError
from slimkit.evaluation.cost import count_macs
from slimkit.graph import DependencyGraph, pruned_copy
from slimkit.passes.prune.structured_plan import plan_removal

log = logging.getLogger(__name__)

__all__ = ["LatencySolution", "paired_latency", "solve_latency"]


@dataclass
class LatencySolution:
    """What the solver chose and what it measured. ``relative`` is the chosen candidate's latency over the
    model's, re-measured (paired) after the search, and ``met`` compares it with ``target * (1 + tolerance)``;
    ``history`` lists every searched candidate as ``(ratio, relative in the search, macs)``."""

    removed: set[int]
    ratio: float
    relative: float
    target: float
    met: bool
    base_ms: float
    pruned_ms: float
    macs: int
    base_macs: int
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "relative": self.relative, "target": self.target, "met": self.met,
                "base_ms": self.base_ms, "pruned_ms": self.pruned_ms, "macs": self.macs,
                "base_macs": self.base_macs, "history": [list(h) for h in self.history]}


def paired_latency(model: nn.Module, candidate: nn.Module, inputs: tuple[Any, ...],
                   cfg: StructuredPruneConfig) -> tuple[float, float]:
    """Median latency (ms) of ``model`` and ``candidate`` with ``cfg.latency`` (threads pinned to torch's current
    count when not set), measured model, candidate, candidate, model (evaluation.latency.paired_latency)."""
    from slimkit.evaluation.latency import paired_latency, torch_latency

    lat = cfg.latency if cfg.latency.threads is not None else \
        cfg.latency.model_copy(update={"threads": torch.get_num_threads()})
    a, b = paired_latency(lambda: torch_latency(model, inputs, lat), lambda: torch_latency(candidate, inputs, lat),
                          rounds=2)  # A B B A: the mean of each side's two medians
    return a["median"], b["median"]


def solve_latency(model: nn.Module, graph: DependencyGraph, scores: dict[int, float], cfg: StructuredPruneConfig,
                  inputs: tuple[Any, ...], target: float, *, max_iter: int = 8) -> LatencySolution:
    """Units to remove so that the pruned model runs in ``target`` (0 < target <= 1) of ``model``'s measured
    latency, within ``cfg.latency_tolerance``. Bisection on the ratio; the chosen candidate is the least pruned
    one measured at or under ``target * (1 + tolerance)``, then re-measured for the reported value (``met`` is
    False, with a warning, when that re-measurement lands above). Raises :class:`ConstraintError` (model unchanged)
    when even ``max_group_ratio`` does not get there."""
    tol = cfg.latency_tolerance
    base_macs = count_macs(model, inputs)
    history: list[tuple[float, float, int]] = []
    if target >= 1.0:
        return LatencySolution(set(), 0.0, 1.0, target, True, 0.0, 0.0, base_macs, base_macs, history)

    def measure(r: float) -> tuple[float, set[int], float, float, int]:
        removed = plan_removal(graph, scores, r, scope=cfg.scope, round_to=cfg.round_to,
                               max_group_ratio=cfg.max_group_ratio)
        if not removed:
            return 1.0, removed, 0.0, 0.0, base_macs
        cand = pruned_copy(model, graph, removed)[0]
        base_ms, cand_ms = paired_latency(model, cand, inputs, cfg)
        rel = cand_ms / base_ms
        macs = count_macs(cand, inputs)
        history.append((r, rel, macs))
        log.info("structured latency: ratio %.3f -> %.1f%% of the latency (%.3f / %.3f ms), %.1f%% of the MACs",
                 r, 100 * rel, cand_ms, base_ms, 100 * macs / base_macs)
        return rel, removed, base_ms, cand_ms, macs

    lo, hi = 0.0, cfg.max_group_ratio
    rel, removed, b_ms, c_ms, macs = measure(hi)
    if rel > target * (1 + tol):
        raise ConstraintError(
            f"target_latency={target:.3g} cannot be reached: removing {cfg.max_group_ratio:.0%} of every prunable "
            f"group still measures {rel:.1%} of the latency ({c_ms:.3f} vs {b_ms:.3f} ms, batch "
            f"{cfg.latency.batch}) on this machine. Nothing was changed.",
            hint="Per-call overhead and unprunable layers set a floor: ask for a milder target, a larger "
                 "latency batch, fewer skipped layers, or a higher max_group_ratio.")
    best = (hi, rel, removed, b_ms, c_ms, macs)
    for _ in range(max_iter):
        if abs(best[1] / target - 1) <= tol:
            break
        mid = (lo + hi) / 2
        rel, removed, b_ms, c_ms, macs = measure(mid)
        if rel <= target * (1 + tol):
            hi = mid
            if mid < best[0]:
                best = (mid, rel, removed, b_ms, c_ms, macs)
        else:
            lo = mid
    r, rel, removed, b_ms, c_ms, macs = best
    # the search kept the best single measurement of many; measure the choice once more and report that
    b_ms, c_ms = paired_latency(model, pruned_copy(model, graph, removed)[0], inputs, cfg)
    confirmed = c_ms / b_ms
    met = confirmed <= target * (1 + tol)
    log.info("structured latency: chose ratio %.3f, %.1f%% of the latency (re-measured; %.1f%% in the search; "
             "target %.1f%% +- %.0f%%), %.1f%% of the MACs", r, 100 * confirmed, 100 * rel, 100 * target,
             100 * tol, 100 * macs / base_macs)
    if not met:
        log.warning("structured latency: the chosen model re-measures at %.1f%% of the latency, above the target "
                    "%.1f%% + %.0f%% (timing noise on this machine, or a floor of per-call overhead)",
                    100 * confirmed, 100 * target, 100 * tol)
    return LatencySolution(removed, r, confirmed, target, met, b_ms, c_ms, macs, base_macs, history)
