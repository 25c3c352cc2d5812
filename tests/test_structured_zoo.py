"""Structured pruning on every zoo architecture: 50% MACs, exactness of the couplings, ratio 0, reload."""

from __future__ import annotations

import copy

import pytest
import torch
from structured_helpers import plan, zeroed

import slimkit as sk
from slimkit.exporters import load_model, save_model
from slimkit.graph import apply_removal
from slimkit.graph.structure import apply_structure, structure_of
from slimkit.models.zoo import ZOO, build
from slimkit.passes.prune.structured import count_macs

ARCHS = list(ZOO)
# architectures made only of conv/BN/ReLU/pool/add/cat/shuffle: zeroing a unit makes it exactly 0
EXACT = ["resnet18-tiny", "resnet50-tiny", "resnext-tiny", "mobilenet_v2-tiny", "densenet-small", "unet-small",
         "shufflenet_v2-small"]


@pytest.fixture(scope="module")
def pruned() -> dict[str, tuple]:
    out = {}
    for name in ARCHS:
        torch.manual_seed(0)
        model, x = build(name)
        model.eval()
        ref = copy.deepcopy(model)
        base = count_macs(model, x)
        sk.prune_(model, sk.StructuredPruneConfig(target_macs=0.5), example_inputs=x)
        out[name] = (ref, model, x, base)
    return out


@pytest.mark.parametrize("name", ARCHS)
def test_half_macs(pruned: dict, name: str) -> None:
    ref, model, x, base = pruned[name]
    got = count_macs(model, x) / base
    assert abs(got - 0.5) <= 0.05 * 0.5, got
    with torch.no_grad():
        assert model(*x).shape == ref(*x).shape
        x2 = [torch.cat([t, t]) for t in x]  # other batch sizes work too
        assert model(*x2).shape == ref(*x2).shape
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("name", EXACT)
def test_removal_equals_zeroing(name: str) -> None:
    torch.manual_seed(1)
    model, x = build(name)
    model.eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.5, 0.5)
    graph, removed = plan(model, x, 0.4)
    assert removed
    expected = zeroed(model, graph, removed)
    apply_removal(model, graph, removed, x)
    with torch.no_grad():
        torch.testing.assert_close(model(*x), expected(*x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ARCHS)
def test_ratio_zero_is_identity(name: str) -> None:
    model, x = build(name)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(*x)
    sk.prune_(model, sk.StructuredPruneConfig(ratio=0.0), example_inputs=x)
    with torch.no_grad():
        assert torch.equal(model(*x), ref)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ARCHS)
def test_save_and_rebuild(pruned: dict, name: str, tmp_path) -> None:
    _, model, x, _ = pruned[name]
    save_model(model, tmp_path, spec={"arch": name, "structure": structure_of(model)})

    def make(spec: dict) -> torch.nn.Module:
        fresh, _ = build(spec["arch"])
        return apply_structure(fresh, spec["structure"])

    back = load_model(tmp_path, make)
    back.eval()
    with torch.no_grad():
        assert torch.equal(back(*x), model(*x))
