"""Channel slots, union-find and the dependency graph that structured pruning reads.

Every channel a layer produces (a conv filter, a Linear output feature, an attention head, an LSTM hidden
unit) is a *slot*. Tracing labels every element of every activation with the slot it came from, and every
operation that ties channels together (a residual add, a depthwise conv, a norm, a channel shuffle) unions
their slots. After tracing, each union-find class is one *unit*: the set of channels (in every layer) that
must be removed together. Units produced by the same layers form a *group* (what Torch-Pruning calls a
dependency group). Slot 0 is FIXED: channels unioned with it (model inputs and outputs, hard-coded sizes,
protected layers) are never removed. Label -1 (NONE) marks values that carry no channel identity.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

FIXED = 0
NONE = -1


@dataclass
class Space:
    """Channels produced by one layer output (``owner`` module name, ``role``); ``soft`` marks the per-element
    slots given to parameters read directly in ``forward`` (pos_embed, cls_token)."""

    owner: str
    role: str
    size: int
    soft: bool = False


class SlotTable:
    """Union-find over channel slots."""

    def __init__(self) -> None:
        self.parent: list[int] = [FIXED]
        self.space_of: list[int] = [-1]
        self.index_of: list[int] = [0]
        self.spaces: list[Space] = []

    def new(self, owner: str, role: str, size: int, *, soft: bool = False) -> torch.Tensor:
        sid = len(self.spaces)
        self.spaces.append(Space(owner, role, size, soft))
        start = len(self.parent)
        self.parent.extend(range(start, start + size))
        self.space_of.extend([sid] * size)
        self.index_of.extend(range(size))
        return torch.arange(start, start + size, dtype=torch.long)

    def find(self, s: int) -> int:
        parent = self.parent
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        if a < 0 or b < 0:
            return
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if ra < rb:  # the smaller id is the root, so FIXED (0) always stays a root
            self.parent[rb] = ra
        else:
            self.parent[ra] = rb

    def union_pairs(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Union ``a[i]`` with ``b[i]`` for every element (tensors of one shape)."""
        a, b = a.reshape(-1), b.reshape(-1)
        keep = (a >= 0) & (b >= 0) & (a != b)
        if not bool(keep.any()):
            return
        pairs = torch.unique(torch.stack([a[keep], b[keep]], 1), dim=0)
        for x, y in pairs.tolist():
            self.union(x, y)

    def union_all(self, labels: torch.Tensor) -> int:
        """Union every label in ``labels`` together; return one representative (or NONE)."""
        uniq = [u for u in torch.unique(labels).tolist() if u >= 0]
        if not uniq:
            return NONE
        for u in uniq[1:]:
            self.union(uniq[0], u)
        return uniq[0]

    def pin(self, labels: torch.Tensor) -> None:
        for u in torch.unique(labels).tolist():
            self.union(FIXED, u)

    def roots(self, labels: torch.Tensor) -> torch.Tensor:
        uniq, inv = torch.unique(labels, return_inverse=True)
        mapped = torch.tensor([self.find(u) if u >= 0 else u for u in uniq.tolist()], dtype=torch.long)
        return mapped[inv].reshape(labels.shape)

    def is_soft(self, s: int) -> bool:
        return s > 0 and self.spaces[self.space_of[s]].soft


@dataclass
class Member:
    """One place in one module that a unit's channels occupy. ``labels[i]`` is the slot of position ``i``
    along the pruned axis of ``role`` (e.g. input columns of a Linear). ``extra`` carries role details."""

    module: str
    role: str
    labels: torch.Tensor
    producer: bool = False
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class Group:
    """Units that come out of the same layers. ``units`` are union-find roots; ``width`` is how many
    channels each unit has in the group's first producer (1 for plain channels, head_dim for heads)."""

    index: int
    units: list[int]
    producers: list[str]
    kind: str
    width: int = 1

    def __len__(self) -> int:
        return len(self.units)


@dataclass
class DependencyGraph:
    """The result of analysis. Read-only for everything but :mod:`slimkit.graph.surgery`."""

    slots: SlotTable
    members: list[Member]
    groups: list[Group]
    pinned: set[int]
    attrs: list[tuple[str, str, str]] = field(default_factory=list)
    """(module, attribute, role) bookkeeping updates after removal (e.g. HF ``num_attention_heads``)."""
    tracer: str = "fx"
    """How the graph was obtained: ``fx``, ``fx+opaque`` (some submodules torch.fx could not trace are opaque
    leaves, see ``opaque``), ``export`` (torch.export, specialized to the example shapes), ``hf-bert`` (BERT-style
    encoders read from their module structure) or ``fx+hf-bert`` (a wrapper traced by fx around such an encoder,
    read by structure; ``fx+opaque+hf-bert`` with other opaque leaves)."""
    opaque: dict[str, str] = field(default_factory=dict)
    """Opaque submodule -> the trace error that made it opaque; their input and output channels are fixed."""
    export_ops: tuple[str, ...] | None = None
    """With ``tracer="export"``: the exported op sequence on the example inputs; removal re-exports the pruned
    copy and refuses it when a different sequence (another branch of shape-dependent control flow) ran."""

    def unit_positions(self) -> dict[int, list[tuple[int, torch.Tensor]]]:
        """root -> [(member index, positions in that member)]."""
        out: dict[int, list[tuple[int, torch.Tensor]]] = defaultdict(list)
        for mi, m in enumerate(self.members):
            roots = self.slots.roots(m.labels)
            for r in torch.unique(roots).tolist():
                if r > FIXED:
                    out[r].append((mi, (roots == r).nonzero().flatten()))
        return out

    def keep_indices(self, removed: set[int]) -> list[torch.Tensor | None]:
        """Per member: the kept positions, or None when nothing of it is removed."""
        out: list[torch.Tensor | None] = []
        for m in self.members:
            roots = self.slots.roots(m.labels)
            if not removed or not any(r in removed for r in torch.unique(roots).tolist()):
                out.append(None)
                continue
            mask = torch.tensor([r not in removed for r in roots.tolist()], dtype=torch.bool)
            out.append(mask.nonzero().flatten())
        return out

    @property
    def prunable_units(self) -> int:
        return sum(len(g) for g in self.groups)

    def describe(self) -> list[dict[str, object]]:
        """A JSON-friendly summary: one entry per group."""
        return [{"index": g.index, "kind": g.kind, "units": len(g), "width": g.width, "producers": g.producers}
                for g in self.groups]


def build_groups(slots: SlotTable, members: list[Member], pinned_modules: set[str]) -> tuple[list[Group], set[int]]:
    """Group prunable units by the producers they come from; pin units of protected producers."""
    pinned: set[int] = set()
    for m in members:
        if m.module in pinned_modules and m.producer:
            slots.pin(m.labels)
    owner: dict[int, int] = {}
    link = list(range(len(members)))

    def find(i: int) -> int:
        while link[i] != i:
            link[i] = link[link[i]]
            i = link[i]
        return i

    member_roots: dict[int, list[int]] = {}
    for mi, m in enumerate(members):
        if not m.producer:
            continue
        roots = sorted(set(slots.roots(m.labels).tolist()))
        member_roots[mi] = roots
        for r in roots:
            if r == FIXED:
                continue
            if r in owner:
                a, b = find(owner[r]), find(mi)
                if a != b:
                    link[b] = a
            else:
                owner[r] = mi
    comps: dict[int, list[int]] = defaultdict(list)
    for mi in member_roots:
        comps[find(mi)].append(mi)
    groups: list[Group] = []
    for mis in comps.values():
        units = sorted({r for mi in mis for r in member_roots[mi] if r != FIXED})
        if FIXED in {r for mi in mis for r in member_roots[mi]}:
            pinned.add(FIXED)
        if not units:
            continue
        first = members[mis[0]]
        roots0 = slots.roots(first.labels)
        width = int((roots0 == units[0]).sum()) if units[0] in set(roots0.tolist()) else 1
        kind = "heads" if first.role.endswith("heads") else "hidden" if first.role == "rnn.hidden" else "channels"
        groups.append(Group(len(groups), units, sorted({members[mi].module for mi in mis}), kind, max(width, 1)))
    return groups, pinned
