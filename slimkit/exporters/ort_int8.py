"""int8 ONNX through onnxruntime.quantization, driven by :class:`slimkit.config.quantize_ort.OrtInt8Config`.

The ONNX quantizer registered for ``OrtInt8Config`` (``slimkit.export(model, "m.onnx", example_inputs=x,
quantize=OrtInt8Config(), calibration=loader)``; the config names this module as its ``exporter_module``):
the model is exported to fp32 ONNX, quantized by onnxruntime (static QDQ or dynamic), checked against the
PyTorch model, and written atomically::

    art = export_int8_onnx(model, "m.int8.onnx", example_inputs=x, config=OrtInt8Config(), calibration=loader)
    art["size_bytes"], art["parity"]["top1_agreement"]

It works on files, not on the ``nn.Module``, so it is not a model pass.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.config.quantize_ort import OrtInt8Config
from slimkit.errors import ConfigError
from slimkit.exporters.onnx_checked import register_onnx_quantizer
from slimkit.exporters.onnx_export import export_onnx

log = logging.getLogger(__name__)

_PARITY_BATCHES = 4


def quantize_exported(fp32_onnx: str | Path, out_path: str | Path, config: OrtInt8Config | None = None, *,
                      calibration: Iterable[Any] | None = None) -> Path:
    """Quantize an already exported fp32 ONNX file with ``config``; returns ``out_path``."""
    from slimkit.exporters.onnx_int8 import quantize_onnx

    cfg = config or OrtInt8Config()
    if not isinstance(cfg, OrtInt8Config):
        raise ConfigError(f"quantize= expects an OrtInt8Config, got {type(cfg).__name__}.",
                          hint="Use slimkit.config.quantize_ort.OrtInt8Config(mode='static').")
    return quantize_onnx(
        fp32_onnx, out_path, mode=cfg.mode, calibration=calibration if cfg.mode == "static" else None,
        per_channel=cfg.per_channel, reduce_range=cfg.reduce_range, activation_type=cfg.activation_type,
        weight_type=cfg.weight_type, op_types=cfg.op_types, calibrate_method=cfg.calibrate_method,
        calibration_batches=cfg.calibration_batches, nodes_to_exclude=cfg.nodes_to_exclude or None,
        preprocess=cfg.preprocess, compact=cfg.compact,
    )


def compacted_copy(src: Path, dst: Path) -> Path:
    """``src`` compacted losslessly (:func:`slimkit.exporters.onnx_compact.compact_onnx`) into ``dst``."""
    import onnx

    from slimkit.exporters.onnx_compact import compact_onnx

    onnx.save_model(compact_onnx(onnx.load(str(src), load_external_data=True)), str(dst),
                    save_as_external_data=False)
    return dst


@register_onnx_quantizer(OrtInt8Config)
def export_int8_onnx(model: nn.Module, path: str | Path, *, example_inputs: Sequence[torch.Tensor],
                     config: OrtInt8Config | None = None, calibration: Iterable[Any] | None = None,
                     opset: int = 18) -> dict[str, Any]:
    """Export ``model`` to int8 ONNX at ``path``: fp32 export, onnxruntime quantization with ``config``, and
    a parity check against the PyTorch model on up to four calibration batches (or the example inputs).

    Returns ``{"path", "size_bytes", "fp32_size_bytes", "parity": {max_abs_diff, cosine, top1_agreement, ...},
    "config"}``. Raises ConfigError (e.g. static without calibration) before any work, ExportError when the
    export fails or parity is below ``config.parity_min_top1`` / ``parity_min_cosine``."""
    from slimkit.exporters.onnx_int8 import int8_parity, onnx_size_bytes

    cfg = config or OrtInt8Config()
    if cfg.mode == "static" and calibration is None:
        raise ConfigError("static int8 ONNX needs calibration data, but calibration=None.",
                          hint="Pass calibration=loader (batches of x or (x, y)), or OrtInt8Config(mode='dynamic').")
    inputs = tuple(example_inputs)
    batches = list(itertools.islice(iter(calibration), cfg.calibration_batches)) if calibration is not None else []
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="slimkit-int8-") as td:
        # the quantizer's input keeps the exporter's node names (nodes_to_exclude refers to them): no compaction
        fp32 = export_onnx(model, Path(td) / "fp32.onnx", inputs, opset=opset, strip_debug=True)
        quantize_exported(fp32, path, cfg, calibration=batches)
        # the fp32 size the ratio is taken against gets the same lossless compaction as the int8 file
        fp32_bytes = onnx_size_bytes(compacted_copy(fp32, Path(td) / "fp32-compact.onnx") if cfg.compact else fp32)
    parity_inputs = batches[:_PARITY_BATCHES] or [(inputs, None)]  # one unlabelled batch of all the inputs
    parity = int8_parity(path, model, parity_inputs, min_top1=cfg.parity_min_top1, min_cosine=cfg.parity_min_cosine)
    size = onnx_size_bytes(path)
    log.info("int8 ONNX %s: %d bytes (%.1f%% of fp32), top-1 agreement %.3f, cosine %.4f", path, size,
             100 * size / fp32_bytes, parity["top1_agreement"], parity["cosine"])
    return {"path": str(path), "size_bytes": size, "fp32_size_bytes": fp32_bytes, "parity": parity,
            "config": cfg.model_dump(mode="json")}


__all__ = ["compacted_copy", "export_int8_onnx", "quantize_exported"]
