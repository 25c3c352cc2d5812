"""Lossless size compaction of an ONNX graph: what a deployed model does not need to carry.

:func:`compact_onnx` changes no value the model computes and no kernel onnxruntime picks. It is applied
to slimkit's int8 QDQ artifact by default (``quantize_onnx(compact=True)``) and, for a like-for-like size
ratio, to the fp32 baseline the benchmarks compare it with (only the generic parts apply there: names and
opset imports). On a small CNN the QDQ file carries ~28 KB beside its int8 weights; this removes about
half of it:

- ``names``: every tensor and node gets a short generated name (``1f``); graph inputs and outputs keep
  theirs. onnxruntime's quantizer names tensors ``<layer>_DequantizeLinear_Output`` etc., so names are
  ~6 KB of the int8 file of a 300k-parameter CNN. Node and tensor names carry no semantics; anything that refers to
  node names (``nodes_to_exclude``, sensitivity units) refers to the fp32 export, which keeps its names
  until the caller compacts the finished artifact.
- ``zero_points``: an all-zero zero point of a ``DequantizeLinear`` of an int8 initializer (symmetric
  per-channel weights) is dropped; the ONNX default zero point is 0 of the input's type, so the value is
  identical. Only done where every consumer is a Conv: onnxruntime (checked on 1.31) then still fuses
  ``DQ -> Conv -> Q`` into QLinearConv, but stops fusing Gemm into QGemm without the weight zero point.
- ``dedupe``: identical scalar initializers (activation scales and zero points shared by value) are
  stored once.
- ``opsets``: opset imports of domains no node uses (the quantizer declares ``com.microsoft`` and
  ``ai.onnx.ml``) are dropped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

_ZP_SAFE_CONSUMERS = frozenset({"Conv"})


def _subgraphs(graph: Any) -> bool:
    return any(attr.g.node or attr.graphs for node in graph.node for attr in node.attribute)


def drop_zero_weight_zero_points(graph: Any) -> int:
    """Drop all-zero zero points of ``DequantizeLinear`` nodes that dequantize an initializer of the zero
    point's own type and feed only Conv nodes. Returns how many were dropped."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, set[str]] = defaultdict(set)
    for node in graph.node:
        for name in node.input:
            consumers[name].add(node.op_type)
    dropped = 0
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) != 3 or node.domain not in ("", "ai.onnx"):
            continue
        x, zp = inits.get(node.input[0]), inits.get(node.input[2])
        if x is None or zp is None or x.data_type != zp.data_type:
            continue
        users = consumers.get(node.output[0], set())
        if not users or not users <= _ZP_SAFE_CONSUMERS or numpy_helper.to_array(zp).any():
            continue
        del node.input[2]
        dropped += 1
    _drop_unused_initializers(graph)
    return dropped


def dedupe_scalar_initializers(graph: Any) -> int:
    """Store identical scalar initializers once (same type, shape and value). Returns how many went."""
    from onnx import numpy_helper

    canon: dict[tuple[Any, ...], str] = {}
    alias: dict[str, str] = {}
    keep_io = {v.name for v in graph.input}
    for t in graph.initializer:
        if t.name in keep_io or len(t.dims) > 1 or (t.dims and t.dims[0] != 1):
            continue
        key = (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes())
        if key in canon:
            alias[t.name] = canon[key]
        else:
            canon[key] = t.name
    if not alias:
        return 0
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    _drop_unused_initializers(graph)
    return len(alias)


def short_names(graph: Any) -> None:
    """Rename every tensor to a short generated name and clear node names; graph inputs and outputs keep
    their names."""
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in mapping:
            new = format(len(mapping), "x")
            while new in keep:  # never collide with an input/output name
                mapping[f"\0{new}"] = new
                new = format(len(mapping), "x")
            mapping[name] = new
        return mapping[name]

    rename_tensors(graph, short, node_name=lambda _: "")


def rename_tensors(graph: Any, rename: Callable[[str], str], *, node_name: Callable[[str], str]) -> None:
    """Apply ``rename`` to every tensor name (initializers, node inputs and outputs, value_info) and
    ``node_name`` to every node name, in place. ``rename`` must leave graph inputs and outputs alone."""
    for t in graph.initializer:
        t.name = rename(t.name)
    for node in graph.node:
        node.name = node_name(node.name)
        for i, name in enumerate(node.input):
            node.input[i] = rename(name)
        for i, name in enumerate(node.output):
            node.output[i] = rename(name)
    for v in graph.value_info:
        v.name = rename(v.name)


def drop_unused_opsets(proto: Any) -> int:
    """Remove opset imports of non-default domains that no node (or local function) uses."""
    used = {n.domain for n in proto.graph.node} | {f.domain for f in proto.functions}
    used |= {n.domain for f in proto.functions for n in f.node}
    gone = [o for o in proto.opset_import if o.domain not in ("", "ai.onnx") and o.domain not in used]
    for o in gone:
        proto.opset_import.remove(o)
    return len(gone)


def _drop_unused_initializers(graph: Any) -> None:
    used = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


def compact_onnx(proto: Any, *, names: bool = True, zero_points: bool = True, dedupe: bool = True,
                 opsets: bool = True) -> Any:
    """Apply the lossless compactions above to ``proto`` in place and return it. Graphs with control-flow
    subgraphs (If/Loop/Scan) are left untouched apart from unused opset imports, since their bodies may
    refer to outer names."""
    graph = proto.graph
    if not _subgraphs(graph):
        if zero_points:
            drop_zero_weight_zero_points(graph)
        if dedupe:
            dedupe_scalar_initializers(graph)
        if names:
            short_names(graph)
    if opsets:
        drop_unused_opsets(proto)
    return proto




def onnx_byte_breakdown(path: Any) -> dict[str, Any]:
    """Where the bytes of an ONNX file go (protobuf sizes, approximate to a few bytes of field headers):
    initializers by role (the consuming op and input slot, e.g. ``DequantizeLinear.x_scale``) and dtype,
    nodes (with how much of them is names), value_info, opset imports, metadata. Reads, never changes."""
    import onnx

    proto = onnx.load(str(path), load_external_data=True)
    graph = proto.graph
    slots = {"DequantizeLinear": ("x", "x_scale", "x_zero_point"),
             "QuantizeLinear": ("x", "y_scale", "y_zero_point")}
    consumer: dict[str, str] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            names = slots.get(node.op_type, ())
            consumer.setdefault(name, f"{node.op_type}.{names[i] if i < len(names) else f'in{i}'}")
    inits: dict[str, dict[str, int]] = {}
    for t in graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        key = (f"{consumer.get(t.name, 'unused')} {onnx.TensorProto.DataType.Name(t.data_type).lower()}"
               f"{' scalar' if n == 1 else ''}")
        row = inits.setdefault(key, {"count": 0, "bytes": 0, "values": 0})
        row["count"] += 1
        row["bytes"] += t.ByteSize()
        row["values"] += n
    name_chars = (sum(len(n.name) + sum(map(len, n.input)) + sum(map(len, n.output)) for n in graph.node)
                  + sum(len(t.name) for t in graph.initializer))
    return {
        "file_bytes": proto.ByteSize(),
        "initializers": dict(sorted(inits.items(), key=lambda kv: -kv[1]["bytes"])),
        "initializer_bytes": sum(t.ByteSize() for t in graph.initializer),
        "nodes": len(graph.node),
        "node_bytes": sum(n.ByteSize() for n in graph.node),
        "name_chars": name_chars,
        "value_info_bytes": sum(v.ByteSize() for v in graph.value_info),
        "io_bytes": sum(v.ByteSize() for v in [*graph.input, *graph.output]),
        "opset_import_bytes": sum(o.ByteSize() for o in proto.opset_import),
        "metadata_bytes": (sum(p.ByteSize() for p in [*proto.metadata_props, *graph.metadata_props])
                           + len(proto.doc_string) + len(graph.doc_string)),
    }


__all__ = ["compact_onnx", "dedupe_scalar_initializers", "drop_unused_opsets", "drop_zero_weight_zero_points",
           "onnx_byte_breakdown", "short_names"]
