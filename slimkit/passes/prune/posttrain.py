"""Post-training structured pruning: choose channels/heads/FFN units by their effect on the output, allocate
per-group amounts from measured costs under a MACs target, remove them, and refit each consumer by least
squares on unlabelled calibration data (see :class:`slimkit.config.posttrain.PostTrainPruneConfig`).

Steps: dependency graph (``slimkit.graph``) -> reconstructable groups and their consumers
(``reconstruct.find_targets``) -> streamed consumer input statistics -> per-group order and cost curve
(greedy reconstruction + measured fidelity, or Fisher mask scores) -> allocation (Lagrangian over the cost
curves, MACs measured on the sliced copy) -> refit + removal -> ``refit_passes`` paired refits.
``ctx.extras["posttrain"]`` records every group: what was removed, the consumer's relative output error after
each refit, the measured cost, and why the other groups were kept.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.analysis.calibration import InputStats, execution_order, token_mask
from slimkit.analysis.paired import Stream, paired_stats
from slimkit.config.posttrain import PostTrainPruneConfig
from slimkit.context import PassContext
from slimkit.data.batch import call_model, positional_inputs, split_batch
from slimkit.errors import ConfigError, ConstraintError
from slimkit.evaluation.metrics import primary_output
from slimkit.graph import apply_removal, build_dependency_graph, pruned_copy
from slimkit.passes.blockfit import refit_blocks
from slimkit.passes.prune.posttrain_alloc import solve_allocation
from slimkit.passes.prune.reconstruct import (
    Target,
    consumer_stats,
    find_intercepts,
    find_streams,
    find_targets,
    greedy_order,
    install,
    joint_moments,
    moments,
    refit_no_worse,
    stream_factor,
    weight_aug,
)
from slimkit.passes.prune.rescale import residual_parent, tune_scales
from slimkit.passes.prune.structured import count_macs, rebuild_structure
from slimkit.registry import register_pass

log = logging.getLogger(__name__)


def fidelity_loss(out: torch.Tensor, ref: torch.Tensor, kind: str, mask: torch.Tensor | None = None) -> float:
    """``kl``: mean KL(softmax(ref) || softmax(out)) over rows; ``mse``: sum of squared differences over sum of
    squares of ``ref`` (token positions outside ``mask`` excluded)."""
    out, ref = out.detach().double(), ref.detach().double()
    if kind == "kl":
        return float(F.kl_div(out.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="batchmean"))
    if mask is not None and out.dim() == 3 and tuple(mask.shape) == tuple(out.shape[:2]):
        keep = mask.bool()
        out, ref = out[keep], ref[keep]
    return float((out - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-30))


def _allowed(t: Target, cfg: PostTrainPruneConfig) -> list[int]:
    """Numbers of units that may be removed from ``t``'s group (kept widths multiples of ``round_to``)."""
    n = len(t.group)
    most = int(math.floor(n * cfg.max_group_ratio))
    if cfg.round_to > 1 and t.group.kind == "channels" and t.group.width == 1:
        r = cfg.round_to
        return [0] + [n - kept for kept in range((n // r) * r, 0, -r) if 0 < n - kept <= most]
    return list(range(most + 1))


def _keep_cols(t: Target, width: int, removed: list[int]) -> torch.Tensor:
    drop = torch.zeros(width, dtype=torch.bool)
    for u in removed:
        drop[t.cols[u]] = True
    return (~drop).nonzero().flatten()


def _local_refit(t: Target, w: torch.Tensor, h: torch.Tensor, removed: list[int], ridge: float
                 ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Refit of ``t``'s consumer on its kept columns from the original statistics: ``(v, kept columns,
    relative output error)``; ``v`` is ``[out, kept + 1]`` with the intercept last (zero without one)."""
    d = h.shape[0] - 1
    keep = _keep_cols(t, d, removed)
    z = torch.cat([keep, torch.tensor([d])])
    v, err = refit_no_worse(w, w[:, z], h, h[:, z], h[z][:, z], ridge, t.intercept is not None)
    return v, keep, err


def _loss(model: nn.Module, batches: list[Any], refs: list[torch.Tensor], kind: str) -> float:
    with torch.no_grad():
        return sum(fidelity_loss(primary_output(call_model(model, b)), r, kind, token_mask(b))
                   for b, r in zip(batches, refs, strict=True)) / len(batches)


def _measured_curve(model: nn.Module, t: Target, w: torch.Tensor, h: torch.Tensor, order: list[int],
                    local: list[float], allowed: list[int], cfg: PostTrainPruneConfig, batches: list[Any],
                    refs: list[torch.Tensor]) -> dict[int, float]:
    """Cost of removing ``k`` units of ``t``'s group, for every allowed ``k``: the consumer's relative output
    error after refit (``local[k - 1]``, exact from the statistics) times how much of it reaches the model's
    output, *measured*: the fidelity loss of the whole model with the group pruned and refit, over the local
    error, at ``sensitivity_points`` amounts (interpolated between them, held beyond)."""
    mod = model.get_submodule(t.consumer)
    saved = {k: v.detach().clone() for k, v in mod.state_dict().items()}
    bn_mean = model.get_submodule(t.intercept).running_mean.clone() if t.intercept not in (None, "bias") else None
    top = allowed[-1]
    points = sorted({min(allowed, key=lambda a: abs(a - top * (i + 1) / (cfg.sensitivity_points + 1)))
                     for i in range(cfg.sensitivity_points)} - {0})
    gain: dict[int, float] = {}
    try:
        for k in points:
            v, keep, _ = _local_refit(t, w, h, order[:k], cfg.ridge)
            install(model, t, v, keep)
            gain[k] = _loss(model, batches, refs, cfg.loss) / max(local[k - 1], 1e-12)
    finally:
        mod.load_state_dict(saved)
        if bn_mean is not None:
            model.get_submodule(t.intercept).running_mean.copy_(bn_mean)
    xs = sorted(gain)
    curve = {}
    for k in allowed:
        if k == 0:
            curve[k] = 0.0
            continue
        j = next((i for i, x in enumerate(xs) if x >= k), len(xs) - 1)
        if xs[j] <= k or j == 0:
            g = gain[xs[j]]
        else:
            a, b = xs[j - 1], xs[j]
            g = gain[a] + (gain[b] - gain[a]) * (k - a) / (b - a)
        curve[k] = g * local[k - 1]
    return curve


def fisher_scores(model: nn.Module, targets: list[Target], batches: list[Any], kind: str,
                  seed: int = 0) -> dict[int, dict[int, float]]:
    """Per target, per unit: ``1/2 sum_samples (d loss / d mask_u)^2`` with targets sampled from the model's
    own output distribution (categorical for ``kl``, unit Gaussian for ``mse``): the diagonal of the Fisher
    information of a mask on each unit (Kwon et al. 2022), which predicts the fidelity loss of removing it."""
    gen = torch.Generator().manual_seed(seed)
    scores = {t.group.index: torch.zeros(len(t.cols), dtype=torch.float64) for t in targets}
    grads: dict[int, torch.Tensor] = {}
    handles = []
    for t in targets:
        mod = model.get_submodule(t.consumer)
        units = list(t.cols)
        width = mod.weight.shape[1]
        where = torch.full((width,), len(units), dtype=torch.long)
        for i, u in enumerate(units):
            where[t.cols[u][:: t.block] // t.block] = i

        def hook(m: nn.Module, args: Any, gi: int = t.group.index, where: torch.Tensor = where,
                 n: int = len(units)) -> Any:
            x = args[0]
            mask = torch.ones(x.shape[0], n, dtype=x.dtype, device=x.device, requires_grad=True)
            grads[gi] = mask
            full = torch.cat([mask, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], 1)[:, where]
            shape = (x.shape[0], -1, 1, 1) if x.dim() == 4 else (x.shape[0],) + (1,) * (x.dim() - 2) + (-1,)
            return (x * full.reshape(shape),) + tuple(args[1:])
        handles.append(mod.register_forward_pre_hook(hook))
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        for b in batches:
            with torch.enable_grad():
                out = primary_output(call_model(model, b)).float()
                if kind == "kl":
                    sample = torch.multinomial(out.detach().softmax(-1).reshape(-1, out.shape[-1]), 1,
                                               generator=gen).reshape(out.shape[:-1])
                    loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), sample.reshape(-1), reduction="sum")
                else:
                    v = torch.randn(out.shape, generator=gen)
                    mask = token_mask(b)
                    if mask is not None and out.dim() == 3:
                        v = v * mask[..., None].to(v)
                    loss = (v * out).sum()
                live = [grads[t.group.index] for t in targets if t.group.index in grads]
                got = torch.autograd.grad(loss, live, allow_unused=True)
            for t, g in zip([t for t in targets if t.group.index in grads], got, strict=True):
                if g is not None:
                    scores[t.group.index] += 0.5 * g.double().pow(2).sum(0)
            grads.clear()
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, flag in training.items():
            m.training = flag
    return {t.group.index: {u: float(s) for u, s in zip(t.cols, scores[t.group.index].tolist(), strict=True)}
            for t in targets}


def _check_rows(targets: list[Target], stats: dict[str, InputStats], cfg: PostTrainPruneConfig,
                info: dict[str, Any], drop: bool) -> list[Target]:
    """Whether each consumer saw enough calibration rows for its refit. With ``drop`` (the weights refit), the
    targets whose consumer saw fewer than ``cfg.min_rows_per_input`` rows per input are left out and join
    ``info["kept_groups"]`` (with why): a refit from fewer rows than unknowns reproduces the calibration rows
    exactly and says nothing about other inputs, and its error curve looks free, so the allocation would cut
    there first (MobileNetV2's classifier, one row per image after global pooling, 1,280 inputs: at 0.9 of the
    MACs it lost 560 of its inputs and the model's top-1 agreement fell to 0.775 on held-out crops, 0.872 with
    it kept whole; 512 crops, docs/structured-pruning.md). The remaining targets with fewer than 4 rows per
    input are warned about and listed in ``info["thin_statistics"]``."""
    out, short = [], []
    for t in targets:
        st = stats[t.consumer]
        if not drop or st.count >= cfg.min_rows_per_input * st.dim:
            out.append(t)
            continue
        short.append(f"{t.consumer}: {st.count} rows, {st.dim} inputs")
        info["kept_groups"].append({"group": t.group.index, "producers": t.group.producers, "units": len(t.group),
                     "consumer": t.consumer, "rows": st.count, "inputs": st.dim,
                     "kept": f"its consumer '{t.consumer}' saw {st.count} calibration rows for {st.dim} inputs "
                             f"(fewer than min_rows_per_input={cfg.min_rows_per_input:g} per input): its refit "
                             f"would be underdetermined"})
        log.warning("posttrain: %s kept whole: %d calibration rows for %d inputs; give more calibration data "
                    "(or min_rows_per_input=0 to prune it anyway)", ", ".join(t.group.producers), st.count, st.dim)
    if not out:
        raise ConstraintError(
            f"posttrain pruning has too little calibration data: every reconstructable group's consumer saw "
            f"fewer than {cfg.min_rows_per_input:g} rows per input ({'; '.join(short)}); nothing was changed.",
            hint="Give more calibration batches, or set min_rows_per_input lower (0 prunes them anyway).")
    thin = [f"{t.consumer} ({stats[t.consumer].count} rows, {stats[t.consumer].dim} inputs)" for t in out
            if stats[t.consumer].count < 4 * stats[t.consumer].dim]
    if thin:
        log.warning("posttrain: few calibration rows for the refit of %s; give more calibration data",
                    ", ".join(thin))
    info["thin_statistics"] = thin
    return out


def _example(model: nn.Module, ctx: PassContext, calibration: Iterable[Any]) -> tuple[Any, ...]:
    if ctx.example_inputs is not None:
        return tuple(ctx.example_inputs)
    first = split_batch(next(iter(calibration)))[0]
    if isinstance(first, torch.Tensor):
        return (first,)
    if isinstance(first, (tuple, list)):
        return tuple(first)
    args = positional_inputs(model, first) if isinstance(first, dict) else None
    if args is not None:  # {input_ids, attention_mask} batches of a BERT or a SentenceEncoder
        return args
    raise ConfigError(f"posttrain pruning needs example_inputs: the calibration batches are keyword inputs "
                      f"({sorted(first) if isinstance(first, dict) else type(first).__name__}) that are not the "
                      f"first positional parameters of {type(model).__name__}.forward.",
                      hint="Pass example_inputs=(input_ids, attention_mask) in the order forward takes them.")


class _Skip:
    """``calibration`` without its first ``n`` batches, iterable again and again like the loader itself."""

    def __init__(self, calibration: Iterable[Any], n: int) -> None:
        self.calibration, self.n = calibration, n

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.calibration), self.n, None)


def _has_more(calibration: Iterable[Any], n: int) -> bool:
    return next(itertools.islice(iter(calibration), n, None), None) is not None


def _batches(calibration: Iterable[Any], n: int) -> list[Any]:
    out = []
    for b in calibration:
        if len(out) >= n:
            break
        out.append(split_batch(b)[0])
    return out


@register_pass(PostTrainPruneConfig, needs=("calibration",), rebuild=rebuild_structure)
def posttrain_prune(model: nn.Module, cfg: PostTrainPruneConfig, ctx: PassContext) -> nn.Module:
    """Prune ``model`` in place with unlabelled ``ctx.calibration`` only (see the module docstring)."""
    ctx.require("calibration", pass_name="prune (posttrain)")
    t0 = time.time()
    calib = ctx.calibration
    assert calib is not None
    inputs = _example(model, ctx, calib)
    original = copy.deepcopy(model) if cfg.block_refit is not None else None
    graph = build_dependency_graph(model, inputs, skip=cfg.skip, filter_fn=cfg.filter_fn)
    targets, skipped = find_targets(model, graph)
    info: dict[str, Any] = {"trace": graph.tracer, "kept_groups": skipped, "groups": []}
    ctx.extras["posttrain"] = info
    if not targets:
        raise ConstraintError("posttrain pruning found no reconstructable group (one weighted consumer each); "
                              "nothing was changed.", hint="Use method: structured for this model.")
    # which Linear consumers feed a normalized residual add (one forward each): only a scales refit uses it
    parents = {t.consumer: residual_parent(model, t.consumer, inputs) for t in targets
               if cfg.refit != "weights" and isinstance(model.get_submodule(t.consumer), nn.Linear)}
    scales = cfg.refit == "scales" or (cfg.refit == "auto" and len(parents) == len(targets)
                                       and all(parents.values()))
    info["refit"] = "scales" if scales else "weights"
    find_intercepts(model, targets, inputs)
    if cfg.stream_target:
        find_streams(model, targets, inputs)
    base = count_macs(model, inputs)
    for t in targets:
        half = t.group.units[: max(1, len(t.group) // 2)]
        t.macs_per_unit = max(base - count_macs(pruned_copy(model, graph, set(half))[0], inputs), 0) / len(half)
    # the sensitivity batches are not in the statistics: a refit scored on the rows it was fit to looks
    # better than it is (a classifier after global pooling sees one row per image)
    sens = _batches(calib, cfg.sensitivity_batches)
    fit = _Skip(calib, len(sens)) if _has_more(calib, len(sens)) else calib
    stats = consumer_stats(model, targets, fit, cfg.calibration_batches)
    targets = _check_rows(targets, stats, cfg, info, drop=not scales)
    mats = {t.group.index: (weight_aug(model, t), moments(stats[t.consumer])) for t in targets}
    allowed = {t.group.index: _allowed(t, cfg) for t in targets}
    orders: dict[int, list[int]] = {}
    curves: dict[int, dict[int, float]] = {}
    if cfg.criterion == "fisher":
        fisher = fisher_scores(model, targets, _batches(calib, cfg.calibration_batches or 10**9), cfg.loss, ctx.seed)
        for t in targets:
            f = fisher[t.group.index]
            orders[t.group.index] = sorted(f, key=f.get)
            cum = [0.0]
            for u in orders[t.group.index]:
                cum.append(cum[-1] + f[u])
            curves[t.group.index] = {k: cum[k] for k in allowed[t.group.index]}
    else:
        with torch.no_grad():
            refs = [primary_output(call_model(model, b)).detach() for b in sens]
        for t in targets:
            w, h = mats[t.group.index]
            ws = w if t.row_scale is None else w * t.row_scale[:, None]  # choose on the post-BN output
            orders[t.group.index], local = greedy_order(ws, h, t.cols, cfg.ridge, allowed[t.group.index][-1])
            curves[t.group.index] = _measured_curve(model, t, w, h, orders[t.group.index], local,
                                                    allowed[t.group.index], cfg, sens, refs)
    log.info("posttrain: %d groups scored (%s) in %.1f s", len(targets), cfg.criterion, time.time() - t0)
    if cfg.ratio is not None:
        ks = {t.group.index: min(allowed[t.group.index], key=lambda a: abs(a - cfg.ratio * len(t.group)))
              for t in targets}
    else:
        ks = solve_allocation(model, graph, targets, curves, orders, cfg, inputs, base)
    removed: set[int] = set()
    for t in targets:
        gi = t.group.index
        drop = orders[gi][: ks[gi]]
        w, h = mats[gi]
        v, keep, err = _local_refit(t, w, h, drop, cfg.ridge)
        if drop and not scales:
            install(model, t, v, keep)
        removed.update(drop)
        chans = sorted(int(c) for u in drop for c in (t.cols[u][:: t.block] // t.block).tolist())
        info["groups"].append({
            "group": gi, "kind": t.group.kind, "producers": t.group.producers, "consumer": t.consumer,
            "units": len(t.group), "removed": len(drop), "removed_consumer_channels": chans,
            "intercept": t.intercept, "stream": t.stream, "macs_per_unit": t.macs_per_unit, "cost": curves[gi].get(len(drop)),
            "relative_error": [] if scales else [round(err, 6)]})
    reference = copy.deepcopy(model)  # refit targets: the original outputs (restored below)
    keep = graph.keep_indices(removed)
    rows = {}  # a consumer that also produces a pruned group keeps only some output rows
    for t in targets:
        mi = next((i for i, m in enumerate(graph.members)
                   if m.module == t.consumer and m.role in ("conv.out", "linear.out")), None)
        rows[t.group.index] = keep[mi] if mi is not None else None
    apply_removal(model, graph, removed, inputs)
    if scales:
        _tune_scales(model, reference, targets, cfg, calib, info, inputs, parents, removed)
    else:
        _refit_passes(model, reference, targets, cfg, calib, info, mats, rows, inputs)
    if original is not None and cfg.block_refit is not None:
        info["block_refit"] = refit_blocks(model, original, calib, cfg.block_refit, seed=ctx.seed)
    info.update(macs_before=base, macs_after=count_macs(model, inputs), seconds=round(time.time() - t0, 2),
                criterion=cfg.criterion)
    ctx.extras["layers"] = layer_rows(info)
    log.info("posttrain: MACs %.1f%% of the original, %.1f s", 100 * info["macs_after"] / base, info["seconds"])
    return model


def layer_rows(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-layer rows the run report renders: one per consumer (what its group lost, its relative output
    error after the last refit) and one per group kept whole (why)."""
    rows = []
    for r in info["groups"]:
        what = "heads" if r["kind"] == "heads" else "channels"
        rows.append({"layer": r["consumer"], "rel_error": (r["relative_error"] or [None])[-1], "removed_units": r["removed"],
                     "units": r["units"],
                     "change": f"{r['removed']}/{r['units']} {what} of {', '.join(r['producers'])} removed; refit"})
    for k in info["kept_groups"]:
        rows.append({"layer": ", ".join(k["producers"]), "skipped": k["kept"]})
    return rows


def _refit_passes(model: nn.Module, reference: nn.Module, targets: list[Target], cfg: PostTrainPruneConfig,
                  calib: Iterable[Any], info: dict[str, Any], mats: dict[int, tuple[torch.Tensor, torch.Tensor]],
                  rows: dict[int, torch.Tensor | None], inputs: tuple[Any, ...]) -> None:
    """Refit every consumer on the pruned model's own inputs against the original outputs. ``reference``
    carries the first refit in its consumers; the original weights are put back into it first.
    ``refit_order="sequential"``: one consumer at a time in execution order, each on inputs that already carry
    the refits before it (one paired forward per consumer, stopped at it); ``"joint"``: every consumer from one
    paired forward per pass."""
    for t in targets:
        install(reference, t, mats[t.group.index][0])
    records = {r["group"]: r for r in info["groups"]}
    by_name = {t.consumer: t for t in targets}
    names = list(by_name)
    if cfg.refit_order == "sequential":
        chunks = [[n] for n in execution_order(model, names, inputs)]
    else:
        chunks = [names]
    for _ in range(cfg.refit_passes):
        for chunk in chunks:
            _refit_chunk(model, reference, [by_name[n] for n in chunk], cfg, calib, records, rows)


def _refit_chunk(model: nn.Module, reference: nn.Module, targets: list[Target], cfg: PostTrainPruneConfig,
                 calib: Iterable[Any], records: dict[int, dict[str, Any]], rows: dict[int, torch.Tensor | None]
                 ) -> None:
    """One paired forward for ``targets``, then each consumer refit to the original's output (plus, with a
    residual ``stream``, the original stream minus the pruned model's, so it also corrects what reached it)."""
    streams = {t.consumer: Stream(t.stream, factor=stream_factor(model, t)) for t in targets
               if t.stream is not None and rows[t.group.index] is None}
    stats = paired_stats(reference, model, [t.consumer for t in targets], calib, cfg.calibration_batches,
                         streams=streams)
    for t in targets:
        st = stats.get(t.consumer)
        if st is None or st.count == 0:
            continue
        d_cur = model.get_submodule(t.consumer).weight[0].numel()
        hxx, hxz, hzz = joint_moments(st, d_cur)
        w = weight_aug(reference, t)
        if rows[t.group.index] is not None:
            w = w[rows[t.group.index]]
        if t.consumer in streams:  # target W x + drift: the drift columns follow x in the paired rows
            w = torch.cat([w[:, :-1], torch.eye(w.shape[0], dtype=w.dtype), w[:, -1:]], 1)
        v, err = refit_no_worse(w, weight_aug(model, t), hxx, hxz, hzz, cfg.ridge, t.intercept is not None)
        install(model, t, v)
        records[t.group.index]["relative_error"].append(round(err, 6))


def _tune_scales(model: nn.Module, reference: nn.Module, targets: list[Target], cfg: PostTrainPruneConfig,
                 calib: Iterable[Any], info: dict[str, Any], inputs: tuple[Any, ...],
                 parents: dict[str, str | None], removed: set[int]) -> None:
    """``refit="scales"``: per-unit scales of every Linear consumer, in execution order, ``refit_passes``
    sweeps (:func:`slimkit.passes.prune.rescale.tune_scales`); ``relative_error`` records the consumer's error
    before the first sweep, then after each."""
    if any(not isinstance(model.get_submodule(t.consumer), nn.Linear) for t in targets):
        raise ConfigError("refit='scales' tunes Linear consumers only; this model has convolution consumers.",
                          hint="Use refit: weights (or auto) for CNNs.")
    records = {r["group"]: r for r in info["groups"]}
    by_name = {t.consumer: t for t in targets}
    for sweep in range(cfg.refit_passes):
        for name in execution_order(model, list(by_name), inputs):
            t = by_name[name]
            width = reference.get_submodule(name).weight.shape[1]
            kept = [u for u in t.cols if u not in removed]
            keep = _keep_cols(t, width, [u for u in t.cols if u in removed])
            units = [torch.searchsorted(keep, t.cols[u]) for u in kept]
            before, after, _ = tune_scales(reference, model, name, units, calib, parent=parents.get(name),
                                           ridge=cfg.ridge, max_batches=cfg.calibration_batches,
                                           weight_ridge=cfg.weight_ridge)
            rec = records[t.group.index]
            rec["relative_error"] += ([round(before, 6)] if sweep == 0 else []) + [round(after, 6)]
            rec["residual"] = parents.get(name)
            log.info("posttrain scales: %s relative error %.4g -> %.4g", name, before, after)
