"""Exact fp32 graph transforms that make an encoder ONNX graph easier to quantize (used by
:mod:`slimkit.exporters.encoder_int8`): the outputs stay what they were (up to float rounding); what changes
is the range of the activations that dynamic int8 quantizes per tensor.

- :func:`smooth_inputs`: SmoothQuant scale migration, ``x @ W = (x / s) @ (diag(s) W)``, with an explicit
  ``Mul(x, 1/s)`` (the inputs are LayerNorm outputs that also feed the residual, so no producer can absorb it).
- :func:`smooth_into_values`: the same for the attention output projections, folded exactly into the value
  projection (``softmax(QK^T) @ V`` is linear in each value channel): no run-time op.
- :func:`split_outlier_channels`: LLM.int8()-style decomposition of a MatMul fed by a GELU of a biased
  MatMul: the given input channels go through a small fp32 side path and are zeroed in the int8 path.
- :func:`outlier_targets`, :func:`activation_absmax`, :func:`weight_matmuls`: what those two act on, and the
  calibration statistics they need.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["activation_absmax", "calibration_feeds", "outlier_targets", "smooth_inputs", "smooth_into_values",
           "smoothing_groups", "split_outlier_channels", "weight_matmuls"]

_ACT_OPS = {"Mul", "Div", "Erf", "Add", "Tanh", "Pow", "Sigmoid", "Gelu", "BiasGelu", "FastGelu"}


def weight_matmuls(proto: Any, ops: tuple[str, ...] = ("MatMul",)) -> dict[str, tuple[Any, Any]]:
    """``{name: (node, weight initializer)}`` of the nodes of ``ops`` whose second input is a constant
    ``[in, out]`` weight (MatMul; the fused ``Attention`` takes its packed Q/K/V weight the same way)."""
    inits = {t.name: t for t in proto.graph.initializer}
    return {n.name: (n, inits[n.input[1]]) for n in proto.graph.node
            if n.op_type in ops and len(n.input) >= 2 and n.input[1] in inits
            and (n.op_type != "MatMul" or len(n.input) == 2)}


def calibration_feeds(batch: Any) -> dict[str, np.ndarray]:
    """``{"input_ids", "attention_mask"}`` int64 arrays from a ``(ids, mask)`` pair or a dict of them."""
    ids, mask = (batch["input_ids"], batch["attention_mask"]) if isinstance(batch, dict) else batch
    return {"input_ids": np.asarray(ids).astype(np.int64), "attention_mask": np.asarray(mask).astype(np.int64)}


def activation_absmax(proto: Any, tensors: list[str], batches: Sequence[Any], work: Path) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of ``tensors`` over the calibration batches (run as extra graph outputs;
    ``work`` is a scratch directory)."""
    import onnx

    from slimkit.evaluation.latency import ort_session

    probe = copy.deepcopy(proto)
    for name in tensors:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    onnx.save_model(probe, str(work / "probe.onnx"))
    sess = ort_session(work / "probe.onnx", 2)
    stats: dict[str, np.ndarray] = {}
    for feeds in map(calibration_feeds, batches):
        for name, out in zip(tensors, sess.run(tensors, feeds), strict=True):
            m = np.abs(out.reshape(-1, out.shape[-1])).max(0)
            stats[name] = m if name not in stats else np.maximum(stats[name], m)
    return stats


def smoothing_groups(proto: Any, patterns: Sequence[str]) -> dict[str, list[tuple[Any, Any]]]:
    """The MatMuls (and fused ``Attention``) matching ``patterns`` grouped by input tensor, ``{input:
    [(node, weight initializer)]}``: one group is one smoothing ``Mul`` of :func:`smooth_inputs`."""
    groups: dict[str, list[tuple[Any, Any]]] = {}
    for name, (node, w) in weight_matmuls(proto, ("MatMul", "Attention")).items():
        if any(re.search(p, name) for p in patterns):
            groups.setdefault(node.input[0], []).append((node, w))
    return groups


def smooth_inputs(proto: Any, patterns: Sequence[str], alpha: float, batches: Sequence[Any], work: Path, *,
                  stats: dict[str, np.ndarray] | None = None, only: Sequence[str] | None = None) -> list[str]:
    """SmoothQuant scale migration in place: for each MatMul (or fused ``Attention``) matching ``patterns``,
    grouped by input (:func:`smoothing_groups`), ``s = max|x|^alpha / max|W_row|^(1-alpha)``,
    ``W <- diag(s) W`` and a ``Mul(x, 1/s)`` feeding the group. ``stats``: the inputs' calibration
    :func:`activation_absmax` when already measured (then ``batches`` is not used); ``only``: smooth only the
    groups of these input tensors. Returns the names of the smoothed nodes."""
    from onnx import helper, numpy_helper

    groups = smoothing_groups(proto, patterns)
    if only is not None:
        groups = {x: m for x, m in groups.items() if x in set(only)}
    if not groups:
        return []
    if stats is None:
        stats = activation_absmax(proto, sorted(groups), batches, work)
    nodes = list(proto.graph.node)
    for x, members in groups.items():
        weights = [numpy_helper.to_array(w) for _, w in members]
        wmax = np.max([np.abs(w).max(1) for w in weights], axis=0)
        s = np.clip(stats[x] ** alpha / np.maximum(wmax, 1e-5) ** (1 - alpha), 1e-5, None).astype(np.float32)
        for (_, w), arr in zip(members, weights, strict=True):
            w.CopyFrom(numpy_helper.from_array((arr * s[:, None]).astype(np.float32), w.name))
        inv = f"{x}_smooth_inv"
        proto.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
        mul = helper.make_node("Mul", [x, inv], [f"{x}_smoothed"], name=f"{x}_SmoothMul")
        for node, _ in members:
            node.input[0] = f"{x}_smoothed"
        nodes.insert(min(nodes.index(n) for n, _ in members), mul)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return sorted(n.name for m in groups.values() for n, _ in m)


def _biased_producer(proto: Any, tensor: str, matmuls: dict[str, tuple[Any, Any]]) -> tuple[Any, Any] | None:
    """The ``(MatMul node, bias initializer)`` whose ``Add(bias, MatMul)`` output feeds ``tensor`` through
    elementwise activation ops only (GELU), or None."""
    inits = {t.name: t for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    by_output = {n.output[0]: n for n, _ in matmuls.values()}
    frontier, seen = [tensor], set()
    while frontier:
        node = producer.get(frontier.pop())
        if node is None or node.name in seen or node.op_type not in _ACT_OPS:
            continue
        seen.add(node.name)
        if node.op_type == "BiasGelu" and node.input[1] in inits and node.input[0] in by_output:
            return by_output[node.input[0]], inits[node.input[1]]  # fused graph: BiasGelu(MatMul, bias)
        if node.op_type == "Add" and len(node.input) == 2:
            bias = [i for i in node.input if i in inits]
            other = [i for i in node.input if i in by_output]
            if len(bias) == 1 and len(other) == 1:
                return by_output[other[0]], inits[bias[0]]
        frontier.extend(i for i in node.input if i not in inits)
    return None


def outlier_targets(proto: Any, patterns: Sequence[str]) -> list[str]:
    """Names of the MatMuls matching ``patterns`` that :func:`split_outlier_channels` can act on (fed by an
    activation of a biased MatMul), in graph order; the others are logged and left out."""
    mms = weight_matmuls(proto)
    found = []
    for name, (node, _) in mms.items():
        if any(re.search(p, name) for p in patterns):
            if _biased_producer(proto, node.input[0], mms) is None:
                log.warning("outlier decomposition: no biased MatMul + activation feeds %s; skipped", name)
            else:
                found.append(name)
    return found


def split_outlier_channels(proto: Any, targets: Sequence[str], k: int, absmax: dict[str, np.ndarray]) -> list[str]:
    """Outlier-channel decomposition in place for the MatMuls named ``targets`` (see
    :func:`outlier_targets`): the ``k`` input channels with the largest ``absmax[input]`` (from
    :func:`activation_absmax`) are computed in fp32 on the side (``h @ W_up[:, idx]``, BiasGelu,
    ``@ W_dn[idx]``), and zeroed in the main path (those ``W_up`` columns, bias entries and ``W_dn`` rows;
    GELU(0) = 0). Returns the names of the fp32 side MatMuls (to keep out of int8)."""
    from onnx import helper, numpy_helper

    mms = weight_matmuls(proto)
    inits = {t.name: t for t in proto.graph.initializer}
    nodes, fp32 = list(proto.graph.node), []
    for name in targets:
        node, w = mms[name]
        found = _biased_producer(proto, node.input[0], mms)
        if found is None or k <= 0:
            continue
        up, bias = found
        idx = np.argsort(-absmax[node.input[0]])[:k].astype(np.int64)
        w_up, b_up = numpy_helper.to_array(inits[up.input[1]]).copy(), numpy_helper.to_array(bias).copy()
        w_dn = numpy_helper.to_array(w).copy()
        side = {f"{name}_oW_up": w_up[:, idx], f"{name}_ob_up": b_up[idx], f"{name}_oW_dn": w_dn[idx]}
        w_up[:, idx], b_up[idx], w_dn[idx] = 0.0, 0.0, 0.0
        for t, arr in ((inits[up.input[1]], w_up), (bias, b_up), (w, w_dn)):
            t.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), t.name))
        proto.graph.initializer.extend(numpy_helper.from_array(a.astype(np.float32), n) for n, a in side.items())
        # add the side path after the bias Add when there is one, so MatMulInteger + bias still fuse
        p, consumers = name, [n for n in nodes if node.output[0] in n.input]
        anchor = consumers[0] if (len(consumers) == 1 and consumers[0].op_type == "Add"
                                  and any(i in inits for i in consumers[0].input)) else node
        y = anchor.output[0]
        new = [helper.make_node("MatMul", [up.input[0], f"{p}_oW_up"], [f"{p}_o_h"], name=f"{p}_OutlierUp"),
               helper.make_node("BiasGelu", [f"{p}_o_h", f"{p}_ob_up"], [f"{p}_o_x"], name=f"{p}_OutlierGelu",
                                domain="com.microsoft"),
               helper.make_node("MatMul", [f"{p}_o_x", f"{p}_oW_dn"], [f"{p}_o_y"], name=f"{p}_OutlierDown"),
               helper.make_node("Add", [f"{p}_o_main", f"{p}_o_y"], [y], name=f"{p}_OutlierAdd")]
        anchor.output[0] = f"{p}_o_main"
        i = nodes.index(anchor)
        nodes[i + 1:i + 1] = new
        fp32 += [f"{p}_OutlierUp", f"{p}_OutlierDown"]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    if fp32 and not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fp32


_MOVE_OPS = {"Reshape", "Transpose"}


def _value_projection(proto: Any, tensor: str) -> tuple[Any, Any, slice] | None:
    """For the input ``tensor`` of an attention output projection: ``(weight, bias, columns)`` of the value
    projection that produces it channel for channel (``softmax(QK^T) @ V`` through Reshape/Transpose only),
    or None. On the fused graph the packed Q/K/V weight and bias of ``Attention`` (columns ``2H:3H``)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    node = producer.get(tensor)
    while node is not None and node.op_type in _MOVE_OPS:
        node = producer.get(node.input[0])
    if node is None:
        return None
    if node.op_type == "Attention" and node.domain == "com.microsoft" and len(node.input) >= 3:
        w, b = inits.get(node.input[1]), inits.get(node.input[2])
        if w is None or b is None or len(node.output) > 1 and node.output[1]:
            return None  # no past/present state: only the plain encoder Attention
        hidden = numpy_helper.to_array(w).shape[1] // 3
        return w, b, slice(2 * hidden, 3 * hidden)
    if node.op_type != "MatMul" or any(i in inits for i in node.input):
        return None
    v = producer.get(node.input[1])  # probs @ V
    while v is not None and v.op_type in _MOVE_OPS:
        v = producer.get(v.input[0])
    if v is None or v.op_type != "Add":
        return None
    bias = [inits[i] for i in v.input if i in inits]
    mm = [producer.get(i) for i in v.input if i not in inits]
    if len(bias) != 1 or len(mm) != 1 or mm[0] is None or mm[0].op_type != "MatMul" or mm[0].input[1] not in inits:
        return None
    w = inits[mm[0].input[1]]
    return w, bias[0], slice(0, int(w.dims[1]))


def smooth_into_values(proto: Any, patterns: Sequence[str], alpha: float, batches: Sequence[Any], work: Path, *,
                       stats: dict[str, np.ndarray] | None = None) -> list[str]:
    """SmoothQuant for the attention output projections matching ``patterns``, folded exactly (no run-time
    op): their input is ``softmax(QK^T) @ V``, linear in each value channel, so ``1/s`` goes into the value
    projection's weight columns and bias and ``s`` into the output projection's weight rows. Returns the names
    of the smoothed output projections (those whose value projection was found)."""
    from onnx import numpy_helper

    mms = {k: v for k, v in weight_matmuls(proto).items() if any(re.search(p, k) for p in patterns)}
    found = {k: (n, w, _value_projection(proto, n.input[0])) for k, (n, w) in mms.items()}
    found = {k: v for k, v in found.items() if v[2] is not None}
    if not found:
        return []
    if stats is None:
        stats = activation_absmax(proto, sorted({n.input[0] for n, _, _ in found.values()}), batches, work)
    for n, w, (wv, bv, cols) in found.values():
        w_o = numpy_helper.to_array(w)
        s = np.clip(stats[n.input[0]] ** alpha / np.maximum(np.abs(w_o).max(1), 1e-5) ** (1 - alpha), 1e-5, None)
        a_v, a_b = numpy_helper.to_array(wv).copy(), numpy_helper.to_array(bv).copy()
        a_v[:, cols] /= s
        a_b[cols] /= s
        for t, arr in ((w, w_o * s[:, None]), (wv, a_v), (bv, a_b)):
            t.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), t.name))
    return sorted(found)
