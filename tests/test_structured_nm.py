"""N:M semi-structured sparsity masks (CPU) and the GPU speed check (skipped with a reason on CPU)."""

from __future__ import annotations

import pytest
import torch
from models import ToyMLP

import slimkit as sk
from slimkit.errors import ConfigError
from slimkit.passes.prune.nm import gpu_speed_check, is_nm_sparse, nm_mask


def test_mask_keeps_n_largest_of_m() -> None:
    w = torch.tensor([[1.0, -4.0, 3.0, 0.5, 0.1, 0.2, -0.3, 0.4]])
    mask = nm_mask(w, 2, 4)
    assert mask.tolist() == [[False, True, True, False, False, False, True, True]]


def test_pass_makes_linear_layers_2_4() -> None:
    m = ToyMLP()
    sk.prune_(m, sk.NMSparsityConfig())
    for lin in (m.fc1, m.fc2, m.fc3):
        assert is_nm_sparse(lin.weight, 2, 4)
        assert float((lin.weight == 0).float().mean()) == pytest.approx(0.5)
    assert m(*m.example_inputs).shape == (1, 10)


def test_exclude_and_bad_dims() -> None:
    m = ToyMLP()
    sk.prune_(m, sk.NMSparsityConfig(exclude=["fc3"]))
    assert not is_nm_sparse(m.fc3.weight, 2, 4)
    with pytest.raises(ConfigError):
        sk.prune_(ToyMLP(d_in=6, hidden=6), sk.NMSparsityConfig(exclude=["fc2", "fc3"], m=4))
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        sk.NMSparsityConfig(n=4, m=4)


def test_gpu_speed_check() -> None:
    res = gpu_speed_check(256, 256, 256, repeats=5)
    if not torch.cuda.is_available():
        assert "skipped" in res and "CUDA" in res["skipped"]
    else:
        assert "skipped" in res or res["speedup"] > 0
