"""Remove units from a model: slice every member, check the result runs, then swap it in.

All slicing happens on a deep copy. The copy is run on the example inputs and its output shapes compared with
the original's; only then are the changed modules (and directly-read parameters) moved into the caller's
model. A failure at any point raises :class:`GraphError` with the model untouched.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from slimkit.context import eval_mode, model_device
from slimkit.data.batch import call_model
from slimkit.errors import GraphError
from slimkit.graph.attention import PrunedMultiheadAttention
from slimkit.graph.core import DependencyGraph
from slimkit.graph.modules import GATES


def _param(old: torch.Tensor, value: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad)


def _take(t: torch.Tensor | None, idx: torch.Tensor | None, dim: int = 0) -> torch.Tensor | None:
    if t is None or idx is None:
        return t
    return t.index_select(dim, idx.to(t.device))


def _conv(mod: Any, r: dict[str, torch.Tensor | None]) -> None:
    out_k, in_k = r.get("conv.out"), r.get("conv.in")
    g = mod.groups
    w = mod.weight
    n_in, n_out = mod.in_channels, mod.out_channels
    new_in = n_in if in_k is None else len(in_k)
    new_out = n_out if out_k is None else len(out_k)
    if g == 1:
        w2 = _take(_take(w, in_k, 0), out_k, 1) if mod.transposed else _take(_take(w, out_k, 0), in_k, 1)
        new_g = 1
    else:
        ipg, opg = n_in // g, n_out // g
        new_g = new_out // opg
        if new_in // ipg != new_g or new_in % ipg or new_out % opg:
            raise GraphError(f"grouped conv '{mod}' would lose partial groups ({new_in}/{ipg} vs {new_out}/{opg}).")
        w2 = _take(w, in_k, 0) if mod.transposed else _take(w, out_k, 0)
    mod.weight = _param(w, w2)
    if mod.bias is not None:
        mod.bias = _param(mod.bias, _take(mod.bias, out_k))
    mod.in_channels, mod.out_channels, mod.groups = new_in, new_out, new_g


def _linear(mod: Any, r: dict[str, torch.Tensor | None]) -> None:
    out_k, in_k = r.get("linear.out"), r.get("linear.in")
    mod.weight = _param(mod.weight, _take(_take(mod.weight, out_k, 0), in_k, 1))
    if mod.bias is not None:
        mod.bias = _param(mod.bias, _take(mod.bias, out_k))
    mod.out_features, mod.in_features = mod.weight.shape


def _norm(mod: Any, r: dict[str, torch.Tensor | None]) -> None:
    k = r.get("norm")
    for name in ("weight", "bias"):
        p = getattr(mod, name, None)
        if p is not None:
            setattr(mod, name, _param(p, _take(p, k)))
    for name in ("running_mean", "running_var"):
        b = getattr(mod, name, None)
        if b is not None:
            setattr(mod, name, _take(b, k).clone())
    mod.num_features = len(k) if k is not None else mod.num_features


def _layernorm(mod: Any, r: dict[str, torch.Tensor | None]) -> None:
    k = r.get("ln")
    for name in ("weight", "bias"):
        p = getattr(mod, name, None)
        if p is not None:
            setattr(mod, name, _param(p, _take(p, k)))
    if k is not None:
        mod.normalized_shape = (len(k),)


def _embedding(mod: Any, r: dict[str, torch.Tensor | None]) -> None:
    mod.weight = _param(mod.weight, _take(mod.weight, r.get("emb"), 1))
    mod.embedding_dim = mod.weight.shape[1]


def _prelu(mod: Any, r: dict[str, torch.Tensor | None]) -> None:
    mod.weight = _param(mod.weight, _take(mod.weight, r.get("prelu")))
    mod.num_parameters = mod.weight.numel()


def _rnn(mod: Any, r: dict[str, torch.Tensor | None]) -> None:
    hid_k, in_k = r.get("rnn.hidden"), r.get("rnn.in")
    hsz = mod.hidden_size
    kept = torch.arange(hsz) if hid_k is None else hid_k
    gates = GATES[mod.mode]
    rows = torch.cat([kept + g * hsz for g in range(gates)])
    dirs = 2 if mod.bidirectional else 1
    for layer in range(mod.num_layers):
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            if layer == 0:
                cols = in_k
            else:
                cols = torch.cat([kept + k * hsz for k in range(dirs)])
            w_ih = getattr(mod, f"weight_ih{sfx}")
            w_hh = getattr(mod, f"weight_hh{sfx}")
            setattr(mod, f"weight_ih{sfx}", _param(w_ih, _take(_take(w_ih, rows, 0), cols, 1)))
            setattr(mod, f"weight_hh{sfx}", _param(w_hh, _take(_take(w_hh, rows, 0), kept, 1)))
            if mod.bias:
                for b in ("bias_ih", "bias_hh"):
                    p = getattr(mod, f"{b}{sfx}")
                    setattr(mod, f"{b}{sfx}", _param(p, _take(p, rows)))
    mod.hidden_size = len(kept)
    mod.input_size = mod.weight_ih_l0.shape[1]
    if hasattr(mod, "_init_flat_weights"):
        mod._init_flat_weights()


_RULES = [
    (nn.modules.conv._ConvNd, _conv), (nn.Linear, _linear),
    ((nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm), _norm),
    (nn.LayerNorm, _layernorm), (nn.Embedding, _embedding), (nn.PReLU, _prelu), (nn.RNNBase, _rnn),
]


def pruned_copy(model: nn.Module, graph: DependencyGraph, removed: set[int]) -> tuple[nn.Module, set[str], list]:
    """A deep copy of ``model`` with ``removed`` units sliced out. Returns (copy, changed module names,
    changed direct parameters as (owner, name))."""
    keep = graph.keep_indices(removed)
    per_module: dict[str, dict[str, torch.Tensor | None]] = defaultdict(dict)
    params: list[tuple[str, str, int, torch.Tensor]] = []
    for m, k in zip(graph.members, keep, strict=False):
        if k is None:
            continue
        if m.role == "param":
            params.append((m.module, str(m.extra["name"]), int(m.extra["dim"]), k))  # type: ignore[call-overload]
        else:
            per_module[m.module][m.role] = k
    new = copy.deepcopy(model)
    for name, roles in per_module.items():
        mod = new.get_submodule(name)
        if isinstance(mod, nn.MultiheadAttention):
            repl = PrunedMultiheadAttention.from_pruned(mod, roles.get("mha.embed"), roles.get("mha.heads"))
            new.set_submodule(name, repl)
            continue
        if "hf.heads" in roles:
            k = roles["hf.heads"]
            assert k is not None
            mod.num_attention_heads = len(k)
            mod.all_head_size = len(k) * mod.attention_head_size
            continue
        for cls, rule in _RULES:
            if isinstance(mod, cls):
                rule(mod, roles)
                break
        else:
            raise GraphError(f"no slicing rule for '{name}' ({type(mod).__name__}); nothing was changed.")
    for owner, pname, dim, k in params:
        holder = new.get_submodule(owner) if owner else new
        old = getattr(holder, pname)
        setattr(holder, pname, _param(old, _take(old, k, dim)))
    return new, set(per_module), [(o, p) for o, p, _, _ in params]


def _shapes(out: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _call(model: nn.Module, inputs: tuple[Any, ...]) -> Any:
    out = call_model(model, inputs, model_device(model))
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return out


def apply_removal(model: nn.Module, graph: DependencyGraph, removed: set[int],
                  example_inputs: tuple[Any, ...]) -> set[str]:
    """Remove ``removed`` units from ``model`` in place (modules are replaced by sliced copies).
    Returns the names of the changed modules."""
    if not removed:
        return set()
    try:
        new, changed, params = pruned_copy(model, graph, removed)
    except GraphError:
        raise
    except Exception as exc:
        raise GraphError(f"slicing failed: {type(exc).__name__}: {exc}. Nothing was changed.") from exc
    with eval_mode(model), torch.no_grad():
        want = _shapes(_call(model, example_inputs))
    try:
        with eval_mode(new), torch.no_grad():
            got = _shapes(_call(new, example_inputs))
    except Exception as exc:
        raise GraphError(
            f"the pruned model fails on the example inputs ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "the forward probably hard-codes a channel count. Nothing was changed.",
            hint="Use sizes computed from the tensor (x.size(1), -1) in forward, or protect the layer.") from exc
    if got != want:
        raise GraphError(f"pruning would change the output shapes from {want} to {got}. Nothing was changed.")
    if graph.export_ops is not None:
        _check_same_path(new, graph.export_ops, example_inputs)
    for name in sorted(changed, key=len):
        if name in {n for n in changed if _is_attr_only(graph, n)}:
            mod, src = model.get_submodule(name), new.get_submodule(name)
            mod.num_attention_heads, mod.all_head_size = src.num_attention_heads, src.all_head_size
            continue
        model.set_submodule(name, new.get_submodule(name))
    for owner, pname in params:
        holder = model.get_submodule(owner) if owner else model
        src = new.get_submodule(owner) if owner else new
        setattr(holder, pname, getattr(src, pname))
    return changed


def _check_same_path(new: nn.Module, ops: tuple[str, ...], example_inputs: tuple[Any, ...]) -> None:
    """A graph traced with torch.export is specialized to the example inputs: re-export the pruned copy and
    require the same op sequence, so shape-dependent control flow took the same branches."""
    from slimkit.graph.export_trace import op_signature

    try:
        with eval_mode(new), torch.no_grad():
            got = op_signature(new, example_inputs)
    except Exception as exc:
        raise GraphError(f"the pruned model cannot be re-exported to check its control flow ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}). Nothing was changed.") from exc
    if got != ops:
        diff = next((i for i, (a, b) in enumerate(zip(ops, got, strict=False)) if a != b), min(len(ops), len(got)))
        raise GraphError(
            f"the pruned model runs different ops than the model it was analysed from (op {diff}: "
            f"{ops[diff] if diff < len(ops) else 'end'} -> {got[diff] if diff < len(got) else 'end'}): the forward "
            "branches on a channel count, so the torch.export trace does not describe the pruned model. "
            "Nothing was changed.",
            hint="Protect the layers whose width the forward tests (skip=[...]), or make that branch a "
                 "submodule.")


def _is_attr_only(graph: DependencyGraph, name: str) -> bool:
    return any(m.module == name and m.role == "hf.heads" for m in graph.members)
