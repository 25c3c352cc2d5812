"""Hugging Face BERT-style encoders: attention heads and FFN width per layer.

torch.fx cannot trace these models (their forward unpacks shapes), so the groups are read from the module
structure instead and checked against a real forward: every layer slimkit would slice must be called, with
the shapes it expects. The hidden width (embeddings, residual stream, LayerNorms, pooler) is never pruned,
so modules outside the attention and FFN blocks (the pooler, heads) stay valid wherever they are called.
:func:`bert_members` also serves an encoder inside a traced wrapper (``slimkit.graph.build``: an opaque
BERT-like leaf, e.g. the ``transformer`` of a SentenceEncoder).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn

from slimkit.config.layers import LayerFilterFn, is_skipped
from slimkit.errors import GraphError
from slimkit.graph.core import DependencyGraph, Member, SlotTable, build_groups


def _self_attentions(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(self-attention name, module, output dense name) for every BERT-like attention block."""
    found = []
    for name, mod in model.named_modules():
        self_attn = getattr(mod, "self", None)
        out = getattr(mod, "output", None)
        if (isinstance(self_attn, nn.Module) and all(isinstance(getattr(self_attn, k, None), nn.Linear)
                                                     for k in ("query", "key", "value"))
                and hasattr(self_attn, "num_attention_heads") and hasattr(self_attn, "attention_head_size")
                and isinstance(getattr(out, "dense", None), nn.Linear)):
            found.append((f"{name}.self", self_attn, f"{name}.output.dense"))
    return found


def _ffns(model: nn.Module) -> list[tuple[str, str]]:
    found = []
    for name, mod in model.named_modules():
        inter, out = getattr(mod, "intermediate", None), getattr(mod, "output", None)
        if isinstance(getattr(inter, "dense", None), nn.Linear) and isinstance(getattr(out, "dense", None), nn.Linear):
            if inter.dense.out_features == out.dense.in_features:
                found.append((f"{name}.intermediate.dense", f"{name}.output.dense"))
    return found


def is_bert_like(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.") and bool(_self_attentions(model))


@contextmanager
def recording_calls(model: nn.Module) -> Iterator[set[str]]:
    """The names (qualified in ``model``) of the Linear layers called while the ``with`` block runs."""
    called: set[str] = set()
    names = {m: n for n, m in model.named_modules()}
    handles = [m.register_forward_hook(lambda mod, i, o: called.add(names[mod]))
               for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        yield called
    finally:
        for h in handles:
            h.remove()


def bert_members(model: nn.Module, slots: SlotTable, called: set[str], prefix: str = "") -> list[Member]:
    """Heads and FFN units of the BERT-like ``model`` as new slots in ``slots``, with module names under
    ``prefix`` (the qualified name of ``model`` inside the analysed model, ``""`` for the model itself).
    ``called``: the Linear layers a real forward ran (qualified names); every layer that would be sliced
    must be among them."""
    pre = f"{prefix}." if prefix else ""
    attns, ffns = _self_attentions(model), _ffns(model)
    if any(getattr(a, "is_decoder", False) or type(a).__name__.endswith("CrossAttention") for _, a, _ in attns):
        raise GraphError("decoder/cross-attention BERT layers are not supported by structured pruning; "
                         "nothing was changed.")
    members: list[Member] = []
    for name, attn, out_dense in attns:
        name, out_dense = pre + name, pre + out_dense
        parts = [f"{name}.{k}" for k in ("query", "key", "value")] + [out_dense]
        missing = [p for p in parts if p not in called]
        if missing:
            raise GraphError(f"attention layer '{name}' was not run on the example inputs ({missing}); cannot "
                             "check how its heads are used. Nothing was changed.")
        h, hd = int(attn.num_attention_heads), int(attn.attention_head_size)
        if attn.query.out_features != h * hd or model.get_submodule(out_dense[len(pre):]).in_features != h * hd:
            raise GraphError(f"'{name}': num_attention_heads x attention_head_size != projection width.")
        heads = slots.new(name, "heads", h)
        per_feature = heads.repeat_interleave(hd)
        members.append(Member(name, "hf.heads", heads, producer=True))
        for k in ("query", "key", "value"):
            members.append(Member(f"{name}.{k}", "linear.out", per_feature))
        members.append(Member(out_dense, "linear.in", per_feature))
    for inter, out in ffns:
        inter_mod = model.get_submodule(inter)
        inter, out = pre + inter, pre + out
        if inter not in called or out not in called:
            raise GraphError(f"FFN '{inter}' was not run on the example inputs. Nothing was changed.")
        width = slots.new(inter, "out", inter_mod.out_features)
        members.append(Member(inter, "linear.out", width, producer=True))
        members.append(Member(out, "linear.in", width))
    return members


def build_bert_graph(model: nn.Module, example_inputs: tuple[Any, ...], *,
                     skip: Sequence[str] = (), filter_fn: LayerFilterFn | None = None) -> DependencyGraph:
    with recording_calls(model) as called:
        model(*example_inputs)
    slots = SlotTable()
    members = bert_members(model, slots, called)
    pinned_modules = {n for n, m in model.named_modules() if n and is_skipped(n, m, skip, filter_fn)}
    groups, pinned = build_groups(slots, members, pinned_modules)
    return DependencyGraph(slots, members, groups, pinned, tracer="hf-bert")
