"""One-shot sparsity from unlabelled calibration data: Wanda and SparseGPT, unstructured or N:M.

Both read per-layer input statistics (:mod:`slimkit.analysis.calibration`) and zero weights in place; the
model stays a plain model with zeros in its weights, like magnitude pruning.

- ``wanda`` (Sun et al. 2023) scores ``|W_ij| * ||x_j||`` and removes the lowest scores per output row
  (unstructured: exactly ``prune_count(sparsity, in)`` per row) or per group of ``m`` inputs (N:M). No update.
- ``sparsegpt`` (Frantar & Alistarh 2023) processes the input columns in blocks: within a block it picks the
  weights with the smallest OBS saliency ``w^2 / [H^-1]_jj^2`` (unstructured: exactly
  ``prune_count(sparsity, numel)`` per layer, spread over blocks by cumulative rounding; N:M: per group of
  ``m``), and after removing each column's weights updates the columns to its right to compensate
  (``H = X^T X + dampening * mean(diag) I``, the upper Cholesky factor of ``H^-1``).

With ``sequential`` (the default), layers are calibrated block by block (a block is the module path up to its
first numeric component, e.g. ``encoder.layer.3``): each block sees the inputs the already pruned blocks
before it produce; ``sequential="layer"`` goes further: every set of layers that read the same tensor is
calibrated after the layers that run before it are pruned (SparseGPT's "true sequential"). Each calibration
pass stops as soon as the layers it collects for have run. Weights that are already zero stay zero. Per-layer records (what was removed, relative
output error on the calibration data) go to the ``OneShotRecord`` ``ctx.extras["oneshot"]``.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from slimkit.analysis.calibration import (
    InputStats,
    block_of,
    collect_input_stats,
    input_groups,
    reiterable,
    token_mask,
)
from slimkit.config.prune import SparseGPTConfig, WandaPruneConfig
from slimkit.context import PassContext, PassRecord, eval_mode
from slimkit.data.batch import call_model, split_batch
from slimkit.errors import ConfigError
from slimkit.evaluation.metrics import primary_output
from slimkit.passes.blockfit import refit_blocks, refit_note
from slimkit.passes.prune.masks import eligible_layers, reparametrized_layers
from slimkit.passes.prune.unstructured import prune_count
from slimkit.progress import track
from slimkit.registry import register_pass

log = logging.getLogger(__name__)

OneShotConfig = WandaPruneConfig | SparseGPTConfig


# ------------------------------------------------------------------------------------------------ criteria
def wanda_score(weight: torch.Tensor, col_norms: torch.Tensor) -> torch.Tensor:
    """The Wanda score ``|W_ij| * ||x_j||`` in float64 of a ``[..., rows, d]`` weight and ``[..., d]`` input norms."""
    w = weight.detach().to(torch.float64)
    return w.abs() * col_norms.to(w)[..., None, :]


def grouped_keep(weight: torch.Tensor, stats: InputStats, *, sparsity: float | None = None, n: int | None = None,
                 m: int | None = None) -> torch.Tensor:
    """:func:`wanda_keep` of each input group of a layer's weight (``stats.groups``, e.g. a grouped conv), as one
    keep-mask of the weight's shape."""
    w = weight.detach().to("cpu", torch.float64).reshape(stats.groups, -1, stats.dim)
    norms = stats.col_norms()
    return torch.stack([wanda_keep(w[gi], norms[gi], sparsity=sparsity, n=n, m=m)
                        for gi in range(stats.groups)]).reshape(weight.shape)


def wanda_keep(weight: torch.Tensor, col_norms: torch.Tensor, *, sparsity: float | None = None,
               n: int | None = None, m: int | None = None) -> torch.Tensor:
    """Keep-mask (``True`` = keep) of a ``[rows, d]`` weight by the Wanda score ``|W| * col_norms``.

    Unstructured: each row loses exactly ``prune_count(sparsity, d)`` weights. N:M: each run of ``m``
    consecutive inputs of a row keeps its ``n`` highest scores. Weights that are zero are removed first.
    """
    w = weight.detach().to(torch.float64)
    score = wanda_score(w, col_norms).masked_fill(w == 0, -1.0)
    rows, d = score.shape
    if sparsity is not None:
        k = prune_count(sparsity, d)
        prune = torch.zeros_like(score, dtype=torch.bool)
        if k:
            prune.scatter_(1, score.topk(k, dim=1, largest=False).indices, True)
        return ~prune
    if n is None or m is None or d % m:
        raise ConfigError(f"N:M needs n, m and an input dimension divisible by m (d={d}, m={m}).")
    groups = score.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.topk(n, dim=1).indices, True)
    return keep.reshape(rows, d)


def _cholesky_inverse_upper(h: torch.Tensor, dampening: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp I)^-1``; the dampening grows tenfold (up to 4 times) until H is
    positive definite in floating point."""
    mean_diag = float(torch.diag(h).mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    damp = dampening
    for _ in range(5):
        chol, info = torch.linalg.cholesky_ex(h + damp * mean_diag * eye)
        if int(info) == 0:
            inv = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0:
                return upper
        damp *= 10.0
    raise ConfigError(f"the calibration Hessian is not positive definite even with dampening {damp / 10:g}.",
                      hint="Use more calibration data, raise dampening, or exclude the layer.")


def sparsegpt_prune(weight: torch.Tensor, xtx: torch.Tensor, *, sparsity: float | None = None,
                    n: int | None = None, m: int | None = None, dampening: float = 0.01,
                    block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one ``[rows, d]`` weight with input Gram matrix ``xtx`` ``[d, d]``.

    Returns ``(new_weight, keep)`` in float64: the pruned and updated weight and its keep-mask. Input
    columns that never saw a non-zero value (``diag(xtx) == 0``) are removed first (they cannot change the
    output on the calibration data).
    """
    w = weight.detach().to("cpu", torch.float64).clone()
    h = xtx.detach().to("cpu", torch.float64).clone()
    rows, d = w.shape
    frozen = w == 0
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    frozen[:, dead] = True
    if sparsity is None and (n is None or m is None or d % m):
        raise ConfigError(f"N:M needs n, m and an input dimension divisible by m (d={d}, m={m}).")
    if m is not None and sparsity is None:
        block_size = max(m, block_size - block_size % m)
    hinv = _cholesky_inverse_upper(h, dampening)
    keep = torch.ones_like(w, dtype=torch.bool)
    for i1 in range(0, d, block_size):
        i2 = min(i1 + block_size, d)
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        diag1 = torch.diag(h1)
        prune1 = torch.zeros_like(w1, dtype=torch.bool)
        if sparsity is not None:
            k = prune_count(sparsity, rows * i2) - prune_count(sparsity, rows * i1)
            saliency = (w1 ** 2 / diag1[None, :] ** 2).masked_fill(frozen[:, i1:i2], -1.0)
            if k:
                prune1.view(-1)[saliency.flatten().topk(k, largest=False).indices] = True
        for i in range(i2 - i1):
            if sparsity is None and i % m == 0:  # type: ignore[operator]
                sal = (w1[:, i:i + m] ** 2 / diag1[None, i:i + m] ** 2).masked_fill(frozen[:, i1 + i:i1 + i + m], -1.0)
                prune1.scatter_(1, i + sal.topk(m - n, dim=1, largest=False).indices, True)  # type: ignore[operator]
            col = w1[:, i]
            q = col.masked_fill(prune1[:, i], 0.0)
            q1[:, i] = q
            e = (col - q) / h1[i, i]
            w1[:, i:] -= e[:, None] * h1[i, i:][None, :]
            err1[:, i] = e
        w[:, i1:i2] = q1
        keep[:, i1:i2] = ~prune1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w, keep


# ------------------------------------------------------------------------------------------------ the pass
def _layers(model: nn.Module, cfg: OneShotConfig) -> dict[str, nn.Module]:
    reparam = reparametrized_layers(model, cfg.include, cfg.skip, cfg.filter_fn)
    if reparam:
        raise ConfigError(f"layer(s) {', '.join(reparam[:5])} have a reparametrized weight; zeros written into it "
                          f"would not last.", hint="Call torch.nn.utils.prune.remove first, or exclude them.")
    types = {"Linear": nn.Linear, "Conv2d": nn.Conv2d}
    layers = {name: mod for name, mod in eligible_layers(model, cfg.include, cfg.skip, cfg.min_numel, cfg.filter_fn).items()
              if isinstance(mod, tuple(types[t] for t in cfg.include))
              and type(mod).forward is (nn.Conv2d if isinstance(mod, nn.Conv2d) else nn.Linear).forward}
    if not layers:
        raise ConfigError(f"no Linear/Conv2d layer of {type(model).__name__} can be pruned with "
                          f"include={cfg.include}, skip={cfg.skip}, min_numel={cfg.min_numel}.",
                          hint="Widen include or narrow skip.")
    return layers


def _pattern(cfg: OneShotConfig) -> str:
    return f"{cfg.n}:{cfg.m}" if cfg.sparsity is None else "unstructured"


def _blocks(layers: dict[str, nn.Module]) -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {}
    for name in layers:
        blocks.setdefault(block_of(name), []).append(name)
    return blocks


def spread_sparsity(score: dict[str, float], numel: dict[str, int], sparsity: float, lam: float
                    ) -> dict[str, float]:
    """Per-block sparsity from a per-block score (higher: prune less), as OWL maps it: ``sparsity - lam * (2 (s -
    min s) / (max s - min s) - 1)``, shifted so that the ``numel``-weighted mean is exactly ``sparsity``."""
    lo, hi = min(score.values()), max(score.values())
    if hi - lo <= 0:
        return {b: sparsity for b in score}
    dev = {b: lam * (2 * (v - lo) / (hi - lo) - 1) for b, v in score.items()}
    mean = sum(dev[b] * numel[b] for b in dev) / sum(numel.values())
    return {b: min(max(sparsity - (dev[b] - mean), 0.0), 0.99) for b in dev}


def block_sparsities(model: nn.Module, layers: dict[str, nn.Module], calibration: Any, cfg: OneShotConfig
                     ) -> dict[str, float]:
    """Per-layer unstructured sparsity for ``cfg.allocation`` (the same for every layer of a block,
    :func:`block_of`; the weight-weighted mean is ``cfg.sparsity``, deviations within ``+-owl_lambda``):

    - ``owl`` (Yin et al. 2024, "Outlier Weighed Layerwise sparsity"): a block's score is the fraction of its
      layers' Wanda scores ``|W_ij| * ||x_j||`` (inputs of the unpruned model) above ``owl_m`` times the block's
      mean score; the blocks with the most outliers are pruned least.
    - ``sensitivity``: a block's score is the measured relative error of the model's output (last hidden
      state / logits, padding excluded) on the first ``sensitivity_batches`` calibration batches when that
      block alone is Wanda-pruned at ``sparsity`` (weights restored after); the most sensitive blocks are
      pruned least.
    """
    from slimkit.passes.prune.posttrain import fidelity_loss

    assert cfg.sparsity is not None
    stats = collect_input_stats(model, calibration, layers, full=False, max_batches=cfg.calibration_batches)
    blocks = _blocks(layers)
    numel = {b: sum(layers[n].weight.numel() for n in names) for b, names in blocks.items()}
    score: dict[str, float] = {}
    if cfg.allocation == "owl":
        for b, names in blocks.items():
            s = torch.cat([wanda_score(layers[n].weight.detach().cpu().reshape(stats[n].groups, -1, stats[n].dim),
                                       stats[n].col_norms()).flatten() for n in names])
            score[b] = float((s > cfg.owl_m * s.mean()).double().mean())
    else:
        probe = [split_batch(x)[0] for x in itertools.islice(iter(calibration), cfg.sensitivity_batches)]
        with eval_mode(model), torch.no_grad():
            refs = [primary_output(call_model(model, x)) for x in probe]
            for b, names in blocks.items():
                saved = {n: layers[n].weight.detach().clone() for n in names}
                for n in names:
                    w = layers[n].weight
                    w.mul_(grouped_keep(w, stats[n], sparsity=cfg.sparsity).to(w.device, w.dtype))
                score[b] = sum(fidelity_loss(primary_output(call_model(model, x)), r, "mse", token_mask(x))
                               for x, r in zip(probe, refs, strict=True)) / max(len(probe), 1)
                for n in names:
                    layers[n].weight.copy_(saved[n])
    log.info("%s allocation: block scores %s", cfg.allocation, {b: round(v, 5) for b, v in score.items()})
    per_block = spread_sparsity(score, numel, cfg.sparsity, cfg.owl_lambda)
    return {n: per_block[block_of(n)] for n in layers}


def _prune_layer(name: str, module: nn.Module, stats: InputStats, cfg: OneShotConfig) -> dict[str, Any]:
    weight = module.weight
    g = stats.groups
    w = weight.detach().to("cpu", torch.float64).reshape(g, -1, stats.dim)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"layer": name, "method": cfg.method, "pattern": _pattern(cfg),
                              "numel": weight.numel(), "rows_seen": stats.count}
    if cfg.sparsity is None and stats.dim % cfg.m:  # type: ignore[operator]
        record.update(removed=int((weight == 0).sum()), rel_error=0.0, skipped=f"input dim {stats.dim} is not a "
                      f"multiple of m={cfg.m}")
        return record
    if isinstance(cfg, SparseGPTConfig):
        new_weight = torch.stack([sparsegpt_prune(w[gi], stats.xtx[gi], sparsity=cfg.sparsity, n=cfg.n, m=cfg.m,  # type: ignore[index]
                                                  dampening=cfg.dampening, block_size=cfg.block_size)[0]
                                  for gi in range(g)]).reshape(weight.shape)
    else:
        new_weight = w.reshape(weight.shape) * grouped_keep(weight, stats, sparsity=cfg.sparsity, n=cfg.n, m=cfg.m)
    if stats.xtx is not None:
        record["rel_error"] = stats.output_error(weight, new_weight, getattr(module, "bias", None))
    with torch.no_grad():
        weight.copy_(new_weight.to(device=weight.device, dtype=weight.dtype))
    record["removed"] = int((weight == 0).sum())
    record["sparsity"] = record["removed"] / max(weight.numel(), 1)
    record["seconds"] = round(time.perf_counter() - t0, 4)
    return record


def oneshot_prune_(model: nn.Module, cfg: OneShotConfig, calibration: Any) -> list[dict[str, Any]]:
    """Apply ``cfg`` (Wanda or SparseGPT) to ``model`` in place with ``calibration`` batches; return the
    per-layer records. Every check runs before the model is touched."""
    layers = _layers(model, cfg)
    calibration = reiterable(calibration, cfg.calibration_batches)
    if cfg.sequential == "layer":
        blocks = input_groups(model, layers, calibration)
    elif cfg.sequential:
        blocks = [list(group) for _, group in itertools.groupby(layers, key=block_of)]
    else:
        blocks = [list(layers)]
    sparsity = block_sparsities(model, layers, calibration, cfg) if cfg.allocation != "uniform" else {}
    records: list[dict[str, Any]] = []
    with track(f"prune:{cfg.method}", total=len(layers)) as task:
        for block in blocks:
            stats = collect_input_stats(model, calibration, {n: layers[n] for n in block}, full=True,
                                        max_batches=cfg.calibration_batches, stop_early=bool(cfg.sequential))
            for name in block:
                if stats[name].count == 0:
                    records.append({"layer": name, "method": cfg.method, "pattern": _pattern(cfg),
                                    "numel": layers[name].weight.numel(), "skipped": "never called on calibration"})
                    task.advance()
                    continue
                lcfg = cfg.model_copy(update={"sparsity": sparsity[name]}) if name in sparsity else cfg
                rec = _prune_layer(name, layers[name], stats[name], lcfg)
                log.info("%s %s: %s removed %d/%d, relative output error %.3g", cfg.method, rec["pattern"], name,
                         rec["removed"], rec["numel"], rec.get("rel_error", float("nan")))
                records.append(rec)
                task.advance()
            del stats
    return records


@dataclass
class OneShotRecord(PassRecord):
    """Per-layer rows of a one-shot sparsity pass (``ctx.extras["oneshot"]``): ``layer``, ``method``,
    ``pattern``, ``numel``, ``removed``, ``sparsity``, ``rel_error`` (relative output error on the calibration
    inputs), ``rows_seen``, ``seconds``; ``skipped`` with the reason for layers left dense."""

    key: ClassVar[str] = "oneshot"
    method: str = ""
    layers: list[dict[str, Any]] = field(default_factory=list)
    block_refit: list[dict[str, Any]] = field(default_factory=list)

    def notes(self, stage: int) -> list[str]:
        done = [r for r in self.layers if "skipped" not in r and r.get("rel_error") is not None]
        if not done:
            return []
        worst = max(done, key=lambda r: r["rel_error"])
        return [f"{self.method} (stage {stage}): {len(done)} layers sparsified; largest relative output error on "
                f"the calibration data {worst['rel_error']:.3g} ({worst['layer']})."] + refit_note(self.block_refit, stage)


def _handler(model: nn.Module, cfg: OneShotConfig, ctx: PassContext) -> nn.Module:
    ctx.require("calibration", pass_name=f"prune(method={cfg.method})")
    original = copy.deepcopy(model) if cfg.block_refit is not None else None
    rec = ctx.add(OneShotRecord(cfg.method, oneshot_prune_(model, cfg, ctx.calibration)))
    if original is not None and cfg.block_refit is not None:
        rec.block_refit = refit_blocks(model, original, ctx.calibration, cfg.block_refit, seed=ctx.seed)
    ctx.extras["layers"] = rec.layers  # the rows the runner keeps as the stage's per-layer table
    return model


@register_pass(WandaPruneConfig, needs=("calibration",))
def wanda_pass(model: nn.Module, cfg: WandaPruneConfig, ctx: PassContext) -> nn.Module:
    """The ``prune`` pass, method ``wanda``."""
    return _handler(model, cfg, ctx)


@register_pass(SparseGPTConfig, needs=("calibration",))
def sparsegpt_pass(model: nn.Module, cfg: SparseGPTConfig, ctx: PassContext) -> nn.Module:
    """The ``prune`` pass, method ``sparsegpt``."""
    return _handler(model, cfg, ctx)

