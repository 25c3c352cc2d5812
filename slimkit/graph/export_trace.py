"""Second tracing fallback: torch.export, mapped back to a module-level fx graph.

Used only when torch.fx fails in the *top-level* forward (a failing submodule is made an opaque leaf
instead, see :func:`slimkit.graph.trace.trace_progressive`). ``torch.export.export(model, inputs,
strict=False)`` runs the Python forward on the example inputs, so shape-dependent control flow is
*specialized* to their shapes; data-dependent control flow (``if x.sum() > 0``) fails there too.

The exported graph holds aten ops. Every run of ops whose ``nn_module_stack`` lies inside one call of a layer
slimkit can slice (``LEAF_TYPES``) becomes one ``call_module`` node on the original module, so the module
rules and surgery work unchanged; the remaining aten ops are translated to the torch functions the label
propagator knows (``aten.add.Tensor`` -> ``operator.add``, ``aten.slice.Tensor`` -> indexing, ...). An op
with no translation is kept as is: it runs, and it raises GraphError naming the op and module if it touches
prunable channels. Sizes in views are literals after export, so a ``view`` that keeps channels pins them.

Because the trace is specialized, :func:`op_signature` records the op sequence, and
:func:`slimkit.graph.surgery.apply_removal` re-exports the pruned copy and refuses it if a different branch
ran (e.g. control flow on the channel count). This is checked on the example input shape only.
"""

from __future__ import annotations

import copy
import inspect
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from slimkit.errors import GraphError
from slimkit.graph.modules import LEAF_TYPES

aten = torch.ops.aten

# aten op -> (fx op, target) with the same positional arguments
_SAME_ARGS: dict[Any, tuple[str, Any]] = {
    aten.add.Tensor: ("call_function", torch.add), aten.sub.Tensor: ("call_function", torch.sub),
    aten.mul.Tensor: ("call_function", torch.mul), aten.div.Tensor: ("call_function", torch.div),
    aten.add_.Tensor: ("call_function", torch.add), aten.mul_.Tensor: ("call_function", torch.mul),
    aten.relu.default: ("call_function", torch.relu), aten.relu_.default: ("call_function", torch.relu),
    aten.sigmoid.default: ("call_function", torch.sigmoid), aten.tanh.default: ("call_function", torch.tanh),
    aten.exp.default: ("call_function", torch.exp), aten.neg.default: ("call_function", torch.neg),
    aten.sqrt.default: ("call_function", torch.sqrt), aten.rsqrt.default: ("call_function", torch.rsqrt),
    aten.abs.default: ("call_function", torch.abs), aten.clamp.default: ("call_function", torch.clamp),
    aten.hardtanh.default: ("call_function", F.hardtanh), aten.hardswish.default: ("call_function", F.hardswish),
    aten.silu.default: ("call_function", F.silu), aten.gelu.default: ("call_function", F.gelu),
    aten.softmax.int: ("call_function", torch.softmax), aten._softmax.default: ("call_function", torch.softmax),
    aten.pow.Tensor_Scalar: ("call_function", torch.pow), aten.erf.default: ("call_function", torch.erf),
    aten.dropout.default: ("call_function", F.dropout),
    aten.maximum.default: ("call_function", torch.maximum), aten.minimum.default: ("call_function", torch.minimum),
    aten.mean.dim: ("call_method", "mean"), aten.sum.dim_IntList: ("call_method", "sum"),
    aten.amax.default: ("call_method", "amax"), aten.amin.default: ("call_method", "amin"),
    aten.cat.default: ("call_function", torch.cat), aten.stack.default: ("call_function", torch.stack),
    aten.chunk.default: ("call_method", "chunk"), aten.split.Tensor: ("call_method", "split"),
    aten.split_with_sizes.default: ("call_method", "split"),
    aten.flatten.using_ints: ("call_function", torch.flatten), aten.permute.default: ("call_method", "permute"),
    aten.transpose.int: ("call_method", "transpose"), aten.t.default: ("call_method", "t"),
    aten.unsqueeze.default: ("call_method", "unsqueeze"), aten.squeeze.dim: ("call_method", "squeeze"),
    aten.expand.default: ("call_method", "expand"), aten.view.default: ("call_function", torch.reshape),
    aten.reshape.default: ("call_function", torch.reshape), aten._unsafe_view.default: ("call_function", torch.reshape),
    aten.clone.default: ("call_method", "clone"), aten.contiguous.default: ("call_method", "contiguous"),
    aten.matmul.default: ("call_function", torch.matmul), aten.bmm.default: ("call_function", torch.bmm),
    aten.adaptive_avg_pool1d.default: ("call_function", F.adaptive_avg_pool1d),
    aten.adaptive_avg_pool2d.default: ("call_function", F.adaptive_avg_pool2d),
    aten.max_pool2d.default: ("call_function", F.max_pool2d),
    aten.avg_pool2d.default: ("call_function", F.avg_pool2d),
    aten.pad.default: ("call_function", F.pad), aten.constant_pad_nd.default: ("call_function", F.pad),
}


def _slice_index(x: Any, dim: int, index: Any) -> tuple[Any, ...]:
    return (*([slice(None)] * (dim % len(x.meta["val"].shape) if "val" in x.meta else dim)), index)


def _leaf_of(node: fx.Node, model: nn.Module) -> tuple[str, str] | None:
    """(call key, module path) of the outermost sliceable layer whose call produced ``node``."""
    for key, value in (node.meta.get("nn_module_stack") or {}).items():
        path = value[0] if isinstance(value, tuple) else None
        if not path:
            continue
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(mod, LEAF_TYPES):
            return key, path
    return None


def op_signature(model: nn.Module, example_inputs: tuple[Any, ...]) -> tuple[str, ...]:
    """The exported op sequence (op names) of ``model`` on ``example_inputs``: which branches ran."""
    ep = _export(model, example_inputs)
    return tuple(str(n.target) for n in ep.graph.nodes if n.op == "call_function")


def _export(model: nn.Module, example_inputs: tuple[Any, ...]) -> Any:
    with torch.no_grad():
        return torch.export.export(copy.deepcopy(model), tuple(example_inputs), strict=False)


def export_trace(model: nn.Module, example_inputs: tuple[Any, ...]) -> tuple[fx.GraphModule, tuple[str, ...]]:
    """A module-level fx graph of ``model`` from torch.export (see the module docstring) and the exported op
    sequence (:func:`op_signature`). Raises GraphError when export fails or a layer call cannot be mapped
    back to its module."""
    try:
        ep = _export(model, example_inputs)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise GraphError(
            f"torch.export cannot trace {type(model).__name__} either ({type(exc).__name__}: "
            f"{text[0] if text else ''}). Nothing was changed.",
            hint="Data-dependent Python control flow (on tensor values) cannot be traced; move it into a "
                 "submodule (which then stays unpruned) or remove it.") from exc
    src = ep.graph
    specs = {s.arg.name: s for s in ep.graph_signature.input_specs if hasattr(s.arg, "name")}
    constants = {**getattr(ep, "constants", {})}
    leaf = {n: _leaf_of(n, model) for n in src.nodes if n.op == "call_function"}
    calls: dict[str, list[fx.Node]] = {}
    for n, lf in leaf.items():
        if lf is not None:
            calls.setdefault(lf[0], []).append(n)
    last = {nodes[-1]: key for key, nodes in calls.items()}

    g = fx.Graph()
    env: dict[fx.Node, Any] = {}
    attrs: dict[str, Any] = {}
    lazy: dict[fx.Node, str] = {}  # param/buffer/constant placeholders, emitted as get_attr when used outside layers

    def arg(n: fx.Node) -> Any:
        if n not in env and n in lazy:
            env[n] = g.get_attr(lazy[n])
        return env[n]

    for n in src.nodes:
        if n.op == "placeholder":
            spec = specs.get(n.name)
            kind = getattr(getattr(spec, "kind", None), "name", "USER_INPUT")
            if kind == "USER_INPUT":
                env[n] = g.placeholder(n.name)
            else:
                target = str(spec.target)
                if kind in ("CONSTANT_TENSOR", "CUSTOM_OBJ"):
                    name = f"_slimkit_const_{len(attrs)}"
                    attrs[name] = constants.get(target)
                    target = name
                else:
                    attrs[target] = _get(model, target)
                lazy[n] = target
            continue
        if n.op == "output":
            g.output(fx.node.map_arg(n.args[0], arg))
            continue
        lf = leaf.get(n)
        if lf is not None:
            if n in last:
                _emit_call(g, model, calls[lf[0]], lf[1], env, arg, attrs, set(lazy))
            continue
        a = fx.node.map_arg(n.args, arg)
        kw = fx.node.map_arg(n.kwargs, arg)
        new = _translate(g, n, a, kw)
        new.meta["nn_module_stack"] = n.meta.get("nn_module_stack", {})
        env[n] = new
    gm = fx.GraphModule(attrs, g, class_name=type(model).__name__)
    return gm, tuple(str(n.target) for n in src.nodes if n.op == "call_function")


def _emit_call(g: fx.Graph, model: nn.Module, nodes: list[fx.Node], path: str, env: dict[fx.Node, Any],
               arg: Any, attrs: dict[str, Any], params: set[fx.Node]) -> None:
    inside = set(nodes)
    inputs: list[fx.Node] = []
    for n in nodes:
        for i in n.all_input_nodes:
            if i in inside or i in params:  # the layer's own parameters and buffers
                continue
            if i not in inputs:
                inputs.append(i)
    outputs = [n for n in nodes if any(u not in inside for u in n.users)]
    mod = model.get_submodule(path)
    required = [p for p in inspect.signature(mod.forward).parameters.values()
                if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(inputs) != 1 or len(outputs) != 1 or len(required) != 1 or isinstance(mod, nn.RNNBase):
        why = "recurrent layers return tuples" if isinstance(mod, nn.RNNBase) else \
            f"its forward takes {len(required)} required argument(s)" if len(required) != 1 else \
            f"its call reads {len(inputs)} tensor(s) and produces {len(outputs)} used value(s)"
        raise GraphError(
            f"torch.export fallback: layer '{path}' ({type(mod).__name__}) cannot be mapped back to its module "
            f"({why}); slimkit maps only single-input, single-output layer calls. Nothing was changed.",
            hint="Make the model traceable by torch.fx (move shape-dependent control flow into a submodule).")
    attrs[path] = mod
    node = g.call_module(path, (arg(inputs[0]),))
    node.meta["nn_module_stack"] = nodes[-1].meta.get("nn_module_stack", {})
    env[outputs[0]] = node


def _translate(g: fx.Graph, n: fx.Node, a: tuple[Any, ...], kw: dict[str, Any]) -> fx.Node:
    t = n.target
    if t is operator.getitem:
        return g.call_function(operator.getitem, a, kw)
    if t is aten.slice.Tensor:
        x, dim = a[0], a[1] if len(a) > 1 else 0
        start = a[2] if len(a) > 2 else None
        end = a[3] if len(a) > 3 else None
        step = a[4] if len(a) > 4 else 1
        end = None if isinstance(end, int) and end >= (1 << 62) else end
        return g.call_function(operator.getitem, (x, _slice_index(n.args[0], dim, slice(start, end, step))))
    if t is aten.select.int:
        return g.call_function(operator.getitem, (a[0], _slice_index(n.args[0], a[1], a[2])))
    if t in _SAME_ARGS:
        op, target = _SAME_ARGS[t]
        if t is aten._softmax.default:
            a = a[:2]
        if t is aten.dropout.default:  # aten.dropout(x, p, train)
            a, kw = (a[0], a[1]), {"training": a[2] if len(a) > 2 else False}
        if t is aten.split_with_sizes.default:
            a = (a[0], list(a[1]), *a[2:])
        return g.create_node(op, target, a, kw)
    return g.call_function(t, a, kw)


def _get(model: nn.Module, target: str) -> Any:
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part)
    return value


__all__ = ["export_trace", "op_signature"]
