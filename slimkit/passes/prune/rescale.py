"""Mask tuning (Kwon et al. 2022): after heads / FFN neurons are removed, refit only one *scale per kept
unit* of each consumer (and its bias), layer after layer, so that the pruned model's sublayer output matches
the original's.

For a consumer ``y = W x + b`` whose kept units ``u`` own the columns ``C_u`` of ``W``, the unit's
contribution is ``c_u = W[:, C_u] x[C_u]``; the refit solves

    min_{s, b'}  E || sum_u s_u c_u + b' - t ||^2 + lam * mean(diag G) * ||s - 1||^2

where ``t`` is the target row: the *original* model's consumer output plus, when the consumer's output is
added to a residual stream right after (``norm(consumer(h) + r)``, as in BERT's ``SelfOutput``/``Output``,
verified on one forward), the original residual minus the pruned model's residual, so that drift of the
residual stream is compensated too. Inputs ``x`` come from the *pruned* model with every earlier consumer
already tuned (sequential), the targets from the original model. There are as many unknowns as kept units
(heads: 12 per layer, not 384 x 384 weights), so the system is well posed with a few thousand tokens; the
ridge pulls toward ``s = 1`` (no change), so the calibration error can only go down: ``s = 1`` with the best
bias is a feasible point of the same objective.

Statistics are the moments of the rows ``[x, t]`` from :func:`slimkit.analysis.paired.paired_stats`
(``target="output"``, the residual as a :class:`~slimkit.analysis.paired.Stream`; padded tokens excluded), so
memory does not grow with the calibration set. Each consumer costs one paired forward of both models that
stops right after the consumer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from slimkit.analysis.calibration import hooked_forward
from slimkit.analysis.paired import Stream, paired_stats

log = logging.getLogger(__name__)


def residual_parent(model: nn.Module, consumer: str, example: Any) -> str | None:
    """The name of ``consumer``'s parent ``P`` when ``P(h, r) == P.<norm>(consumer(h) + r)`` (checked on one
    forward of ``example``, P's only LayerNorm child as the norm), else None."""
    if "." not in consumer:
        return None
    parent_name = consumer.rsplit(".", 1)[0]
    parent = model.get_submodule(parent_name)
    norms = [m for m in parent.children() if isinstance(m, nn.LayerNorm)]
    if len(norms) != 1:
        return None
    seen: dict[str, Any] = {}

    def p_hook(mod: nn.Module, args: Any, out: Any) -> None:
        seen.setdefault("args", args)
        seen.setdefault("out", out)

    def c_hook(mod: nn.Module, args: Any, out: Any) -> None:
        seen.setdefault("y", out)

    handles = [parent.register_forward_hook(p_hook), model.get_submodule(consumer).register_forward_hook(c_hook)]
    hooked_forward(model, example, handles)
    args, out, y = seen.get("args"), seen.get("out"), seen.get("y")
    if not (isinstance(args, tuple) and len(args) >= 2 and isinstance(args[1], torch.Tensor)
            and isinstance(out, torch.Tensor) and isinstance(y, torch.Tensor) and args[1].shape == y.shape):
        return None
    with torch.no_grad():
        ok = torch.allclose(norms[0](y + args[1]), out, atol=1e-4, rtol=1e-4)
    return parent_name if ok else None


def solve_scales(w: torch.Tensor, b: torch.Tensor | None, units: list[torch.Tensor], xtx: torch.Tensor,
                 total: torch.Tensor, n: int, ridge: float) -> tuple[torch.Tensor, torch.Tensor | None, float, float]:
    """``(scales, new bias, relative error before, after)`` from the streamed moments of ``[x, t]``."""
    d = w.shape[1]
    sxx, stx = xtx[:d, :d], xtx[d:, :d]
    stt = float(torch.trace(xtx[d:, d:]))
    mx, mt = total[:d] / n, total[d:] / n
    if b is not None:  # a free bias: work with centred moments, the bias absorbs the means
        cxx, ctx = sxx - n * torch.outer(mx, mx), stx - n * torch.outer(mt, mx)
        ctt = stt - n * float(mt @ mt)
    else:
        cxx, ctx, ctt = sxx, stx, stt
    assign = torch.zeros(d, len(units), dtype=torch.float64)
    for i, cols in enumerate(units):
        assign[cols, i] = 1.0
    gram = assign.T @ ((w.T @ w) * cxx) @ assign
    rhs = assign.T @ (w * ctx).sum(0)
    ones = torch.ones(len(units), dtype=torch.float64)

    def err(s: torch.Tensor, bias: torch.Tensor | None) -> float:
        e = float(s @ gram @ s - 2 * rhs @ s) + ctt
        if bias is not None:  # the mean's share: n ||mean t - W diag(s) mean x - bias||^2
            e += n * float((mt - w @ ((assign @ s) * mx) - bias).pow(2).sum())
        return max(e, 0.0) / max(stt, 1e-30)

    before = err(ones, b)
    lam = ridge * float(torch.diag(gram).mean().clamp_min(1e-30))
    s = torch.linalg.solve(gram + lam * torch.eye(len(units), dtype=torch.float64), rhs + lam * ones)
    new_b = None if b is None else mt - w @ ((assign @ s) * mx)
    after = err(s, new_b)
    if not torch.isfinite(s).all() or after > before:  # cannot happen in exact arithmetic; keep the model
        return ones, b, before, before
    return s, new_b, before, after


def solve_weights(w: torch.Tensor, b: torch.Tensor, xtx: torch.Tensor, total: torch.Tensor, n: int,
                  ridge: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The whole weight and bias minimizing ``E||W' x + b' - t||^2 + lam ||W' - W||^2`` (``lam = ridge *
    mean(diag)`` of the centred input covariance: pulled toward the given ``w``, so never worse than it with
    its best bias), and the relative error; same moments as :func:`solve_scales`."""
    d = w.shape[1]
    mx, mt = total[:d] / n, total[d:] / n
    cxx = xtx[:d, :d] - n * torch.outer(mx, mx)
    ctx = xtx[d:, :d] - n * torch.outer(mt, mx)
    ctt = float(torch.trace(xtx[d:, d:])) - n * float(mt @ mt)
    lam = ridge * float(torch.diag(cxx).mean().clamp_min(1e-30))
    new_w = torch.linalg.solve(cxx + lam * torch.eye(d, dtype=torch.float64), (ctx + lam * w).T).T
    err = float(torch.einsum("od,de,oe->", new_w, cxx, new_w)) - 2 * float((new_w * ctx).sum()) + ctt
    return new_w, mt - new_w @ mx, max(err, 0.0) / max(float(torch.trace(xtx[d:, d:])), 1e-30)


def tune_scales(reference: nn.Module, model: nn.Module, consumer: str, units: list[torch.Tensor],
                calibration: Iterable[Any], *, parent: str | None, ridge: float,
                max_batches: int | None, weight_ridge: float | None = None) -> tuple[float, float, torch.Tensor]:
    """Tune the per-unit scales of ``model``'s Linear ``consumer`` (``units``: its column indices per kept
    unit) against ``reference`` and write them in; return ``(relative error before, after, scales)``. With
    ``weight_ridge`` (and a bias), the whole kept weight is then refit too, pulled toward the scaled one
    (:func:`solve_weights`)."""
    streams = {consumer: Stream(parent, arg=1)} if parent is not None else None
    stats = paired_stats(reference, model, [consumer], calibration, max_batches, streams, target="output")[consumer]
    mod = model.get_submodule(consumer)
    w = mod.weight.detach().to("cpu", torch.float64)
    b = None if mod.bias is None else mod.bias.detach().to("cpu", torch.float64)
    assert stats.xtx is not None
    s, new_b, before, after = solve_scales(w, b, units, stats.xtx[0], stats.sum[0], max(stats.count, 1), ridge)
    scale = torch.ones(w.shape[1], dtype=torch.float64)
    for cols, si in zip(units, s.tolist(), strict=True):
        scale[cols] = si
    new_w = w * scale[None, :]
    if weight_ridge is not None and new_b is not None:
        full_w, full_b, full_err = solve_weights(new_w, new_b, stats.xtx[0], stats.sum[0], max(stats.count, 1),
                                                 weight_ridge)
        if full_err <= after and bool(torch.isfinite(full_w).all()):
            new_w, new_b, after = full_w, full_b, full_err
    with torch.no_grad():
        mod.weight.copy_(new_w.to(mod.weight))
        if new_b is not None:
            mod.bias.copy_(new_b.to(mod.bias))
    return before, after, s


__all__ = ["residual_parent", "solve_scales", "solve_weights", "tune_scales"]
