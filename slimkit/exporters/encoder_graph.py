"""Exact graph rewrites that make an encoder ONNX graph cheaper to run in onnxruntime on CPU.

Both keep the outputs bit-identical (they change how the graph is written, not what it computes):

- :func:`block_skip_layernorm`: ``Add(a, b) -> LayerNormalization`` becomes ``Sum(a, b) -> LayerNormalization``.
  onnxruntime's session optimizer fuses ``Add + LayerNormalization`` into ``SkipLayerNormalization`` whenever
  it can prove the shapes, and with onnxruntime 1.31 that CPU kernel is about 6x slower than the two ops it
  replaces (2.4 vs 0.41 ms at 8x128x384 on a 2-core Xeon). ``Sum`` is the same elementwise addition under a
  name the fusion does not match.
- :func:`static_reshapes`: a Reshape whose target shape is computed at run time (``Shape -> Gather ->
  Unsqueeze -> Concat``, as the TorchScript export writes every attention reshape) gets a constant target
  that uses ``0`` (copy this input dimension) and ``-1`` (infer one), found by running the graph at two
  different (batch, sequence) shapes; the shape subgraphs that no longer feed anything are removed.
- :func:`fold_token_types`: token-type ids that the graph computes from constants (the buffered all-zero
  ``token_type_ids`` of a BERT export called without them) are one row of the token-type table for every
  token: that row is added to the position-embedding table once, and the token-type lookup and the
  subgraph that builds its ids go (35 nodes in the fused MiniLM graph, a Gather and an addition of
  ``[batch, sequence, hidden]`` in the unfused one). Equal up to float rounding (the two additions are
  done in another order), not bit-identical.
- :func:`scalar_weight_zero_points`: per-channel int8 weights are symmetric, so their zero points are all
  zero; a zero-point *vector* sends onnxruntime's int8 GEMM down its per-column zero-point path, which costs
  time for nothing. A scalar zero gives bit-identical outputs.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["block_skip_layernorm", "fold_token_types", "prune_dead_nodes", "scalar_weight_zero_points",
           "static_reshapes"]


def block_skip_layernorm(proto: Any) -> int:
    """In place: every two-input ``Add`` of non-constant tensors whose only consumer is a LayerNormalization
    becomes ``Sum``; an input of it that is itself such an ``Add`` (single consumer) is folded in, so
    ``(a + b) + c`` becomes one ``Sum(a, b, c)`` (same order of additions: bit-identical). Returns how many
    ``Sum`` nodes were written."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    inits = {t.name for t in proto.graph.initializer}
    changed = True
    while changed:  # constants: initializers, Constant nodes, and Identity of constants (the TorchScript
        changed = False  # export writes a deduplicated bias as Identity(initializer))
        for n in proto.graph.node:
            if n.output[0] not in inits and (n.op_type == "Constant" or (n.op_type == "Identity" and n.input[0] in inits)):
                inits.add(n.output[0])
                changed = True
    consumers: dict[str, int] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    count = 0
    for n in proto.graph.node:
        if n.op_type != "LayerNormalization" or n.domain not in ("", "ai.onnx"):
            continue
        add = producer.get(n.input[0])
        if (add is not None and add.op_type == "Add" and add.domain in ("", "ai.onnx") and len(add.input) == 2
                and not any(i in inits for i in add.input) and consumers.get(add.output[0], 0) == 1):
            add.op_type = "Sum"
            count += 1
    drop = set()
    for n in proto.graph.node:
        if n.op_type != "Sum" or len(n.input) != 2:
            continue
        flat: list[str] = []
        for i in n.input:
            inner = producer.get(i)
            if (inner is not None and inner.op_type == "Add" and inner.domain in ("", "ai.onnx")
                    and len(inner.input) == 2 and not any(j in inits for j in inner.input)
                    and consumers.get(i, 0) == 1 and inner.output[0] not in drop):
                flat += list(inner.input)
                drop.add(inner.output[0])
            else:
                flat.append(i)
        del n.input[:]
        n.input.extend(flat)
    if drop:
        kept = [n for n in proto.graph.node if n.output[0] not in drop]
        del proto.graph.node[:]
        proto.graph.node.extend(kept)
    return count


def prune_dead_nodes(proto: Any) -> int:
    """In place: remove nodes (and initializers) that no graph output depends on. Returns nodes removed."""
    needed = {o.name for o in proto.graph.output}
    keep = []
    for n in reversed(list(proto.graph.node)):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    keep.reverse()
    removed = len(proto.graph.node) - len(keep)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    used = {i for n in keep for i in n.input}
    inits = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(inits)
    return removed


def _probe_feeds(proto: Any, batch: int, seq: int) -> dict[str, np.ndarray]:
    feeds = {}
    for inp in proto.graph.input:
        if inp.name in {t.name for t in proto.graph.initializer}:
            continue
        rank = len(inp.type.tensor_type.shape.dim)
        if rank != 2 or inp.type.tensor_type.elem_type not in (6, 7):  # int32 / int64 [batch, sequence] only
            raise ValueError(f"static_reshapes expects [batch, sequence] integer inputs; {inp.name} is not one")
        dtype = np.int64 if inp.type.tensor_type.elem_type == 7 else np.int32
        feeds[inp.name] = np.full((batch, seq), 0 if "type" in inp.name else 1, dtype)
    return feeds


def static_reshapes(proto: Any, *, probes: tuple[tuple[int, int], ...] = ((2, 7), (3, 11))) -> int:
    """In place: give computed Reshape targets a constant shape with ``0``/``-1`` (see the module docstring)
    and drop the dead shape subgraphs. Only for graphs whose inputs are ``[batch, sequence]`` integer
    tensors (token ids, masks). A Reshape whose target cannot be written that way is left alone.
    Returns how many Reshapes were rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    from slimkit.evaluation.latency import ort_session

    inits = {t.name for t in proto.graph.initializer}
    reshapes = [n for n in proto.graph.node if n.op_type == "Reshape" and n.domain in ("", "ai.onnx")
                and n.input[1] not in inits
                and not any(a.name == "allowzero" and a.i for a in n.attribute)]
    if not reshapes:
        return 0
    probe = copy.deepcopy(proto)
    del probe.graph.output[:]
    outs: list[str] = []
    for i, n in enumerate(reshapes):
        shape_of = f"{n.input[0]}__probe_shape_{i}"
        probe.graph.node.append(helper.make_node("Shape", [n.input[0]], [shape_of]))
        outs += [n.input[1], shape_of]
    outs = list(dict.fromkeys(outs))
    for o in outs:
        probe.graph.output.append(helper.make_tensor_value_info(o, onnx.TensorProto.INT64, None))
    sess = ort_session(probe.SerializeToString(), threads=1, optimize=False)
    runs = [dict(zip(outs, sess.run(outs, _probe_feeds(proto, b, s)), strict=True)) for b, s in probes]
    count = 0
    for i, n in enumerate(reshapes):
        targets = [r[n.input[1]] for r in runs]
        shapes = [r[f"{n.input[0]}__probe_shape_{i}"] for r in runs]
        if len({len(t) for t in targets}) != 1:
            continue
        new = []
        for d in range(len(targets[0])):
            vals = [int(t[d]) for t in targets]
            if len(set(vals)) == 1 and vals[0] > 0:
                new.append(vals[0])
            elif all(d < len(x) and int(x[d]) == v for x, v in zip(shapes, vals, strict=True)):
                new.append(0)
            else:
                new.append(-1)
        if new.count(-1) > 1:
            continue
        name = f"{n.name or n.output[0]}_static_shape"
        proto.graph.initializer.append(numpy_helper.from_array(np.array(new, np.int64), name))
        n.input[1] = name
        count += 1
    removed = prune_dead_nodes(proto)
    log.info("static_reshapes: %d Reshape targets made constant, %d shape nodes removed", count, removed)
    return count


def _value_dependent(proto: Any) -> set[str]:
    """Tensors whose values depend on the graph inputs' values (not only on their shapes: ``Shape`` and
    ``Size`` outputs do not)."""
    inits = {t.name for t in proto.graph.initializer}
    dep = {i.name for i in proto.graph.input if i.name not in inits}
    for n in proto.graph.node:  # graph order is topological
        if n.op_type not in ("Shape", "Size") and any(i in dep for i in n.input):
            dep.update(o for o in n.output if o)
    return dep


def _probe_values(proto: Any, tensors: list[str], probes: tuple[tuple[int, int], ...]) -> list[dict[str, np.ndarray]]:
    """The values of ``tensors`` when the graph runs at each (batch, sequence) of ``probes``."""
    import onnx

    from slimkit.evaluation.latency import ort_session

    probe = copy.deepcopy(proto)
    del probe.graph.output[:]
    for t in tensors:
        probe.graph.output.append(onnx.ValueInfoProto(name=t))
    sess = ort_session(probe.SerializeToString(), threads=1, optimize=False)
    return [dict(zip(tensors, sess.run(tensors, _probe_feeds(proto, b, s)), strict=True)) for b, s in probes]


def fold_token_types(proto: Any, *, probes: tuple[tuple[int, int], ...] = ((2, 7), (3, 11))) -> int:
    """In place: fold constant token-type ids into the position-embedding table (see the module docstring).
    Acts on the fused ``EmbedLayerNormalization`` (its optional segment inputs are dropped) and on the
    unfused ``Gather(token_type_table, ids) -> Add(words, .) -> Add(., Gather(position_table, .))``. The ids
    must not depend on any input's values and must hold one value at every probed shape; a table used
    elsewhere is left alone. Returns how many lookups were folded."""
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    uses: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for i in n.input:
            uses.setdefault(i, []).append(n)
    dep = _value_dependent(proto)
    plans = []  # (ids tensor, type table, position table, apply)
    for n in proto.graph.node:
        if n.op_type == "EmbedLayerNormalization" and len(n.input) > 4 and n.input[1] and n.input[4] in inits \
                and n.input[3] in inits and n.input[1] not in dep:
            def drop(node: Any = n) -> None:
                node.input[1] = node.input[4] = ""
            plans.append((n.input[1], n.input[4], n.input[3], drop))
        elif n.op_type == "Gather" and n.input[0] in inits and n.input[1] not in dep and len(uses.get(n.output[0], [])) == 1:
            add = uses[n.output[0]][0]
            nxt = uses.get(add.output[0], [])
            if add.op_type != "Add" or len(nxt) != 1 or nxt[0].op_type != "Add":
                continue
            other = [i for i in nxt[0].input if i != add.output[0]]
            pos = producer.get(other[0]) if len(other) == 1 else None
            words = [i for i in add.input if i != n.output[0]]
            if pos is None or pos.op_type != "Gather" or pos.input[0] not in inits or len(words) != 1:
                continue
            def bypass(a: Any = add, w: str = words[0]) -> None:
                for c in uses.get(a.output[0], []):
                    c.input[list(c.input).index(a.output[0])] = w
            plans.append((n.input[1], n.input[0], pos.input[0], bypass))
    plans = [p for p in plans if len(uses.get(p[1], [])) == 1 and len(uses.get(p[2], [])) == 1]
    if not plans:
        return 0
    runs = _probe_values(proto, sorted({p[0] for p in plans}), probes)
    count = 0
    for ids, tt, pos, apply in plans:
        vals = np.unique(np.concatenate([r[ids].ravel() for r in runs]))
        if vals.size != 1:
            continue
        row = numpy_helper.to_array(inits[tt])[int(vals[0])]
        table = numpy_helper.to_array(inits[pos])
        inits[pos].CopyFrom(numpy_helper.from_array((table + row).astype(table.dtype), pos))
        apply()
        count += 1
    removed = prune_dead_nodes(proto)
    log.info("fold_token_types: %d token-type lookups folded into the position table, %d nodes removed", count, removed)
    return count


def scalar_weight_zero_points(proto: Any) -> int:
    """In place: an all-zero weight zero-point vector of ``MatMulInteger`` (input 3) or ``QAttention``
    (input 7) becomes one scalar zero of the same type (see the module docstring). Returns how many inputs
    were rewritten."""
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    scalars: dict[Any, str] = {}
    count = 0
    for n in proto.graph.node:
        idx = {"MatMulInteger": 3, "QAttention": 7}.get(n.op_type)
        if idx is None or len(n.input) <= idx or n.input[idx] not in inits:
            continue
        zp = numpy_helper.to_array(inits[n.input[idx]])
        if zp.size <= 1 or zp.any():
            continue
        if zp.dtype not in scalars:
            scalars[zp.dtype] = f"slimkit_zero_{zp.dtype.name}"
            proto.graph.initializer.append(numpy_helper.from_array(np.zeros((), zp.dtype), scalars[zp.dtype]))
        n.input[idx] = scalars[zp.dtype]
        count += 1
    if count:
        prune_dead_nodes(proto)  # drops the unused vectors
    return count
