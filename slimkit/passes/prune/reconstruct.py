"""Least-squares reconstruction of the layer that reads a pruned group (its *consumer*).

Analysis (which groups can be rebuilt, statistics, greedy choice, refits) is kept apart from the change:
:func:`install` writes a refit into the consumer, :func:`slimkit.graph.apply_removal` slices.

Notation: ``z = [x; 1]`` is the consumer's input row (a Linear input, or a conv patch in
``weight.reshape(out, -1)`` column order) with a constant for the intercept; ``H = E[z z^T]`` (from
:func:`slimkit.analysis.calibration.collect_input_stats`) and ``W = [weight, bias]``. Removing the columns
``B`` and refitting the rest minimizes ``E||W z - W' z||^2``; the greedy choice (ThiNet with refit, the OBS
formula on whole channels) removes, step by step, the block with the least error
``tr(W_B [H^-1]_BB^-1 W_B^T)`` and updates ``W`` and ``H^-1`` in closed form.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimkit.analysis.calibration import InputStats, collect_input_stats, hooked_forward
from slimkit.graph.core import DependencyGraph, Group

log = logging.getLogger(__name__)

# roles a reconstructable group may have besides its one consumer: producers and per-channel ops
_PER_CHANNEL = {"conv.out", "linear.out", "norm", "prelu", "hf.heads"}


@dataclass
class Target:
    """A reconstructable group: ``cols[u]`` are the consumer's weight columns that unit ``u`` feeds."""

    group: Group
    consumer: str
    cols: dict[int, torch.Tensor]
    block: int
    intercept: str | None = None
    """Where the refit's constant goes: ``bias`` (the consumer's), the name of the BatchNorm that reads the
    consumer's output directly (its running mean absorbs it), or None (refit without intercept)."""
    macs_per_unit: float = 0.0
    row_scale: torch.Tensor | None = None
    """Per output row of the consumer, how much the BatchNorm that reads it scales it (``gamma / sqrt(var +
    eps)``; None without one). The refit solves each row on its own, so the scale does not change it; the
    *choice* of what to remove sums errors over rows, and is made on the post-BatchNorm output."""
    stream: str | None = None
    """The module around the consumer whose output is its own input plus the consumer's output (after the
    intercept BatchNorm): a residual block ``A(r) = r + y`` (:func:`find_streams`); None without one."""
    record: dict[str, Any] = field(default_factory=dict)


def find_targets(model: nn.Module, graph: DependencyGraph) -> tuple[list[Target], list[dict[str, Any]]]:
    """The reconstructable groups of ``graph`` and, for the others, why they are kept."""
    positions = graph.unit_positions()
    targets, skipped = [], []
    for g in graph.groups:
        consumers: dict[int, dict[int, torch.Tensor]] = {}
        why = None
        for u in g.units:
            for mi, pos in positions.get(u, []):
                m = graph.members[mi]
                mod = model.get_submodule(m.module) if m.module else model
                if (m.role == "linear.in" and type(mod) is nn.Linear) or (
                        m.role == "conv.in" and type(mod) is nn.Conv2d and mod.groups == 1
                        and mod.padding_mode == "zeros"):
                    consumers.setdefault(mi, {})[u] = pos
                elif m.role == "conv.in" and isinstance(mod, nn.Conv2d) and mod.groups == mod.in_channels:
                    continue  # depthwise: per channel
                elif m.role not in _PER_CHANNEL:
                    why = f"'{m.module}' uses its channels as {m.role}"
        if why is None and len(consumers) != 1:
            why = f"{len(consumers)} layers read its channels (a residual stream or a branch)"
        if why is not None:
            skipped.append({"group": g.index, "producers": g.producers, "units": len(g), "kept": why})
            continue
        (mi, per_unit), = consumers.items()
        name = graph.members[mi].module
        mod = model.get_submodule(name)
        block = int(mod.kernel_size[0] * mod.kernel_size[1]) if isinstance(mod, nn.Conv2d) else 1
        cols = {u: (p[:, None] * block + torch.arange(block)[None, :]).reshape(-1) for u, p in per_unit.items()}
        targets.append(Target(g, name, cols, block))
    return targets, skipped


def find_intercepts(model: nn.Module, targets: list[Target], example_inputs: tuple[Any, ...]) -> None:
    """Set ``target.intercept``: the consumer's bias, else a BatchNorm whose input *is* the consumer's output
    (checked on one forward), else None; and ``target.row_scale`` from that BatchNorm."""
    names = {t.consumer for t in targets}
    found: dict[str, str] = {}
    last: dict[str, Any] = {}
    handles = []
    for name in names:
        def out_hook(mod: nn.Module, inp: Any, out: Any, name: str = name) -> None:
            last[name] = out
        handles.append(model.get_submodule(name).register_forward_hook(out_hook))
    for bn_name, bn in model.named_modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            def bn_hook(mod: nn.Module, args: Any, bn_name: str = bn_name) -> None:
                for name, out in last.items():
                    if args and args[0] is out and name not in found:
                        found[name] = bn_name
            handles.append(bn.register_forward_pre_hook(bn_hook))
    if names:
        hooked_forward(model, example_inputs, handles)
    else:
        for h in handles:
            h.remove()
    for t in targets:
        bn_name = found.get(t.consumer)
        t.intercept = "bias" if model.get_submodule(t.consumer).bias is not None else bn_name
        if bn_name is not None:
            scale = _bn_scale(model.get_submodule(bn_name))
            if scale is not None:
                t.row_scale = scale.abs()


def find_streams(model: nn.Module, targets: list[Target], example_inputs: tuple[Any, ...]) -> None:
    """Set ``target.stream``: the innermost module enclosing the consumer whose output equals its input plus
    the consumer's output (the output of the intercept BatchNorm when there is one), checked on one forward
    (a MobileNetV2 / ResNet-style residual block); call after :func:`find_intercepts`."""
    seen: dict[str, dict[str, Any]] = {}
    handles = []

    def record(name: str) -> None:
        if name in seen:
            return
        seen[name] = {}
        mod = model.get_submodule(name)

        def pre(m: nn.Module, args: Any) -> None:
            seen[name].setdefault("in", args[0] if args else None)

        def post(m: nn.Module, args: Any, out: Any) -> None:
            seen[name].setdefault("out", out)
        handles.extend([mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)])

    outs = {t.consumer: t.intercept if t.intercept not in (None, "bias") else t.consumer for t in targets}
    parts = {t.consumer: t.consumer.split(".") for t in targets}
    for t in targets:
        record(outs[t.consumer])
        for i in range(len(parts[t.consumer]) - 1, 0, -1):
            record(".".join(parts[t.consumer][:i]))
    if targets:
        hooked_forward(model, example_inputs, handles)
    for t in targets:
        y = seen[outs[t.consumer]].get("out")
        for i in range(len(parts[t.consumer]) - 1, 0, -1):
            name = ".".join(parts[t.consumer][:i])
            r, out = seen[name].get("in"), seen[name].get("out")
            if all(isinstance(v, torch.Tensor) for v in (y, r, out)) and r.shape == y.shape == out.shape \
                    and torch.allclose(r + y, out, atol=1e-5, rtol=1e-4):
                t.stream = name
                break


def stream_factor(model: nn.Module, t: Target) -> torch.Tensor:
    """Per output channel of ``t``'s consumer: 1 / the scale of the BatchNorm between it and the residual add
    (``gamma / sqrt(var + eps)``; 0 where that scale is ~0), 1 without one: a drift of the stream in the
    consumer's output units."""
    width = model.get_submodule(t.consumer).weight.shape[0]
    a = None if t.intercept in (None, "bias") else _bn_scale(model.get_submodule(t.intercept))
    if a is None:
        return torch.ones(width, dtype=torch.float64)
    return torch.where(a.abs() > 1e-8, 1.0 / a, torch.zeros_like(a))


def _bn_scale(bn: nn.Module) -> torch.Tensor | None:
    """A BatchNorm's signed per-channel scale in eval mode, ``gamma / sqrt(running_var + eps)`` (float64, CPU),
    or None when it keeps no running statistics."""
    if not (bn.track_running_stats and bn.running_var is not None):
        return None
    scale = 1.0 / (bn.running_var.detach().to("cpu", torch.float64) + bn.eps).sqrt()
    if bn.affine:
        scale = scale * bn.weight.detach().to("cpu", torch.float64)
    return scale


def weight_aug(model: nn.Module, t: Target) -> torch.Tensor:
    """``[out, d + 1]``: the consumer's weight with its intercept column (float64, CPU)."""
    mod = model.get_submodule(t.consumer)
    w = mod.weight.detach().to("cpu", torch.float64).reshape(mod.weight.shape[0], -1)
    b = torch.zeros(w.shape[0], dtype=torch.float64)
    if t.intercept == "bias":
        b = mod.bias.detach().to("cpu", torch.float64)
    elif t.intercept is not None:
        bn = model.get_submodule(t.intercept)
        b = (-bn.running_mean.detach().to("cpu", torch.float64))  # BN(y) = BN'(y + c) with mean' = mean + c
    return torch.cat([w, b[:, None]], 1)


def moments(stats: InputStats) -> torch.Tensor:
    """``H = E[z z^T]`` with ``z = [x; 1]`` from one layer's streamed statistics."""
    n = max(stats.count, 1)
    d = stats.dim
    h = torch.empty(d + 1, d + 1, dtype=torch.float64)
    h[:d, :d] = stats.xtx[0] / n
    h[:d, d] = h[d, :d] = stats.sum[0] / n
    h[d, d] = 1.0
    return h


def _damp(h: torch.Tensor, ridge: float, d: int) -> torch.Tensor:
    h = h.clone()
    idx = torch.arange(d)
    h[idx, idx] += ridge * float(h[idx, idx].mean().clamp_min(1e-12))
    return h


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Many small ops in a loop: one intra-op thread is faster than several (and far faster on a busy CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def greedy_order(w: torch.Tensor, h: torch.Tensor, cols: dict[int, torch.Tensor], ridge: float,
                 max_remove: int) -> tuple[list[int], list[float]]:
    """Units in the order the greedy removes them (first = cheapest) and the relative output error after
    each step, refit included. ``w``: ``[out, d + 1]``; ``h``: ``[d + 1, d + 1]``."""
    with _one_thread():
        return _greedy(w, h, cols, ridge, max_remove)


def _greedy(w: torch.Tensor, h: torch.Tensor, cols: dict[int, torch.Tensor], ridge: float,
            max_remove: int) -> tuple[list[int], list[float]]:
    d = h.shape[0] - 1
    hinv = torch.linalg.inv(_damp(h, ridge, d))
    w = w.clone()
    ref = float(torch.einsum("od,de,oe->", w, h, w)) or 1.0
    units = list(cols)
    idx = torch.stack([cols[u] for u in units])  # [U, b]: every unit feeds the same number of columns
    alive = torch.ones(len(units), dtype=torch.bool)
    order, errors, total = [], [], 0.0
    todo = min(max_remove, len(units))
    while len(order) < todo:
        if idx.shape[1] == 1:
            c = idx[:, 0]
            err = w[:, c].pow(2).sum(0) / hinv[c, c].clamp_min(1e-30)
        else:
            hbb = hinv[idx[:, :, None], idx[:, None, :]]  # [U, b, b]
            wb = w[:, idx].permute(1, 0, 2)  # [U, out, b]
            err = (torch.linalg.solve(hbb, wb.transpose(1, 2)).transpose(1, 2) * wb).sum((1, 2))
        err = err.masked_fill(~alive, float("inf"))
        # remove the cheapest 1/64 of the remaining units together (one at a time for small groups): the
        # chunk's exact joint error is charged and W, H^-1 updated for the whole chunk
        n_alive = int(alive.sum())
        step = min(todo - len(order), max(1, n_alive // 64))
        ks = err.topk(step, largest=False).indices
        alive[ks] = False
        b = idx[ks].reshape(-1)
        inv_bb = torch.linalg.inv(hinv[b][:, b])
        joint = float(torch.einsum("ob,bc,oc->", w[:, b], inv_bb, w[:, b]))
        w -= (w[:, b] @ inv_bb) @ hinv[b, :]
        hinv -= hinv[:, b] @ inv_bb @ hinv[b, :]
        # the removed rows/columns of H^-1 are now ~0: pin their diagonal so later solves stay finite
        hinv[b, b] = 1.0
        for j, k in enumerate(ks.tolist()):
            order.append(units[k])
            errors.append((total + joint * (j + 1) / step) / ref)
        total += joint
    return order, errors


def refit(w: torch.Tensor, h_xz: torch.Tensor, h_zz: torch.Tensor, ridge: float) -> torch.Tensor:
    """Ridge least squares ``argmin_V E||W x - V z||^2`` from ``h_xz = E[x z^T]`` (x: what ``w`` multiplies,
    z: the new inputs, intercept last) and ``h_zz = E[z z^T]``."""
    rhs = w @ h_xz
    a = _damp(h_zz, ridge, h_zz.shape[0] - 1)
    return torch.linalg.solve(a, rhs.T).T


def refit_no_worse(w: torch.Tensor, current: torch.Tensor, h_xx: torch.Tensor, h_xz: torch.Tensor,
                   h_zz: torch.Tensor, ridge: float, intercept: bool = True) -> tuple[torch.Tensor, float]:
    """The ridge refit (:func:`refit`; without an intercept when ``intercept`` is False) or ``current`` (the
    consumer's weights on the same inputs, intercept last), whichever rebuilds ``W x`` better on the
    calibration statistics, and its relative error: the ridge term can cost more than it gains when what was
    removed carried nothing (a dead channel), and a refit must never make the consumer worse."""
    if intercept:
        v = refit(w, h_xz, h_zz, ridge)
    else:
        v = torch.cat([refit(w[:, :-1], h_xz[:-1, :-1], h_zz[:-1, :-1], ridge),
                       torch.zeros(w.shape[0], 1, dtype=w.dtype)], 1)
    e_fit = relative_error(w, v, h_xx, h_xz, h_zz)
    e_cur = relative_error(w, current, h_xx, h_xz, h_zz)
    return (v, e_fit) if e_fit <= e_cur else (current.clone(), e_cur)


def relative_error(w: torch.Tensor, v: torch.Tensor, h_xx: torch.Tensor, h_xz: torch.Tensor,
                   h_zz: torch.Tensor) -> float:
    """``E||W x - V z||^2 / E||W x||^2``."""
    ref = float(torch.einsum("od,de,oe->", w, h_xx, w))
    err = ref - 2 * float(torch.einsum("od,de,oe->", w, h_xz, v)) + float(torch.einsum("od,de,oe->", v, h_zz, v))
    return max(err, 0.0) / ref if ref > 0 else 0.0


def install(model: nn.Module, t: Target, v: torch.Tensor, keep_cols: torch.Tensor | None = None) -> None:
    """Write ``v`` (``[out, kept + 1]``, intercept last) into the consumer; the columns not in ``keep_cols``
    (all kept when None) become zero, which is what removing their channels does."""
    mod = model.get_submodule(t.consumer)
    shape = mod.weight.shape
    w = torch.zeros(shape[0], mod.weight[0].numel(), dtype=torch.float64)
    if keep_cols is None:
        w[:] = v[:, :-1]
    else:
        w[:, keep_cols] = v[:, :-1]
    c = v[:, -1]
    with torch.no_grad():
        mod.weight.copy_(w.reshape(shape).to(mod.weight))
        if t.intercept == "bias":
            mod.bias.copy_(c.to(mod.bias))
        elif t.intercept is not None:
            bn = model.get_submodule(t.intercept)
            bn.running_mean.copy_((-c).to(bn.running_mean))


def consumer_stats(model: nn.Module, targets: list[Target], calibration: Iterable[Any],
                   max_batches: int | None) -> dict[str, InputStats]:
    return collect_input_stats(model, calibration, {t.consumer: model.get_submodule(t.consumer) for t in targets},
                               max_batches=max_batches)


def joint_moments(stats: InputStats, d_cur: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From :func:`slimkit.analysis.paired.paired_stats` (``target="input"``): ``(H_xx, H_xz, H_zz)`` with
    x = [reference input (then the stream drift, when there is one); 1], z = [pruned input; 1]."""
    n = max(stats.count, 1)
    m = stats.xtx[0] / n
    s = stats.sum[0] / n
    cur, ref = slice(0, d_cur), slice(d_cur, m.shape[0])

    def block(a: slice, b: slice) -> torch.Tensor:
        out = torch.empty(a.stop - a.start + 1, b.stop - b.start + 1, dtype=torch.float64)
        out[:-1, :-1] = m[a, b]
        out[:-1, -1] = s[a]
        out[-1, :-1] = s[b]
        out[-1, -1] = 1.0
        return out

    return block(ref, ref), block(ref, cur), block(cur, cur)
