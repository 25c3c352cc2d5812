"""Label arithmetic shared by the function and module rules: consuming a channel axis, reductions,
broadcasting and the size rules of view/reshape/chunk. Every function here raises
:class:`~slimkit.errors.GraphError` (naming the op and module) instead of guessing."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from slimkit.errors import GraphError
from slimkit.graph.core import FIXED, NONE, SlotTable


def where(node: Any) -> str:
    """'op `view` (node view_2) in module `layer1.0`' for error messages."""
    stack = node.meta.get("nn_module_stack") or {}
    mod = next(reversed(stack.values()), None) if stack else None
    modname = mod[0] if isinstance(mod, tuple) else None
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    inside = f" in module '{modname}'" if modname else ""
    return f"op '{target}' (node {node.name}){inside}"


def varying_dims(roots: torch.Tensor) -> list[int]:
    """Dims along which the (root) labels change."""
    out = []
    for d in range(roots.dim()):
        n = roots.shape[d]
        if n > 1 and bool((roots.narrow(d, 1, n - 1) != roots.narrow(d, 0, n - 1)).any()):
            out.append(d)
    return out


def owners(slots: SlotTable, labels: torch.Tensor) -> list[str]:
    """'conv1' (out) for every layer output whose channels appear in ``labels`` (for error messages)."""
    spaces = sorted({slots.space_of[s] for s in torch.unique(labels).tolist() if s > FIXED and not slots.is_soft(s)})
    return [f"'{slots.spaces[sp].owner}' ({slots.spaces[sp].role})" for sp in spaces]


def column_sets(labels: torch.Tensor, dim: int) -> list[list[int]]:
    """For every index along ``dim``: the distinct labels found at that index (NONE dropped)."""
    size = labels.shape[dim]
    flat = labels.movedim(dim, -1).reshape(-1, size)
    same = (flat == flat[:1]).all(0)
    sets: list[list[int]] = [[] for _ in range(size)]
    first = flat[0].tolist()
    for c in range(size):
        if bool(same[c]):
            sets[c] = [first[c]] if first[c] >= 0 else []
    rest = (~same).nonzero().flatten()
    if len(rest):
        sub = flat[:, rest]
        cols = torch.arange(len(rest)).expand_as(sub)
        pairs = torch.unique(torch.stack([cols.reshape(-1), sub.reshape(-1)], 1), dim=0)
        per: dict[int, list[int]] = defaultdict(list)
        for c, lab in pairs.tolist():
            if lab >= 0:
                per[c].append(lab)
        for j, c in enumerate(rest.tolist()):
            sets[c] = per[j]
    return sets


def check_not_mixed(slots: SlotTable, labs: list[int], what: str, cause: str | None = None) -> None:
    """Two different channels of one producer at one position means an op mixed channels. ``cause`` names the
    op that mixed them (default: an op before ``what``, such as a view/reshape/transpose)."""
    seen: dict[int, int] = {}
    for lab in labs:
        if lab <= FIXED or slots.is_soft(lab):
            continue
        sp, ix = slots.space_of[lab], slots.index_of[lab]
        if sp in seen and seen[sp] != ix:
            space = slots.spaces[sp]
            cause = cause or "an operation before it (a view/reshape/transpose) mixes channels"
            raise GraphError(
                f"{what} receives channels {seen[sp]} and {ix} of '{space.owner}' ({space.role}) at the same "
                f"position: {cause}, so removing a channel would corrupt the others. Nothing was changed.",
                hint="Rewrite the op so channels stay whole, or protect the producing layer.")
        seen[sp] = ix


def consume(slots: SlotTable, labels: torch.Tensor, dim: int, what: str) -> torch.Tensor:
    """Read a channel axis: union everything found at each index and return one label per index."""
    dim = dim % labels.dim()
    out = []
    for labs in column_sets(labels, dim):
        check_not_mixed(slots, labs, what)
        out.append(slots.union_all(torch.tensor(labs, dtype=torch.long)) if labs else NONE)
    return torch.tensor(out, dtype=torch.long)


def along(per_index: torch.Tensor, shape: torch.Size | tuple[int, ...], dim: int) -> torch.Tensor:
    """Broadcast one label per index of ``dim`` to a full tensor of ``shape``."""
    dim = dim % len(shape)
    view = [1] * len(shape)
    view[dim] = per_index.numel()
    return per_index.reshape(view).expand(shape).clone()


def reduce_dims(slots: SlotTable, labels: torch.Tensor, dims: list[int], keepdim: bool,
                out_shape: torch.Size) -> torch.Tensor:
    """Labels after a reduction over ``dims``: a row of one channel keeps it; a row that mixes channels of one
    producer (a reduction across channels) carries no channel identity (NONE)."""
    nd = labels.dim()
    dims = sorted({d % nd for d in dims})
    if not dims:
        return labels.reshape(out_shape).clone()
    keep = [d for d in range(nd) if d not in dims]
    moved = labels.permute(*keep, *dims)
    kshape = [labels.shape[d] for d in keep]
    flat = moved.reshape(-1, max(1, int(torch.tensor([labels.shape[d] for d in dims]).prod())))
    const = (flat == flat[:, :1]).all(1)
    result = flat[:, 0].clone()
    rows = (~const).nonzero().flatten().tolist()
    cache: dict[tuple[int, ...], int] = {}
    for r in rows:
        key = tuple(sorted(set(flat[r].tolist())))
        if key not in cache:
            labs = [x for x in key if x >= 0]
            spaces = [slots.space_of[x] for x in labs if x > FIXED and not slots.is_soft(x)]
            if len(spaces) != len(set(spaces)):
                cache[key] = NONE
            else:
                cache[key] = slots.union_all(torch.tensor(labs, dtype=torch.long)) if labs else NONE
        result[r] = cache[key]
    result = result.reshape(kshape) if kshape else result.reshape(())
    if keepdim:
        for d in dims:
            result = result.unsqueeze(d)
    return result.reshape(out_shape)


def identity_dims(run: Callable[[torch.Tensor], Any], x: torch.Tensor, dims: list[int]) -> list[int]:
    """The dims among ``dims`` along which ``run`` (a pooling, upsampling or padding op applied to a tensor
    shaped like ``x``) maps index j to index j alone, so a channel axis there passes through whole.

    Probed on random data from a fixed seed: the output keeps the size of the dim, changing the input at one
    index (first, middle, last) changes the output at that index only, and permuting the dim permutes the
    output the same way. A window of more than one position along the dim fails the first two checks."""
    if not dims:
        return []
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(x.shape, generator=gen).to(dtype=x.dtype if x.is_floating_point() else torch.float32,
                                                  device=x.device)
    with torch.no_grad():
        base = _first(run(probe))
        kept = []
        for d in dims:
            n = x.shape[d]
            if base.dim() != x.dim() or base.shape[d] != n:
                continue
            ok = True
            for j in sorted({0, n // 2, n - 1}):
                bumped = probe.clone()
                bumped.select(d, j).add_(1.0 + torch.rand(bumped.select(d, j).shape, generator=gen).to(bumped))
                diff = (_first(run(bumped)) != base).movedim(d, 0)
                if bool(diff[:j].any()) or bool(diff[j + 1:].any()):
                    ok = False
                    break
            if ok:
                perm = torch.randperm(n, generator=gen).to(x.device)
                got = _first(run(probe.index_select(d, perm)))
                ok = torch.allclose(got, base.index_select(d, perm), rtol=1e-5, atol=1e-6)
            if ok:
                kept.append(d)
    return kept


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def spatial(slots: SlotTable, labels: torch.Tensor, x: torch.Tensor, run: Callable[[torch.Tensor], Any],
            out_shape: torch.Size, what: str) -> torch.Tensor:
    """Pooling, upsampling, padding. Each axis that carries channels (N, C in the usual layout; any axis after
    a permute, e.g. the C of an (N, W, C, H) map pooled over H only) is probed with :func:`identity_dims`:
    along an axis the op maps index to index, channels pass through whole. Every other axis is read as a
    window, which may combine positions of one channel but never two channels of one producer (refused)."""
    nd = labels.dim()
    if nd < 1 or len(out_shape) != nd:
        raise GraphError(f"{what} expects an output of the input's rank, got {tuple(labels.shape)} -> "
                         f"{tuple(out_shape)}.")
    vary = varying_dims(slots.roots(labels))
    kept = identity_dims(run, x, vary)
    mixed = [d for d in range(nd) if d not in kept]
    cause = f"it combines positions along axis {[d for d in vary if d not in kept]}, which carries channels"
    kshape = [labels.shape[d] for d in kept]
    flat = labels.permute(*kept, *mixed).reshape(max(1, math.prod(kshape)), -1)
    result = flat[:, 0].clone()
    cache: dict[tuple[int, ...], int] = {}
    for r in (~(flat == flat[:, :1]).all(1)).nonzero().flatten().tolist():
        key = tuple(sorted(set(flat[r].tolist())))
        if key not in cache:
            labs = [v for v in key if v >= 0]
            check_not_mixed(slots, labs, what, cause)
            cache[key] = slots.union_all(torch.tensor(labs, dtype=torch.long)) if labs else NONE
        result[r] = cache[key]
    view = [labels.shape[d] if d in kept else 1 for d in range(nd)]
    return result.reshape(view).expand(out_shape).clone()


def broadcast_union(slots: SlotTable, labs: list[torch.Tensor], out_shape: torch.Size) -> torch.Tensor:
    """Elementwise ops: the operands' labels at each output element are the same channel."""
    nd = len(out_shape)
    padded = [lab.reshape((1,) * (nd - lab.dim()) + tuple(lab.shape)) for lab in labs]
    full = [torch.broadcast_to(lab, out_shape) for lab in padded]
    vary = [set(varying_dims(slots.roots(lab))) for lab in padded]
    tracked = [i for i, f in enumerate(full) if bool((f > FIXED).any())]
    # the result follows the operand that is not broadcast along any channel axis (largest first)
    order = sorted(range(len(full)), key=lambda i: (i not in tracked, -padded[i].numel()))
    main = order[0]
    for i in order[1:]:
        bcast = {d for d in range(nd) if padded[i].shape[d] == 1 and out_shape[d] > 1}
        if bcast & vary[main] or {d for d in range(nd) if padded[main].shape[d] == 1 and out_shape[d] > 1} & vary[i]:
            continue  # broadcast across a channel axis (a spatial mask, an attention mask): no coupling
        slots.union_pairs(full[main], full[i])
    return full[main].clone()


def split_rule(slots: SlotTable, labels: torch.Tensor, dim: int, n_chunks: int | None, what: str) -> None:
    """chunk/split along a channel axis: the code cuts at fixed fractions, so position j of every chunk
    must be kept or removed together (union across chunks). Fixed sizes cannot shrink at all (pin)."""
    roots = slots.roots(labels)
    dim = dim % labels.dim()
    if dim not in varying_dims(roots):
        return
    size = labels.shape[dim]
    if n_chunks is None or size % n_chunks:
        slots.pin(labels)
        return
    parts = labels.movedim(dim, 0).reshape(n_chunks, size // n_chunks, -1)
    for k in range(1, n_chunks):
        slots.union_pairs(parts[0], parts[k])
    del what


def view_rule(slots: SlotTable, out_labels: torch.Tensor, literal: list[bool], what: str) -> None:
    """After view/reshape/unflatten: dims whose size is written in the code (``literal``) cannot shrink.
    When a channel axis is split over several dims (a shuffle's ``view(n, g, c // g, h, w)``), the literal
    dims are kept whole (union across them) and the one computed dim shrinks; a channel axis in one literal
    dim is pinned; two computed channel dims are ambiguous and refused."""
    roots = slots.roots(out_labels)
    vary = varying_dims(roots)
    if not vary:
        return
    lit = [d for d in vary if literal[d]]
    dyn = [d for d in vary if not literal[d]]
    if len(vary) == 1:
        if lit:
            slots.pin(out_labels)
        return
    if not dyn:
        slots.pin(out_labels)
        return
    if len(dyn) > 1:
        raise GraphError(
            f"{what} splits a channel axis over dims {dyn} whose sizes are all computed at run time, so it is "
            "ambiguous which one would shrink after pruning. Nothing was changed.",
            hint="Write all but one of those sizes as constants (e.g. view(n, groups, -1, h, w)).")
    for d in lit:
        moved = out_labels.movedim(d, 0)
        for k in range(1, moved.shape[0]):
            slots.union_pairs(moved[0], moved[k])
