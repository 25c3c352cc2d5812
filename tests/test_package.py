"""Package-level guarantees: a light import, the public API, a registry that lists every pass."""

from __future__ import annotations

import subprocess
import sys

import pytest

import slimkit
from slimkit import registry


def test_import_is_light():
    code = ("import sys, slimkit; heavy = [m for m in ('onnxruntime', 'onnx', 'transformers', 'ray', 'optuna', "
            "'matplotlib', 'sklearn') if m in sys.modules]; print(heavy); assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_public_configs_resolve():
    for name in slimkit._LAZY:
        cls = getattr(slimkit, name)
        assert cls.__name__ == name


def test_every_registered_pass_has_a_public_config():
    public = {getattr(slimkit, n) for n in slimkit._LAZY}
    for spec in registry.all_specs():
        assert spec.config_cls in public, f"{spec.config_cls.__name__} is registered but not in slimkit._LAZY"


def test_configs_are_frozen_and_strict():
    from pydantic import ValidationError

    cfg = slimkit.MagnitudePruneConfig(sparsity=0.5)
    with pytest.raises(ValidationError):
        cfg.sparsity = 0.9  # type: ignore[misc]
    with pytest.raises(ValidationError):
        slimkit.MagnitudePruneConfig(sparsity=0.5, sparsityy=0.2)


def test_wrong_kind_config():
    from models import ToyMLP

    from slimkit.errors import ConfigError

    with pytest.raises(ConfigError, match="prune"):
        slimkit.quantize_(ToyMLP(), slimkit.MagnitudePruneConfig(sparsity=0.5))
