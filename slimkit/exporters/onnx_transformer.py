"""ONNX for transformer encoders (sentence embeddings): export with dynamic batch and sequence, and graph
fusion with onnxruntime's transformer optimizer. The int8 recipe that keeps fp32 fidelity is in
:mod:`slimkit.exporters.encoder_int8`.

- :func:`export_encoder_onnx`: ``(input_ids, attention_mask) -> embedding`` from a deep copy (exporting a
  Hugging Face model can mutate it), with eager attention and the TorchScript exporter: its graph is the
  one onnxruntime's BERT fusions recognise (the dynamo export of torch 2.13 builds the mask with a pattern
  that blocks Attention fusion). Parity with PyTorch is checked on two shapes.
- :func:`optimize_encoder_onnx`: ``onnxruntime.transformers.optimizer`` (EmbedLayerNormalization,
  Attention, SkipLayerNormalization, BiasGelu); returns the fused-op counts.
- :func:`ort_embed`, :func:`encoder_parity`: run an encoder ONNX file; compare it with PyTorch.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.context import eval_mode
from slimkit.errors import ConfigError, ExportError
from slimkit.evaluation.agreement import row_cosine

log = logging.getLogger(__name__)

__all__ = ["encoder_parity", "export_encoder_onnx", "optimize_encoder_onnx", "ort_embed"]

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
                          hidden_size: int, model_type: str = "bert", skip_layer_norm: bool = False,
                          bias_gelu: bool = True) -> dict[str, int]:
    """Fuse the encoder graph with ``onnxruntime.transformers.optimizer`` (offline, opt_level 0: the fused
    graph still runs on any onnxruntime CPU build) and write ``dst``. Returns the counts of fused
    operators (``Attention``, ``EmbedLayerNormalization``, ``SkipLayerNormalization``, ``BiasGelu``, ...),
    zeros included; a graph with no Attention fused is still written (and logged).

    ``skip_layer_norm=False`` (default) keeps ``Add + LayerNormalization`` unfused and writes the Add as
    ``Sum`` so that onnxruntime's session optimizer does not fuse it either
    (:func:`slimkit.exporters.encoder_graph.block_skip_layernorm`): onnxruntime 1.31's CPU
    SkipLayerNormalization is about 6x slower than Add + LayerNormalization, which made the fully fused
    MiniLM 1.14x *slower* than the unfused export; without it the fused graph is 0.97x.

    ``bias_gelu=False`` leaves the FFN bias ``Add`` before ``Gelu`` (no ``BiasGelu``): for int8, where
    onnxruntime then folds the bias into the quantized MatMul (``DynamicQuantizeMatMul``) and runs its
    vectorized ``Gelu``; onnxruntime 1.31's CPU ``BiasGelu`` took 1.6x the time of ``Gelu`` on MiniLM."""
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
            options.enable_bias_gelu = bias_gelu
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
