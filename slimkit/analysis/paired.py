"""Paired statistics of two models: run the original (``reference``) and a changed copy (``current``) on the
same batch, stop each forward as soon as what is needed has been seen, and stream the second moments of joint
rows per layer (*consumer*) through :func:`slimkit.analysis.calibration.collect_input_stats` (a probe Linear
per consumer reads the rows, so padded tokens are dropped and memory does not grow with the calibration set).

The rows of consumer ``c`` (one per token / output position, in the order of ``c``'s weight columns):

- ``target="input"``: ``[current input, reference input]``, and with a :class:`Stream` also
  ``(reference stream - current stream) * factor`` (least-squares refits of the whole weight read
  ``E[x_ref x_cur^T]``, ``E[x_cur x_cur^T]``; the drift columns let them also correct the residual stream);
- ``target="output"``: ``[current input, reference output]``, the output plus ``(reference stream - current
  stream) * factor`` with a :class:`Stream` (a refit with few unknowns reads the moments of ``[x, t]``
  directly: ``d_out`` columns instead of ``d_in + d_out``).

Read-only: neither model is changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from slimkit.analysis.calibration import InputStats, StopForward, collect_input_stats, layer_rows
from slimkit.context import model_device
from slimkit.errors import ConfigError


@dataclass(frozen=True)
class Stream:
    """The residual stream a consumer's output is added to: forward argument ``arg`` of ``module`` (a residual
    block ``A(r) = r + f(r)``: its input, ``arg=0``; BERT's ``SelfOutput(h, r) = norm(dense(h) + r)``: ``arg=1``)
    and ``factor`` per output channel (None: 1), which brings the drift into the consumer's output units."""

    module: str
    arg: int = 0
    factor: torch.Tensor | None = None


def channel_rows(t: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` (channels at dim 1 for images, last for tokens) as rows of a layer's output (``[N, C]`` for
    images, token tensors kept ``[B, T, C]`` so the collector can drop padded tokens), each channel times
    ``factor`` when given."""
    if t.dim() == 4:
        t = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    return t if factor is None else t * factor.to(t)


def _consumer(model: nn.Module, name: str) -> nn.Linear | nn.Conv2d:
    mod = model.get_submodule(name)
    if not isinstance(mod, (nn.Linear, nn.Conv2d)):
        raise ConfigError(f"paired statistics need Linear or Conv2d consumers; '{name}' is {type(mod).__name__}.",
                          hint="Name the Linear/Conv2d layer that reads the pruned channels.")
    return mod


def _input_rows(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(mod, nn.Linear):
        return x  # keeps [B, T, d] so the collector can drop padded tokens
    return layer_rows(mod, x)[0]


class _Paired(nn.Module):
    """One paired forward per call: the reference, then the current model, each stopped once every consumer
    (and every stream) has been seen; then each consumer's probe reads its joint rows."""

    def __init__(self, reference: nn.Module, current: nn.Module, names: list[str], streams: dict[str, Stream],
                 target: Literal["input", "output"]) -> None:
        super().__init__()
        self.reference, self.current, self.names, self.target = reference, current, names, target
        self.streams = {n: s for n, s in streams.items() if n in names}
        device = model_device(current)
        self.probes: dict[str, nn.Linear] = {}
        for name in names:
            cur, ref = _consumer(current, name).weight, _consumer(reference, name).weight
            width = cur[0].numel() + (ref[0].numel() if target == "input" else ref.shape[0])
            stream = self.streams.get(name)
            if target == "input" and stream is not None:
                width += cur.shape[0] if stream.factor is None else stream.factor.numel()
            self.probes[name] = nn.Linear(width, 1, bias=False, device=device)

    def _run(self, model: nn.Module, args: Any, kwargs: Any, own: bool) -> tuple[dict[str, torch.Tensor],
                                                                               dict[str, torch.Tensor]]:
        """``({consumer: its rows}, {consumer: its stream})``; rows of the input (``own``: the current model, or
        ``target="input"``) or of the output."""
        got: dict[str, torch.Tensor] = {}
        drift: dict[str, torch.Tensor] = {}

        def check() -> None:
            if len(got) == len(self.names) and len(drift) == len(self.streams):
                raise StopForward  # everything is in: the rest of the forward is not needed

        handles = []
        for name, s in self.streams.items():
            def stream_hook(mod: nn.Module, a: Any, name: str = name, arg: int = s.arg) -> None:
                drift.setdefault(name, a[arg])
                check()
            handles.append(model.get_submodule(s.module).register_forward_pre_hook(stream_hook))
        for name in self.names:
            mod = model.get_submodule(name)
            if own or self.target == "input":
                def pre(m: nn.Module, a: Any, name: str = name) -> None:
                    got[name] = _input_rows(m, a[0])
                    check()
                handles.append(mod.register_forward_pre_hook(pre))
            else:
                def post(m: nn.Module, a: Any, out: torch.Tensor, name: str = name) -> None:
                    got[name] = out
                    check()
                handles.append(mod.register_forward_hook(post))
        try:
            model(*args, **kwargs)
        except StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        return got, drift

    def forward(self, *args: Any, **kwargs: Any) -> None:
        ref, ref_s = self._run(self.reference, args, kwargs, own=False)
        cur, cur_s = self._run(self.current, args, kwargs, own=True)
        for name in self.names:
            if name not in ref or name not in cur:
                continue
            s = self.streams.get(name)
            if self.target == "output":
                other = channel_rows(ref[name])
                if s is not None:  # out + ref - cur (not out + (ref - cur)): the float32 sum tune_scales has used
                    other = other + channel_rows(ref_s[name], s.factor) - channel_rows(cur_s[name], s.factor)
                parts = [cur[name], other]
            else:
                parts = [cur[name], ref[name]]
                if s is not None:
                    parts.append(channel_rows(ref_s[name] - cur_s[name], s.factor))
            self.probes[name](torch.cat(parts, -1))


def paired_stats(reference: nn.Module, current: nn.Module, names: list[str], calibration: Iterable[Any],
                 max_batches: int | None, streams: dict[str, Stream] | None = None, *,
                 target: Literal["input", "output"] = "input") -> dict[str, InputStats]:
    """Joint statistics of the rows described in the module docstring at every consumer in ``names`` (``Linear``
    or ``Conv2d`` modules of both models, run once per forward), one paired forward per calibration batch (at
    most ``max_batches``); ``streams``: ``{consumer: Stream}`` for the consumers whose output is added to a
    residual stream. A consumer that did not run has ``count == 0``."""
    paired = _Paired(reference, current, list(names), dict(streams or {}), target)
    return collect_input_stats(paired, calibration, dict(paired.probes), max_batches=max_batches)


__all__ = ["Stream", "channel_rows", "paired_stats"]
