"""ONNX export: the dynamo exporter (``torch.export``) first, the TorchScript exporter as a fallback.

- A deep copy of the model is exported, on CPU, in eval mode: the user's model is never mutated.
- ``dynamic_batch``: dim 0 of every input is dynamic (``dynamic_shapes`` for dynamo, ``dynamic_axes``
  for TorchScript).
- The TorchScript tracer bakes Python-side values into the graph; a ``TracerWarning`` (data-dependent
  control flow, ``.item()``, ``.numpy()``) therefore fails the fallback instead of writing a wrong graph.
- Weights are stored inline (one file) when under ~1.8 GB, else in ``<name>.onnx.data`` next to it.
- ``precision="fp16"`` exports a ``.half()`` copy: fp16 weights, floating inputs and outputs are fp16.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.errors import ConfigError, ExportError

log = logging.getLogger(__name__)
# torch's exporter warns on every export that torchvision is absent (it only registers torchvision ops);
# slimkit never needs those ops, so that note is noise for our users.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

__all__ = ["export_onnx", "prepare_for_export", "strip_debug_info"]

_INLINE_LIMIT = int(1.8 * 2**30)  # protobuf's hard limit is 2 GB


def prepare_for_export(model: nn.Module, example_inputs: Any, precision: str = "fp32"
                       ) -> tuple[nn.Module, tuple[Any, ...]]:
    """A CPU eval-mode deep copy of ``model`` (``.half()`` for fp16) and the inputs to trace it with."""
    if precision not in ("fp32", "fp16"):
        raise ConfigError(f"ONNX precision {precision!r} is not exported here; expected 'fp32' or 'fp16'.",
                          hint="int8: export fp32 and pass quantize=... to slimkit.exporters.export_model.")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not example_inputs or not all(isinstance(t, torch.Tensor) for t in example_inputs):
        raise ConfigError("ONNX export needs example_inputs: a tensor or a tuple of tensors (batch first).")
    try:
        clone = copy.deepcopy(model)
    except Exception as exc:
        raise ExportError(f"cannot copy the model for export ({type(exc).__name__}: {exc}).",
                          hint="slimkit exports a copy so the model is never mutated; make it deep-copyable.") from None
    clone = clone.cpu().eval()
    inputs = tuple(t.detach().cpu() for t in example_inputs)
    if precision == "fp16":
        clone = clone.half()
        inputs = tuple(t.half() if t.is_floating_point() else t for t in inputs)
    return clone, inputs


def _param_bytes(model: nn.Module) -> int:
    from slimkit.passes.quantize.packing import tensor_nbytes

    return sum(tensor_nbytes(t) for t in [*model.parameters(), *model.buffers()])


def _where(exc: BaseException) -> str:
    """The op, module or source line an exporter exception names, as one short phrase."""
    text = ""
    cur: BaseException | None = exc
    while cur is not None:
        text += "\n" + str(cur)
        cur = cur.__cause__ or cur.__context__
    found = []
    call = re.findall(r'File "([^"]+)", line (\d+), in (\w+)\n\s+(.+)', text)
    if call:
        file, line, func, code = call[-1]
        found.append(f"{code.strip()} ({Path(file).name}:{line} in {func})")
    ops = sorted(set(re.findall(r"\b(aten(?:::|\.)\w+(?:\.\w+)?)", text)))
    if ops:
        found.append("op " + ", ".join(ops[:3]))
    return "; ".join(found)


def _summary(exc: BaseException) -> str:
    """First meaningful line of the deepest cause."""
    cur: BaseException = exc
    while cur.__cause__ is not None:
        cur = cur.__cause__
    lines = [ln.strip() for ln in str(cur).splitlines() if ln.strip()]
    return f"{type(cur).__name__}: {lines[0] if lines else ''}"[:300]


def _export_dynamo(model: nn.Module, inputs: tuple[Any, ...], path: Path, opset: int,
                   dynamic_batch: bool, external: bool, **names: Any) -> None:
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        dynamic_shapes = tuple({0: batch} if t.dim() > 0 else None for t in inputs)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, inputs, str(path), dynamo=True, opset_version=opset,
                          dynamic_shapes=dynamic_shapes, external_data=external, verbose=False, optimize=True,
                          **{k: v for k, v in names.items() if v is not None})


def _export_torchscript(model: nn.Module, inputs: tuple[Any, ...], path: Path, opset: int,
                        dynamic_batch: bool) -> None:
    names = [f"input_{i}" for i in range(len(inputs))]
    with torch.no_grad():
        n_out = len(_flat(model(*inputs)))
    out_names = [f"output_{i}" for i in range(n_out)]
    axes = {n: {0: "batch"} for n, t in zip([*names], inputs, strict=True) if t.dim() > 0}
    axes.update({n: {0: "batch"} for n in out_names})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=min(opset, 20),
                          input_names=names, output_names=out_names,
                          dynamic_axes=axes if dynamic_batch else None, do_constant_folding=True)
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    if tracer:
        w = tracer[0]
        raise ExportError(
            f"the TorchScript exporter would bake a Python-side value into the graph at "
            f"{Path(w.filename).name}:{w.lineno}: {str(w.message).split('. ')[0]}.")


def _flat(out: Any) -> list[torch.Tensor]:
    from slimkit.evaluation.metrics import flatten_outputs

    return flatten_outputs(out)


def _inline_external_data(path: Path) -> None:
    """Fold ``<name>.onnx.data`` (and other external files) into the .onnx file when small enough."""
    from slimkit.evaluation.cost import onnx_external_files

    extra = onnx_external_files(path)
    if not extra or path.stat().st_size + sum(p.stat().st_size for p in extra) >= _INLINE_LIMIT:
        return
    import onnx

    proto = onnx.load(str(path), load_external_data=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    for p in extra:
        p.unlink(missing_ok=True)


def strip_debug_info(proto: Any) -> Any:
    """Drop what only debugging needs, in place: per-node metadata (the dynamo exporter records stack traces
    and module paths, about 2 KB per node), graph metadata (the dynamo exporter's ``ExportedProgram`` graph
    signature, one line per parameter and buffer: 4 KB for a small ResNet), doc strings and intermediate
    ``value_info``. Returns ``proto``."""

    def strip_graph(graph: Any) -> None:
        graph.doc_string = ""
        del graph.value_info[:]
        del graph.metadata_props[:]
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    strip_graph(attr.g)
                for g in attr.graphs:
                    strip_graph(g)

    strip_graph(proto.graph)
    proto.doc_string = ""
    return proto


def _tidy(path: Path, *, compact: bool) -> None:
    import onnx

    from slimkit.exporters.onnx_compact import compact_onnx

    proto = strip_debug_info(onnx.load(str(path), load_external_data=True))
    if compact:
        compact_onnx(proto)
    onnx.save_model(proto, str(path), save_as_external_data=False)


def export_onnx(model: nn.Module, path: str | os.PathLike[str], example_inputs: Any, *, opset: int = 18,
                dynamic_batch: bool = True, precision: str = "fp32", strip_debug: bool = False,
                compact: bool = False, input_names: list[str] | None = None, output_names: list[str] | None = None,
                custom_translation_table: dict[Any, Any] | None = None, trace_batch: int | None = None,
                dynamo: bool = True) -> Path:
    """Export ``model`` to ``path`` (an ``.onnx`` file; ``<path>.data`` too when weights exceed ~1.8 GB).

    Tries ``torch.onnx.export(dynamo=True)`` with a dynamic batch dimension, then the TorchScript
    exporter. When both fail, raises ExportError naming the failing op or source line. The files are
    written in a temporary directory and moved into place, so ``path`` is never half-written.

    ``strip_debug`` drops what only debugging needs (:func:`strip_debug_info`:
    stack traces, doc strings), so that sizes of fp32 and int8 files compare like for like; ``compact``
    also applies the lossless :func:`slimkit.exporters.onnx_compact.compact_onnx` (short names, ...), as an
    int8 artifact gets by default. Neither is applied to a model whose weights are stored externally.

    ``input_names``/``output_names`` name the graph's inputs and outputs (the exporter's own names when None).
    ``custom_translation_table`` (op -> ONNX function, for the dynamo exporter) exports ops the TorchScript
    exporter cannot, so it turns the fallback off. ``trace_batch`` traces a dynamic batch with inputs of that
    batch size (fake-quant ops specialize a batch of 1 to a constant). ``dynamo=False`` uses the TorchScript
    exporter only: about 10x faster per call on small modules (auto's per-layer latency table exports every
    layer alone), for modules it traces exactly."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise ConfigError(f"ONNX export path must end in .onnx, got {path}.")
    if not dynamo and custom_translation_table is not None:
        raise ConfigError("custom_translation_table needs the dynamo exporter.", hint="Pass dynamo=True.")
    clone, inputs = prepare_for_export(model, example_inputs, precision)
    if dynamic_batch and trace_batch:
        inputs = tuple(t.repeat(trace_batch, *([1] * (t.dim() - 1))) if t.dim() and t.shape[0] == 1 else t
                       for t in inputs)
    external = _param_bytes(clone) >= _INLINE_LIMIT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", dir=path.parent))
    tmp = tmpdir / path.name
    try:
        try:
            if not dynamo:
                _export_torchscript(clone, inputs, tmp, opset, dynamic_batch)
                exporter = "torchscript"
            else:
                _export_dynamo(clone, inputs, tmp, opset, dynamic_batch, external, input_names=input_names,
                               output_names=output_names, custom_translation_table=custom_translation_table)
                exporter = "dynamo"
        except Exception as first:
            if custom_translation_table is not None or not dynamo:
                which = "the dynamo exporter" if dynamo else "the TorchScript exporter (dynamo=False)"
                raise ExportError(f"cannot export {type(model).__name__} to ONNX with {which}: {_summary(first)}.",
                                  hint="Check that the model runs on example_inputs and that torch.export can "
                                       "trace it (no data-dependent Python control flow).") from None
            log.info("dynamo ONNX export failed (%s); trying the TorchScript exporter", _summary(first))
            for p in tmpdir.iterdir():
                p.unlink()
            try:
                _export_torchscript(clone, inputs, tmp, opset, dynamic_batch)
                exporter = "torchscript"
            except Exception as second:
                where = _where(first) or _where(second)
                raise ExportError(
                    f"cannot export {type(model).__name__} to ONNX"
                    f"{f' at {where}' if where else ''}. torch.export: {_summary(first)}. "
                    f"TorchScript: {_summary(second)}.",
                    hint="Make forward free of data-dependent Python control flow (use torch.where / torch.cond), "
                         ".item()/.tolist() and unsupported custom ops, or export the submodule that can be "
                         "exported.") from second
        if not external:
            _inline_external_data(tmp)
            if strip_debug or compact:
                _tidy(tmp, compact=compact)
        for p in tmpdir.iterdir():
            os.replace(p, path.parent / p.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    log.info("exported %s to %s with the %s exporter (%s, opset %d)", type(model).__name__, path, exporter,
             precision, opset)
    return path
