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
        from slimkit.evaluation.latency import ort_feed

        if named:
            graph = [i.name for i in self.session.get_inputs()]
            if set(graph) <= set(named):
                inputs = (*inputs, *(named[n] for n in graph))
            else:
                inputs = (*inputs, *named.values())

        outs = [torch.from_numpy(o) for o in self.session.run(None, ort_feed(self.session, inputs))]
        return outs[0] if len(outs) == 1 else tuple(outs)


def onnx_param_counts(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(elements, nonzero elements)`` over the graph's initializers (weights, biases, scales)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    total = nonzero = 0
    for init in proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        total += int(arr.size)
        nonzero += int(np.count_nonzero(arr))
    return total, nonzero
