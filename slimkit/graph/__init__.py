"""Model graphs for structured pruning: tracing, dependency groups, and module surgery.

Three separate steps (DepGraph style):

1. :func:`build_dependency_graph` traces the model (torch.fx; BERT-style Hugging Face encoders by structure)
   and returns a :class:`DependencyGraph` of coupled channel units. Analysis only: it never changes the model.
2. Importance scores per unit live in :mod:`slimkit.passes.prune.structured_importance`.
3. :func:`apply_removal` slices the chosen units out (on a copy, checked, then swapped in).

Anything the graph cannot handle raises :class:`slimkit.errors.GraphError` naming the op and module, before
the model is touched.
"""

from __future__ import annotations

from slimkit.graph.attention import PrunedMultiheadAttention
from slimkit.graph.build import build_dependency_graph
from slimkit.graph.core import DependencyGraph, Group, Member
from slimkit.graph.surgery import apply_removal, pruned_copy

__all__ = ["DependencyGraph", "Group", "Member", "PrunedMultiheadAttention", "apply_removal",
           "build_dependency_graph", "pruned_copy"]
