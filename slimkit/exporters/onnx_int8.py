"""Deployable int8 and fp16 ONNX: onnxruntime.quantization (static QDQ, dynamic), QDQ export of a slimkit
fake-quant model carrying its own scales, fp16 conversion, and an int8 parity check.

The functions here take an fp32 ONNX file (written by :func:`slimkit.exporters.export_onnx` or
:func:`export_fp32_onnx`) and write a new file atomically. onnxruntime is imported on use.

Settings and why:

- Static QDQ is the format for convolutions: onnxruntime fuses ``DQ -> Conv -> Q`` into QLinearConv.
  Dynamic quantization of a convolution becomes ConvInteger, which is far slower than fp32 on CPU, so
  ``mode="dynamic"`` quantizes MatMul/Gemm/Gather only unless told otherwise.
- Activations ``uint8``, weights ``int8`` (u8s8) with ``reduce_range=True`` (7-bit weights) by default: on
  x86 CPUs without VNNI the u8s8 kernels (``vpmaddubsw``) add pairs of products in int16 and can saturate
  with full-range weights; 7-bit weights cannot. That is onnxruntime's documented advice for such CPUs.
  With VNNI (or on ARM) ``reduce_range=False`` gains a little accuracy; ``activation_type="int8"`` (s8s8) is
  the alternative that is also accurate but that x86 kernels run more slowly.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit._io import atomic_write
from slimkit.errors import ConfigError, DataError, ExportError

# parity lives in its own module; re-exported here so ``onnx_int8`` is the one import for int8 work
from slimkit.exporters.int8_parity import (
    batch_arrays,
    compare_outputs,
    int8_parity,
    ort_kernel_counts,
    ort_predict,
    ort_session,
)
from slimkit.exporters.onnx_compact import rename_tensors
from slimkit.exporters.onnx_export import export_onnx, strip_debug_info

log = logging.getLogger(__name__)

QUANT_TYPES = ("int8", "uint8")
CALIBRATE_METHODS = ("minmax", "entropy", "percentile", "distribution")
OP_TYPES = ("Conv", "MatMul", "Gemm", "Gather", "ConvTranspose", "Add", "Mul", "Relu", "MaxPool",
            "AveragePool", "GlobalAveragePool", "Concat", "Reshape", "Flatten", "Transpose", "Softmax",
            "Resize", "Split", "Squeeze", "Unsqueeze", "Sigmoid", "LeakyRelu", "Clip", "Where",
            "LayerNormalization", "Pad", "EmbedLayerNormalization", "Attention")
DEFAULT_DYNAMIC_OPS = ("MatMul", "Gemm", "Gather")


# ----------------------------------------------------------------------------------------------- files

def onnx_size_bytes(path: str | Path) -> int:
    """Bytes on disk of an ONNX model, counting its external data files (``.onnx.data``) too."""
    import onnx

    path = Path(path)
    total = path.stat().st_size
    proto = onnx.load(str(path), load_external_data=False)
    seen: set[str] = set()
    for tensor in _all_initializers(proto.graph):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                ext = path.parent / entry.value
                if ext.exists():
                    total += ext.stat().st_size
    return total


def _all_initializers(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _all_initializers(attr.g)


_SHORT_SUFFIXES = (("_DequantizeLinear_Output", "_dq"), ("_QuantizeLinear_Output", "_q"),
                   ("_DequantizeLinear", "_DQ"), ("_QuantizeLinear", "_Q"), ("_quantized", "_i"),
                   ("_zero_point", "_zp"), ("_scale", "_s"))


def shorten_qdq_names(proto: Any) -> Any:
    """Shorten the suffixes onnxruntime's quantizer appends to tensor and node names (``_DequantizeLinear_Output``
    becomes ``_dq``, ``_zero_point`` ``_zp``, ...), in place; graph inputs and outputs keep their names. Layer
    names stay readable (``layer1.0.conv1.weight_i``); a QDQ graph of a small CNN loses 5-10 KB. Returns
    ``proto``."""
    graph = proto.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        for old, new in _SHORT_SUFFIXES:
            name = name.replace(old, new)
        return name

    rename_tensors(graph, short, node_name=short)
    return proto


def save_onnx_single_file(proto: Any, path: Path) -> Path:
    """Save ``proto`` with every tensor inside the .onnx file (our models are far below 2 GB), atomically."""
    import onnx

    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ExportError(f"internal: tensor {tensor.name} still refers to external data while saving {path}.")
    return atomic_write(path, lambda tmp: onnx.save_model(proto, str(tmp), save_as_external_data=False))


def load_onnx(path: str | Path) -> Any:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"ONNX file not found: {path}", hint="Export the fp32 model first (slimkit.export).")
    try:
        return onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # onnx raises DecodeError, OSError, ValidationError ...
        raise ExportError(f"cannot read {path} as ONNX: {exc}", hint="Export the model again.") from None


def check_ort_loads(path: Path) -> None:
    from slimkit.evaluation.latency import ort_session

    try:
        ort_session(path, threads=1)
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load the quantized model {path}: {str(exc).splitlines()[0]}",
                          hint="Try fewer op_types (e.g. ['Conv', 'Gemm', 'MatMul']) or mode='dynamic'.") from None


# ------------------------------------------------------------------------------------------- fp32 export

def export_fp32_onnx(model: nn.Module, path: str | Path, example_inputs: Sequence[torch.Tensor], *,
                     opset: int = 18, dynamic_batch: bool = True,
                     input_names: Sequence[str] | None = None, strip_debug: bool = True,
                     custom_translation_table: dict[Any, Any] | None = None) -> Path:
    """:func:`slimkit.exporters.onnx_export.export_onnx` as the int8 tools use it: one self-contained file with
    debug metadata stripped (``strip_debug``, a third of a small model's file), inputs named ``input`` (or
    ``input_<i>``) and the output ``output``, a dynamic batch traced with a batch of 2."""
    inputs = tuple(example_inputs)
    names = list(input_names) if input_names else (["input"] if len(inputs) == 1 else
                                                   [f"input_{i}" for i in range(len(inputs))])
    return export_onnx(model, path, inputs, opset=opset, dynamic_batch=dynamic_batch, strip_debug=strip_debug,
                       input_names=names, output_names=["output"],
                       custom_translation_table=custom_translation_table, trace_batch=2)


# ----------------------------------------------------------------------------------------- calibration

def _input_specs(onnx_path: Path) -> list[tuple[str, list[int | str | None]]]:
    from slimkit.evaluation.latency import ort_session

    sess = ort_session(onnx_path, threads=1)
    return [(i.name, list(i.shape)) for i in sess.get_inputs()]


class _CalibrationReader:
    """onnxruntime ``CalibrationDataReader`` over slimkit calibration batches, checking shapes on the way
    and splitting batches when the model's batch dimension is fixed."""

    def __init__(self, batches: Iterable[Any], specs: list[tuple[str, list[Any]]], limit: int | None) -> None:
        self.specs = specs
        self.limit = limit
        self._it = iter(batches)
        self._pending: list[dict[str, np.ndarray]] = []
        self.count = 0

    def _convert(self, batch: Any) -> list[dict[str, np.ndarray]]:
        arrays = batch_arrays(batch)
        if len(arrays) != len(self.specs):
            raise DataError(f"calibration batches hold {len(arrays)} input(s) but the model takes "
                            f"{len(self.specs)} ({', '.join(n for n, _ in self.specs)}).",
                            hint="Give batches of x or (x, y), one tensor per model input.")
        fixed_batch = None
        for arr, (name, shape) in zip(arrays, self.specs, strict=True):
            if arr.ndim != len(shape) or any(isinstance(d, int) and d != a for d, a in
                                             zip(shape[1:], arr.shape[1:], strict=False)):
                raise DataError(f"calibration input '{name}' has shape {tuple(arr.shape)} but the model expects "
                                f"{tuple(d if isinstance(d, int) else 'N' for d in shape)}.",
                                hint="Calibrate with batches from the same data the model was exported for.")
            if isinstance(shape[0], int) and shape[0] != arr.shape[0]:
                fixed_batch = shape[0]
        feeds = {name: (arr.astype(np.float32) if arr.dtype == np.float64 else arr)
                 for arr, (name, _) in zip(arrays, self.specs, strict=True)}
        if fixed_batch is None:
            return [feeds]
        n = next(iter(feeds.values())).shape[0]
        if n % fixed_batch:
            raise DataError(f"the model's batch dimension is fixed to {fixed_batch}; calibration batches of "
                            f"{n} cannot be split into it.", hint="Export with a dynamic batch dimension.")
        return [{k: v[i:i + fixed_batch] for k, v in feeds.items()} for i in range(0, n, fixed_batch)]

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.limit is not None and self.count >= self.limit:
            return None
        while not self._pending:
            try:
                self._pending = self._convert(next(self._it))
            except StopIteration:
                return None
        self.count += 1
        return self._pending.pop(0)

    def unget(self, feeds: dict[str, np.ndarray]) -> None:
        """Put back a batch taken with :meth:`get_next` (it is read again next)."""
        self._pending.insert(0, feeds)
        self.count -= 1

    def rewind(self) -> None:  # onnxruntime API; calibration reads the data once
        pass


def _make_reader(calibration: Iterable[Any], specs: list[tuple[str, list[Any]]], limit: int | None) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(_CalibrationReader, CalibrationDataReader):
        pass

    return Reader(calibration, specs, limit)


# ------------------------------------------------------------------------------------------- quantize

def _quant_type(name: str, what: str) -> Any:
    from onnxruntime.quantization import QuantType

    if name not in QUANT_TYPES:
        raise ConfigError(f"{what}={name!r} is not supported.", hint=f"Use one of {', '.join(QUANT_TYPES)}.")
    return QuantType.QInt8 if name == "int8" else QuantType.QUInt8


def _calibrate_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}
    if name not in table:
        raise ConfigError(f"calibrate_method={name!r} is not known.",
                          hint=f"Use one of {', '.join(CALIBRATE_METHODS)}.")
    return table[name]


def _preprocess(src: Path, dst: Path) -> Path:
    """onnxruntime's quant_pre_process (shape inference + graph optimisation, e.g. folding BatchNorm into
    Conv). Falls back to skipping symbolic shape inference, then to the model as is."""
    from onnxruntime.quantization import quant_pre_process

    for skip_symbolic in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=skip_symbolic)
            return dst
        except Exception as exc:  # shape inference fails on some graphs; the quantizer still works
            log.info("quant_pre_process(skip_symbolic_shape=%s) failed: %s", skip_symbolic, exc)
    log.warning("quant_pre_process failed on %s; quantizing the model without pre-processing", src)
    return src


def quantize_onnx(
    fp32_onnx: str | Path,
    out_path: str | Path,
    *,
    mode: str = "static",
    calibration: Iterable[Any] | None = None,
    per_channel: bool = True,
    reduce_range: bool = True,
    activation_type: str = "uint8",
    weight_type: str = "int8",
    op_types: Sequence[str] | None = None,
    calibrate_method: str = "minmax",
    calibration_batches: int | None = 32,
    quant_format: str = "qdq",
    nodes_to_exclude: Sequence[str] | None = None,
    preprocess: bool = True,
    extra_options: dict[str, Any] | None = None,
    compact: bool = True,
) -> Path:
    """Quantize an fp32 ONNX model to int8 with onnxruntime.quantization and write ``out_path``.

    ``mode="static"`` (QDQ, for convolutional models) needs ``calibration``: an iterable of batches
    (``x``, ``(x, y)`` or a tuple of inputs), at most ``calibration_batches`` of them are used.
    ``mode="dynamic"`` (for Linear/MatMul-heavy models) stores int8 weights and quantizes activations at run
    time; by default it quantizes MatMul, Gemm and Gather (embeddings) only.
    ``op_types=None`` quantizes every op type onnxruntime supports (static) or MatMul/Gemm/Gather (dynamic).
    ``compact`` (default) makes the file smaller without changing what it computes or which kernels
    onnxruntime runs: static QDQ keeps biases in float (onnxruntime's ``QuantizeBias=False``; the fused
    QLinearConv/QGemm quantize them to int32 at load time exactly as the quantizer would, so no int32 bias
    copy, bias scale and bias zero point per channel are stored), then :func:`slimkit.exporters.onnx_compact.
    compact_onnx` (short tensor names, no all-zero weight zero points before Conv, shared scalars, no unused
    opset imports). ``compact=False`` keeps onnxruntime's readable names and int32 biases.
    Returns ``out_path``. Raises ConfigError for bad settings, DataError for calibration data of the wrong
    shape, ExportError when the input is missing or the result does not load in onnxruntime.
    """
    from onnxruntime.quantization import QuantFormat, quantize_dynamic, quantize_static

    src, out = Path(fp32_onnx), Path(out_path)
    if mode not in ("static", "dynamic"):
        raise ConfigError(f"mode={mode!r} is not known.", hint="Use 'static' (QDQ, convolutions) or 'dynamic'.")
    if quant_format not in ("qdq", "qoperator"):
        raise ConfigError(f"quant_format={quant_format!r} is not known.", hint="Use 'qdq' (recommended).")
    if mode == "static" and calibration is None:
        raise ConfigError("static int8 quantization needs calibration data, but calibration=None.",
                          hint="Pass calibration=loader (batches of x or (x, y) from the training data), "
                               "or use mode='dynamic'.")
    if op_types is not None:
        bad = [t for t in op_types if t not in OP_TYPES]
        if bad or not op_types:
            raise ConfigError(f"op_types {list(op_types)!r}: unknown or empty ({bad}).",
                              hint="Use ONNX op types such as 'Conv', 'MatMul', 'Gemm', 'Gather'.")
    if calibration_batches is not None and calibration_batches < 1:
        raise ConfigError(f"calibration_batches must be >= 1, got {calibration_batches}.")
    wtype = _quant_type(weight_type, "weight_type")
    atype = _quant_type(activation_type, "activation_type")
    if mode == "dynamic" and op_types and "Conv" in op_types:
        log.warning("dynamic int8 on Conv becomes ConvInteger, which is much slower than fp32 on CPU; "
                    "prefer mode='static' for convolutional models")
    load_onnx(src)  # clear error when missing or unreadable

    with tempfile.TemporaryDirectory(prefix="slimkit-int8-") as td:
        work = Path(td)
        single = work / "fp32.onnx"
        save_onnx_single_file(load_onnx(src), single)
        model_in = _preprocess(single, work / "pre.onnx") if preprocess else single
        tmp_out = work / "int8.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if mode == "static":
                    reader = _make_reader(calibration, _input_specs(model_in), calibration_batches)
                    first = reader.get_next()  # fail early and clearly on empty or ill-shaped data
                    if first is None:
                        raise DataError("the calibration data yielded no batches.",
                                        hint="Pass a non-empty loader as calibration.")
                    reader.unget(first)
                    options = dict(extra_options or {})
                    if compact and quant_format == "qdq":
                        options.setdefault("QuantizeBias", False)
                    quantize_static(
                        str(model_in), str(tmp_out), reader,
                        quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                        op_types_to_quantize=list(op_types) if op_types else None,
                        per_channel=per_channel, reduce_range=reduce_range,
                        activation_type=atype, weight_type=wtype,
                        nodes_to_exclude=list(nodes_to_exclude) if nodes_to_exclude else None,
                        calibrate_method=_calibrate_method(calibrate_method),
                        extra_options=options,
                    )
                else:
                    quantize_dynamic(
                        str(model_in), str(tmp_out),
                        op_types_to_quantize=list(op_types or DEFAULT_DYNAMIC_OPS),
                        per_channel=per_channel, reduce_range=reduce_range, weight_type=wtype,
                        nodes_to_exclude=list(nodes_to_exclude) if nodes_to_exclude else None,
                        extra_options=dict(extra_options or {}),
                    )
        except (DataError, ConfigError):
            raise
        except Exception as exc:
            raise ExportError(f"onnxruntime {mode} quantization of {src} failed: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                              hint="Try preprocess=False, fewer op_types, or calibrate_method='minmax'.") from None
        check_ort_loads(tmp_out)
        proto = strip_debug_info(load_onnx(tmp_out))
        if compact:
            from slimkit.exporters.onnx_compact import compact_onnx

            compact_onnx(proto)
        else:
            shorten_qdq_names(proto)
        result = save_onnx_single_file(proto, out)
        check_ort_loads(result)
    log.info("int8 (%s) ONNX written to %s: %d bytes", mode, result, onnx_size_bytes(result))
    return result


def quantize_onnx_ort_defaults(fp32_onnx: str | Path, out_path: str | Path, *, mode: str = "static",
                               calibration: Iterable[Any] | None = None,
                               calibration_batches: int | None = 32,
                               extra_options: dict[str, Any] | None = None) -> Path:
    """onnxruntime's own defaults (for comparison): ``quantize_static``/``quantize_dynamic`` with no options
    besides the calibration reader, on the model as given (no pre-processing). ``extra_options`` only for what
    a graph needs to quantize at all (``{"DefaultTensorType": onnx.TensorProto.FLOAT}`` for a graph fused by
    onnxruntime's transformer optimizer, whose com.microsoft ops shape inference cannot type)."""
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    src, out = Path(fp32_onnx), Path(out_path)
    with tempfile.TemporaryDirectory(prefix="slimkit-int8-") as td:
        tmp_out = Path(td) / "int8.onnx"
        single = Path(td) / "fp32.onnx"
        save_onnx_single_file(load_onnx(src), single)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if mode == "static":
                if calibration is None:
                    raise ConfigError("static int8 quantization needs calibration data, but calibration=None.")
                quantize_static(str(single), str(tmp_out),
                                _make_reader(calibration, _input_specs(single), calibration_batches),
                                extra_options=extra_options)
            else:
                quantize_dynamic(str(single), str(tmp_out), extra_options=extra_options)
        check_ort_loads(tmp_out)
        return save_onnx_single_file(strip_debug_info(load_onnx(tmp_out)), out)


# ------------------------------------------------------------------------------------------------ fp16

def convert_fp16(fp32_onnx: str | Path, out_path: str | Path, *, keep_io_types: bool = True) -> Path:
    """Convert an fp32 ONNX model to fp16 weights and compute (onnxruntime.transformers' converter).
    With ``keep_io_types`` inputs and outputs stay float32, so callers feed the same arrays."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # pragma: no cover - part of the onnxruntime wheel
        from slimkit.errors import DependencyError

        raise DependencyError(f"onnxruntime.transformers is not available: {exc}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = convert_float_to_float16(load_onnx(fp32_onnx), keep_io_types=keep_io_types)
    out = save_onnx_single_file(strip_debug_info(proto), Path(out_path))
    check_ort_loads(out)
    return out


__all__ = ["check_ort_loads", "compare_outputs", "convert_fp16", "export_fp32_onnx", "int8_parity", "load_onnx",
           "onnx_size_bytes", "save_onnx_single_file",
           "ort_kernel_counts", "ort_predict", "ort_session", "quantize_onnx", "quantize_onnx_ort_defaults",
           "shorten_qdq_names", "strip_debug_info"]
