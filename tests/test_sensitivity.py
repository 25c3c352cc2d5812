"""Per-layer sensitivity and greedy mixed assignment on a toy MLP whose fc2 carries huge weight outliers."""

from __future__ import annotations

import pytest
import torch
from models import ToyMLP

from slimkit.errors import ConfigError, ConstraintError
from slimkit.search import (
    UnitSensitivity,
    layer_sensitivity,
    mixed_assignment,
    one_at_a_time,
    sensitivity_plot,
    sensitivity_table,
)

UNITS = ["fc1", "fc2", "fc3"]


def _fake_quant_(model: torch.nn.Module, unit: str, bits: int = 4) -> None:
    """Per-tensor symmetric fake quantization of one Linear's weight, in place."""
    w = model.get_submodule(unit).weight
    qmax = 2 ** (bits - 1) - 1
    scale = w.detach().abs().max() / qmax
    with torch.no_grad():
        w.copy_((w / scale).round().clamp(-qmax, qmax) * scale)


@pytest.fixture
def toy() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = ToyMLP().eval()
    with torch.no_grad():
        model.fc2.weight[0, :4] *= 400.0  # a few huge outliers: per-tensor int4 wipes out the rest of fc2
    return model, torch.randn(256, 64)


def _score_fn(reference: torch.nn.Module, x: torch.Tensor):
    with torch.no_grad():
        ref = reference(x)

    def score(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cosine_similarity(model(x), ref, dim=1).mean())
    return score


def test_outlier_layer_ranks_first_and_mixed_keeps_it(toy) -> None:
    model, x = toy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    score = _score_fn(model, x)
    table = layer_sensitivity(UNITS, one_at_a_time(model, UNITS, _fake_quant_, score), baseline=1.0)
    assert [s.unit for s in table][0] == "fc2"
    assert table[0].loss > 5 * max(s.loss for s in table[1:])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # analysis never mutates

    def evaluate(keep: list[str]) -> float:
        clone = __import__("copy").deepcopy(model)
        for unit in UNITS:
            if unit not in keep:
                _fake_quant_(clone, unit)
        return score(clone)

    all_compressed = evaluate([])
    floor = 1.0 - 0.5 * (1.0 - all_compressed) if all_compressed < 0.999 else 0.9999
    plan = mixed_assignment(table, fidelity_floor=floor, evaluate=evaluate)
    assert plan.met and plan.measured
    assert plan.keep[0] == "fc2" and "fc2" not in plan.compress
    assert plan.score >= floor and plan.trace[0]["keep"] == []
    rows = sensitivity_table(table)
    assert rows[0]["rank"] == 1 and rows[0]["unit"] == "fc2"


def test_mixed_assignment_budget_and_estimate() -> None:
    sens = [UnitSensitivity("a", 0.90, 0.10, 100), UnitSensitivity("b", 0.97, 0.03, 10),
            UnitSensitivity("c", 0.99, 0.01, 10)]
    # additive estimate: all compressed = 1 - 0.14 = 0.86; keeping 'a' gives 0.96
    plan = mixed_assignment(sens, fidelity_floor=0.95)
    assert plan.keep == ["a"] and plan.met and not plan.measured
    assert plan.score == pytest.approx(0.96)
    # 'a' does not fit the budget: the greedy skips it, keeps the cheaper ones and reports the miss
    plan = mixed_assignment(sens, fidelity_floor=0.95, budget=50)
    assert plan.keep == ["b", "c"] and not plan.met and plan.cost == 20
    assert "budget" in plan.reason
    plan = mixed_assignment(sens, fidelity_floor=0.5)
    assert plan.keep == [] and plan.met
    plan = mixed_assignment(sens, fidelity_floor=0.999, max_keep=1)
    assert plan.keep == ["a"] and not plan.met and "max_keep" in plan.reason


def test_errors_and_plot() -> None:
    with pytest.raises(ConfigError):
        layer_sensitivity([], lambda u: 1.0)
    with pytest.raises(ConfigError):
        layer_sensitivity(["a", "a"], lambda u: 1.0)
    with pytest.raises(ConfigError):
        layer_sensitivity(["a"], lambda u: float("nan"))
    with pytest.raises(ConfigError):
        mixed_assignment([], fidelity_floor=0.9)
    with pytest.raises(ConstraintError):
        mixed_assignment([UnitSensitivity("a", 0.9, 0.1, 1)], fidelity_floor=0.95, budget=-1)
    with pytest.raises(ConfigError):  # a budget needs costs
        mixed_assignment([UnitSensitivity("a", 0.9, 0.1)], fidelity_floor=0.95, budget=10)
    png = sensitivity_plot([UnitSensitivity("a", 0.9, 0.1), UnitSensitivity("b", 0.99, 0.01)], keep=["a"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
