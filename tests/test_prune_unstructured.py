"""Unstructured magnitude pruning: exact counts, scopes, eligibility, schedules, iterative + fine-tune."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from models import ToyCNN, ToyMLP, ToyResNet
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import slimkit
from slimkit.config.finetune import FinetuneConfig
from slimkit.config.prune import MagnitudePruneConfig
from slimkit.context import PassContext
from slimkit.errors import ConfigError
from slimkit.passes.finetune.loop import accuracy, train_model
from slimkit.passes.prune.importance import magnitude_scores
from slimkit.passes.prune.masks import eligible_layers
from slimkit.passes.prune.schedule import sparsity_schedule
from slimkit.passes.prune.unstructured import (
    eligible_sparsity,
    magnitude_prune_,
    prune_count,
    sparsity_report,
)
from slimkit.registry import parse_stage

D_IN, CLASSES = 16, 4


def blobs(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(1234)
    centers = torch.randn(CLASSES, D_IN, generator=g) * 0.7
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return TensorDataset(centers[y] + torch.randn(n, D_IN, generator=g), y)


def loader(n: int, seed: int) -> DataLoader:
    return DataLoader(blobs(n, seed), batch_size=32)


def zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("make", [ToyMLP, ToyCNN, ToyResNet])
@pytest.mark.parametrize("sparsity", [0.37, 0.9])
def test_layer_scope_exact_per_layer(make, sparsity: float) -> None:
    model = make()
    slimkit.prune_(model, MagnitudePruneConfig(sparsity=sparsity, scope="layer"))
    layers = eligible_layers(model)
    assert layers
    for name, m in layers.items():
        n = m.weight.numel()
        assert zeros(m.weight) == prune_count(sparsity, n), name
    assert sparsity_report(model) == {n: prune_count(sparsity, m.weight.numel()) / m.weight.numel()
                                      for n, m in layers.items()}


@pytest.mark.parametrize("make", [ToyMLP, ToyCNN, ToyResNet])
def test_global_scope_exact_total(make) -> None:
    model = make()
    original = {n: m.weight.detach().clone() for n, m in eligible_layers(model).items()}
    slimkit.prune_(model, MagnitudePruneConfig(sparsity=0.61, scope="global"))
    layers = eligible_layers(model)
    total = sum(m.weight.numel() for m in layers.values())
    assert sum(zeros(m.weight) for m in layers.values()) == prune_count(0.61, total)
    assert eligible_sparsity(model) == prune_count(0.61, total) / total
    # one threshold for all layers: every kept weight is at least as large as every pruned one
    pruned = torch.cat([original[n][m.weight == 0].abs() for n, m in layers.items()])
    kept = torch.cat([m.weight[m.weight != 0].abs() for m in layers.values()])
    assert pruned.max() <= kept.min()
    assert all(torch.equal(m.weight[m.weight != 0], original[n][m.weight != 0]) for n, m in layers.items())


def test_global_prunes_more_where_weights_are_small() -> None:
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32))
    with torch.no_grad():
        model[0].weight.normal_(0, 1.0)
        model[2].weight.normal_(0, 0.05)
    magnitude_prune_(model, 0.5, "global")
    small, big = sparsity_report(model)["2"], sparsity_report(model)["0"]
    assert small > 0.9 and big < 0.1
    assert zeros(model[0].weight) + zeros(model[2].weight) == 1024


def test_ties_pruned_to_exact_count_deterministically() -> None:
    a = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 7))
    with torch.no_grad():
        for m in a:
            m.weight.fill_(0.5)
    b = copy.deepcopy(a)
    magnitude_prune_(a, 0.3, "global")
    magnitude_prune_(b, 0.3, "global")
    assert zeros(a[0].weight) + zeros(a[1].weight) == prune_count(0.3, 170)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    magnitude_prune_(a, 0.3, "layer")
    assert zeros(a[0].weight) >= 30 and zeros(a[1].weight) >= 21


def test_l1_and_l2_prune_the_same_weights() -> None:
    w = torch.randn(8, 8)
    assert torch.equal(magnitude_scores(w, "l1"), w.abs()) and torch.equal(magnitude_scores(w, "l2"), w * w)
    torch.manual_seed(0)
    a = ToyMLP()
    b = copy.deepcopy(a)
    slimkit.prune_(a, MagnitudePruneConfig(sparsity=0.5, norm="l1"))
    slimkit.prune_(b, MagnitudePruneConfig(sparsity=0.5, norm="l2"))
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_exclude_min_numel_biases_and_norms() -> None:
    model = ToyCNN()
    before = state(model)
    cfg = MagnitudePruneConfig(sparsity=0.8, scope="layer", exclude=["fc"], min_numel=200)
    slimkit.prune_(model, cfg)
    after = model.state_dict()
    assert torch.equal(after["fc.weight"], before["fc.weight"])  # excluded by name
    assert torch.equal(after["conv1.weight"], before["conv1.weight"])  # 144 weights < min_numel
    assert zeros(after["conv2.weight"]) == prune_count(0.8, after["conv2.weight"].numel())
    for k in after:
        if not k.endswith("weight") or k.startswith("bn"):
            assert torch.equal(after[k], before[k]), k  # biases, norm weights and buffers untouched
    assert set(sparsity_report(model, cfg)) == {"conv2"}
    # norms are never pruned, even when a config names them
    bn = ToyCNN()
    slimkit.prune_(bn, MagnitudePruneConfig(sparsity=0.5, include=["Conv2d", "BatchNorm2d"]))
    assert zeros(bn.bn1.weight) == 0


def test_plain_model_left_behind() -> None:
    model = ToyCNN()
    keys = list(model.state_dict())
    slimkit.prune_(model, MagnitudePruneConfig(sparsity=0.5))
    assert list(model.state_dict()) == keys
    for m in model.modules():
        assert not m._forward_pre_hooks and not hasattr(m, "weight_orig")
    assert all(isinstance(p, nn.Parameter) for p in (model.conv1.weight, model.fc.weight))


def test_tiny_sparsity_keeps_outputs_close() -> None:
    model = ToyCNN().eval()
    x = torch.randn(4, 1, 8, 8)
    ref = model(x)
    slimkit.prune_(model, MagnitudePruneConfig(sparsity=0.01))
    out = model(x)
    assert torch.allclose(out, ref, atol=2e-2)
    assert (out - ref).abs().max() > 0


def test_monotone_never_regrows() -> None:
    model = ToyMLP()
    magnitude_prune_(model, 0.5, "global")
    first = {n: m.weight == 0 for n, m in eligible_layers(model).items()}
    magnitude_prune_(model, 0.3, "global")  # lower target: nothing changes
    assert eligible_sparsity(model) == pytest.approx(0.5, abs=1e-4)
    magnitude_prune_(model, 0.7, "layer")
    for n, m in eligible_layers(model).items():
        assert bool(((m.weight == 0) | ~first[n]).all())  # old zeros stay zero
        assert zeros(m.weight) >= prune_count(0.7, m.weight.numel())


def test_schedules_hand_computed() -> None:
    assert sparsity_schedule(0.8, 4, "cubic") == pytest.approx([0.4625, 0.7, 0.7875, 0.8])
    assert sparsity_schedule(0.8, 4, "linear") == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert sparsity_schedule(0.5, 1, "cubic") == [0.5]
    assert sparsity_schedule(0.9, 2, "cubic", initial=0.5) == pytest.approx([0.85, 0.9])


def test_iterative_steps_follow_schedule() -> None:
    ctx = PassContext()
    model = ToyMLP()
    slimkit.apply_pass(model, MagnitudePruneConfig(sparsity=0.8, steps=4, scope="global"), ctx)
    steps = ctx.extras["prune_steps"]
    assert [s["target"] for s in steps] == pytest.approx([0.4625, 0.7, 0.7875, 0.8])
    assert [s["sparsity"] for s in steps] == pytest.approx([0.4625, 0.7, 0.7875, 0.8], abs=1e-4)


def test_iterative_prune_with_finetune_keeps_accuracy() -> None:
    train, val = loader(512, 0), loader(256, 1)
    torch.manual_seed(0)
    model = ToyMLP(d_in=D_IN, hidden=64, num_classes=CLASSES)
    train_model(model, train, FinetuneConfig(epochs=8, lr=5e-3), seed=0)
    dense = accuracy(model, val)
    assert 0.8 < dense < 0.95  # not saturated, so a loss of accuracy would show
    one_shot = copy.deepcopy(model)
    magnitude_prune_(one_shot, 0.8, "global")
    cfg = MagnitudePruneConfig(sparsity=0.8, steps=3, scope="global",
                               finetune=FinetuneConfig(epochs=2, lr=2e-3, schedule="constant"))
    ctx = PassContext(train_loader=train, val_loader=val)
    slimkit.apply_pass(model, cfg, ctx)
    layers = eligible_layers(model)
    total = sum(m.weight.numel() for m in layers.values())
    assert sum(zeros(m.weight) for m in layers.values()) >= prune_count(0.8, total)  # fine-tuning kept zeros
    assert eligible_sparsity(model) == pytest.approx(0.8, abs=1e-3)
    pruned = accuracy(model, val)
    assert pruned >= dense - 0.02, (dense, pruned)
    assert accuracy(one_shot, val) < dense - 0.02  # without fine-tuning the same sparsity costs more
    assert [len(s["train_result"].history) for s in ctx.extras["prune_steps"]] == [2, 2, 2]


def test_finetune_without_loader_is_refused_before_touching() -> None:
    model = ToyMLP()
    before = state(model)
    with pytest.raises(ConfigError, match="train_loader"):
        slimkit.prune_(model, MagnitudePruneConfig(sparsity=0.5, steps=2, finetune=FinetuneConfig(epochs=1)))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_no_eligible_layer_names_include_and_exclude() -> None:
    model = ToyMLP()
    with pytest.raises(ConfigError, match=r"include=.*exclude="):
        slimkit.prune_(model, MagnitudePruneConfig(sparsity=0.5, exclude=["fc*"]))
    with pytest.raises(ConfigError, match="include"):
        slimkit.prune_(model, MagnitudePruneConfig(sparsity=0.5, include=["Conv2d"]))


def test_torch_prune_reparametrization_refused() -> None:
    model = ToyMLP()
    torch_prune.l1_unstructured(model.fc1, "weight", amount=0.2)
    with pytest.raises(ConfigError, match="fc1"):
        slimkit.prune_(model, MagnitudePruneConfig(sparsity=0.5))


def test_shared_weight_counted_once() -> None:
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    b.weight = a.weight
    model = nn.Sequential(a, nn.ReLU(), b)
    assert list(eligible_layers(model)) == ["0"]
    magnitude_prune_(model, 0.5, "global")
    assert zeros(model[2].weight) == 32


def test_recipe_stage_and_public_verb() -> None:
    cfg, problems = parse_stage({"prune": {"sparsity": 0.5, "finetune": {"epochs": 1, "keep_sparsity": True}}}, 0)
    assert not problems and isinstance(cfg, MagnitudePruneConfig) and cfg.finetune.keep_sparsity
    model = ToyMLP()
    out = slimkit.prune_(model, slimkit.MagnitudePruneConfig(sparsity=0.75, scope="layer"))
    assert out is model and set(sparsity_report(model).values()) == {0.75}


def test_prune_count_reaches_the_target():
    assert prune_count(0.8, 1384) == 1108  # 1107.2 rounds up: 1107 would be 79.99%
    assert prune_count(0.8, 10) == 8  # exact products are not bumped by float error
    assert prune_count(0.7, 10) == 7
    assert prune_count(0.999, 3) == 3
