"""Evaluate an exported ONNX file like a model: a callable around an onnxruntime CPU session, and
parameter counts read from the graph's initializers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["OnnxModel", "is_onnx_path", "onnx_param_counts"]


def is_onnx_path(obj: Any) -> bool:
    """True for a str/PathLike naming an ``.onnx`` file."""
    return isinstance(obj, (str, os.PathLike)) and Path(obj).suffix == ".onnx"


class OnnxModel:
    """Call an ONNX file with torch tensors and get torch tensors back (a tensor when the graph has one
    output, else a tuple). Runs onnxruntime on CPU, ``threads`` intra-op threads."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        from slimkit.errors import ModelLoadError
        from slimkit.evaluation.latency import ort_session

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"ONNX file not found: {self.path}")
        try:
            self.session = ort_session(self.path, threads)
        except Exception as exc:
            raise ModelLoadError(f"onnxruntime cannot load {self.path}: {str(exc).splitlines()[0]}",
                                 hint="Export it again; check that its .onnx.data file sits next to it.") from None

    def __call__(self, *inputs: torch.Tensor, **named: torch.Tensor) -> Any:
        """Positional inputs in the graph's input order; keyword inputs (a batch given as a mapping, e.g.
        ``input_ids``/``attention_mask``) by the graph's input names, or in the order given when the exporter
        named the inputs otherwise (``input_0``, ...)."""
        from slimkit.errors import DataError
        from slimkit.evaluation.latency import ort_feed

        if named:
            graph = [i.name for i in self.session.get_inputs()]
            if set(graph) <= set(named):
                inputs = (*inputs, *(named[n] for n in graph))
            else:
                inputs = (*inputs, *named.values())
        try:
            outs = [torch.from_numpy(o) for o in self.session.run(None, ort_feed(self.session, inputs))]
        except Exception as exc:  # onnxruntime raises its own exception types for a graph that cannot run
            raise DataError(f"onnxruntime cannot run {self.path} on inputs of shape "
                            f"{[tuple(getattr(t, 'shape', ())) for t in inputs]}: {str(exc).splitlines()[0][:300]}",
                            hint="Check that the inputs match the model's inputs, or export it again.") from None
        return outs[0] if len(outs) == 1 else tuple(outs)


def onnx_param_counts(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(elements, nonzero elements)`` over the graph's initializers (weights, biases, scales)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from slimkit.errors import ModelLoadError

    total = nonzero = 0
    try:
        proto = onnx.load(str(path))
        for init in proto.graph.initializer:
            arr = numpy_helper.to_array(init)
            total += int(arr.size)
            nonzero += int(np.count_nonzero(arr))
    except Exception as exc:  # onnx raises ValueError, TypeError, DecodeError, ... for a damaged file
        raise ModelLoadError(f"onnx cannot read the weights of {path}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:300] if str(exc) else ''}",
                             hint="The file is damaged (or its external data is); export it again.") from None
    return total, nonzero
