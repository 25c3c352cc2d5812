"""Build the dependency graph of a model: trace, propagate labels, check what the trace missed, group."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from slimkit.config.layers import LayerFilterFn, is_skipped
from slimkit.context import eval_mode, model_device
from slimkit.errors import GraphError
from slimkit.graph.core import FIXED, DependencyGraph, Member, SlotTable, build_groups
from slimkit.graph.labels import varying_dims

log = logging.getLogger(__name__)


def _param_members(slots: SlotTable, params: dict[str, torch.Tensor], producer_roots: set[int],
                   model: nn.Module) -> list[Member]:
    """Parameters read directly in forward (pos_embed, cls_token, layer scales): slice along the one dim whose
    positions follow channels; pin them if channels show along several dims."""
    out: list[Member] = []
    for target, labels in params.items():
        roots = slots.roots(labels)
        hit = {r for r in torch.unique(roots).tolist() if r in producer_roots}
        if not hit:
            continue
        vary = varying_dims(torch.where(torch.isin(roots, torch.tensor(sorted(hit))), roots, -2))
        if len(vary) != 1 or not isinstance(_get(model, target), nn.Parameter):
            slots.pin(labels)
            continue
        d = vary[0]
        per = labels.movedim(d, 0).reshape(labels.shape[d], -1)[:, 0]
        owner, _, pname = target.rpartition(".")
        out.append(Member(owner, "param", per, extra={"name": pname, "dim": d}))
    return out


def _get(model: nn.Module, target: str) -> Any:
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part, None)  # None: a constant lifted by torch.export, not a model attribute
    return value


def _shared_params(model: nn.Module) -> dict[str, list[str]]:
    owners: dict[int, list[str]] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        for p in mod.parameters(recurse=False):
            owners.setdefault(id(p), []).append(name)
    return {names[0]: names for names in owners.values() if len(set(names)) > 1}


def build_dependency_graph(model: nn.Module, example_inputs: tuple[Any, ...], *,
                           skip: Sequence[str] = (), filter_fn: LayerFilterFn | None = None,
                           unreached: str = "error") -> DependencyGraph:
    """Analyse ``model`` (never changes it). Raises :class:`GraphError` naming the op or module it cannot
    handle. Skipped modules (``skip`` globs or class names, ``filter_fn``: slimkit.config.layers) keep
    their output channels/heads."""
    from slimkit.graph import hf

    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    device = model_device(model)  # recipes give CPU example inputs; the model may live on CUDA
    example_inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in example_inputs)
    with eval_mode(model), torch.no_grad():
        if hf.is_bert_like(model):
            return hf.build_bert_graph(model, example_inputs, skip=skip, filter_fn=filter_fn)
        return _build_fx(model, example_inputs, skip, filter_fn, unreached)


def _build_fx(model: nn.Module, example_inputs: tuple[Any, ...], skip: Sequence[str], filter_fn: LayerFilterFn | None,
              unreached: str) -> DependencyGraph:
    from slimkit.graph import hf
    from slimkit.graph.trace import Propagator, trace_progressive

    signature: tuple[str, ...] | None = None
    try:
        gm, opaque = trace_progressive(model)
        tracer = "fx+opaque" if opaque else "fx"
    except GraphError as fx_error:  # fx failed in the top-level forward: try torch.export (specialized)
        from slimkit.graph.export_trace import export_trace

        try:
            gm, signature = export_trace(model, example_inputs)
        except GraphError as exc:
            raise GraphError(f"{fx_error.message.split(' Structured pruning')[0]}; {exc.message}",
                             hint=exc.hint or fx_error.hint) from exc
        opaque, tracer = {}, "export"
        log.warning("structured pruning: %s; traced with torch.export instead, specialized to the example input "
                    "shapes %s (the pruned model is checked on those shapes only)", fx_error.message.split(" (in ")[0],
                    [tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor)])
    # an opaque BERT-like Hugging Face encoder (e.g. the `transformer` of a SentenceEncoder): its heads and FFN
    # units are read from its structure as when it is the model itself; its hidden width is never pruned, so
    # the channels fixed at the opaque boundary stay exact
    bert = [n for n in opaque if hf.is_bert_like(model.get_submodule(n))]
    for name, reason in opaque.items():
        if name not in bert:
            log.warning("structured pruning: torch.fx cannot trace '%s' (%s); kept as an opaque leaf: the "
                        "channels that flow into and out of it are not pruned", name, reason)
    prop = Propagator(gm, set(opaque))
    with hf.recording_calls(model) as called:
        prop.run(example_inputs)
    slots, members = prop.slots, prop.members
    names = dict(model.named_modules())

    # modules with weights that the trace never called: we cannot know which channels they read
    reached_params = {t.rpartition(".")[0] for t in prop.params}
    leaves = prop.reached
    missing = []
    for name, mod in names.items():
        if not name or not list(mod.parameters(recurse=False)):
            continue
        if name in leaves or any(name.startswith(leaf + ".") for leaf in leaves) or name in reached_params:
            continue
        missing.append(name)
    if missing and unreached == "error":
        raise GraphError(
            f"Module(s) {', '.join(repr(m) for m in missing[:5])} have weights but are not called in the traced "
            "forward on the example inputs; slimkit cannot tell which channels they read, and pruning could "
            "break them when they are called elsewhere. Nothing was changed.",
            hint="Call them in forward, delete them, or pass unreached='ignore' if they never see pruned tensors.")

    # tied weights: surgery would untie them, so their modules keep their channels
    pinned_modules = {n for n, m in names.items() if n and is_skipped(n, m, skip, filter_fn)}
    for names_ in _shared_params(model).values():
        for m in members:
            if m.module in names_:
                slots.pin(m.labels)
    producer_roots = {r for m in members if m.producer for r in slots.roots(m.labels).tolist()} - {FIXED}
    members += _param_members(slots, prop.params, producer_roots, model)
    # a layer inside an opaque module that is also called (or read) outside it: the opaque code uses it too
    for m in members:
        if any(m.module == o or m.module.startswith(o + ".") for o in opaque):
            slots.pin(m.labels)
    opaque = dict(opaque)
    for name in bert:
        if any(m.module.startswith(name + ".") for m in members) or any(t.startswith(name + ".") for t in prop.params):
            log.warning("structured pruning: '%s' (%s) is also used outside its own forward; kept as an opaque "
                        "leaf: its heads and FFN width are not pruned", name, type(model.get_submodule(name)).__name__)
            continue
        members += hf.bert_members(model.get_submodule(name), slots, called, prefix=name)
        del opaque[name]
        tracer = "+".join(["fx"] + (["opaque"] if opaque else []) + ["hf-bert"])
        log.info("structured pruning: '%s' read as a BERT-style encoder (heads and FFN width)", name)
    groups, pinned = build_groups(slots, members, pinned_modules)
    log.debug("dependency graph: %d groups, %d prunable units", len(groups), sum(len(g) for g in groups))
    return DependencyGraph(slots, members, groups, pinned, tracer=tracer, opaque=opaque, export_ops=signature)
