"""Low-rank factorization by truncated SVD.

A Linear ``y = W x + b`` with ``W`` (out x in) = U S Vᵀ becomes ``Sequential(Linear(in, r), Linear(r, out))``
with weights ``S_r^{1/2} V_rᵀ`` and ``U_r S_r^{1/2}`` (the bias goes on the second). A Conv2d (groups=1) with
weight (out, in, kh, kw) is reshaped to (out, in*kh*kw) and decomposed the same way into a kh x kw conv with
``r`` output channels (same stride, padding, dilation and padding mode) followed by a 1x1 conv with the bias.
Factorizing saves parameters only when ``r * (in + out) < in * out`` (``in`` = in*kh*kw for convs); other
layers are left alone. At full rank the factorized layer reproduces the original up to rounding.

Activation-aware (``whiten=True``, SVD-LLM style): with ``S`` the lower Cholesky factor of the layer's
calibration Gram matrix ``X^T X`` (dampened), ``W S = U Σ V^T`` is truncated and the right factor unwhitened
(``Σ^{1/2} V^T S^{-1}``). Since ``||(W - W') X^T||_F = ||W S - (W' S)||_F``, the truncation minimizes the
output error on the calibration inputs, and the singular values of ``W S`` give that error per rank.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from slimkit.analysis.calibration import block_of, collect_input_stats, input_groups, reiterable
from slimkit.config.layers import is_skipped
from slimkit.config.lowrank import SVDConfig
from slimkit.context import PassContext, PassRecord
from slimkit.errors import ConfigError, ModelLoadError
from slimkit.passes.blockfit import refit_blocks, refit_note
from slimkit.registry import register_pass

log = logging.getLogger(__name__)

_TYPES: dict[str, type[nn.Module]] = {"Linear": nn.Linear, "Conv2d": nn.Conv2d}


@dataclass
class LayerPlan:
    """What the pass decided for one layer. ``rank`` is None when the layer is left alone (see ``reason``)."""

    name: str
    kind: str
    out_features: int
    in_features: int
    """Columns of the reshaped weight: in_features for Linear, in_channels*kh*kw for Conv2d."""
    rank: int | None
    energy: float | None = None
    reason: str = ""
    rel_error: float | None = None
    """Relative output error on the calibration inputs (``whiten`` only; None when not measured)."""

    @property
    def dense_params(self) -> int:
        return self.out_features * self.in_features

    @property
    def params(self) -> int:
        """Weight parameters after the pass (biases are unchanged and not counted)."""
        if self.rank is None:
            return self.dense_params
        return self.rank * (self.out_features + self.in_features)


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as an (out, in*kh*kw) matrix (a view for Linear)."""
    w = layer.weight
    return w.reshape(w.shape[0], -1)


def saves_params(out_features: int, in_features: int, rank: int) -> bool:
    """Whether a rank-``rank`` factorization has fewer weights than the dense layer."""
    return rank * (out_features + in_features) < out_features * in_features


Whitener = torch.Tensor
"""Lower-triangular ``S`` with ``S S^T`` = the layer's (dampened) calibration input Gram matrix."""


def whitener(xtx: torch.Tensor, dampening: float) -> Whitener:
    """Lower Cholesky factor of ``xtx + dampening * mean(diag) I`` (float64); the dampening grows tenfold
    (up to 4 times) until the matrix is positive definite in floating point."""
    h = xtx.detach().to("cpu", torch.float64)
    scale = max(float(torch.diag(h).mean()), 1e-12)
    eye = torch.eye(h.shape[0], dtype=torch.float64)
    damp = dampening
    for _ in range(5):
        chol, info = torch.linalg.cholesky_ex(h + damp * scale * eye)
        if int(info) == 0:
            return chol
        damp *= 10.0
    raise ConfigError(f"the calibration Gram matrix is not positive definite even with dampening {damp / 10:g}.",
                      hint="Use more calibration data or a larger dampening.")


def _matrix(layer: nn.Module, white: Whitener | None) -> torch.Tensor:
    mat = weight_matrix(layer).detach().to("cpu", torch.float64)
    return mat if white is None else mat @ white


def singular_values(layer: nn.Module, white: Whitener | None = None) -> torch.Tensor:
    """Singular values of the layer's weight matrix, or of ``W S`` with a whitener (float64, descending)."""
    return torch.linalg.svdvals(_matrix(layer, white))


def energy_rank(s: torch.Tensor, energy: float) -> int:
    """The smallest ``r`` with ``sum(s[:r]^2) >= energy * sum(s^2)``."""
    e = s.double() ** 2
    total = float(e.sum())
    if total == 0.0:
        return 1
    cum = torch.cumsum(e, 0) / total
    # tolerate rounding at energy == 1
    r = int(torch.searchsorted(cum, torch.tensor([energy - 1e-12], dtype=cum.dtype)).item()) + 1
    return min(r, s.numel())


def retained_energy(s: torch.Tensor, rank: int) -> float:
    """Fraction of ``sum(s^2)`` kept by the first ``rank`` singular values."""
    e = s.double() ** 2
    total = float(e.sum())
    return 1.0 if total == 0.0 else float(e[:rank].sum()) / total


def _split(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def _svd(layer: nn.Module, white: Whitener | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``U, s, Vh`` with ``W = U diag(s) Vh`` (with a whitener: SVD of ``W S``, and ``Vh S^-1`` returned)."""
    u, s, vh = torch.linalg.svd(_matrix(layer, white), full_matrices=False)
    if white is not None:
        vh = torch.linalg.solve_triangular(white, vh, upper=False, left=False)
    return u, s, vh


def factorize_linear(layer: nn.Linear, rank: int, white: Whitener | None = None) -> nn.Sequential:
    """``Sequential(Linear(in, rank, bias=False), Linear(rank, out))`` approximating ``layer``."""
    u, s, vh = _svd(layer, white)
    rank = max(1, min(rank, s.numel()))
    a, b = _split(u, s, vh, rank)
    w = layer.weight
    first = nn.Linear(layer.in_features, rank, bias=False, device=w.device, dtype=w.dtype)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        first.weight.copy_(b.to(w.dtype))
        second.weight.copy_(a.to(w.dtype))
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    first.weight.requires_grad_(w.requires_grad)
    second.weight.requires_grad_(w.requires_grad)
    return nn.Sequential(first, second)


def factorize_conv2d(conv: nn.Conv2d, rank: int, white: Whitener | None = None) -> nn.Sequential:
    """A kh x kw conv to ``rank`` channels (same geometry) followed by a 1x1 conv with the bias."""
    if conv.groups != 1:
        raise ConfigError(f"factorize_conv2d needs groups=1, got groups={conv.groups}.")
    u, s, vh = _svd(conv, white)
    rank = max(1, min(rank, s.numel()))
    a, b = _split(u, s, vh, rank)
    w = conv.weight
    out_ch, in_ch, kh, kw = w.shape
    first = nn.Conv2d(in_ch, rank, (kh, kw), stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                      bias=False, padding_mode=conv.padding_mode, device=w.device, dtype=w.dtype)
    second = nn.Conv2d(rank, out_ch, 1, bias=conv.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        first.weight.copy_(b.reshape(rank, in_ch, kh, kw).to(w.dtype))
        second.weight.copy_(a.reshape(out_ch, rank, 1, 1).to(w.dtype))
        if conv.bias is not None:
            second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


def factorize(layer: nn.Module, rank: int, white: Whitener | None = None) -> nn.Sequential:
    """Factorize a Linear or a Conv2d at ``rank`` (against the calibration inputs with a whitener)."""
    if type(layer) is nn.Linear:
        return factorize_linear(layer, rank, white)
    if type(layer) is nn.Conv2d:
        return factorize_conv2d(layer, rank, white)
    raise ConfigError(f"cannot factorize a {type(layer).__name__}; only nn.Linear and nn.Conv2d are supported.")


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of weight tensors owned by more than one module (tied weights)."""
    owners: dict[int, set[int]] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(id(module))
    return {pid for pid, mods in owners.items() if len(mods) > 1}


def _candidates(model: nn.Module, cfg: SVDConfig) -> tuple[list[tuple[str, nn.Module]], list[LayerPlan]]:
    types = tuple(_TYPES[t] for t in cfg.include)
    shared = _shared_weights(model)
    seen: set[int] = set()
    layers: list[tuple[str, nn.Module]] = []
    skipped: list[LayerPlan] = []
    for name, module in model.named_modules():
        if type(module) not in types or id(module) in seen:
            continue
        seen.add(id(module))
        mat = weight_matrix(module)
        plan = LayerPlan(name, type(module).__name__, mat.shape[0], mat.shape[1], None)
        if is_skipped(name, module, cfg.skip, cfg.filter_fn):
            plan.reason = "skipped (skip or filter_fn)"
        elif isinstance(module, nn.Conv2d) and module.groups != 1:
            plan.reason = f"grouped conv (groups={module.groups})"
        elif id(module.weight) in shared:
            plan.reason = "weight is tied to another module"
        if plan.reason:
            skipped.append(plan)
        else:
            layers.append((name, module))
    return layers, skipped


def _rank_for(s: torch.Tensor, cfg: SVDConfig) -> int:
    full = s.numel()
    if cfg.rank_ratio is not None:
        r = math.ceil(cfg.rank_ratio * full - 1e-9)
    else:
        r = energy_rank(s, cfg.energy if cfg.energy is not None else 1.0)
    return max(1, min(full, max(cfg.min_rank, r)))


Layer = tuple[str, nn.Module, torch.Tensor]


def _plan(layers: list[Layer], ranks: list[int | None]) -> list[LayerPlan]:
    plans = []
    for (name, module, s), r in zip(layers, ranks, strict=True):
        out_f, in_f = weight_matrix(module).shape
        plan = LayerPlan(name, type(module).__name__, out_f, in_f, r, 1.0 if r is None else retained_energy(s, r))
        if r is not None and not saves_params(out_f, in_f, r):
            plan.reason = f"rank {r} would not save parameters ({r}*({in_f}+{out_f}) >= {out_f * in_f})"
            plan.rank, plan.energy = None, 1.0
        elif r is None:
            plan.reason = "kept dense to spend the parameter budget where it helps most"
        plans.append(plan)
    return plans


def _budget_ranks(layers: list[Layer], cfg: SVDConfig) -> list[int | None]:
    """Per-layer ranks (None = dense) that keep at most ``param_budget`` of the weights while minimizing the
    sum over layers of the relative squared error ``1 - retained_energy``: for a multiplier ``lam`` each layer
    independently picks the option (a saving rank >= min_rank, or dense) minimizing ``error + lam * cost``;
    ``lam`` is found by bisection."""
    assert cfg.param_budget is not None
    options = []  # per layer: (ranks, errors, costs) including dense as rank None
    dense_total = 0
    for _, module, s in layers:
        out_f, in_f = weight_matrix(module).shape
        dense_total += out_f * in_f
        e = s.double() ** 2
        cum = torch.cumsum(e, 0) / max(float(e.sum()), 1e-300)
        ranks = [r for r in range(min(cfg.min_rank, s.numel()), s.numel() + 1) if saves_params(out_f, in_f, r)]
        errs = torch.tensor([1.0 - float(cum[r - 1]) for r in ranks] + [0.0], dtype=torch.float64)
        costs = torch.tensor([r * (out_f + in_f) for r in ranks] + [out_f * in_f], dtype=torch.float64)
        options.append(([*ranks, None], errs.clamp_min(0.0), costs))
    limit = cfg.param_budget * dense_total

    def choose(lam: float) -> tuple[list[int | None], float]:
        picks: list[int | None] = []
        total = 0.0
        for ranks, errs, costs in options:
            i = int(torch.argmin(errs + lam * costs / max(dense_total, 1)).item())
            picks.append(ranks[i])
            total += float(costs[i])
        return picks, total

    lo, hi = 0.0, 1.0
    while choose(hi)[1] > limit and hi < 1e12:
        hi *= 4.0
    best, cost = choose(hi)
    if cost > limit:
        log.warning("param_budget %.3f cannot be met at min_rank=%d: keeping %.3f of the weights",
                    cfg.param_budget, cfg.min_rank, cost / max(dense_total, 1))
        return best
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        picks, cost = choose(mid)
        if cost <= limit:
            best, hi = picks, mid
        else:
            lo = mid
    return best


def plan_lowrank(model: nn.Module, cfg: SVDConfig, whiteners: dict[str, Whitener] | None = None) -> list[LayerPlan]:
    """Decide a rank (or to leave it alone) for every Linear / Conv2d in ``model``, without changing it.
    With ``whiteners`` (``{layer name: S}``) ranks follow the spectra of ``W S`` (output error)."""
    layers, skipped = _candidates(model, cfg)
    whiteners = whiteners or {}
    with_s = [(n, m, singular_values(m, whiteners.get(n))) for n, m in layers]
    if cfg.param_budget is not None:
        ranks = _budget_ranks(with_s, cfg)
    else:
        ranks = [_rank_for(s, cfg) for _, _, s in with_s]
    plans = _plan(with_s, ranks) + skipped
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(plans, key=lambda p: order.get(p.name, 0))


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def apply_plan(model: nn.Module, plans: list[LayerPlan], whiteners: dict[str, Whitener] | None = None) -> nn.Module:
    """Replace every planned layer by its factorization (a module registered under several names is
    replaced by the same new module everywhere); layers with a whitener are factorized against it."""
    by_module: dict[int, nn.Sequential] = {}
    whiteners = whiteners or {}
    for plan in plans:
        if plan.rank is None:
            continue
        layer = model.get_submodule(plan.name)
        new = by_module.get(id(layer))
        if new is None:
            new = factorize(layer, plan.rank, whiteners.get(plan.name))
            new.train(layer.training)
            by_module[id(layer)] = new
        for other_name, other in list(model.named_modules(remove_duplicate=False)):
            if other is layer:
                model.set_submodule(other_name, new)
    return model


def _whiteners(model: nn.Module, names: list[str], cfg: SVDConfig, calibration: Any) -> dict[str, Any]:
    """``{name: (InputStats, S)}`` of the named layers from one calibration pass."""
    stats = collect_input_stats(model, calibration, names, max_batches=cfg.calibration_batches,
                                stop_early=bool(cfg.sequential))
    return {n: (st, whitener(st.xtx[0], cfg.dampening)) for n, st in stats.items()  # type: ignore[index]
            if st.count > 0}


def _apply_whitened(model: nn.Module, plans: list[LayerPlan], cfg: SVDConfig, calibration: Any,
                    dense: dict[str, Any]) -> None:
    """Factorize the planned layers against their inputs, block by block with ``sequential`` (statistics
    refreshed on the partly factorized model) or all at once; record each layer's calibration output error."""
    todo = [p for p in plans if p.rank is not None]
    if cfg.sequential == "layer":
        by_name = {p.name: p for p in todo}
        blocks = [[by_name[n] for n in g] for g in input_groups(
            model, {p.name: model.get_submodule(p.name) for p in todo}, calibration)]
    elif cfg.sequential:
        blocks = [list(g) for _, g in itertools.groupby(todo, key=lambda p: block_of(p.name))]
    else:
        blocks = [todo]
    for block in blocks:
        names = [p.name for p in block if p.name in dense]
        current = _whiteners(model, names, cfg, calibration) if cfg.sequential else dense
        for p in block:
            if p.name not in current:
                continue
            stats, white = current[p.name]
            layer = model.get_submodule(p.name)
            apply_plan(model, [p], {p.name: white})
            new = model.get_submodule(p.name)
            approx = (new[1].weight.reshape(new[1].weight.shape[0], -1) @ new[0].weight.reshape(p.rank, -1))
            p.rel_error = stats.output_error(weight_matrix(layer), approx, layer.bias)


def lowrank_model(model: nn.Module, cfg: SVDConfig, calibration: Any = None) -> list[LayerPlan]:
    """Plan and apply ``cfg`` to ``model`` in place; return the per-layer plan. ``cfg.whiten`` needs
    ``calibration`` (batches as the project's loaders yield them)."""
    if model is None or not isinstance(model, nn.Module):
        raise ConfigError(f"expected a torch.nn.Module, got {type(model).__name__}.")
    if cfg.whiten:
        if calibration is None:
            raise ConfigError("lowrank(method=svd, whiten=true) needs calibration data but none was given.",
                              hint="Pass calibration=loader, give the recipe a data section, or set whiten=false.")
        calibration = reiterable(calibration, cfg.calibration_batches)
        layers, _ = _candidates(model, cfg)
        dense = _whiteners(model, [n for n, _ in layers], cfg, calibration)
        plans = plan_lowrank(model, cfg, {n: w for n, (_, w) in dense.items()})
    else:
        plans = plan_lowrank(model, cfg)
    for p in plans:
        if p.rank is None:
            log.info("lowrank: leaving %s (%s %dx%d) alone: %s", p.name, p.kind, p.out_features, p.in_features,
                     p.reason)
        else:
            log.info("lowrank: %s (%s %dx%d) -> rank %d, energy %.4f, weights %d -> %d", p.name, p.kind,
                     p.out_features, p.in_features, p.rank, p.energy or 0.0, p.dense_params, p.params)
    if cfg.whiten:
        _apply_whitened(model, plans, cfg, calibration, dense)
    else:
        apply_plan(model, plans)
    return plans


def _rebuild(model: nn.Module, cfg: SVDConfig, manifest: dict[str, Any]) -> nn.Module:
    """Redo the structure of a factorized checkpoint without data: the rank of each layer is read from the
    manifest's ``module_shapes`` (``<layer>.0`` has ``rank`` output features or channels)."""
    shapes = manifest.get("module_shapes") if isinstance(manifest, dict) else None
    if not isinstance(shapes, dict):
        raise ModelLoadError("the checkpoint manifest has no module_shapes; cannot rebuild the low-rank layers.")
    layers, _ = _candidates(model, cfg)
    plans = []
    for name, module in layers:
        first = shapes.get(f"{name}.0")
        if not isinstance(first, dict):
            continue
        rank = first.get("out_features", first.get("out_channels"))
        if not isinstance(rank, int):
            raise ModelLoadError(f"module_shapes['{name}.0'] has no output size: {first}")
        mat = weight_matrix(module).shape
        plans.append(LayerPlan(name, type(module).__name__, mat[0], mat[1], rank))
    return apply_plan(model, plans)


@dataclass
class LowrankRecord(PassRecord):
    """The plan of a low-rank stage: one :class:`LayerPlan` per candidate layer (``rank`` None: left alone)."""

    key: ClassVar[str] = "lowrank"
    layers: list[LayerPlan] = field(default_factory=list)
    block_refit: list[dict[str, Any]] = field(default_factory=list)

    def notes(self, stage: int) -> list[str]:
        done = [p for p in self.layers if p.rank is not None]
        before = sum(p.dense_params for p in self.layers)
        after = sum(p.params for p in self.layers)
        if not self.layers:
            return []
        return [f"Low-rank (stage {stage}): {len(done)} of {len(self.layers)} layers factorized; their weights "
                f"went from {before} to {after} parameters."] + refit_note(self.block_refit, stage)


@register_pass(SVDConfig, default=True, rebuild=_rebuild)
def svd_handler(model: nn.Module, cfg: SVDConfig, ctx: PassContext) -> nn.Module:
    """Registered handler: factorize, then fine-tune when ``cfg.finetune`` is set (the registry has checked
    that a train loader was given). Its record is a :class:`LowrankRecord` (``ctx.extras["lowrank"]``)."""
    if cfg.block_refit is not None:
        ctx.require("calibration", pass_name="lowrank (svd, block_refit)")
    original = copy.deepcopy(model) if cfg.block_refit is not None else None
    plans = lowrank_model(model, cfg, ctx.calibration)
    record = ctx.add(LowrankRecord(plans))
    if original is not None and cfg.block_refit is not None:
        record.block_refit = refit_blocks(model, original, ctx.calibration, cfg.block_refit, seed=ctx.seed)
    ctx.extras["layers"] = [{"layer": p.name, "method": "svd-whiten" if cfg.whiten else "svd", "rank": p.rank,
                             "params_before": p.dense_params, "params_after": p.params, "rel_error": p.rel_error,
                             **({"skipped": p.reason} if p.rank is None else {})} for p in plans]
    if cfg.finetune is not None and cfg.finetune.epochs > 0:
        from slimkit.passes.finetune.loop import train_model

        train_model(model, ctx.train_loader, cfg.finetune, val_loader=ctx.val_loader, seed=ctx.seed)
    return model
