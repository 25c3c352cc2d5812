"""Trace a model with torch.fx and propagate channel labels through every node.

The model is run for real on the example inputs (eval mode, no grad, nothing is changed) while a parallel
computation runs on integer label tensors of the same shapes. Index-only ops (view, permute, cat, chunk,
getitem ...) are applied to the labels themselves, so permutations such as a channel shuffle come out exact.
Ops that are not understood and touch tracked channels raise :class:`GraphError` naming the op and module.
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from slimkit.errors import GraphError
from slimkit.graph.core import FIXED, NONE, Member, SlotTable
from slimkit.graph.labels import (
    along,
    broadcast_union,
    reduce_dims,
    spatial,
    split_rule,
    varying_dims,
    view_rule,
    where,
)
from slimkit.graph.modules import LEAF_TYPES, module_rule

_ELEMENTWISE_FN = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow, operator.iadd,
    operator.imul, torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.sigmoid, torch.tanh, torch.exp,
    torch.abs, torch.clamp, torch.neg, torch.sqrt, torch.rsqrt, torch.maximum, torch.minimum, torch.softmax,
    torch.log_softmax, F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.dropout,
    F.softmax, F.log_softmax, F.leaky_relu, F.elu, F.mish, F.hardtanh, torch.erf, torch.pow,
}
_ELEMENTWISE_METHODS = {
    "add", "sub", "mul", "div", "relu", "sigmoid", "tanh", "clamp", "clamp_min", "clamp_max", "exp", "abs", "neg",
    "pow", "sqrt", "rsqrt", "softmax", "log_softmax", "add_", "mul_", "relu_", "sub_", "div_", "clamp_",
    "sigmoid_", "float", "half", "double", "bfloat16", "to", "type_as", "contiguous", "clone", "detach", "erf",
    "masked_fill", "masked_fill_", "__add__", "__mul__", "__radd__", "__rmul__", "__sub__", "__truediv__",
}
_MASK_ARGS = {"masked_fill", "masked_fill_", "type_as"}  # operands that are masks/dtype sources, not data
_SPATIAL_FN = {
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d,
    F.interpolate, F.pad, F.upsample,
}
_REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "prod"}
_SHAPE_APPLY = {"flatten", "permute", "transpose", "t", "unsqueeze", "squeeze", "movedim", "expand", "flip",
                "repeat", "swapaxes"}
_MATMUL = {torch.matmul, operator.matmul, torch.bmm, F.scaled_dot_product_attention, "matmul", "bmm",
           "__matmul__"}


class _Tracer(fx.Tracer):
    """torch.fx tracer that keeps every layer slimkit knows how to slice as a leaf (conv subclasses too), plus
    the ``opaque`` submodules (qualified names) that torch.fx could not trace. It records the innermost
    submodule whose forward was being traced when tracing failed (``failed_in``; ``""`` is the root)."""

    def __init__(self, opaque: set[str] | None = None) -> None:
        super().__init__()
        self.opaque = set(opaque or ())
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAF_TYPES) or qualname in self.opaque or super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost module sees the exception first
                try:
                    self.failed_in = self.path_of_module(m)
                except NameError:  # a module that is not a registered submodule: blame the caller
                    pass
            raise


def fx_trace(model: nn.Module, opaque: set[str] | None = None) -> fx.GraphModule:
    tracer = _Tracer(opaque)
    graph = tracer.trace(model)
    return fx.GraphModule(model, graph)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def trace_progressive(model: nn.Module, max_opaque: int = 64) -> tuple[fx.GraphModule, dict[str, str]]:
    """Trace with torch.fx; when it fails inside a submodule, make the innermost submodule that was being
    traced an opaque leaf and retry. Returns the graph and ``{opaque module: the error that made it opaque}``.

    Opaque leaves run their real forward during label propagation; :class:`Propagator` pins every channel
    that flows into them and marks their outputs fixed, so nothing they read or produce is ever pruned.
    A failure in the top-level forward (no submodule to make opaque) raises :class:`GraphError` naming the
    model and the failing operation."""
    opaque: dict[str, str] = {}
    while True:
        tracer = _Tracer(set(opaque))
        try:
            graph = tracer.trace(model)
            return fx.GraphModule(model, graph), opaque
        except Exception as exc:  # fx raises many types (TraceError, TypeError, RuntimeError, ...)
            culprit = tracer.failed_in
            if not culprit or culprit in opaque or len(opaque) >= max_opaque:
                where_ = f"'{culprit}' ({type(model.get_submodule(culprit)).__name__})" if culprit else \
                    f"the top-level forward of {type(model).__name__}"
                raise GraphError(
                    f"torch.fx cannot trace {type(model).__name__}: {_first_line(exc)} (in {where_}). "
                    "Structured pruning needs a traceable forward (a failing submodule is kept as an opaque "
                    "leaf, but this failure is outside any submodule). Nothing was changed.",
                    hint="Move the data-dependent Python control flow into a submodule (it then stays unpruned), "
                         "remove it from forward, or prune the traceable submodules.",
                ) from exc
            opaque = {k: v for k, v in opaque.items() if not k.startswith(culprit + ".")}
            opaque[culprit] = _first_line(exc)


def _zeros(x: Any, fill: int = FIXED) -> Any:
    return torch.full(x.shape, fill, dtype=torch.long) if isinstance(x, torch.Tensor) else None


def _has_tracked(labs: Any) -> bool:
    return any(isinstance(v, torch.Tensor) and bool((v > FIXED).any()) for v in tree_flatten(labs)[0])


class Propagator:
    """Runs one fx graph on real inputs and on labels; collects members and get_attr labels."""

    def __init__(self, gm: fx.GraphModule, opaque: set[str] | None = None) -> None:
        self.gm = gm
        self.opaque = set(opaque or ())
        self.slots = SlotTable()
        self.members: list[Member] = []
        self.params: dict[str, torch.Tensor] = {}
        self.reached: set[str] = set()
        self.node: fx.Node | None = None

    # -- helpers used by module rules
    def used(self, index: int) -> bool:
        assert self.node is not None
        for user in self.node.users:
            if user.target is operator.getitem and user.args[1] == index and user.users:
                return True
            if user.target is not operator.getitem:
                return True
        return False

    def run(self, inputs: tuple[Any, ...]) -> Any:
        real: dict[fx.Node, Any] = {}
        lab: dict[fx.Node, Any] = {}
        remaining = {n: len(n.users) for n in self.gm.graph.nodes}
        it = iter(inputs)
        result = None
        for node in self.gm.graph.nodes:
            self.node = node
            a = fx.node.map_arg(node.args, lambda n: real[n])
            kw = fx.node.map_arg(node.kwargs, lambda n: real[n])
            la = fx.node.map_arg(node.args, lambda n: lab[n])
            lkw = fx.node.map_arg(node.kwargs, lambda n: lab[n])
            if node.op == "placeholder":
                try:
                    value = next(it)
                except StopIteration:
                    value = node.args[0] if node.args else None
                real[node], lab[node] = value, tree_map(_zeros, value)
            elif node.op == "get_attr":
                value = self.gm
                for part in node.target.split("."):
                    value = getattr(value, part)
                real[node] = value
                lab[node] = self._attr_labels(node.target, value)
            elif node.op == "call_module":
                mod = self.gm.get_submodule(node.target)
                out = mod(*a, **kw)
                real[node], lab[node] = out, self._module(node, mod, a, kw, la, lkw, out)
                self.reached.add(node.target)
            elif node.op in ("call_function", "call_method"):
                if node.op == "call_function":
                    out = node.target(*a, **kw)
                else:
                    out = getattr(a[0], node.target)(*a[1:], **kw)
                real[node], lab[node] = out, self._function(node, a, kw, la, lkw, out)
            elif node.op == "output":
                for v in tree_flatten(la)[0]:
                    if isinstance(v, torch.Tensor):
                        self.slots.pin(v)
                result = a[0]
            for inp in node.all_input_nodes:
                remaining[inp] -= 1
                if remaining[inp] == 0:
                    real.pop(inp, None)
                    lab.pop(inp, None)
        return result

    def _attr_labels(self, target: str, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return None
        if value.numel() > (1 << 20):
            return _zeros(value)
        labels = self.slots.new(target, "param", value.numel(), soft=True).reshape(value.shape)
        self.params[target] = labels
        return labels

    def _module(self, node: fx.Node, mod: nn.Module, a: Any, kw: Any, la: Any, lkw: Any, out: Any) -> Any:
        try:
            bound = inspect.signature(mod.forward).bind(*a, **kw)
            lbound = inspect.signature(mod.forward).bind(*la, **lkw)
            args, labs = list(bound.args) + list(bound.kwargs.values()), list(lbound.args) + list(lbound.kwargs.values())
        except TypeError:
            args, labs = list(a) + list(kw.values()), list(la) + list(lkw.values())
        if node.target in self.opaque:  # not understood: what flows in keeps its channels, what comes out is fixed
            for v in tree_flatten((la, lkw))[0]:
                if isinstance(v, torch.Tensor):
                    self.slots.pin(v)
            return tree_map(_zeros, out)
        if isinstance(mod, nn.ChannelShuffle) and labs and isinstance(labs[0], torch.Tensor):
            return self._shuffle(labs[0], mod.groups, node)
        rule = module_rule(mod)
        if rule is None:
            if _has_tracked(labs):
                raise GraphError(
                    f"Layer '{node.target}' ({type(mod).__name__}) is not supported by structured pruning and "
                    "its input carries prunable channels. Nothing was changed.",
                    hint="Protect the layers that feed it (skip=[...]) or open an issue with the model.")
            return tree_map(_zeros, out)
        return rule(self, str(node.target), mod, args, labs, out)

    def _shuffle(self, x: torch.Tensor, groups: int, node: fx.Node) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        mid = x.reshape(n, groups, c // groups, *x.shape[2:])
        view_rule(self.slots, mid, [False, True, False] + [False] * (x.dim() - 2), where(node))
        return mid.transpose(1, 2).reshape(x.shape).clone()

    # -- functions and methods
    def _function(self, node: fx.Node, a: Any, kw: Any, la: Any, lkw: Any, out: Any) -> Any:
        t = node.target
        what = where(node)
        name = t if isinstance(t, str) else None
        tensor_labs = [v for v in tree_flatten((la, lkw))[0] if isinstance(v, torch.Tensor)]
        if not any(isinstance(v, torch.Tensor) for v in tree_flatten(out)[0]):
            return None
        if not tensor_labs:
            return tree_map(lambda x: _zeros(x, NONE), out)
        if t in _ELEMENTWISE_FN or name in _ELEMENTWISE_METHODS:
            ops = la if name not in _MASK_ARGS else la[:1]
            labs = [v for v in tree_flatten(ops)[0] if isinstance(v, torch.Tensor)]
            if name in _MASK_ARGS or len(labs) == 1:
                return labs[0].expand(out.shape).clone() if isinstance(out, torch.Tensor) else None
            return broadcast_union(self.slots, labs, out.shape)
        if t in _SPATIAL_FN:
            return spatial(self.slots, la[0], a[0], lambda x: t(x, *a[1:], **kw), out.shape, what)
        if t in _MATMUL or name in _MATMUL:
            return self._matmul(la, lkw, out)
        if t is operator.getitem:
            if isinstance(a[0], torch.Tensor):
                self._index_rule(la[0], a[1])
                return la[0][a[1]]
            return la[0][a[1]] if la[0] is not None else None
        if name in ("view", "reshape") or t is torch.reshape:
            return self._view(node, la[0], out)
        if name == "unflatten" or t is torch.unflatten:
            dim = (a[1] if len(a) > 1 else kw["dim"]) % a[0].dim()
            sizes = list(a[2] if len(a) > 2 else kw["sizes"])
            literal = [False] * dim + [isinstance(s, int) and s != -1 for s in _raw_sizes(node, 2, sizes)]
            literal += [False] * (out.dim() - len(literal))
            res = la[0].unflatten(dim, sizes)
            view_rule(self.slots, res, literal, what)
            return res
        if name in ("chunk", "split", "tensor_split") or t in (torch.chunk, torch.split):
            return self._split(node, a, kw, la, out)
        if name in _SHAPE_APPLY or t in (torch.flatten, torch.permute, torch.transpose, torch.unsqueeze,
                                         torch.squeeze, torch.movedim, torch.flip, torch.swapaxes):
            if name:
                return getattr(la[0], name)(*a[1:], **kw).clone()
            return t(la[0], *a[1:], **kw).clone()
        if name in ("expand_as", "view_as", "reshape_as"):
            res = la[0].reshape(out.shape) if name != "expand_as" else la[0].expand_as(a[1]).clone()
            if name != "expand_as":
                view_rule(self.slots, res, [True] * res.dim(), what)
            return res
        if t in (torch.cat, torch.concat, torch.stack):
            tensors = a[0] if a else kw["tensors"]
            dim = a[1] if len(a) > 1 else kw.get("dim", 0)
            labs = [lb if lb is not None else _zeros(x) for lb, x in zip(la[0] if a else lkw["tensors"], tensors, strict=False)]
            return (torch.stack if t is torch.stack else torch.cat)(labs, dim)
        if name in ("unbind",) or t is torch.unbind:
            dim = a[1] if len(a) > 1 else kw.get("dim", 0)
            if dim % a[0].dim() in varying_dims(self.slots.roots(la[0])):
                self.slots.pin(la[0])
            return torch.unbind(la[0], dim)
        if name in _REDUCE or t in (torch.mean, torch.sum, torch.amax, torch.amin, torch.max, torch.min,
                                    torch.std, torch.var, torch.logsumexp):
            return self._reduce(a, kw, la, out)
        if not _has_tracked(tensor_labs):
            fill = FIXED if any(bool((v == FIXED).any()) for v in tensor_labs) else NONE
            return tree_map(lambda x: _zeros(x, fill), out)
        raise GraphError(
            f"Unsupported {what} touches prunable channels; slimkit cannot tell how it maps channels. "
            "Nothing was changed.",
            hint="Protect the layers that produce its input (skip=[...]), or rewrite it with supported ops.")

    def _view(self, node: fx.Node, lab: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        raw = list(node.args[1:])
        if len(raw) == 1 and isinstance(raw[0], (tuple, list, torch.Size)):
            raw = list(raw[0])
        if not raw and "shape" in node.kwargs:
            raw = list(node.kwargs["shape"])
        if node.target is torch.reshape:
            raw = list(node.args[1]) if len(node.args) > 1 else list(node.kwargs["shape"])
        literal = [isinstance(s, int) and s != -1 for s in raw]
        if len(literal) != out.dim():
            literal = [True] * out.dim()
        res = lab.reshape(out.shape)
        view_rule(self.slots, res, literal, where(node))
        return res

    def _split(self, node: fx.Node, a: Any, kw: Any, la: Any, out: Any) -> Any:
        name = node.target if isinstance(node.target, str) else node.target.__name__
        x = a[0]
        arg = a[1] if len(a) > 1 else kw.get("chunks", kw.get("split_size_or_sections", kw.get("split_size")))
        dim = a[2] if len(a) > 2 else kw.get("dim", 0)
        raw = node.args[1] if len(node.args) > 1 else arg
        n: int | None
        if name == "chunk":
            n = int(arg) if isinstance(raw, int) else None
        elif isinstance(arg, int):
            n = x.shape[dim] // arg if not isinstance(raw, int) else None
        else:
            n = None
        split_rule(self.slots, la[0], dim, n, where(node))
        fn = getattr(torch, name)
        return tuple(fn(la[0], arg, dim))

    def _index_rule(self, lab: torch.Tensor, idx: Any) -> None:
        items = list(idx) if isinstance(idx, tuple) else [idx]
        vary = set(varying_dims(self.slots.roots(lab)))
        if not vary:
            return
        dim = 0
        n_consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
        for item in items:
            if item is None:
                continue
            if item is Ellipsis:
                dim += lab.dim() - n_consumed
                continue
            full = isinstance(item, slice) and item == slice(None, None, None)
            if dim in vary and not full:
                self.slots.pin(lab)
                return
            dim += 1

    def _matmul(self, la: Any, lkw: Any, out: torch.Tensor) -> torch.Tensor:
        ops = [v for v in tree_flatten((la, lkw))[0] if isinstance(v, torch.Tensor)][:3]
        batch = out.shape[:-2]
        reps = []
        for lb in ops:
            lb = lb if lb.dim() >= 2 else lb.reshape(1, -1)
            full = torch.broadcast_to(lb, (*batch, *lb.shape[-2:])) if batch else lb
            reps.append(full.reshape(max(1, int(torch.tensor(batch).prod()) if batch else 1), -1))
        rows = torch.cat(reps, 1)
        res = torch.empty(rows.shape[0], dtype=torch.long)
        for i in range(rows.shape[0]):
            res[i] = self.slots.union_all(rows[i])
        return res.reshape(*batch, 1, 1).expand(out.shape).clone() if batch else res[0].expand(out.shape).clone()

    def _reduce(self, a: Any, kw: Any, la: Any, out: Any) -> Any:
        x = a[0]
        dim = a[1] if len(a) > 1 and not isinstance(a[1], bool) else kw.get("dim")
        keepdim = a[2] if len(a) > 2 else kw.get("keepdim", False)
        if isinstance(out, tuple):  # max/min with dim -> (values, indices)
            vals = out[0]
            lab = reduce_dims(self.slots, la[0], [dim], keepdim, vals.shape)
            return lab, torch.full(vals.shape, NONE, dtype=torch.long)
        dims = list(range(x.dim())) if dim is None else ([dim] if isinstance(dim, int) else list(dim))
        return reduce_dims(self.slots, la[0], dims, bool(keepdim), out.shape)


def _raw_sizes(node: fx.Node, pos: int, real: list[Any]) -> list[Any]:
    raw = node.args[pos] if len(node.args) > pos else node.kwargs.get("sizes", real)
    return list(raw) if isinstance(raw, (tuple, list)) else list(real)


__all__ = ["Propagator", "along", "fx_trace", "trace_progressive"]
