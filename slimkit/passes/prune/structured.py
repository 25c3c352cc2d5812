"""Structured pruning pass: remove whole channels, filters, heads, FFN width and recurrent hidden units.

Three steps, kept apart: the dependency graph (``slimkit.graph``, analysis only), importance per unit
(``structured_importance``), and removal (``slimkit.graph.surgery``, on a checked copy). A MACs target is
met by bisection on the ratio; a latency target too, every candidate measured (``structured_latency``). Any op the graph does not understand raises GraphError before the model is
touched; ``ratio=0`` changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from slimkit.config.structured import StructuredPruneConfig
from slimkit.context import PassContext, PassRecord
from slimkit.errors import ConstraintError, ModelLoadError
from slimkit.evaluation.cost import count_macs
from slimkit.graph import DependencyGraph, apply_removal, build_dependency_graph, pruned_copy
from slimkit.passes.prune.structured_importance import unit_scores
from slimkit.passes.prune.structured_plan import plan_removal
from slimkit.registry import register_pass

log = logging.getLogger(__name__)


def _refinement_moves(graph: DependencyGraph, scores: dict[int, float], removed: set[int], extra: set[int],
                      round_to: int) -> list[set[int]]:
    """``extra`` split into chunks, weakest first: ``round_to`` units of one channel group at a time (the first
    chunk of a group brings its kept width down to a multiple of ``round_to``), single units elsewhere."""
    moves: list[tuple[float, set[int]]] = []
    for g in graph.groups:
        units = sorted((u for u in g.units if u in extra), key=lambda u: scores.get(u, 0.0))
        if not units:
            continue
        step = round_to if round_to > 1 and g.kind == "channels" and g.width == 1 else 1
        kept = len(g) - sum(1 for u in g.units if u in removed)
        first = kept % step or step
        i = 0
        while i < len(units):
            n = first if i == 0 else step
            chunk = units[i:i + n]
            moves.append((sum(scores.get(u, 0.0) for u in chunk) / len(chunk), set(chunk)))
            i += n
    moves.sort(key=lambda m: m[0])
    return [m[1] for m in moves]


def _solve_macs(model: nn.Module, graph: DependencyGraph, scores: dict[int, float], cfg: StructuredPruneConfig,
                inputs: tuple[Any, ...], target: float, base: int) -> set[int]:
    """Bisection on the ratio until MACs land within ``cfg.macs_tolerance`` of ``target`` (absolute MACs)."""
    def macs_at(r: float) -> tuple[int, set[int]]:
        removed = plan_removal(graph, scores, r, scope=cfg.scope, round_to=cfg.round_to,
                               max_group_ratio=cfg.max_group_ratio)
        if not removed:
            return count_macs(model, inputs), removed
        new, _, _ = pruned_copy(model, graph, removed)
        return count_macs(new, inputs), removed

    current, _ = macs_at(0.0)
    if current <= target * (1 + cfg.macs_tolerance):
        return set()
    lo, hi = 0.0, cfg.max_group_ratio
    m_hi, rem_hi = macs_at(hi)
    if m_hi > target * (1 + cfg.macs_tolerance):
        raise ConstraintError(
            f"target_macs={cfg.target_macs} cannot be reached: removing {cfg.max_group_ratio:.0%} of every "
            f"prunable group still leaves {m_hi / base:.1%} of the original MACs. Nothing was changed.",
            hint="Lower protection (skip=[...]), raise max_group_ratio, or ask for a milder target.")
    rem_lo: set[int] = set()
    best = (abs(m_hi / target - 1), rem_hi, m_hi)
    for _ in range(16):
        mid = (lo + hi) / 2
        m, removed = macs_at(mid)
        if abs(m / target - 1) < best[0]:
            best = (abs(m / target - 1), removed, m)
        if best[0] <= cfg.macs_tolerance / 2:
            break
        if m > target:
            lo, rem_lo = mid, removed
        else:
            hi, m_hi, rem_hi = mid, m, removed
    if best[0] > cfg.macs_tolerance / 2:
        # units come in whole groups per ratio step; refine by adding the extra units chunk by chunk, a chunk
        # being round_to units of one channel group (so kept widths stay multiples of round_to)
        moves = _refinement_moves(graph, scores, rem_lo, rem_hi - rem_lo, cfg.round_to)
        a, b = 0, len(moves)
        while a < b:
            k = (a + b) // 2
            removed = rem_lo.union(*moves[:k])
            m = count_macs(pruned_copy(model, graph, removed)[0], inputs)
            if abs(m / target - 1) < best[0]:
                best = (abs(m / target - 1), removed, m)
            if m > target:
                a = k + 1
            else:
                b = k
    log.info("structured: %d units removed, MACs %.1f%% of original (target %.1f%%)", len(best[1]),
             100 * best[2] / base, 100 * target / base)
    return best[1]


def _finetune(model: nn.Module, cfg: StructuredPruneConfig, ctx: PassContext) -> None:
    if cfg.finetune is None:  # with finetune the registry has checked that a train loader was given
        return
    from slimkit.passes.finetune.loop import train_model

    train_model(model, ctx.train_loader, cfg.finetune, val_loader=ctx.val_loader)


def rebuild_structure(model: nn.Module, cfg: Any, manifest: dict[str, Any]) -> nn.Module:
    """Redo the pruned structure of a checkpoint without data, so the runner can load it on resume.

    Conv/Linear/Norm/Embedding widths are restored by the exporters from the manifest's ``module_shapes``;
    this hook restores what those do not cover (attention heads, recurrent hidden size, parameters read in
    forward), from ``spec["structure"]`` when the checkpoint carries one (:func:`slimkit.graph.structure.
    structure_of`), else from the saved tensor shapes. It reads the final shapes, so applying it once per
    structured stage is harmless."""
    from slimkit.graph.structure import apply_structure, structure_from_shapes

    if not isinstance(manifest, dict):
        raise ModelLoadError("structured prune: the checkpoint manifest is not a mapping; cannot rebuild.")
    spec = manifest.get("spec")
    structure = spec.get("structure") if isinstance(spec, dict) else None
    if not isinstance(structure, dict):
        tensors = manifest.get("tensors")
        if not isinstance(tensors, dict):
            raise ModelLoadError("structured prune: the checkpoint manifest lists no tensors; cannot rebuild the "
                                 "pruned structure.", hint="Save the model with slimkit.exporters.save_model.")
        shapes = {k: list(v["shape"]) for k, v in tensors.items() if isinstance(v, dict) and "shape" in v}
        structure = structure_from_shapes(model, shapes)
    return apply_structure(model, structure)


@dataclass
class StructuredRecord(PassRecord):
    """How a structured pruning stage saw the model: ``trace`` (``fx``, ``fx+opaque``, ``hf-bert``, ``export``),
    ``opaque`` (submodules torch.fx could not trace, kept unpruned, with why) and, for a latency target, each
    step's measured solution (``latency``)."""

    key: ClassVar[str] = "structured"
    trace: str | None = None
    opaque: dict[str, Any] = field(default_factory=dict)
    latency: list[dict[str, Any]] = field(default_factory=list)

    def notes(self, stage: int) -> list[str]:
        if not self.opaque:
            return []
        return [f"Structured pruning (stage {stage}, traced with {self.trace}) kept {len(self.opaque)} "
                f"submodule(s) it could not trace unpruned: {', '.join(sorted(self.opaque))}."]


@register_pass(StructuredPruneConfig, needs=("example_inputs",), rebuild=rebuild_structure)
def structured_prune(model: nn.Module, cfg: StructuredPruneConfig, ctx: PassContext) -> nn.Module:
    """Prune ``model`` in place to ``cfg.ratio``, ``cfg.target_macs`` or ``cfg.target_latency``.
    Its record, a :class:`StructuredRecord` (``ctx.extras["structured"]``), says how the model was traced.
    A ``finetune`` section needs a train loader (checked by the registry before anything changes)."""
    inputs = tuple(ctx.example_inputs or ())
    info = ctx.add(StructuredRecord())
    if cfg.ratio == 0:
        graph = build_dependency_graph(model, inputs, skip=cfg.skip, filter_fn=cfg.filter_fn, unreached=cfg.unreached)
        info.trace, info.opaque = graph.tracer, dict(graph.opaque)
        return model
    base = count_macs(model, inputs) if cfg.target_macs is not None else 0
    done = 0.0
    lat_done = 1.0  # latency of the current model over the original's (product of the measured steps)
    for step in range(1, cfg.steps + 1):
        frac = step / cfg.steps
        graph = build_dependency_graph(model, inputs, skip=cfg.skip, filter_fn=cfg.filter_fn, unreached=cfg.unreached)
        info.trace, info.opaque = graph.tracer, dict(graph.opaque)
        scores = unit_scores(model, graph, cfg.importance, calibration=ctx.calibration, example_inputs=inputs,
                             batches=cfg.calibration_batches, aggregate=cfg.aggregate)
        if cfg.target_macs is not None:
            target = base * (1 - (1 - cfg.target_macs) * frac)
            removed = _solve_macs(model, graph, scores, cfg, inputs, target, base)
        elif cfg.target_latency is not None:
            from slimkit.passes.prune.structured_latency import solve_latency

            want = 1 - (1 - cfg.target_latency) * frac
            sol = solve_latency(model, graph, scores, cfg, inputs, min(1.0, want / lat_done))
            lat_done *= sol.relative
            info.latency.append(sol.as_dict())
            removed = sol.removed
        else:
            assert cfg.ratio is not None
            want = cfg.ratio * frac
            step_ratio = 1 - (1 - want) / (1 - done) if done < 1 else 0.0
            removed = plan_removal(graph, scores, step_ratio, scope=cfg.scope, round_to=cfg.round_to,
                                   max_group_ratio=cfg.max_group_ratio)
            done = want
        apply_removal(model, graph, removed, inputs)
        _finetune(model, cfg, ctx)
    return model
