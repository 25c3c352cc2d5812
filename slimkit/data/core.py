"""The data bundle, an in-memory tensor dataset, deterministic stratified splits and loaders.

Every dataset module turns its source into tensors and calls :func:`make_bundle`, so splitting,
``limit``, batching, shuffling and calibration sampling behave the same for every dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from slimkit.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class DataBundle:
    """Loaders and facts about one dataset.

    ``train`` shuffles (seeded); ``val``, ``test`` and ``calibration`` keep a fixed order. Every loader
    yields ``(x: float32, y: int64)``. ``val`` is None when ``val_fraction == 0``.
    ``example_inputs`` is a tuple holding one real training input of batch 1.
    ``info`` records split sizes and the preprocessing applied (for reports).
    """

    train: DataLoader
    val: DataLoader | None
    test: DataLoader
    calibration: DataLoader
    num_classes: int
    input_shape: tuple[int, ...]
    example_inputs: tuple[torch.Tensor, ...]
    class_names: list[str]
    name: str
    info: dict[str, Any] = field(default_factory=dict)
    labelled: bool = True  # False: batches are inputs only (sample-images, sentences); runs measure fidelity


class TensorPairDataset(Dataset):
    """``(x, y)`` pairs held in memory. ``x`` may be stored compactly (uint8) and is turned into float32
    per batch: ``(x * scale - mean) / std`` with per-channel ``mean``/``std``.

    Batches are gathered with one tensor index (``__getitems__``) rather than item by item, so an epoch
    over 60k images costs milliseconds of Python.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, scale: float = 1.0,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 channels: int | None = None, size: int | None = None) -> None:
        if len(x) != len(y):
            raise DataError(f"inputs and labels differ in length: {len(x)} inputs, {len(y)} labels.")
        self.x = x
        self.y = y.to(torch.int64)
        self.scale = float(scale)
        shape = (-1,) + (1,) * (x.dim() - 2) if x.dim() >= 2 else (-1,)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(shape) if mean is not None else None
        self.std = torch.tensor(std, dtype=torch.float32).view(shape) if std is not None else None
        self.channels, self.size = channels, size  # grey copied to ``channels``; images resized to ``size``

    def __len__(self) -> int:
        return len(self.y)

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.scale != 1.0:
            x = x * self.scale
        if getattr(self, "size", None) and x.dim() >= 3 and tuple(x.shape[-2:]) != (self.size, self.size):
            flat = x.reshape(-1, *x.shape[-3:])
            flat = torch.nn.functional.interpolate(flat, size=(self.size, self.size), mode="bilinear",
                                                   align_corners=False, antialias=True)
            x = flat.reshape(*x.shape[:-2], self.size, self.size)
        if getattr(self, "channels", None) and x.dim() >= 3 and x.shape[-3] == 1 and self.channels != 1:
            x = x.expand(*x.shape[:-3], self.channels, *x.shape[-2:])
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        return x

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._prep(self.x[index]), self.y[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self._prep(self.x[idx]), self.y[idx]

    def subset(self, indices: np.ndarray | torch.Tensor) -> TensorPairDataset:
        """A new dataset over ``indices`` that shares the preprocessing."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        out = TensorPairDataset.__new__(TensorPairDataset)
        out.x, out.y, out.scale, out.mean, out.std = self.x[idx], self.y[idx], self.scale, self.mean, self.std
        out.channels, out.size = self.channels, self.size
        return out


def _collate_batch(batch: Any) -> Any:
    """Batches arrive already stacked from ``TensorPairDataset.__getitems__``; fall back to the default
    collate for other datasets."""
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], torch.Tensor):
        return batch
    from torch.utils.data import default_collate

    return default_collate(batch)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A single-process DataLoader. When ``shuffle`` is set the order comes from a ``torch.Generator``
    seeded with ``seed``: a fresh loader with the same seed yields the same batches."""
    gen = None
    if shuffle:
        gen = torch.Generator()
        gen.manual_seed(int(seed))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=0,
                      collate_fn=_collate_batch)


def calibration_loader(dataset: Dataset, n: int, batch_size: int, seed: int = 0) -> DataLoader:
    """A loader over ``n`` samples of ``dataset`` drawn without replacement, deterministically from ``seed``
    (all samples, in order, when ``n >= len(dataset)``). The order is fixed, not shuffled."""
    total = len(dataset)  # type: ignore[arg-type]
    if total == 0:
        raise DataError("cannot draw calibration samples from an empty dataset.")
    if n >= total:
        if n > total:
            log.info("calibration: asked for %d samples, the dataset has %d; using all", n, total)
        indices = torch.arange(total)
    else:
        gen = torch.Generator()
        gen.manual_seed(int(seed))
        indices = torch.randperm(total, generator=gen)[:n].sort().values
    if isinstance(dataset, TensorPairDataset):
        subset: Dataset = dataset.subset(indices)
    else:
        from torch.utils.data import Subset

        subset = Subset(dataset, indices.tolist())
    return make_loader(subset, batch_size)


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..len(y)-1`` into ``(kept, taken)`` where ``taken`` holds ``round(fraction * n)``
    samples with class proportions preserved (largest-remainder allocation). Both are sorted."""
    y = np.asarray(y)
    n = len(y)
    n_take = int(round(fraction * n))
    if n_take <= 0:
        return np.arange(n), np.arange(0)
    if n_take >= n:
        raise DataError(f"a split fraction of {fraction} takes all {n} samples; nothing is left.",
                        hint="Lower the fraction or provide more data.")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * (n_take / n)
    alloc = np.floor(exact).astype(int)
    remainder = n_take - int(alloc.sum())
    if remainder > 0:
        order = np.lexsort((rng.random(len(classes)), -(exact - alloc)))
        alloc[order[:remainder]] += 1
    taken = []
    for cls, k in zip(classes, alloc, strict=True):
        if k:
            members = np.flatnonzero(y == cls)
            taken.append(rng.permutation(members)[:k])
    taken_idx = np.sort(np.concatenate(taken)) if taken else np.arange(0)
    mask = np.ones(n, dtype=bool)
    mask[taken_idx] = False
    return np.flatnonzero(mask), taken_idx


def make_bundle(
    cfg: Any,
    *,
    train: TensorPairDataset,
    test: TensorPairDataset | None,
    num_classes: int,
    class_names: list[str] | None = None,
    info: dict[str, Any] | None = None,
) -> DataBundle:
    """Split, limit and wrap datasets into a :class:`DataBundle` following ``cfg`` (a ``DataConfig``).

    ``train`` is the pool the training data comes from. When ``test`` is None a stratified
    ``cfg.test_fraction`` of the pool becomes the test split. ``cfg.limit`` then caps the remaining pool
    (train + val together, stratified), and ``cfg.val_fraction`` of it becomes the validation split.
    """
    seed = int(cfg.seed)
    y_all = train.y.numpy()
    if test is None:
        pool_idx, test_idx = stratified_split(y_all, cfg.test_fraction, seed)
        test = train.subset(test_idx)
        pool = train.subset(pool_idx)
    else:
        pool = train
    test_limit = getattr(cfg, "test_limit", None)
    if test_limit is not None and len(test) > test_limit:
        _, keep = stratified_split(test.y.numpy(), test_limit / len(test), seed + 3)
        test = test.subset(keep)
    if cfg.limit is not None and len(pool) > cfg.limit:
        _, keep = stratified_split(pool.y.numpy(), cfg.limit / len(pool), seed + 1)
        pool = pool.subset(keep)
    val = None
    if cfg.val_fraction > 0:
        train_idx, val_idx = stratified_split(pool.y.numpy(), cfg.val_fraction, seed + 2)
        if len(val_idx):
            val = pool.subset(val_idx)
            pool = pool.subset(train_idx)
    if len(pool) == 0 or len(test) == 0:
        raise DataError(f"dataset '{cfg.name}' left {len(pool)} training and {len(test)} test samples "
                        f"after splitting.", hint="Provide more data or lower test_fraction/val_fraction.")
    bs = int(cfg.batch_size)
    x0, _ = pool[0]
    info = dict(info or {})
    info.update({"train_size": len(pool), "val_size": len(val) if val is not None else 0,
                 "test_size": len(test), "seed": seed})
    bundle = DataBundle(
        train=make_loader(pool, bs, shuffle=True, seed=seed),
        val=make_loader(val, bs) if val is not None else None,
        test=make_loader(test, bs),
        calibration=calibration_loader(pool, int(cfg.calibration_samples), bs, seed=seed),
        num_classes=int(num_classes),
        input_shape=tuple(int(s) for s in x0.shape),
        example_inputs=(x0.unsqueeze(0).clone(),),
        class_names=list(class_names) if class_names is not None else [str(i) for i in range(num_classes)],
        name=str(cfg.name),
        info=info,
    )
    log.debug("data %s: %s", bundle.name, info)
    return bundle
