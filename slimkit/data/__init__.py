"""Datasets and loaders: ``load_data(DataConfig) -> DataBundle``.

Built in: ``digits`` (scikit-learn, 1x8x8, the default), ``fashion-mnist`` (IDX files from Debian's
``dataset-fashion-mnist``), ``image-folder`` (class folders of PNG/JPEG) and ``tensors`` (a
``.safetensors``/``.pt`` file with ``x`` and ``y``), which yield ``(x: float32, y: int64)``, and the unlabelled
``sample-images`` and ``sentences`` (inputs only, see :mod:`slimkit.data.inputs_only`);
splits and the training order are deterministic in ``DataConfig.seed``.
"""

from __future__ import annotations

import importlib
from typing import Any

from slimkit.data.core import (
    DataBundle,
    TensorPairDataset,
    calibration_loader,
    make_bundle,
    make_loader,
    stratified_split,
)
from slimkit.errors import DataError, did_you_mean

# dataset name -> "module:function(cfg) -> DataBundle"; modules import on first use
_LOADERS: dict[str, str] = {
    "digits": "slimkit.data.digits:load_digits_bundle",
    "fashion-mnist": "slimkit.data.fashion_mnist:load_fashion_mnist_bundle",
    "image-folder": "slimkit.data.image_folder:load_image_folder_bundle",
    "tensors": "slimkit.data.tensors:load_tensors_bundle",
    "sample-images": "slimkit.data.inputs_only:load_sample_images_bundle",
    "sentences": "slimkit.data.inputs_only:load_sentences_bundle",
}


def list_datasets() -> list[str]:
    """Names accepted by ``DataConfig.name``."""
    return sorted(_LOADERS)


def load_data(cfg: Any = None) -> DataBundle:
    """Load the dataset ``cfg`` describes (a ``DataConfig``, a mapping of its fields, or None for the
    digits default) and return train/val/test/calibration loaders with its shape and classes.

    Raises :class:`~slimkit.errors.DataError` when the data is missing or malformed, and
    :class:`~slimkit.errors.RecipeError` when ``cfg`` is not a valid ``DataConfig``.
    """
    from slimkit.config.base import build
    from slimkit.config.recipe import DataConfig

    if cfg is None:
        cfg = DataConfig()
    elif not isinstance(cfg, DataConfig):
        cfg = build(DataConfig, cfg, prefix="data")
    target = _LOADERS.get(cfg.name)
    if target is None:  # DataConfig.name is a Literal, so only reachable if the two lists drift apart
        raise DataError(f"unknown dataset '{cfg.name}'.{did_you_mean(cfg.name, _LOADERS)}",
                        hint=f"Known: {', '.join(list_datasets())}.")
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(cfg)


__all__ = [
    "DataBundle", "TensorPairDataset", "calibration_loader", "list_datasets", "load_data", "make_bundle",
    "make_loader", "stratified_split",
]
