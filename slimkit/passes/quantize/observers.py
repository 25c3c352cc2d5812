"""Observers: watch tensors during calibration and turn what they saw into ``(scale, zero_point)``.

Every observer is an ``nn.Module`` whose ``forward(x)`` records ``x`` and returns it unchanged, and whose
``calculate_qparams()`` returns float32 ``(scale, zero_point)`` (see qscheme.py for conventions). State lives
in buffers of a fixed size, so memory does not grow with the number of batches. Observer buffers are not
persistent (not in ``state_dict``): only the resulting qparams of a frozen quantizer are saved.

- :class:`MinMaxObserver`: running min and max (per tensor or per channel ``axis``). Exact.
- :class:`MovingAverageMinMaxObserver` (``ema``): exponential moving average of per-batch min and max.
- :class:`PercentileObserver`: clips at a percentile of the values seen.
- :class:`EntropyObserver`: TensorRT-style KL-divergence calibration on the histogram of ``|x|``.
- :class:`MSEObserver`: the clipping range that minimizes ``||x - q(x)||^2``.

Streaming approximation (percentile, entropy, per-tensor MSE): values go into one histogram of ``bins`` bins
over ``[-R, R]``. When a batch exceeds ``R``, ``R`` grows by a power of two and old bins merge pairwise, which is
exact for the merge; the only error is the bin width ``2R / bins`` (percentiles are interpolated inside a bin).
Per-channel MSE picks the best clipping per channel on each batch and averages the picks over batches (exact for
weights, seen once).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from slimkit.passes.quantize.qscheme import compute_qparams, fake_quantize, qrange


class Observer(nn.Module):
    """Base class. ``axis`` is the channel axis for per-channel observers, ``None`` for per tensor."""

    per_channel_ok = True

    def __init__(self, bits: int = 8, symmetric: bool = True, unsigned: bool = False,
                 axis: int | None = None) -> None:
        super().__init__()
        if axis is not None and not self.per_channel_ok:
            raise ValueError(f"{type(self).__name__} is per-tensor only (axis=None)")
        self.bits, self.symmetric, self.unsigned, self.axis = bits, symmetric, unsigned, axis
        self.qmin, self.qmax = qrange(bits, symmetric, unsigned)
        self._init_args: dict[str, object] = {"bits": bits, "symmetric": symmetric, "unsigned": unsigned,
                                              "axis": axis}
        self.register_buffer("min_val", torch.tensor(float("inf")), persistent=False)
        self.register_buffer("max_val", torch.tensor(float("-inf")), persistent=False)

    def init_args(self) -> dict[str, object]:
        """Keyword arguments that build a fresh observer like this one."""
        return dict(self._init_args)

    def _reduce(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().float()
        if self.axis is None:
            return x.min(), x.max()
        dims = [d for d in range(x.dim()) if d != self.axis % x.dim()]
        return x.amin(dim=dims), x.amax(dim=dims)

    @property
    def observed(self) -> bool:
        """Whether any tensor was recorded."""
        return bool(torch.isfinite(self.min_val).all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self._reduce(x)
        if not self.observed:
            self.min_val, self.max_val = lo.clone(), hi.clone()
        else:
            self.min_val, self.max_val = torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)
        return x

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The clipping range ``(lo, hi)`` this observer chooses."""
        return self.min_val, self.max_val

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` for the range chosen so far."""
        if not self.observed:
            raise RuntimeError(f"{type(self).__name__} has not observed any tensor")
        lo, hi = self.range()
        return compute_qparams(lo, hi, self.bits, self.symmetric, self.unsigned)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, symmetric={self.symmetric}, unsigned={self.unsigned}, axis={self.axis}"


class MinMaxObserver(Observer):
    """Running min and max: the range of everything seen."""


class MovingAverageMinMaxObserver(Observer):
    """``min <- (1 - c) * min + c * batch_min`` (same for max); the first batch initializes."""

    def __init__(self, bits: int = 8, symmetric: bool = True, unsigned: bool = False,
                 axis: int | None = None, averaging_constant: float = 0.01) -> None:
        super().__init__(bits, symmetric, unsigned, axis)
        self.averaging_constant = averaging_constant
        self._init_args["averaging_constant"] = averaging_constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self._reduce(x)
        if not self.observed:
            self.min_val, self.max_val = lo.clone(), hi.clone()
        else:
            c = self.averaging_constant
            self.min_val = self.min_val + c * (lo - self.min_val)
            self.max_val = self.max_val + c * (hi - self.max_val)
        return x


class HistogramObserver(Observer):
    """A fixed-size streaming histogram over ``[-R, R]`` (R grows by powers of two). Base of the
    percentile, entropy and per-tensor MSE observers."""

    per_channel_ok = False

    def __init__(self, bits: int = 8, symmetric: bool = True, unsigned: bool = False,
                 axis: int | None = None, bins: int = 4096) -> None:
        super().__init__(bits, symmetric, unsigned, axis)
        if bins % 2 or bins & (bins - 1):
            raise ValueError("bins must be a power of two")
        self.bins = bins
        self._init_args["bins"] = bins
        self.register_buffer("hist", torch.zeros(bins, dtype=torch.float64), persistent=False)
        self.register_buffer("bound", torch.tensor(0.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        super().forward(x)
        v = x.detach().double().flatten()
        amax = float(v.abs().max()) if v.numel() else 0.0
        r = float(self.bound)
        if r == 0.0:
            r = max(amax, 1e-8)
        elif amax > r:
            factor = 2 ** math.ceil(math.log2(amax / r))
            self._rebin(r, r * factor)
            r = r * factor
        self.bound.fill_(r)
        self.hist += torch.histc(v, bins=self.bins, min=-r, max=r)
        return x

    def _rebin(self, old: float, new: float) -> None:
        width = 2 * old / self.bins
        centers = -old + width * (torch.arange(self.bins, dtype=torch.float64) + 0.5)
        self.hist = torch.histogram(centers, bins=self.bins, range=(-new, new), weight=self.hist).hist

    def edges(self) -> torch.Tensor:
        r = float(self.bound)
        return torch.linspace(-r, r, self.bins + 1, dtype=torch.float64)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1) of the values seen, linearly interpolated inside a bin."""
        cdf = torch.cumsum(self.hist, 0)
        total = float(cdf[-1])
        target = q * total
        i = int(torch.searchsorted(cdf, torch.tensor([target], dtype=torch.float64))[0].clamp(max=self.bins - 1))
        prev = float(cdf[i - 1]) if i > 0 else 0.0
        cnt = float(self.hist[i])
        frac = (target - prev) / cnt if cnt > 0 else 0.0
        e = self.edges()
        return float(e[i] + frac * (e[i + 1] - e[i]))


class PercentileObserver(HistogramObserver):
    """Clip at the ``percentile`` (e.g. 99.99) of the values seen, and at ``100 - percentile`` below."""

    def __init__(self, bits: int = 8, symmetric: bool = True, unsigned: bool = False,
                 axis: int | None = None, percentile: float = 99.99, bins: int = 4096) -> None:
        super().__init__(bits, symmetric, unsigned, axis, bins)
        self.percentile = percentile
        self._init_args["percentile"] = percentile

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.percentile / 100.0
        hi = min(self.quantile(p), float(self.max_val))
        lo = max(self.quantile(1.0 - p), float(self.min_val))
        return torch.tensor(lo), torch.tensor(hi)


class EntropyObserver(HistogramObserver):
    """TensorRT entropy calibration: choose the threshold ``t`` on ``|x|`` minimizing KL(P || Q), where P is the
    histogram of ``|x|`` clipped at ``t`` (outliers added to the last bin) and Q is P merged into the number of
    levels the quantizer has on one side, then expanded back over the nonzero bins."""

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.bins // 2
        absh = (self.hist[half:] + self.hist[:half].flip(0)).cpu().numpy()
        r = float(self.bound)
        t = _kl_threshold(absh, (self.qmax - self.qmin + 1) // 2) * r / half
        lo = max(-t, float(self.min_val))
        hi = min(t, float(self.max_val))
        return torch.tensor(lo), torch.tensor(hi)


def _kl_threshold(hist, levels: int, steps: int = 192) -> float:  # noqa: ANN001 - numpy array
    """Number of histogram bins (a float, as the bin count of the threshold) that minimizes KL divergence."""
    import numpy as np

    n = len(hist)
    nz = np.nonzero(hist)[0]
    if len(nz) == 0:
        return float(n)
    last = int(nz[-1]) + 1
    if last <= levels:
        return float(last)
    best, best_i = math.inf, last
    for i in np.unique(np.linspace(levels, last, steps).astype(int)):
        p = hist[:i].astype(np.float64).copy()
        p[-1] += hist[i:].sum()
        nonzero = p > 0
        # merge i bins into `levels` chunks, spread each chunk's mass over its nonzero bins
        idx = (np.arange(i) * levels) // i
        sums = np.bincount(idx, weights=hist[:i], minlength=levels)
        counts = np.bincount(idx, weights=nonzero, minlength=levels)
        q = np.where(nonzero, sums[idx] / np.maximum(counts[idx], 1), 0.0)
        ps, qs = p.sum(), q.sum()
        if qs == 0:
            continue
        pn, qn = p / ps, q / qs
        m = pn > 0
        kl = float(np.sum(pn[m] * np.log(pn[m] / np.maximum(qn[m], 1e-12))))
        if kl < best:
            best, best_i = kl, int(i)
    return float(best_i)


class MSEObserver(HistogramObserver):
    """Search the clipping range ``alpha * (min, max)`` over ``alpha`` in ``[0.2, 1]`` that minimizes the
    quantization MSE. Per tensor: on the streaming histogram (bin centers weighted by counts). Per channel
    (``axis``): on each batch, averaged over batches."""

    per_channel_ok = True

    def __init__(self, bits: int = 8, symmetric: bool = True, unsigned: bool = False,
                 axis: int | None = None, bins: int = 4096, grid: int = 80) -> None:
        self._per_channel = axis is not None
        super().__init__(bits, symmetric, unsigned, None, 2 if axis is not None else bins)
        self.axis = axis
        self.grid = grid
        self._init_args.update(axis=axis, grid=grid, bins=bins)
        self.register_buffer("clip_lo", torch.tensor(0.0), persistent=False)
        self.register_buffer("clip_hi", torch.tensor(0.0), persistent=False)
        self.register_buffer("batches", torch.tensor(0), persistent=False)

    def _alphas(self) -> torch.Tensor:
        return torch.linspace(0.2, 1.0, self.grid, dtype=torch.float64)

    def _search(self, v: torch.Tensor, w: torch.Tensor | None, lo: torch.Tensor, hi: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """v: (C, N) values, w: (C, N) weights or None; lo, hi: (C,). Returns the best (lo, hi) per row."""
        best_err = torch.full_like(lo, float("inf"), dtype=torch.float64)
        best_lo, best_hi = lo.clone(), hi.clone()
        for a in self._alphas():
            clo, chi = lo * a, hi * a
            s, z = compute_qparams(clo, chi, self.bits, self.symmetric, self.unsigned)
            err = (v - fake_quantize(v, s.double()[:, None], z.double()[:, None], self.qmin, self.qmax)).pow(2)
            err = (err * w).sum(1) if w is not None else err.sum(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, clo.to(best_lo.dtype), best_lo)
            best_hi = torch.where(better, chi.to(best_hi.dtype), best_hi)
        return best_lo, best_hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._per_channel:
            return super().forward(x)
        ax = self.axis % x.dim()
        v = x.detach().double().movedim(ax, 0).reshape(x.shape[ax], -1)
        lo, hi = v.amin(1), v.amax(1)
        blo, bhi = self._search(v, None, lo, hi)
        n = int(self.batches)
        if n == 0:
            self.clip_lo, self.clip_hi = blo.float(), bhi.float()
            self.min_val, self.max_val = lo.float(), hi.float()
        else:
            self.clip_lo = self.clip_lo + (blo.float() - self.clip_lo) / (n + 1)
            self.clip_hi = self.clip_hi + (bhi.float() - self.clip_hi) / (n + 1)
            self.min_val = torch.minimum(self.min_val, lo.float())
            self.max_val = torch.maximum(self.max_val, hi.float())
        self.batches += 1
        return x

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._per_channel:
            return self.clip_lo, self.clip_hi
        e = self.edges()
        centers = ((e[1:] + e[:-1]) / 2)[None]
        lo, hi = self._search(centers, self.hist[None], self.min_val.double()[None], self.max_val.double()[None])
        return lo[0].float(), hi[0].float()


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver, "ema": MovingAverageMinMaxObserver, "percentile": PercentileObserver,
    "entropy": EntropyObserver, "mse": MSEObserver,
}


def make_observer(name: str = "minmax", *, bits: int = 8, symmetric: bool = True, unsigned: bool = False,
                  axis: int | None = None, percentile: float = 99.99) -> Observer:
    """Build an observer by its config name (``Int.observer``). Histogram observers asked for a per-channel
    ``axis`` fall back to per-channel min-max only for percentile/entropy (documented: those are per-tensor
    calibration methods for activations)."""
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r}; known: {', '.join(OBSERVERS)}")
    cls = OBSERVERS[name]
    if axis is not None and not cls.per_channel_ok:
        cls = MinMaxObserver
    if cls is PercentileObserver:
        return PercentileObserver(bits, symmetric, unsigned, axis, percentile=percentile)
    return cls(bits, symmetric, unsigned, axis)
