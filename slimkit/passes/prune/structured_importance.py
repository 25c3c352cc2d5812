"""Importance of structured units (channels, heads, hidden units), aggregated over their dependency group.

Every member of a unit (the conv filter that produces a channel, the BN scale, the next layer's input
columns, ...) gets a per-position score; scores are normalised per member (divided by the member's mean) so
layers of different sizes compare, then summed over a unit's positions in a member and aggregated over its
members (``mean`` or ``sum``). Analysis only: gradients and activations are taken on a copy of the model.
"""

from __future__ import annotations

import copy
import itertools
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.context import eval_mode
from slimkit.data.batch import call_model, split_batch
from slimkit.errors import ConfigError
from slimkit.graph.core import DependencyGraph, Member
from slimkit.graph.modules import GATES

CRITERIA = ("l1", "l2", "bn_scale", "taylor", "entropy")


def _slices(mod: nn.Module, m: Member, get: Any) -> list[tuple[torch.Tensor, int]]:
    """(tensor, dim) pairs whose index ``i`` along ``dim`` belongs to position ``i`` of member ``m``;
    ``get(param)`` maps a parameter to what is scored (the weight itself or weight * grad)."""
    r = m.role
    if r in ("conv.out", "conv.in"):
        w = get(mod.weight)
        if r == "conv.in" and mod.groups > 1:
            return []
        dim = int(mod.transposed) if r == "conv.out" else 1 - int(mod.transposed)
        out = [(w, dim)]
        if r == "conv.out" and mod.bias is not None:
            out.append((get(mod.bias), 0))
        return out
    if r == "linear.out":
        return [(get(mod.weight), 0)] + ([(get(mod.bias), 0)] if mod.bias is not None else [])
    if r == "linear.in":
        return [(get(mod.weight), 1)]
    if r in ("norm", "ln", "prelu"):
        return [(get(mod.weight), 0)] if getattr(mod, "weight", None) is not None else []
    if r == "emb":
        return [(get(mod.weight), 1)]
    if r == "param":
        return [(get(getattr(mod, str(m.extra["name"]))), int(m.extra["dim"]))]  # type: ignore[call-overload]
    if r == "mha.embed":
        return [(get(mod.in_proj_weight), 1), (get(mod.out_proj.weight), 0)]
    if r == "mha.heads":
        h = mod.num_heads
        hd = mod.head_dim
        w = get(mod.in_proj_weight).reshape(3, h, hd, -1).transpose(0, 1).reshape(h, -1)
        o = get(mod.out_proj.weight).reshape(-1, h, hd).transpose(0, 1).reshape(h, -1)
        return [(w, 0), (o, 0)]
    if r == "rnn.hidden":
        hsz, g = mod.hidden_size, GATES.get(mod.mode, 1)
        out = []
        for name, p in mod.named_parameters():
            if name.startswith("weight_ih") or name.startswith("weight_hh") or name.startswith("bias"):
                out.append((get(p).reshape(g, hsz, -1).transpose(0, 1).reshape(hsz, -1), 0))
        return out
    if r == "rnn.in":
        return [(get(mod.weight_ih_l0), 1)] + ([(get(mod.weight_ih_l0_reverse), 1)] if mod.bidirectional else [])
    return []


def _reduce(t: torch.Tensor, dim: int, p: int) -> torch.Tensor:
    t = t.detach().float().movedim(dim, 0).reshape(t.shape[dim], -1)
    return t.abs().sum(1) if p == 1 else t.pow(2).sum(1).sqrt()


def _member_scores(model: nn.Module, graph: DependencyGraph, get: Any, p: int,
                   roles: set[str] | None = None) -> dict[int, torch.Tensor]:
    out: dict[int, torch.Tensor] = {}
    for mi, m in enumerate(graph.members):
        if roles is not None and m.role not in roles:
            continue
        mod = model.get_submodule(m.module) if m.module else model
        parts = _slices(mod, m, get)
        if not parts:
            continue
        score = sum(_reduce(t, d, p) for t, d in parts)
        if isinstance(score, torch.Tensor) and score.numel() == m.labels.numel():
            out[mi] = score
    return out


def _batches(calibration: Iterable[Any] | None, n: int, example_inputs: tuple[Any, ...] | None) -> list[Any]:
    if calibration is None:
        if example_inputs is None:
            raise ConfigError("taylor/entropy importance needs calibration batches.",
                              hint="Pass calibration=loader (batches of x or (x, y)).")
        return [(example_inputs, None)]
    out = []
    for batch in itertools.islice(calibration, n):
        x, y = split_batch(batch)
        # a target is used (cross-entropy) only when it is integer class labels
        out.append((x, y if isinstance(y, torch.Tensor) and not y.is_floating_point() else None))
    return out


def _primary(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, dict):
        out = list(out.values())
    return _primary(out[0])


def _taylor(model: nn.Module, graph: DependencyGraph, batches: list[Any]) -> dict[int, torch.Tensor]:
    work = copy.deepcopy(model)
    work.eval()
    for prm in work.parameters():
        prm.requires_grad_(True)
        prm.grad = None
    for inputs, y in batches:
        out = _primary(call_model(work, inputs)).float()
        if y is not None and out.dim() == 2 and out.shape[0] == y.shape[0]:
            loss = F.cross_entropy(out, y)
        else:
            loss = out.pow(2).mean()
        loss.backward()

    def get(prm: torch.Tensor) -> torch.Tensor:
        return prm * prm.grad if prm.grad is not None else torch.zeros_like(prm)

    return _member_scores(work, graph, get, 1)


def _entropy(model: nn.Module, graph: DependencyGraph, batches: list[Any], bins: int = 32) -> dict[int, torch.Tensor]:
    acts: dict[str, list[torch.Tensor]] = defaultdict(list)
    roles = {"conv.out": 1, "linear.out": -1, "norm": 1, "ln": -1}
    wanted = {m.module: roles[m.role] for m in graph.members if m.role in roles}
    handles = []
    for name, dim in wanted.items():
        def hook(mod: nn.Module, inp: Any, out: Any, name: str = name, dim: int = dim) -> None:
            if isinstance(out, torch.Tensor):
                d = dim if out.dim() > 1 else 0
                acts[name].append(out.detach().float().movedim(d, 0).reshape(out.shape[d], -1))
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        with eval_mode(model), torch.no_grad():
            for inputs, _ in batches:
                call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    ent: dict[str, torch.Tensor] = {}
    for name, chunks in acts.items():
        a = torch.cat(chunks, 1)
        lo, hi = a.min(1, keepdim=True).values, a.max(1, keepdim=True).values
        idx = ((a - lo) / (hi - lo).clamp_min(1e-12) * (bins - 1)).round().long()
        hist = torch.zeros(a.shape[0], bins).scatter_add_(1, idx, torch.ones_like(a))
        prob = hist / hist.sum(1, keepdim=True)
        ent[name] = -(prob * prob.clamp_min(1e-12).log()).sum(1)
    out = {}
    for mi, m in enumerate(graph.members):
        if m.role in roles and m.module in ent and ent[m.module].numel() == m.labels.numel():
            out[mi] = ent[m.module]
    return out


def unit_scores(model: nn.Module, graph: DependencyGraph, criterion: str = "l2", *,
                calibration: Iterable[Any] | None = None, example_inputs: tuple[Any, ...] | None = None,
                batches: int = 4, aggregate: str = "mean") -> dict[int, float]:
    """Score every prunable unit of ``graph`` (higher = more important). Never changes ``model``."""
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown importance '{criterion}'; expected one of {', '.join(CRITERIA)}.")
    with torch.no_grad():
        base = _member_scores(model, graph, lambda prm: prm, 2)
    if criterion == "l1":
        with torch.no_grad():
            scores = _member_scores(model, graph, lambda prm: prm, 1)
    elif criterion == "l2":
        scores = base
    elif criterion == "bn_scale":
        with torch.no_grad():
            scores = _member_scores(model, graph, lambda prm: prm, 1, roles={"norm"})
    elif criterion == "taylor":
        scores = _taylor(model, graph, _batches(calibration, batches, example_inputs))
    else:
        scores = _entropy(model, graph, _batches(calibration, batches, example_inputs))
    primary = _aggregate(graph, scores, aggregate)
    fallback = _aggregate(graph, base, aggregate)
    units = {u for g in graph.groups for u in g.units}
    return {u: primary.get(u, fallback.get(u, 0.0)) for u in units}


def _aggregate(graph: DependencyGraph, scores: dict[int, torch.Tensor], how: str) -> dict[int, float]:
    per_unit: dict[int, list[float]] = defaultdict(list)
    for u, places in graph.unit_positions().items():
        for mi, pos in places:
            s = scores.get(mi)
            if s is None:
                continue
            norm = float(s.mean()) or 1.0
            per_unit[u].append(float(s[pos].sum()) / norm)
    if how == "sum":
        return {u: sum(v) for u, v in per_unit.items()}
    return {u: sum(v) / len(v) for u, v in per_unit.items()}
