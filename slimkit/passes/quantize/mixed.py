"""Sensitivity-guided mixed precision for PTQ (``PTQConfig.mixed``).

Analysis only reads the model it is given: every measurement runs on copies. The plan is found in four steps:

1. check the candidates (``mixed.layers``) and the scoring data against the model (typed errors, model untouched);
2. quantize one copy with the stage's config, every layer at once, and (when the kept layers become 8-bit) a
   second copy at 8-bit weights. PTQ calibrates every observer on float activations (fake quantization is
   off while calibrating), so each layer's quantizers do not depend on which other layers are quantized:
   switching a layer's quantizers off (or to the 8-bit ones) in the copy gives exactly the model PTQ would
   build with that layer skipped (or overridden), without calibrating again for every candidate;
3. score each candidate quantized alone against the input model (:func:`slimkit.search.layer_sensitivity`),
   then keep the most sensitive ones at higher precision, greedily, measuring each step, until the floor is
   met (:func:`slimkit.search.mixed_assignment`);
4. return the stage's config with the plan written out (``skip`` for float, ``overrides`` for 8-bit), which the
   PTQ handler then applies to the real model. The result goes to ``ctx.extras["sensitivity"]``.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.config.layers import match_layer
from slimkit.config.quantize import Int, MixedPrecision, PTQConfig
from slimkit.context import PassContext, eval_mode, model_device
from slimkit.data.batch import call_model, split_batch
from slimkit.errors import ConfigError, DataError, did_you_mean
from slimkit.evaluation.agreement import row_cosine
from slimkit.passes.quantize.modules import quant_wrappers, quantizable_layers

log = logging.getLogger(__name__)

__all__ = ["candidate_layers", "keep_spec", "mixed_from_manifest", "plan_mixed_ptq", "resolve_keep_as"]


def resolve_keep_as(cfg: PTQConfig) -> str:
    """``float`` or ``int8``: how the kept layers are held (``auto``: int8 below 8-bit weights, else float)."""
    assert cfg.mixed is not None
    if cfg.mixed.keep_as != "auto":
        return cfg.mixed.keep_as
    return "int8" if not (isinstance(cfg.weights, Int) and cfg.weights.bits == 8) else "float"


def keep_spec(cfg: PTQConfig) -> Int:
    """The 8-bit weight spec of a kept layer: the stage's own ``Int`` settings at 8 bits (per channel for log
    and binary stages)."""
    if isinstance(cfg.weights, Int):
        return cfg.weights.model_copy(update={"bits": 8})
    return Int(8, per_channel=True)


def resolved_config(cfg: PTQConfig, keep: list[str], keep_as: str) -> PTQConfig:
    """``cfg`` without ``mixed``, the kept layers written out: appended to ``skip`` (float) or first in
    ``overrides`` (8-bit; first match wins)."""
    if keep_as == "float":
        return cfg.model_copy(update={"mixed": None, "skip": [*cfg.skip, *keep]})
    spec = keep_spec(cfg)
    return cfg.model_copy(update={"mixed": None, "overrides": {**{k: spec for k in keep}, **cfg.overrides}})


# ------------------------------------------------------------------------------------------------ scoring
def _score_source(mixed: MixedPrecision, ctx: PassContext,
                  replay: Callable[[Iterable[Any], int | None], Iterable[Any]]) -> tuple[Iterable[Any], str]:
    use_val = mixed.data == "val" and ctx.val_loader is not None
    source = ctx.val_loader if use_val else ctx.calibration
    where = "val" if use_val else "calibration"
    if source is None:
        raise ConfigError("mixed precision needs data to score layers on, but there is no validation or "
                          "calibration data.", hint="Give the recipe a data section, or pass calibration=loader.")
    return replay(source, mixed.batches), where


def _output(model: nn.Module, x: Any, device: torch.device) -> torch.Tensor:
    out = call_model(model, x, device)
    if not isinstance(out, torch.Tensor):
        logits = getattr(out, "logits", None)
        if not isinstance(logits, torch.Tensor):
            raise DataError("mixed precision scores models that return a tensor (or .logits); this model "
                            f"returns {type(out).__name__}.")
        out = logits
    return out.detach().float().cpu()


@torch.no_grad()
def _scorer(model: nn.Module, batches: Iterable[Any], metric: str, where: str,
            ) -> tuple[Callable[[nn.Module], float], float | None, int]:
    """One pass of the input ``model`` over ``batches``; returns ``score(candidate) -> fidelity`` (1.0 for the
    input model), the input model's raw accuracy (or None) and the number of samples. Only per-sample
    reference values are kept (the outputs for ``cosine``, the top-1 classes for ``top1_agreement``, the
    labels for ``accuracy``): every score streams ``batches`` again, one batch at a time."""
    device = model_device(model)
    refs: list[Any] = []
    with eval_mode(model):
        for b in batches:
            x, y = split_batch(b)
            if metric == "accuracy" and y is None:
                raise ConfigError(f"mixed.metric 'accuracy' needs labelled (x, y) batches, but the {where} data "
                                  "has none.", hint="Use metric top1_agreement or cosine, which compare with "
                                                    "the input model.")
            out = _output(model, x, device)
            if metric == "cosine":
                refs.append(out)
            elif metric == "top1_agreement":
                refs.append(out.flatten(1).numpy().argmax(-1))
            else:
                refs.append((torch.as_tensor(y).reshape(-1).cpu(), out))
    if not refs:
        raise ConfigError(f"the {where} data is empty; mixed precision has nothing to score layers on.")

    def per_batch(candidate: nn.Module) -> Iterator[tuple[Any, torch.Tensor]]:
        with eval_mode(candidate):
            for ref, b in zip(refs, batches, strict=True):
                yield ref, _output(candidate, split_batch(b)[0], device)

    if metric == "cosine":
        def cosine(candidate: nn.Module) -> float:
            return float(np.concatenate([row_cosine(out, ref) for ref, out in per_batch(candidate)]).mean())
        return cosine, None, sum(len(r) for r in refs)
    if metric == "top1_agreement":
        def agreement(candidate: nn.Module) -> float:
            same = sum(int((out.flatten(1).numpy().argmax(-1) == ref).sum()) for ref, out in per_batch(candidate))
            return same / n
        n = sum(len(r) for r in refs)
        return agreement, None, n

    def correct(out: torch.Tensor, y: torch.Tensor) -> int:
        return int((out.flatten(1).argmax(1) == y).sum())

    n = sum(len(y) for y, _ in refs)
    ref_acc = sum(correct(out, y) for y, out in refs) / n
    refs = [y for y, _ in refs]  # the input model's outputs are no longer needed
    if ref_acc <= 0:
        raise DataError("mixed.metric 'accuracy' is relative to the input model's accuracy, which is 0 on the "
                        "scoring data.", hint="Use metric top1_agreement or cosine.")

    def acc(candidate: nn.Module) -> float:
        return sum(correct(out, y) for y, out in per_batch(candidate)) / n / ref_acc
    return acc, ref_acc, n


# --------------------------------------------------------------------------------------------- candidates
def candidate_layers(model: nn.Module, cfg: PTQConfig) -> list[str]:
    """Quantizable layer names (once per layer object) matched by ``mixed.layers``; ConfigError for a pattern
    that matches none."""
    assert cfg.mixed is not None
    layers: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    for name, mod in quantizable_layers(model, list(cfg.include), cfg.skip, cfg.filter_fn):
        if id(mod) not in seen:
            seen.add(id(mod))
            layers.append((name, mod))
    if not layers:
        raise ConfigError(f"no layer to quantize: the model has no {'/'.join(cfg.include)} layer outside skip.")
    names = [n for n, _ in layers]
    for pat in cfg.mixed.layers:
        if not any(match_layer(n, m, [pat]) for n, m in layers):
            raise ConfigError(f"mixed.layers: '{pat}' matches no quantized layer.{did_you_mean(pat, names)}",
                              hint=f"Quantized layers: {', '.join(names[:12])}"
                                   + (f" (and {len(names) - 12} more)." if len(names) > 12 else "."))
    if cfg.mixed.layers:
        return [n for n, m in layers if match_layer(n, m, cfg.mixed.layers)]
    return names


def _weight_numel(model: nn.Module, name: str) -> int:
    w = getattr(model.get_submodule(name), "weight", None)
    return int(w.numel()) if isinstance(w, torch.Tensor) else 0


def _bits(cfg: PTQConfig) -> int:
    return getattr(cfg.weights, "bits", 1)


# ------------------------------------------------------------------------------------------------- plan
def plan_mixed_ptq(model: nn.Module, cfg: PTQConfig, ctx: PassContext,
                   quantize: Callable[[nn.Module, PTQConfig, PassContext], nn.Module],
                   ) -> tuple[PTQConfig, dict[str, Any], Iterable[Any]]:
    """Measure per-layer sensitivity and choose the layers kept at higher precision (module docstring).
    ``quantize(model, cfg, ctx)`` is the PTQ handler (run on copies only). Returns the resolved config (no
    ``mixed``; kept layers in ``skip`` or ``overrides``), the JSON-ready result and the calibration batches
    the plan was measured with (apply the resolved config with those). ``model`` is not changed.

    The calibration and scoring data are streamed again for every candidate
    (:func:`slimkit.analysis.calibration.replay_batches`), so memory does not grow with the number of
    batches; data that cannot be replayed in the same order is kept in lists, and data that turns out to
    change between passes is read once more into a list (scoring and calibration share it when they come
    from the same source) and the plan measured again on it."""
    from slimkit.analysis.calibration import BatchesChanged, replay_batches

    try:
        return _plan(model, cfg, ctx, quantize, replay_batches)
    except BatchesChanged as exc:
        log.warning("mixed precision: %s The plan is measured again on batches kept in memory.", exc)
        kept: dict[int, list[Any]] = {}  # one read per source: scoring and calibration share their batches

        def keep(source: Iterable[Any], n: int | None) -> list[Any]:
            if id(source) not in kept:
                most = max(cfg.calibration_batches, cfg.mixed.batches) if cfg.mixed is not None else n
                kept[id(source)] = list(itertools.islice(iter(source), most))
            return kept[id(source)][:n]
        return _plan(model, cfg, ctx, quantize, keep)


def _plan(model: nn.Module, cfg: PTQConfig, ctx: PassContext,
          quantize: Callable[[nn.Module, PTQConfig, PassContext], nn.Module],
          replay: Callable[[Iterable[Any], int | None], Iterable[Any]],
          ) -> tuple[PTQConfig, dict[str, Any], Iterable[Any]]:
    from slimkit.analysis.sensitivity import layer_sensitivity, mixed_assignment, sensitivity_table

    mixed = cfg.mixed
    if mixed is None:
        raise ConfigError("plan_mixed_ptq needs a config with mixed set.")
    units = candidate_layers(model, cfg)
    keep_as = resolve_keep_as(cfg)
    batches, where = _score_source(mixed, ctx, replay)
    score, ref_acc, samples = _scorer(model, batches, mixed.metric, where)
    if ctx.calibration is None:
        raise ConfigError("static quantization needs calibration data but none was given.",
                          hint="Pass calibration=loader, or give the recipe a data section.")
    # the same calibration batches for every copy and for the final model, so the plan's measured score is
    # the score of the model the stage returns
    calib = replay(ctx.calibration, cfg.calibration_batches)
    sub = copy.copy(ctx)
    sub.calibration = calib
    sub.extras = {}

    plain = cfg.model_copy(update={"mixed": None})
    full = quantize(copy.deepcopy(model), plain, sub)
    wrappers = dict(quant_wrappers(full))
    missing = [u for u in units if u not in wrappers]
    if missing:  # a candidate that PTQ did not wrap (should not happen: same include/skip)
        raise ConfigError(f"mixed precision: layer(s) {missing[:5]} were not quantized by the stage.")
    hi: dict[str, nn.Module | None] = {}
    if keep_as == "int8":
        hi_cfg = plain.model_copy(update={"weights": keep_spec(cfg), "overrides": {}})
        hi_model = quantize(copy.deepcopy(model), hi_cfg, sub)
        hi = {n: w.weight_fake_quant for n, w in quant_wrappers(hi_model)}
    original = {n: (w.weight_fake_quant, w.input_fake_quant) for n, w in wrappers.items()}
    unit_set = set(units)

    def configure(compressed: set[str]) -> None:
        """Candidates outside ``compressed`` at higher precision; every other layer as the stage makes it."""
        for n, w in wrappers.items():
            wfq, ifq = original[n]
            if n in unit_set and n not in compressed:
                if keep_as == "float":
                    wfq, ifq = None, None
                else:
                    wfq = hi[n]
            w.weight_fake_quant, w.input_fake_quant = wfq, ifq

    def measure(compressed: set[str]) -> float:
        configure(compressed)
        return score(full)

    bits = _bits(cfg)
    extra = (32 - bits) if keep_as == "float" else (8 - bits)
    costs = {u: _weight_numel(model, u) * max(extra, 0) // 8 for u in units}

    def alone(unit: str) -> float:  # only this layer quantized, every other in float: its own loss
        for n, w in wrappers.items():
            w.weight_fake_quant, w.input_fake_quant = original[n] if n == unit else (None, None)
        return score(full)

    sens = layer_sensitivity(units, alone, baseline=1.0, costs=costs)
    all_compressed = measure(unit_set)

    def evaluate(keep: list[str]) -> float:
        return measure(unit_set - set(keep))

    plan = mixed_assignment(sens, fidelity_floor=mixed.floor, baseline=1.0, evaluate=evaluate,
                            max_keep=mixed.max_keep)
    result = {
        "pass": "quantize:ptq", "metric": mixed.metric, "floor": mixed.floor, "keep_as": keep_as,
        "bits": bits, "data": where, "samples": samples,
        "reference_accuracy": ref_acc, "baseline": 1.0, "all_compressed": all_compressed,
        "table": sensitivity_table(sens), "keep": plan.keep, "score": plan.score, "met": plan.met,
        "reason": plan.reason, "trace": plan.trace,
    }
    log.info("mixed precision: keep %s as %s, %s %.4f (floor %.4f, %s)", plan.keep, keep_as, mixed.metric,
             plan.score, mixed.floor, "met" if plan.met else "NOT met")
    return resolved_config(cfg, plan.keep, keep_as), result, calib


def mixed_from_manifest(model: nn.Module, cfg: PTQConfig, manifest: dict[str, Any]) -> PTQConfig:
    """The resolved config of a saved mixed-precision PTQ stage, read from its checkpoint: a layer whose float
    weight is saved unwrapped (``<layer>.weight``) was kept in float; one whose packed codes are 8-bit while
    the stage is lower-bit was kept at 8 bits. Used by the rebuild hook (resume, ``slimkit eval``)."""
    tensors = manifest.get("tensors") or {}
    layers = [n for n, _ in quantizable_layers(model, list(cfg.include), cfg.skip, cfg.filter_fn)]
    keep_float = [n for n in layers if f"{n}.weight" in tensors and f"{n}.module.weight" not in tensors]
    bits = _bits(cfg)
    keep_8 = [n for n in layers if bits < 8
              and ((tensors.get(f"{n}.module.weight") or {}).get("info") or {}).get("bits") == 8]
    out = cfg.model_copy(update={"mixed": None, "skip": [*cfg.skip, *keep_float]})
    if keep_8:
        spec = keep_spec(cfg)
        out = out.model_copy(update={"overrides": {**{k: spec for k in keep_8}, **cfg.overrides}})
    return out

