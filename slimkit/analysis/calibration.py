"""Streaming per-layer input statistics from unlabelled calibration data.

:func:`collect_input_stats` runs the calibration batches through the model with forward hooks on chosen
``Linear``/``Conv2d`` layers and accumulates, for each layer, what reconstruction-based passes need:
``xtx`` (the sum of x x^T over every input row the layer sees), ``sum`` (the sum of x), ``count`` (how many
rows) and ``sq_norms`` (per-column sums of x^2, the diagonal of ``xtx``), all in float64. Memory is
``O(d^2)`` per layer, independent of how many batches are seen.

What a "row" is:
- ``Linear``: every position of the input's leading dims (``x.reshape(-1, in_features)``); for token
  inputs of shape ``[B, T, d]`` whose batch carries an ``attention_mask`` of shape ``[B, T]``, only the
  unmasked positions count (padding never reaches the statistics).
- ``Conv2d``: every patch the kernel is applied to, unfolded exactly as the layer sees it (padding,
  stride, dilation, padding mode), per group: a conv with ``groups=g`` has ``g`` statistics of dimension
  ``in_channels / g * kh * kw`` each, in the column order of ``weight.reshape(out_channels, -1)``.

Analysis never mutates: hooks are removed and training flags restored when collection ends, also on error.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.context import eval_mode, model_device
from slimkit.data.batch import batch_fingerprint, call_model, split_batch
from slimkit.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class InputStats:
    """Accumulated input statistics of one layer. Tensors are float64 on the CPU.

    ``xtx``: ``[groups, d, d]`` sum of x x^T (None when collected with ``full=False``);
    ``sum``: ``[groups, d]``; ``sq_norms``: ``[groups, d]`` per-column sum of squares; ``count``: rows seen.
    For a ``Linear``, ``groups == 1`` and ``d == in_features``.
    """

    name: str
    groups: int
    dim: int
    count: int
    sum: torch.Tensor
    sq_norms: torch.Tensor
    xtx: torch.Tensor | None

    def col_norms(self) -> torch.Tensor:
        """``[groups, d]`` L2 norm of each input column over all rows (Wanda's ||x_j||)."""
        return self.sq_norms.sqrt()

    def mean(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)

    def second_moment(self) -> torch.Tensor:
        """``[groups, d, d]`` ``xtx / count``: the (uncentred) input covariance the layer's output error
        ``||(W - W') x||^2`` averages over."""
        return self._full() / max(self.count, 1)

    def output_error(self, weight: torch.Tensor, new_weight: torch.Tensor,
                     bias: torch.Tensor | None = None) -> float:
        """Relative squared output error ``sum ||(W - W') x||^2 / sum ||W x + b||^2`` over the calibration rows,
        computed exactly from ``xtx`` (no forward pass). Weights are shaped as the layer's
        (``[out, in]`` or ``[out, in/groups, kh, kw]``); ``new_weight`` keeps the same input columns."""
        xtx = self._full()
        g = self.groups
        w = weight.detach().to("cpu", torch.float64).reshape(g, -1, self.dim)
        delta = w - new_weight.detach().to("cpu", torch.float64).reshape(g, -1, self.dim)
        err = float(torch.einsum("god,gde,goe->", delta, xtx, delta))
        ref = float(torch.einsum("god,gde,goe->", w, xtx, w))
        if bias is not None:
            b = bias.detach().to("cpu", torch.float64).reshape(g, -1)
            ref += 2.0 * float(torch.einsum("go,god,gd->", b, w, self.sum)) + self.count * float((b * b).sum())
        return err / ref if ref > 0 else 0.0

    def _full(self) -> torch.Tensor:
        if self.xtx is None:
            raise ConfigError(f"input statistics of '{self.name}' were collected without xtx.",
                              hint="Collect with full=True.")
        return self.xtx

    def _add(self, moments: tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]) -> None:
        count, total, sq, xtx = moments
        self.count += count
        self.sum += total
        self.sq_norms += sq
        if self.xtx is not None and xtx is not None:
            self.xtx += xtx


def _moments(rows: torch.Tensor, full: bool) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(count, sum, sum of squares, X^T X)`` of ``rows`` ``[groups, n, d]``, as float64 on the CPU. The
    product of one batch is computed on the rows' device in their precision (at least float32) and summed
    across batches in float64."""
    r = rows.detach()
    r = r.to(torch.promote_types(r.dtype, torch.float32))
    r64 = r.to(device="cpu", dtype=torch.float64)
    xtx = torch.bmm(r.transpose(1, 2), r).to(device="cpu", dtype=torch.float64) if full else None
    return int(r.shape[1]), r64.sum(dim=1), (r64 * r64).sum(dim=1), xtx


SUPPORTED = (nn.Linear, nn.Conv2d)


class StopForward(Exception):
    """Raised by a forward hook to end a forward pass once what it needed has run (caught by whoever started
    that forward: ``stop_early`` here, paired statistics, block refits)."""


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` padding the convolution applies, for int and string paddings."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        pads = []
        for d, k in zip(reversed(conv.dilation), reversed(conv.kernel_size), strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)  # type: ignore[return-value]
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


def conv_patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The patches ``conv`` multiplies its weight with: ``[groups, N * L, in_channels / groups * kh * kw]``
    so that ``conv(x)`` at every position equals ``patches[g] @ weight[g-th block].reshape(out/g, -1).T`` (+ bias)."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    pad = _conv_padding(conv)
    if any(pad):
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, pad, mode=mode)
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=0, stride=conv.stride)  # [N, C*k, L]
    n, ck, length = cols.shape
    g = conv.groups
    cols = cols.view(n, g, ck // g, length).permute(1, 0, 3, 2)  # [g, N, L, C/g*k]
    return cols.reshape(g, n * length, ck // g)


def layer_rows(module: nn.Module, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The input rows ``module`` sees in ``x``, as ``[groups, n, d]`` (see the module docstring)."""
    if isinstance(module, nn.Conv2d):
        return conv_patches(module, x)
    if isinstance(module, nn.Linear):
        if token_mask is not None and x.dim() == 3 and tuple(token_mask.shape) == tuple(x.shape[:2]):
            x = x[token_mask.to(device=x.device, dtype=torch.bool)]
        return x.reshape(1, -1, x.shape[-1])
    raise ConfigError(f"input statistics are collected for Linear and Conv2d layers, not {type(module).__name__}.")


def _check_layer(name: str, module: nn.Module) -> tuple[int, int]:
    if not isinstance(module, SUPPORTED):
        raise ConfigError(f"layer '{name}' is a {type(module).__name__}; input statistics are collected for "
                          f"Linear and Conv2d layers only.", hint="Select Linear/Conv2d layers (or exclude it).")
    base = nn.Conv2d if isinstance(module, nn.Conv2d) else nn.Linear
    if type(module).forward is not base.forward:
        raise ConfigError(f"layer '{name}' ({type(module).__name__}) overrides forward(), so its input may not be "
                          f"what its weight is multiplied with.", hint="Exclude this layer.")
    if isinstance(module, nn.Conv2d):
        return module.groups, module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
    return 1, module.in_features


def block_of(name: str) -> str:
    """The calibration block of a layer: its module path up to the first numeric component
    (``encoder.layer.3.attention.self.query`` -> ``encoder.layer.3``), or its own name when there is none."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i + 1])
    return name


def hooked_forward(model: nn.Module, inputs: Any, handles: Iterable[Any]) -> None:
    """One eval-mode, no-grad forward of ``model`` on ``inputs`` (a batch's inputs, as ``call_model`` takes
    them) for the hooks already registered as ``handles``, which are removed afterwards, also on error."""
    try:
        with eval_mode(model), torch.no_grad():
            call_model(model, inputs, model_device(model))
    finally:
        for h in handles:
            h.remove()


def execution_order(model: nn.Module, names: list[str], example: Any, *, only_called: bool = False) -> list[str]:
    """``names`` (module names of ``model``) in the order the modules first run on ``example`` (a batch's
    inputs); those that do not run come last, or are left out with ``only_called``."""
    order: list[str] = []

    def hook_for(name: str):  # noqa: ANN202 - a forward pre-hook
        def hook(mod: nn.Module, args: Any) -> None:
            if name not in order:
                order.append(name)
        return hook

    hooked_forward(model, example, [model.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in names])
    return order if only_called else order + [n for n in names if n not in order]


def input_groups(model: nn.Module, layers: Mapping[str, nn.Module], calibration: Iterable[object]) -> list[list[str]]:
    """``layers`` in the order they run on the first calibration batch, consecutive layers that read the same
    input tensor (attention query, key and value) in one group; layers never called come last, alone."""
    calls: list[tuple[str, tuple[object, ...]]] = []

    def hook_for(name: str):  # noqa: ANN202 - a forward pre-hook
        def hook(mod: nn.Module, args: tuple[object, ...]) -> None:
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and all(n != name for n, _ in calls):
                calls.append((name, (x.data_ptr(), tuple(x.shape), x.stride(), x._version)))
        return hook

    hooked_forward(model, split_batch(next(iter(calibration)))[0],
                   [m.register_forward_pre_hook(hook_for(n)) for n, m in layers.items()])
    groups: list[list[str]] = []
    for i, (name, key) in enumerate(calls):
        if i and key == calls[i - 1][1]:
            groups[-1].append(name)
        else:
            groups.append([name])
    seen = {n for n, _ in calls}
    return groups + [[n] for n in layers if n not in seen]


def reiterable(calibration: Iterable[object], limit: int | None = None) -> Iterable[object]:
    """``calibration`` itself when it can be iterated again (a loader, a list), else its first ``limit``
    batches in a list, so passes that calibrate block by block can run over it several times."""
    if iter(calibration) is calibration:
        return list(itertools.islice(calibration, limit))
    return calibration


class BatchesChanged(DataError):
    """A source replayed by :class:`SameBatches` gave a different batch (or a different number of batches)
    on a later pass than on the first."""


class SameBatches:
    """The first ``limit`` batches of a re-iterable ``source``, read from the source again on every pass
    instead of being kept in memory, so a consumer that needs the same batches several times (every candidate
    of a sensitivity analysis) holds one batch at a time. Each batch's :func:`batch_fingerprint` is recorded
    the first time it is seen and checked on every later pass: a source that changes between passes
    (shuffled, randomly augmented, shorter) raises :class:`BatchesChanged` instead of silently giving other
    batches. Build one with :func:`replay_batches`."""

    def __init__(self, source: Iterable[Any], limit: int | None = None) -> None:
        self.source, self.limit = source, limit
        self._prints: list[str] = []
        self._complete = False

    def __len__(self) -> int:
        n = len(self.source)  # type: ignore[arg-type]  # TypeError when the source has no length
        return n if self.limit is None else min(n, self.limit)

    def __iter__(self) -> Iterator[Any]:
        known = self._prints
        i = -1
        for i, batch in enumerate(itertools.islice(iter(self.source), self.limit)):
            fp = batch_fingerprint(batch)
            if i < len(known):
                if known[i] != fp:
                    raise BatchesChanged(f"the data gave a different batch {i} on a later pass; the batches must "
                                         "be the same on every pass.",
                                         hint="Use a loader with a fixed order and no random augmentation.")
            elif self._complete:
                raise BatchesChanged(f"the data gave more batches on a later pass than the {len(known)} of the "
                                     "first.")
            else:
                known.append(fp)
            yield batch
        if self._complete and i + 1 < len(known):
            raise BatchesChanged(f"the data gave {i + 1} batches on a later pass, {len(known)} on the first.")
        self._complete = True


def replay_batches(source: Iterable[Any], limit: int | None = None) -> SameBatches | list[Any]:
    """``source``'s first ``limit`` batches for several passes: a :class:`SameBatches` (streamed again on every
    pass, checked) when ``source`` can be iterated again in the same order, else a list (a one-shot iterator,
    or a loader whose sampler reshuffles every pass), whose memory grows with ``limit``."""
    sampler = getattr(source, "sampler", None)
    if iter(source) is source or isinstance(sampler, torch.utils.data.RandomSampler):
        log.info("the data cannot be replayed in the same order; its first %s batches are kept in memory", limit)
        return list(itertools.islice(iter(source), limit))
    return SameBatches(source, limit)


def token_mask(inputs: object) -> torch.Tensor | None:
    if isinstance(inputs, Mapping):
        mask = inputs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            return mask
    return None


def collect_input_stats(
    model: nn.Module,
    calibration: Iterable[object],
    layers: Mapping[str, nn.Module] | Iterable[str],
    *,
    full: bool = True,
    max_batches: int | None = None,
    stop_early: bool = False,
) -> dict[str, InputStats]:
    """Run ``calibration`` through ``model`` (eval mode, no grad) and return ``{layer name: InputStats}``.

    ``calibration``: a loader (or any iterable, e.g. a list) of batches as the project yields them: tensors,
    ``(x, y)`` pairs, or mappings of keyword inputs (HF ``input_ids``/``attention_mask``; a label key is dropped).
    ``layers``: ``{qualified name: module}`` or names of ``Linear``/``Conv2d`` modules of ``model``.
    ``full=False`` skips ``xtx`` (only sums and per-column norms, ``O(d)`` memory).
    ``max_batches`` caps how many batches are used.
    ``stop_early`` ends each forward pass as soon as every chosen layer has been called once (the rest of the
    model is not run): for layers called once per forward, it gives the same statistics for less compute.
    Raises ConfigError for unsupported layers and DataError when the calibration yields no batch.
    """
    modules = dict(model.named_modules())
    if isinstance(layers, Mapping):
        chosen = dict(layers)
    else:
        chosen = {}
        for name in layers:
            if name not in modules:
                raise ConfigError(f"'{name}' names no module of {type(model).__name__}.",
                                  hint="Use qualified names from model.named_modules().")
            chosen[name] = modules[name]
    if not chosen:
        raise ConfigError("no layer was chosen for input statistics.")
    stats: dict[str, InputStats] = {}
    for name, module in chosen.items():
        groups, dim = _check_layer(name, module)
        stats[name] = InputStats(
            name, groups, dim, 0, torch.zeros(groups, dim, dtype=torch.float64),
            torch.zeros(groups, dim, dtype=torch.float64),
            torch.zeros(groups, dim, dim, dtype=torch.float64) if full else None)

    mask: list[torch.Tensor | None] = [None]
    fired: set[str] = set()
    # moments of the inputs seen in the current batch: layers fed the same tensor (attention query, key and
    # value) share one computation. The entry keeps a weak reference to its tensor and is used only while that
    # very tensor is alive: a freed input's memory is reused by the next layer's input of the same shape, so
    # address, shape and version alone would hand one layer the statistics of another.
    Moments = tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]
    cache: dict[tuple[object, ...], tuple[weakref.ref[torch.Tensor], Moments]] = {}

    def hook_for(name: str):  # noqa: ANN202 - a forward pre-hook
        def hook(module: nn.Module, args: tuple[object, ...]) -> None:
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor):
                raise DataError(f"layer '{name}' was called without a tensor input.")
            geometry = ((module.kernel_size, module.stride, module.padding, module.dilation, module.groups,
                         module.padding_mode) if isinstance(module, nn.Conv2d) else "linear")
            key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x._version, geometry)
            hit = cache.get(key)
            if hit is None or hit[0]() is not x:
                hit = cache[key] = (weakref.ref(x), _moments(layer_rows(module, x, mask[0]), full))
            stats[name]._add(hit[1])
            if stop_early:
                fired.add(name)
                if len(fired) == len(chosen):
                    raise StopForward
        return hook

    device = model_device(model)
    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in chosen.items()]
    batches = 0
    try:
        with eval_mode(model), torch.no_grad():
            source = [calibration] if isinstance(calibration, torch.Tensor) else calibration
            for batch in itertools.islice(source, max_batches):
                inputs = split_batch(batch)[0]
                mask[0] = token_mask(inputs)
                cache.clear()
                fired.clear()
                try:
                    call_model(model, inputs, device)
                except StopForward:
                    pass
                batches += 1
    finally:
        for h in handles:
            h.remove()
    cache.clear()
    if batches == 0:
        raise DataError("the calibration data yielded no batch.", hint="Check the calibration loader and its size.")
    unseen = [n for n, s in stats.items() if s.count == 0]
    if unseen:
        log.warning("calibration never reached layer(s) %s", ", ".join(unseen[:10]))
    log.info("input statistics of %d layer(s) from %d batch(es)", len(stats), batches)
    return stats
