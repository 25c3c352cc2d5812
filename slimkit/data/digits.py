"""scikit-learn's 8x8 handwritten digits (1797 samples, 10 classes), the embedded default dataset."""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimkit.data.core import DataBundle, TensorPairDataset, make_bundle
from slimkit.errors import DataError

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of scikit-learn's digits: x float32 (1797, 64) with values 0..16, y int64.

    Reads the CSV that ships inside scikit-learn directly (importing ``sklearn.datasets`` costs about a
    second); falls back to ``sklearn.datasets.load_digits`` when the file is not where expected.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise DataError("the digits dataset needs scikit-learn, which is not installed.",
                        hint="pip install scikit-learn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if csv.exists():
        raw = np.loadtxt(csv, delimiter=",", dtype=np.float32)
        x, y = raw[:, :-1], raw[:, -1].astype(np.int64)
    else:  # pragma: no cover - depends on the scikit-learn layout
        from sklearn.datasets import load_digits

        data = load_digits()
        x, y = data.data.astype(np.float32), data.target.astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_digits_bundle(cfg: Any) -> DataBundle:
    """Digits as 1x8x8 images scaled to [0, 1] (divided by 16), stratified into train/val/test."""
    x, y = digits_arrays()
    xt = torch.from_numpy(x.copy()).view(-1, 1, 8, 8)
    ds = TensorPairDataset(xt, torch.from_numpy(y.copy()), scale=1.0 / 16.0)
    return make_bundle(cfg, train=ds, test=None, num_classes=10,
                       class_names=[str(i) for i in range(10)],
                       info={"source": "sklearn.datasets.load_digits", "preprocess": "x / 16"})
