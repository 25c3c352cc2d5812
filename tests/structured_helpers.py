"""Helpers shared by the structured-pruning tests."""

from __future__ import annotations

import copy

import torch
from torch import nn

from slimkit.graph import DependencyGraph, build_dependency_graph
from slimkit.passes.prune.structured import count_macs, plan_removal
from slimkit.passes.prune.structured_importance import unit_scores


def plan(model: nn.Module, inputs: tuple, ratio: float = 0.5) -> tuple[DependencyGraph, set[int]]:
    graph = build_dependency_graph(model, inputs)
    scores = unit_scores(model, graph, "l2")
    return graph, plan_removal(graph, scores, ratio)


def zeroed(model: nn.Module, graph: DependencyGraph, removed: set[int]) -> nn.Module:
    """A copy of ``model`` whose removed units output exactly zero (producers and norms zeroed): removing
    them must then leave the output unchanged, which checks every coupling (adds, cats, shuffles)."""
    new = copy.deepcopy(model)
    with torch.no_grad():
        for m in graph.members:
            roots = graph.slots.roots(m.labels)
            pos = torch.tensor([r in removed for r in roots.tolist()]).nonzero().flatten()
            if not len(pos):
                continue
            mod = new.get_submodule(m.module)
            if m.role == "conv.out":
                mod.weight.index_fill_(1 if mod.transposed else 0, pos, 0.0)
                if mod.bias is not None:
                    mod.bias.index_fill_(0, pos, 0.0)
            elif m.role == "linear.out":
                mod.weight.index_fill_(0, pos, 0.0)
                if mod.bias is not None:
                    mod.bias.index_fill_(0, pos, 0.0)
            elif m.role == "norm":
                mod.weight.index_fill_(0, pos, 0.0)
                mod.bias.index_fill_(0, pos, 0.0)
    return new


def macs_ratio(pruned: nn.Module, base: int, inputs: tuple) -> float:
    return count_macs(pruned, inputs) / base
