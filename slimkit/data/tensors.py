"""Your own tensors: a ``.safetensors`` or ``.pt`` file with ``x`` and ``y`` (optionally ``x_test`` and
``y_test``). ``.pt`` files are read with ``torch.load(weights_only=True)``: no code is unpickled."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from slimkit.data.core import DataBundle, TensorPairDataset, make_bundle
from slimkit.errors import DataError, ModelLoadError

log = logging.getLogger(__name__)

_KNOWN = ("x", "y", "x_test", "y_test")


def _read(path: Path) -> dict[str, Any]:
    from slimkit._io import load_state_dict_file

    if not path.is_file():
        raise DataError(f"tensors file not found: {path}", hint="Set data.path to a .safetensors or .pt file.")
    try:
        return load_state_dict_file(path)
    except ModelLoadError as exc:
        raise DataError(f"cannot load tensors from {path}: {exc.message}", hint=exc.hint) from None


def _describe(data: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}" for k, v in data.items()) or "nothing"


def _check_pair(x: torch.Tensor, y: torch.Tensor, kx: str, ky: str, found: str) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() not in (2, 3, 4):
        raise DataError(f"'{kx}' must be N x C x H x W, N x H x W or N x D; found {kx}: {tuple(x.shape)}.",
                        hint=f"File holds {found}.")
    if y.dim() != 1 or len(y) != len(x):
        raise DataError(f"'{ky}' must be one label per row of '{kx}' ({len(x)}); found {ky}: {tuple(y.shape)}.",
                        hint=f"File holds {found}.")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        if not torch.equal(y, y.round()) or y.dtype == torch.bool:
            raise DataError(f"'{ky}' must hold integer class labels; found dtype {y.dtype}.")
    y = y.to(torch.int64)
    if len(y) and int(y.min()) < 0:
        raise DataError(f"'{ky}' must hold class labels >= 0; found {int(y.min())}.")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if not (x.is_floating_point() or x.dtype == torch.uint8):
        raise DataError(f"'{kx}' must be float or uint8; found dtype {x.dtype}.")
    return x, y


def load_tensors_bundle(cfg: Any) -> DataBundle:
    """Tensors as given; uint8 inputs are divided by 255, float inputs are used as they are (normalise them
    before saving). Without ``x_test``/``y_test`` a stratified ``test_fraction`` becomes the test split."""
    path = Path(cfg.path)
    data = _read(path)
    found = _describe(data)
    missing = [k for k in ("x", "y") if k not in data]
    if missing:
        raise DataError(f"{path} lacks key(s) {', '.join(missing)}; found {found}.",
                        hint="Save a dict with 'x' (inputs) and 'y' (int labels), optionally 'x_test' and 'y_test'.")
    if ("x_test" in data) != ("y_test" in data):
        raise DataError(f"{path} must hold both 'x_test' and 'y_test' or neither; found {found}.")
    extra = [k for k in data if k not in _KNOWN]
    if extra:
        log.warning("%s: ignoring key(s) %s", path, ", ".join(extra))
    x, y = _check_pair(data["x"], data["y"], "x", "y", found)
    pairs = [(x, y)]
    if "x_test" in data:
        xt, yt = _check_pair(data["x_test"], data["y_test"], "x_test", "y_test", found)
        if xt.shape[1:] != x.shape[1:]:
            raise DataError(f"'x_test' rows {tuple(xt.shape[1:])} differ from 'x' rows {tuple(x.shape[1:])}.")
        pairs.append((xt, yt))
    num_classes = max(int(p[1].max()) + 1 for p in pairs if len(p[1]))

    def make(xx: torch.Tensor, yy: torch.Tensor) -> TensorPairDataset:
        if xx.dtype == torch.uint8:
            return TensorPairDataset(xx, yy, scale=1.0 / 255.0)
        return TensorPairDataset(xx.to(torch.float32), yy)

    train = make(*pairs[0])
    test = make(*pairs[1]) if len(pairs) > 1 else None
    return make_bundle(cfg, train=train, test=test, num_classes=num_classes,
                       info={"source": str(path), "preprocess": "uint8 x / 255, float x as is"})
