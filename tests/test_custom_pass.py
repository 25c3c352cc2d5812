"""A technique added the documented way (a config class and a handler, nothing else; docs/architecture.md,
"Adding a pass") runs through the verb, a recipe and the CLI without any other edit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Literal

import pytest
import torch
import yaml
from models import ToyMLP
from pydantic import Field
from torch import nn

import slimkit as sk
from slimkit import registry
from slimkit.config.base import PassConfig
from slimkit.context import PassContext, PassRecord
from slimkit.errors import ConfigError


@pytest.fixture
def grid_pass():
    """The worked example of the docs: weights rounded to a fixed grid (``w = step * round(w / step)``)."""

    # --- the config file
    class GridQuantConfig(PassConfig):
        """Round the weights of Linear layers to multiples of ``step``."""

        kind: ClassVar[str] = "quantize"
        method: Literal["grid"] = "grid"
        step: float = Field(0.01, gt=0, le=1)

    # --- the handler file
    @dataclass
    class GridRecord(PassRecord):
        key: ClassVar[str] = "grid"
        layers: int
        max_change: float

        def notes(self, stage: int) -> list[str]:
            return [f"Grid rounding (stage {stage}): {self.layers} layers, weights moved by at most "
                    f"{self.max_change:.4g}."]

    @registry.register_pass(GridQuantConfig)
    def grid(model: nn.Module, cfg: GridQuantConfig, ctx: PassContext) -> nn.Module:
        layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not layers:
            raise ConfigError("grid rounding found no Linear layer.")
        change = 0.0
        with torch.no_grad():
            for m in layers:
                new = torch.round(m.weight / cfg.step) * cfg.step
                change = max(change, float((new - m.weight).abs().max()))
                m.weight.copy_(new)
        ctx.add(GridRecord(layers=len(layers), max_change=change))
        return model

    yield GridQuantConfig
    registry.unregister_pass(GridQuantConfig)
    assert "grid" not in registry.methods("quantize")


def _on_grid(model: nn.Module, step: float) -> bool:
    return all(torch.allclose(m.weight / step, torch.round(m.weight / step), atol=1e-3)
               for m in model.modules() if isinstance(m, nn.Linear))


def test_verb(grid_pass):
    model = ToyMLP()
    x = model.example_inputs[0].repeat(8, 1) + torch.randn(8, model.example_inputs[0].shape[1])
    ref = model(x).detach()
    assert not _on_grid(model, 0.01)
    ctx = PassContext()
    assert sk.quantize_(model, grid_pass(step=0.01), ctx=ctx) is model
    assert _on_grid(model, 0.01)
    assert torch.nn.functional.cosine_similarity(model(x).flatten(), ref.flatten(), dim=0) > 0.99
    rec = ctx.extras["grid"]
    assert rec.layers == sum(isinstance(m, nn.Linear) for m in model.modules()) == 3
    assert 0 < rec["max_change"] <= 0.005 + 1e-6
    with pytest.raises(ConfigError, match="prune"):
        sk.prune_(model, grid_pass())


def _recipe(tmp_path, stages: list) -> dict:
    return {"name": "grid", "seed": 0, "model": {"arch": "mlp", "kwargs": {"hidden": [32]}},
            "data": {"name": "digits", "batch_size": 64}, "stages": stages}


def test_recipe(grid_pass, tmp_path):
    report = sk.run_recipe(_recipe(tmp_path, [{"quantize": {"method": "grid", "step": 0.02}}]), out=tmp_path / "r")
    stage = report["stages"][0]
    assert stage["pass"] == "quantize:grid" and stage["config"]["step"] == 0.02
    assert stage["grid"]["layers"] == 2 and 0 < stage["grid"]["max_change"] <= 0.01 + 1e-6
    assert "Grid rounding (stage 0): 2 layers" in report["verdict"]
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["stages"][0]["grid"] == stage["grid"]


def test_cli(grid_pass, tmp_path):
    from typer.testing import CliRunner

    from slimkit.cli.app import app

    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp_path, [])))
    res = CliRunner().invoke(app, ["quantize", str(path), "--method", "grid", "--out", str(tmp_path / "q")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    assert report["stages"][0]["pass"] == "quantize:grid" and report["stages"][0]["grid"]["layers"] == 2
    res = CliRunner().invoke(app, ["quantize", str(path), "--method", "grid", "--bits", "4"])
    assert isinstance(res.exception, ConfigError) and "--bits 4 does not apply to --method grid" in str(res.exception)
