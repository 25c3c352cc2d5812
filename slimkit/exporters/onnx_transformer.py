"""ONNX for transformer encoders (sentence embeddings): export with dynamic batch and sequence, graph
fusion with onnxruntime's transformer optimizer, and an int8 recipe that keeps fp32 fidelity.

- :func:`export_encoder_onnx`: ``(input_ids, attention_mask) -> embedding`` from a deep copy (exporting a
  Hugging Face model can mutate it), with eager attention and the TorchScript exporter: its graph is the
  one onnxruntime's BERT fusions recognise (the dynamo export of torch 2.13 builds the mask with a pattern
  that blocks Attention fusion). Parity with PyTorch is checked on two shapes.
- :func:`optimize_encoder_onnx`: ``onnxruntime.transformers.optimizer`` (EmbedLayerNormalization,
  Attention, SkipLayerNormalization, BiasGelu); returns the fused-op counts.
- :func:`quantize_encoder_int8`: dynamic int8 (MatMul + Gather, so the embedding table shrinks too) with
  per-channel weights, SmoothQuant-style scale migration into the Q/K/V and FFN input projections, the
  largest GELU channels of the FFN output projections in fp32 on the side, and the few MatMuls
  most sensitive to int8 activations kept as 8-bit weight-only ``MatMulNBits`` (fp32 activations), picked by
  measured per-layer sensitivity and a greedy mixed assignment within the size budget.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.context import eval_mode
from slimkit.errors import ConfigError, ExportError
from slimkit.evaluation.agreement import row_cosine
from slimkit.evaluation.latency import cpu_has_vnni

log = logging.getLogger(__name__)

__all__ = ["EncoderInt8Config", "encoder_parity", "export_encoder_onnx", "optimize_encoder_onnx", "ort_embed",
           "prepare_encoder_int8", "quantize_encoder_int8"]

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_embedding"


def _eager_copy(encoder: nn.Module) -> nn.Module:
    """A CPU eval-mode deep copy of ``encoder`` without its tokenizer, with eager attention."""
    tokenizer = getattr(encoder, "tokenizer", None)
    try:
        if tokenizer is not None:
            encoder.tokenizer = None
        clone = copy.deepcopy(encoder).cpu().eval()
    finally:
        if tokenizer is not None:
            encoder.tokenizer = tokenizer
    inner = getattr(clone, "transformer", None)
    if inner is not None and hasattr(inner, "config"):
        try:
            inner.set_attn_implementation("eager")
        except Exception:  # older transformers, or models without the switch
            inner.config._attn_implementation = "eager"
    return clone


def _example(batch: int = 2, seq: int = 16, vocab: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 1000 + vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, seq // 2:] = 0  # padding in the last row: exercises the mask
    ids[-1, seq // 2:] = 0
    return ids, mask


def export_encoder_onnx(encoder: nn.Module, path: str | os.PathLike[str], *, opset: int = 17,
                        exporter: str = "torchscript", parity: bool = True, atol: float = 1e-4) -> Path:
    """Export ``encoder`` (``forward(input_ids, attention_mask) -> [batch, dim]``) to one ONNX file with
    inputs ``input_ids``/``attention_mask`` (int64, dynamic batch and sequence) and output ``sentence_embedding``.

    ``exporter="torchscript"`` (default: fusable by :func:`optimize_encoder_onnx`) or ``"dynamo"``.
    With ``parity`` the file is compared with PyTorch on a 2x16 and a 3x40 batch (with padding) and
    ExportError is raised when any element differs by more than ``atol``. Writes atomically."""
    if exporter not in ("torchscript", "dynamo"):
        raise ConfigError(f"exporter={exporter!r} is not known.", hint="Use 'torchscript' or 'dynamo'.")
    path = Path(path)
    clone = _eager_copy(encoder)
    example = _example()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".slimkit-export-", dir=path.parent) as td:
        tmp = Path(td) / "model.onnx"
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                if exporter == "torchscript":
                    # The only TracerWarning here is transformers' check that the mask is as long as the
                    # keys; both inputs share the sequence axis, so the traced graph is shape-generic.
                    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                            OUTPUT_NAME: {0: "batch"}}
                    torch.onnx.export(clone, example, str(tmp), dynamo=False, opset_version=opset,
                                      input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                                      dynamic_axes=axes, do_constant_folding=True)
                else:
                    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
                    torch.onnx.export(clone, example, str(tmp), dynamo=True, opset_version=max(opset, 18),
                                      input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                                      dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}), external_data=False)
        except Exception as exc:
            raise ExportError(f"ONNX export ({exporter}) of {type(encoder).__name__} failed: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                              hint="Try exporter='dynamo' (or 'torchscript'); check that forward takes "
                                   "(input_ids, attention_mask).") from None
        _save_inline(tmp, tmp)
        if parity:
            for b, s in ((2, 16), (3, 40)):
                stats = encoder_parity(clone, tmp, _example(b, s))
                if stats["max_abs_diff"] > atol:
                    raise ExportError(f"exported encoder differs from PyTorch at batch {b}, sequence {s}: "
                                      f"max |diff| {stats['max_abs_diff']:.3g} > {atol:g}.",
                                      hint="Check the dynamic axes of the export, or try the other exporter.")
        os.replace(tmp, path)
    log.info("exported %s to %s (%s, opset %d)", type(encoder).__name__, path, exporter, opset)
    return path


def _save_inline(src: Path, dst: Path) -> None:
    import onnx

    proto = onnx.load(str(src), load_external_data=True)
    for p in src.parent.glob(src.name + ".data"):
        p.unlink()
    from slimkit.exporters.onnx_int8 import strip_debug_info

    onnx.save_model(strip_debug_info(proto), str(dst), save_as_external_data=False)


def ort_embed(onnx_path: Any, input_ids: Any, attention_mask: Any, *, threads: int = 1) -> np.ndarray:
    """Run an encoder ONNX file (or an onnxruntime session) on one batch; returns ``[batch, dim]``."""
    from slimkit.evaluation.latency import ort_session

    sess = onnx_path if hasattr(onnx_path, "run") else ort_session(onnx_path, threads)
    names = [i.name for i in sess.get_inputs()]
    feed = {"input_ids": np.asarray(input_ids, dtype=np.int64), "attention_mask": np.asarray(attention_mask, np.int64)}
    if "token_type_ids" in names:
        feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
    return sess.run([OUTPUT_NAME] if OUTPUT_NAME in [o.name for o in sess.get_outputs()] else None,
                    {k: v for k, v in feed.items() if k in names})[0]


def encoder_parity(encoder: nn.Module, onnx_path: str | os.PathLike[str],
                   inputs: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """Max/mean absolute difference and minimum per-row cosine between ``encoder`` and the ONNX file."""
    with eval_mode(encoder), torch.no_grad():
        ref = encoder(*inputs).double().numpy()
    got = ort_embed(onnx_path, inputs[0].numpy(), inputs[1].numpy()).astype(np.float64)
    diff = np.abs(got - ref)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "cosine_min": float(row_cosine(got, ref).min())}


def optimize_encoder_onnx(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, num_heads: int,
                          hidden_size: int, model_type: str = "bert", skip_layer_norm: bool = False
                          ) -> dict[str, int]:
    """Fuse the encoder graph with ``onnxruntime.transformers.optimizer`` (offline, opt_level 0: the fused
    graph still runs on any onnxruntime CPU build) and write ``dst``. Returns the counts of fused
    operators (``Attention``, ``EmbedLayerNormalization``, ``SkipLayerNormalization``, ``BiasGelu``, ...),
    zeros included; a graph with no Attention fused is still written (and logged).

    ``skip_layer_norm=False`` (default) keeps ``Add + LayerNormalization`` unfused and writes the Add as
    ``Sum`` so that onnxruntime's session optimizer does not fuse it either
    (:func:`slimkit.exporters.encoder_graph.block_skip_layernorm`): onnxruntime 1.31's CPU
    SkipLayerNormalization is about 6x slower than Add + LayerNormalization, which made the fully fused
    MiniLM 1.14x *slower* than the unfused export; without it the fused graph is 0.97x."""
    try:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as exc:  # pragma: no cover - part of the onnxruntime wheel
        from slimkit.errors import DependencyError

        raise DependencyError(f"onnxruntime.transformers is not available: {exc}") from None
    dst = Path(dst)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
            options = FusionOptions(model_type)
            if not skip_layer_norm:
                options.enable_skip_layer_norm = False
                options.enable_bias_skip_layer_norm = False
            opt = optimize_model(str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                                 opt_level=0, optimization_options=options)
    except Exception as exc:
        raise ExportError(f"onnxruntime's transformer optimizer failed on {src}: {str(exc).splitlines()[0]}",
                          hint="Export with exporter='torchscript' and eager attention "
                               "(export_encoder_onnx does both).") from None
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items()}
    if not skip_layer_norm:
        from slimkit.exporters.encoder_graph import block_skip_layernorm

        block_skip_layernorm(opt.model)
    if not stats.get("Attention"):
        log.warning("no Attention was fused in %s: the mask pattern was not recognised", src)
    from slimkit._io import atomic_write

    atomic_write(dst, lambda tmp: opt.save_model_to_file(str(tmp)))
    return stats


# ------------------------------------------------------------------------------------------------ int8

@dataclass(frozen=True)
class EncoderInt8Config:
    """Settings of :func:`quantize_encoder_int8` (recorded in its result).

    ``per_channel``: int8 weights per output channel. ``reduce_range``: 7-bit weights; None = only on CPUs
    without VNNI (u8s8 saturation). ``smooth_nodes``: regexes of MatMul names whose input activation scales
    migrate into the weights (``x/s @ diag(s) W``, an explicit Mul before the MatMul: the LayerNorm output
    also feeds the residual, so it cannot absorb ``1/s``); ``smooth_alpha`` the migration strength.
    ``outlier_nodes``: regexes of MatMuls fed by an activation (GELU) of a biased MatMul: their
    ``outlier_channels`` input channels with the largest calibration range are computed in fp32 on the
    side (LLM.int8()-style decomposition), and zeroed in the int8 path by zeroing the producing weight
    columns (GELU(0) = 0), so the int8 activation range shrinks at no extra full-size op.
    ``weight_only``: MatMul names kept as 8-bit ``MatMulNBits`` (block ``block_size``, fp32 activations);
    None = choose them by measured sensitivity on the calibration batches (at most ``max_weight_only``, and
    within ``size_budget`` x fp32 bytes) until ``cosine_floor`` / ``cosine_min_floor`` are met there.
    ``rank_sensitivity``: measure and return the per-MatMul sensitivity table even when no search is needed
    (for reports; one int8 build per MatMul).
    ``per_tensor_nodes``: regexes of MatMuls whose int8 weights get one scale instead of one per output
    channel even when ``per_channel`` (onnxruntime's per-tensor int8 kernels are a few percent faster). For
    MiniLM, Q/K/V and attention-output projections per tensor cost about 3e-4 of mean cosine on held-out
    sentences but take the calibration minimum under the floor, so the default is none.
    ``block_skip_layernorm`` and ``static_shapes``: the exact rewrites of
    :mod:`slimkit.exporters.encoder_graph` (no SkipLayerNormalization fusion by onnxruntime, whose CPU kernel
    is slow; constant Reshape targets instead of shape subgraphs).
    ``fuse_attention_heads``: when set (the number of attention heads), the graph is first fused by
    :func:`optimize_encoder_onnx` and smoothing (``^Attention_N$``: the packed Q/K/V weight), the outlier
    side paths (``BiasGelu``) and int8 (QAttention, QEmbedLayerNormalization) apply to the fused graph."""

    per_channel: bool = True
    reduce_range: bool | None = None
    quantize_embeddings: bool = True
    smooth_nodes: tuple[str, ...] = (r"intermediate/dense", r"attention/self/(query|key|value)", r"^Attention_\d+$")
    smooth_alpha: float = 0.8
    outlier_nodes: tuple[str, ...] = (r"layer\.\d+/output/dense",)
    outlier_channels: int = 16
    weight_only: tuple[str, ...] | None = None
    max_weight_only: int = 4
    block_size: int = 128
    accuracy_level: int = 4
    cosine_floor: float = 0.996
    cosine_min_floor: float = 0.992
    size_budget: float = 0.26
    rank_sensitivity: bool = False
    per_tensor_nodes: tuple[str, ...] = ()
    block_skip_layernorm: bool = True
    static_shapes: bool = True
    fuse_attention_heads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _weight_matmuls(proto: Any, ops: tuple[str, ...] = ("MatMul",)) -> dict[str, tuple[Any, Any]]:
    """``{name: (node, weight initializer)}`` of the nodes of ``ops`` whose second input is a constant
    ``[in, out]`` weight (MatMul; the fused ``Attention`` takes its packed Q/K/V weight the same way)."""
    inits = {t.name: t for t in proto.graph.initializer}
    return {n.name: (n, inits[n.input[1]]) for n in proto.graph.node
            if n.op_type in ops and len(n.input) >= 2 and n.input[1] in inits
            and (n.op_type != "MatMul" or len(n.input) == 2)}


def _feeds(batch: Any) -> dict[str, np.ndarray]:
    ids, mask = (batch["input_ids"], batch["attention_mask"]) if isinstance(batch, dict) else batch
    return {"input_ids": np.asarray(ids).astype(np.int64), "attention_mask": np.asarray(mask).astype(np.int64)}


def _embed_all(path: Path, batches: Sequence[Any]) -> np.ndarray:
    from slimkit.evaluation.latency import ort_session

    sess = ort_session(path, 2)
    return np.concatenate([ort_embed(sess, f["input_ids"], f["attention_mask"]) for f in map(_feeds, batches)])


def _activation_absmax(proto: Any, tensors: list[str], batches: Sequence[Any], work: Path) -> dict[str, np.ndarray]:
    """Per-channel max |x| of ``tensors`` over the calibration batches (extra graph outputs)."""
    import onnx

    from slimkit.evaluation.latency import ort_session

    probe = copy.deepcopy(proto)
    for name in tensors:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    onnx.save_model(probe, str(work / "probe.onnx"))
    sess = ort_session(work / "probe.onnx", 2)
    stats: dict[str, np.ndarray] = {}
    for feeds in map(_feeds, batches):
        for name, out in zip(tensors, sess.run(tensors, feeds), strict=True):
            m = np.abs(out.reshape(-1, out.shape[-1])).max(0)
            stats[name] = m if name not in stats else np.maximum(stats[name], m)
    return stats


def _smooth(proto: Any, patterns: Sequence[str], alpha: float, batches: Sequence[Any], work: Path) -> list[str]:
    """SmoothQuant scale migration in place: for each MatMul matching ``patterns`` (grouped by input),
    ``s = max|x|^alpha / max|W_row|^(1-alpha)``, ``W <- diag(s) W`` and a ``Mul(x, 1/s)`` feeding it."""
    from onnx import helper, numpy_helper

    mms = {k: v for k, v in _weight_matmuls(proto, ("MatMul", "Attention")).items()
           if any(re.search(p, k) for p in patterns)}
    groups: dict[str, list[tuple[Any, Any]]] = {}
    for node, w in mms.values():
        groups.setdefault(node.input[0], []).append((node, w))
    if not groups:
        return []
    stats = _activation_absmax(proto, sorted(groups), batches, work)
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


_ACT_OPS = {"Mul", "Div", "Erf", "Add", "Tanh", "Pow", "Sigmoid", "Gelu", "BiasGelu", "FastGelu"}


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


def _decompose(proto: Any, patterns: Sequence[str], k: int, batches: Sequence[Any], work: Path) -> list[str]:
    """Outlier-channel decomposition in place (see ``EncoderInt8Config.outlier_nodes``). Returns the names
    of the fp32 side MatMuls (to keep out of int8)."""
    from onnx import helper, numpy_helper

    mms = _weight_matmuls(proto)
    targets = []
    for name, (node, w) in mms.items():
        if any(re.search(p, name) for p in patterns):
            found = _biased_producer(proto, node.input[0], mms)
            if found is None:
                log.warning("outlier decomposition: no biased MatMul + activation feeds %s; skipped", name)
            else:
                targets.append((node, w, *found))
    if not targets or k <= 0:
        return []
    stats = _activation_absmax(proto, sorted({n.input[0] for n, *_ in targets}), batches, work)
    inits = {t.name: t for t in proto.graph.initializer}
    nodes, fp32 = list(proto.graph.node), []
    for node, w, up, bias in targets:
        idx = np.argsort(-stats[node.input[0]])[:k].astype(np.int64)
        w_up, b_up = numpy_helper.to_array(inits[up.input[1]]).copy(), numpy_helper.to_array(bias).copy()
        w_dn = numpy_helper.to_array(w).copy()
        side = {f"{node.name}_oW_up": w_up[:, idx], f"{node.name}_ob_up": b_up[idx], f"{node.name}_oW_dn": w_dn[idx]}
        w_up[:, idx], b_up[idx], w_dn[idx] = 0.0, 0.0, 0.0
        for t, arr in ((inits[up.input[1]], w_up), (bias, b_up), (w, w_dn)):
            t.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), t.name))
        proto.graph.initializer.extend(numpy_helper.from_array(a.astype(np.float32), n) for n, a in side.items())
        # add the side path after the bias Add when there is one, so MatMulInteger + bias still fuse
        p, consumers = node.name, [n for n in nodes if node.output[0] in n.input]
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
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fp32


def _build(smoothed: Path, out: Path, cfg: EncoderInt8Config, reduce_range: bool, weight_only: Sequence[str],
           keep_fp32: Sequence[str] = ()) -> Path:
    """Dynamic int8 of every weight MatMul (and Gather) except ``weight_only``, which become MatMulNBits."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    ops = ["MatMul", "Gather"] if cfg.quantize_embeddings else ["MatMul"]
    if cfg.fuse_attention_heads:
        ops += ["Attention", "EmbedLayerNormalization"] if cfg.quantize_embeddings else ["Attention"]
    skip = {*weight_only, *keep_fp32}
    per_tensor = [n for n in _weight_matmuls(onnx.load(str(smoothed), load_external_data=False))
                  if n not in skip and any(re.search(p, n) for p in cfg.per_tensor_nodes)] if cfg.per_channel else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = out.with_name(out.stem + "-pc.onnx") if per_tensor else out
        quantize_dynamic(str(smoothed), str(first), op_types_to_quantize=ops, per_channel=cfg.per_channel,
                         reduce_range=reduce_range, nodes_to_exclude=[*skip, *per_tensor],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, **cfg.extra})
        if per_tensor:
            quantize_dynamic(str(first), str(out), op_types_to_quantize=["MatMul"], per_channel=False,
                             reduce_range=reduce_range, nodes_to_quantize=per_tensor,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, **cfg.extra})
            first.unlink()
        if weight_only:
            algo = DefaultWeightOnlyQuantConfig(block_size=cfg.block_size, is_symmetric=True,
                                                accuracy_level=cfg.accuracy_level, bits=8)
            # nodes_to_include alone does not restrict it (it also takes every MatMul of its op types):
            # the fp32 side MatMuls of the outlier decomposition must be excluded explicitly
            q = MatMulNBitsQuantizer(onnx.load(str(out)), bits=8, block_size=cfg.block_size, is_symmetric=True,
                                     accuracy_level=cfg.accuracy_level, nodes_to_include=list(weight_only),
                                     nodes_to_exclude=list(keep_fp32), algo_config=algo)
            q.process()
            q.model.save_model_to_file(str(out), False)
    return out


def _quantize_only(src: Path, out: Path, unit: str, cfg: EncoderInt8Config, reduce_range: bool) -> Path:
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(src), str(out), op_types_to_quantize=["MatMul"], per_channel=cfg.per_channel,
                         reduce_range=reduce_range, nodes_to_quantize=[unit],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def prepare_encoder_int8(fp32_onnx: str | os.PathLike[str], calibration: Sequence[Any], config: EncoderInt8Config,
                         work: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """The fp32 graph that :func:`quantize_encoder_int8` quantizes, as an ONNX proto: fused first when
    ``config.fuse_attention_heads`` (:func:`optimize_encoder_onnx`), then SmoothQuant scale migration,
    outlier-channel decomposition and the exact rewrites. It computes what ``fp32_onnx`` computes (up to
    float rounding). Returns ``(proto, {"smoothed", "outlier_side_nodes", "rewrites"})``; ``work`` is a
    scratch directory."""
    from slimkit.exporters.encoder_graph import block_skip_layernorm, static_reshapes
    from slimkit.exporters.onnx_int8 import load_onnx

    src, work, batches = Path(fp32_onnx), Path(work), list(calibration)
    if config.fuse_attention_heads:  # onnxruntime's fused Attention/EmbedLayerNormalization/BiasGelu graph
        hidden = next(iter(_weight_matmuls(load_onnx(src)).values()))[1].dims[0]
        optimize_encoder_onnx(src, work / "fused.onnx", num_heads=config.fuse_attention_heads, hidden_size=hidden)
        src = work / "fused.onnx"
    proto = load_onnx(src)
    smoothed = _smooth(proto, config.smooth_nodes, config.smooth_alpha, batches, work) if config.smooth_nodes else []
    side = _decompose(proto, config.outlier_nodes, config.outlier_channels, batches, work)
    rewrites = {"static_reshapes": static_reshapes(proto) if config.static_shapes else 0,
                "sum_before_layernorm": block_skip_layernorm(proto) if config.block_skip_layernorm else 0}
    return proto, {"smoothed": smoothed, "outlier_side_nodes": side, "rewrites": rewrites}


def quantize_encoder_int8(fp32_onnx: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
                          calibration: Sequence[Any], config: EncoderInt8Config | None = None) -> dict[str, Any]:
    """int8 for a sentence encoder exported by :func:`export_encoder_onnx` that keeps fp32 fidelity.

    1. SmoothQuant-style migration of activation outliers into the weights of ``config.smooth_nodes``
       (the Q/K/V and FFN input projections: their inputs, LayerNorm outputs, have outlier channels),
       with scales from ``calibration`` (batches of ``(input_ids, attention_mask)`` or dicts of them).
    2. Outlier-channel decomposition of ``config.outlier_nodes`` (the FFN output projections): the few
       GELU channels with the largest range go through a small fp32 side path.
    3. Dynamic int8 (``quantize_dynamic``, u8 activations, s8 per-channel weights) of MatMul and Gather.
    4. Mixed precision: the MatMuls whose int8 activations cost most fidelity (measured one at a time on
       ``calibration``, see :mod:`slimkit.analysis.sensitivity`) become 8-bit weight-only MatMulNBits, greedily,
       until the cosine floors hold on ``calibration`` or the size budget / ``max_weight_only`` is reached.

    5. Exact graph rewrites (``config.static_shapes``, ``config.block_skip_layernorm``): constant Reshape
       targets, and no SkipLayerNormalization fusion by onnxruntime (:mod:`slimkit.exporters.encoder_graph`).

    Returns ``{"artifact", "size_bytes", "size_ratio", "settings", "weight_only", "smoothed", "outlier_side_nodes",
    "rewrites", "sensitivity", "assignment", "calibration_fidelity"}``. Writes ``out_path`` atomically."""
    from slimkit.analysis.sensitivity import layer_sensitivity, mixed_assignment, sensitivity_table
    from slimkit.evaluation.embedding_fidelity import cosine_stats
    from slimkit.exporters.onnx_int8 import onnx_size_bytes

    cfg = config or EncoderInt8Config()
    batches = list(calibration)
    if not batches:
        raise ConfigError("quantize_encoder_int8 needs calibration batches of (input_ids, attention_mask).",
                          hint="Tokenize a few dozen representative sentences (slimkit.data.sentences).")
    src, out = Path(fp32_onnx), Path(out_path)
    reduce_range = (not bool(cpu_has_vnni())) if cfg.reduce_range is None else cfg.reduce_range
    fp32_bytes = onnx_size_bytes(src)
    with tempfile.TemporaryDirectory(prefix="slimkit-enc-int8-") as td:
        work = Path(td)
        proto, prep = prepare_encoder_int8(src, batches, cfg, work)
        names = list(_weight_matmuls(proto))
        smoothed, side, rewrites = prep["smoothed"], prep["outlier_side_nodes"], prep["rewrites"]
        sm_path = work / "smoothed.onnx"
        import onnx

        onnx.save_model(proto, str(sm_path))
        ref = _embed_all(src, batches)

        def fidelity_of(weight_only: Sequence[str]) -> dict[str, float]:
            cand = _build(sm_path, work / "cand.onnx", cfg, reduce_range, weight_only, side)
            return cosine_stats(_embed_all(cand, batches), ref)

        def margin(weight_only: Sequence[str]) -> float:
            f = fidelity_of(weight_only)
            return min(f["cosine"] - cfg.cosine_floor, f["cosine_min"] - cfg.cosine_min_floor)

        table, plan = None, None
        if cfg.weight_only is not None:
            weight_only = list(cfg.weight_only)
        elif margin([]) >= 0 and not cfg.rank_sensitivity:
            weight_only = []
        else:
            probe = batches[: max(1, len(batches) // 2)]
            probe_ref = ref[: sum(len(_feeds(b)["input_ids"]) for b in probe)]

            def only(unit: str) -> float:  # this MatMul int8, everything else fp32
                _quantize_only(sm_path, work / "one.onnx", unit, cfg, reduce_range)
                return cosine_stats(_embed_all(work / "one.onnx", probe), probe_ref)["cosine"]

            sens = layer_sensitivity(names, only, baseline=1.0)
            extra = {u: int(np.prod(w.dims)) // cfg.block_size * 4 for u, (_, w) in _weight_matmuls(proto).items()}
            all_int8 = onnx_size_bytes(_build(sm_path, work / "c.onnx", cfg, reduce_range, [], side))
            plan = mixed_assignment(sens, fidelity_floor=0.0, baseline=0.0, evaluate=margin, costs=extra,
                                    budget=max(int(cfg.size_budget * fp32_bytes) - all_int8, 0),
                                    max_keep=cfg.max_weight_only)
            weight_only, table = plan.keep, sensitivity_table(sens)
        final = _build(sm_path, work / "final.onnx", cfg, reduce_range, weight_only, side)
        calib_fid = cosine_stats(_embed_all(final, batches), ref)
        from slimkit._io import atomic_write

        atomic_write(out, lambda tmp: onnx.save_model(onnx.load(str(final)), str(tmp)))
    size = onnx_size_bytes(out)
    log.info("encoder int8 %s: %d bytes (%.1f%% of fp32), weight-only %s, calibration cosine %.5f / min %.5f",
             out, size, 100 * size / fp32_bytes, weight_only, calib_fid["cosine"], calib_fid["cosine_min"])
    return {"artifact": out, "size_bytes": size, "size_ratio": size / fp32_bytes,
            "settings": {**asdict(cfg), "reduce_range": reduce_range, "vnni": bool(cpu_has_vnni())},
            "weight_only": list(weight_only), "smoothed": smoothed, "outlier_side_nodes": side, "rewrites": rewrites,
            "sensitivity": table,
            "assignment": plan.to_dict() if plan is not None else None, "calibration_fidelity": calib_fid}
