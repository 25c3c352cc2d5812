"""The pruned structure that the exporters' manifest does not cover, and how to re-apply it.

``slimkit.exporters`` records the shapes of Conv/Linear/Norm/Embedding layers. Structured pruning also
changes multi-head attention (heads, embed width), recurrent layers (hidden/input size), parameters read
directly in forward (pos_embed, cls_token) and Hugging Face attention bookkeeping. :func:`structure_of`
describes those; :func:`apply_structure` reshapes a freshly built model to match, so that
``load_model(directory, build=lambda spec: apply_structure(make(), spec["structure"]))`` rebuilds a pruned
model without pickles.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimkit.graph.attention import PrunedMultiheadAttention

_SHAPED = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
           nn.Embedding)


def structure_of(model: nn.Module) -> dict[str, Any]:
    """JSON-friendly description of attention/recurrent/direct-parameter shapes."""
    mods: dict[str, dict[str, Any]] = {}
    params: dict[str, list[int]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.MultiheadAttention):
            mods[name] = {"kind": "mha", "embed_dim": mod.embed_dim, "num_heads": mod.num_heads,
                          "head_dim": mod.head_dim, "pruned": isinstance(mod, PrunedMultiheadAttention)}
        elif isinstance(mod, nn.RNNBase):
            mods[name] = {"kind": "rnn", "input_size": mod.input_size, "hidden_size": mod.hidden_size}
        elif hasattr(mod, "num_attention_heads") and hasattr(mod, "all_head_size"):
            mods[name] = {"kind": "hf_attention", "num_attention_heads": int(mod.num_attention_heads),
                          "all_head_size": int(mod.all_head_size)}
        if isinstance(mod, (*_SHAPED, nn.MultiheadAttention)) or any(
                name.startswith(m + ".") for m, v in mods.items() if v["kind"] == "mha"):
            continue
        for pname, p in mod.named_parameters(recurse=False):
            params[f"{name}.{pname}" if name else pname] = list(p.shape)
    return {"modules": mods, "params": params}


_GATES = {"LSTM": 4, "GRU": 3}


def structure_from_shapes(model: nn.Module, shapes: dict[str, list[int]]) -> dict[str, Any]:
    """The :func:`structure_of` a pruned copy of ``model`` would have, read from its saved tensor shapes
    (``{state name: shape}``, e.g. a manifest's ``tensors``) without the pruned model itself. Used to rebuild
    a checkpoint whose manifest carries no ``structure``. Modules absent from ``shapes`` are left out."""
    mods: dict[str, dict[str, Any]] = {}
    for name, mod in model.named_modules():
        pre = f"{name}." if name else ""
        if isinstance(mod, nn.MultiheadAttention):
            w = shapes.get(pre + "in_proj_weight")
            if not w or len(w) != 2:
                continue
            head_dim = int(getattr(mod, "head_dim", mod.embed_dim // mod.num_heads))
            inner, embed = int(w[0]) // 3, int(w[1])
            heads = inner // head_dim
            pruned = isinstance(mod, PrunedMultiheadAttention) or embed != mod.embed_dim or heads != mod.num_heads
            mods[name] = {"kind": "mha", "embed_dim": embed, "num_heads": heads, "head_dim": head_dim,
                          "pruned": pruned}
        elif isinstance(mod, nn.RNNBase):
            w = shapes.get(pre + "weight_ih_l0")
            if not w or len(w) != 2:
                continue
            gates = _GATES.get(mod.mode, 1)
            mods[name] = {"kind": "rnn", "input_size": int(w[1]), "hidden_size": int(w[0]) // gates}
        elif hasattr(mod, "num_attention_heads") and hasattr(mod, "all_head_size"):
            w = shapes.get(pre + "query.weight")
            head = getattr(mod, "attention_head_size", None)
            if not w or not head:
                continue
            mods[name] = {"kind": "hf_attention", "num_attention_heads": int(w[0]) // int(head),
                          "all_head_size": int(w[0])}
    params = {}
    for pname in structure_of(model)["params"]:
        if pname in shapes:
            params[pname] = [int(d) for d in shapes[pname]]
    return {"modules": mods, "params": params}


def apply_structure(model: nn.Module, structure: dict[str, Any] | None) -> nn.Module:
    """Reshape ``model`` (freshly built, weights to be loaded afterwards) to ``structure``. Returns it."""
    if not structure:
        return model
    for name, spec in structure.get("modules", {}).items():
        mod = model.get_submodule(name)
        if spec["kind"] == "mha" and spec.get("pruned"):
            w = mod.in_proj_weight
            new = PrunedMultiheadAttention(spec["embed_dim"], spec["num_heads"], spec["head_dim"], mod.dropout,
                                           mod.in_proj_bias is not None, mod.batch_first, w.device, w.dtype)
            model.set_submodule(name, new)
        elif spec["kind"] == "rnn":
            mod.input_size, mod.hidden_size = spec["input_size"], spec["hidden_size"]
        elif spec["kind"] == "hf_attention":
            mod.num_attention_heads, mod.all_head_size = spec["num_attention_heads"], spec["all_head_size"]
    for pname, shape in structure.get("params", {}).items():
        owner, _, leaf = pname.rpartition(".")
        holder = model.get_submodule(owner) if owner else model
        old = getattr(holder, leaf)
        if list(old.shape) != list(shape):
            setattr(holder, leaf, nn.Parameter(torch.zeros(shape, dtype=old.dtype, device=old.device),
                                               requires_grad=old.requires_grad))
    for mod in model.modules():
        if isinstance(mod, nn.RNNBase) and hasattr(mod, "_init_flat_weights"):
            mod._init_flat_weights()
    return model
