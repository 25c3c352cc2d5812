"""Figures as PNG, done once for the report, the search summary and the sensitivity plot: matplotlib on the
Agg backend (no display), closed after use."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

__all__ = ["figure", "png_bytes"]


@contextlib.contextmanager
def figure(figsize: tuple[float, float], dpi: int = 100) -> Iterator[tuple[Any, Any]]:
    """``(fig, ax)`` from ``plt.subplots`` on the Agg backend; the figure is closed when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    try:
        yield fig, ax
    finally:
        plt.close(fig)


def png_bytes(fig: Any) -> bytes:
    """The figure laid out tightly and rendered as PNG bytes (cropped to everything drawn, so labels placed near
    an edge are never cut)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.1)
    return buf.getvalue()
