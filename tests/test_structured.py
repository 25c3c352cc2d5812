"""The structured pruning pass: targets, importance criteria, rounding, scopes, heads, MiniLM."""

from __future__ import annotations

import copy

import pytest
import torch
from models import ToyCNN
from torch import nn

import slimkit as sk
from slimkit.errors import ConstraintError
from slimkit.graph import PrunedMultiheadAttention
from slimkit.models.zoo import build
from slimkit.passes.prune.structured import count_macs


def test_config_needs_exactly_one_target() -> None:
    from pydantic import ValidationError

    for kwargs in ({}, {"ratio": 0.5, "target_macs": 0.5}, {"ratio": 1.0}):
        with pytest.raises(ValidationError):
            sk.StructuredPruneConfig(**kwargs)


def test_recipe_stage_parses() -> None:
    from slimkit.registry import parse_stage

    cfg, problems = parse_stage({"prune": {"method": "structured", "target_macs": 0.5, "round_to": 8}}, 0)
    assert not problems and cfg.round_to == 8
    _, problems = parse_stage({"prune": {"method": "structured", "ratio": 0.5, "importanc": "l1"}}, 0)
    assert problems and "importance" in problems[0][1]


def test_needs_example_inputs() -> None:
    with pytest.raises(sk.SlimkitError, match="example_inputs"):
        sk.prune_(ToyCNN(), sk.StructuredPruneConfig(ratio=0.5))


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale", "taylor", "entropy"])
def test_each_importance(importance: str) -> None:
    m, x = build("resnet18-tiny")
    calib = [(torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))) for _ in range(2)]
    base = count_macs(m, x)
    sk.prune_(m, sk.StructuredPruneConfig(target_macs=0.5, importance=importance), example_inputs=x,
              calibration=calib)
    assert abs(count_macs(m, x) / base - 0.5) < 0.025


def test_importance_keeps_strong_channels() -> None:
    m = ToyCNN()
    with torch.no_grad():
        m.conv1.weight[:8] *= 100  # channels 0..7 are clearly the strongest
    sk.prune_(m, sk.StructuredPruneConfig(ratio=0.5, importance="l1"), example_inputs=m.example_inputs)
    assert m.conv1.out_channels == 8
    assert float(m.conv1.weight.detach().abs().mean()) > 1.0


def test_round_to_and_global_scope() -> None:
    m, x = build("resnet50-tiny")
    sk.prune_(m, sk.StructuredPruneConfig(ratio=0.5, round_to=8, scope="global"), example_inputs=x)
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d) and mod.out_channels > 8 and mod is not m.conv1:
            assert mod.out_channels % 8 == 0, mod


def test_unreachable_target_raises_before_change() -> None:
    m, x = build("resnet18-tiny")
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(ConstraintError):
        sk.prune_(m, sk.StructuredPruneConfig(target_macs=0.01, max_group_ratio=0.5), example_inputs=x)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_steps_with_finetune() -> None:
    m = ToyCNN()
    x = m.example_inputs
    data = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(2)]
    base = count_macs(m, x)
    cfg = sk.StructuredPruneConfig(target_macs=0.5, steps=2, finetune=sk.FinetuneConfig(epochs=1))
    sk.prune_(m, cfg, example_inputs=x, train_loader=data)
    assert abs(count_macs(m, x) / base - 0.5) < 0.05


def test_mha_removes_whole_heads() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn, self.out = mha, nn.Linear(32, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(x + self.attn(x, x, x, need_weights=False)[0])

    net = Net().eval()
    x = torch.randn(1, 5, 32)
    orig = copy.deepcopy(mha)
    with torch.no_grad():  # make heads 0 and 2 weak so they are the ones removed
        mha.in_proj_weight.view(3, 4, 8, 32)[:, [0, 2]] *= 0.01
        orig.in_proj_weight.copy_(mha.in_proj_weight)
    sk.prune_(net, sk.StructuredPruneConfig(ratio=0.5, protected=[]), example_inputs=(x,))
    new = net.attn
    assert isinstance(new, PrunedMultiheadAttention) and new.num_heads == 2 and new.head_dim == 8
    with torch.no_grad():
        _, w_old = orig(x, x, x, average_attn_weights=False)
        _, w_new = new(x, x, x, average_attn_weights=False)
        torch.testing.assert_close(w_new, w_old[:, [1, 3]])  # kept heads attend exactly as before
        # output = out_proj over the kept heads only
        masked = copy.deepcopy(orig)
        masked.out_proj.weight.view(32, 4, 8)[:, [0, 2]] = 0
        torch.testing.assert_close(new(x, x, x)[0], masked(x, x, x)[0], rtol=1e-4, atol=1e-5)


def test_vit_heads_and_width() -> None:
    m, x = build("vit-small")
    base = count_macs(m, x)
    sk.prune_(m, sk.StructuredPruneConfig(target_macs=0.5), example_inputs=x)
    assert abs(count_macs(m, x) / base - 0.5) < 0.025
    assert m.pos_embed.shape[-1] == m.patch_embed.out_channels == m.head.in_features


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    from slimkit.models.zoo import load_minilm

    try:
        model = load_minilm().eval()
    except sk.SlimkitError as exc:
        pytest.skip(str(exc))
    ids = torch.randint(1000, 5000, (1, 12))
    return model, (ids, torch.ones_like(ids))


def test_minilm_half_heads_and_ffn(minilm) -> None:
    model, x = minilm
    m = copy.deepcopy(model)
    with torch.no_grad():
        ref = model(*x).last_hidden_state
    sk.prune_(m, sk.StructuredPruneConfig(ratio=0.5), example_inputs=x)
    layer = m.encoder.layer[0]
    assert layer.attention.self.num_attention_heads == 6 and layer.attention.self.query.out_features == 192
    assert layer.intermediate.dense.out_features == 768
    with torch.no_grad():
        out = m(*x).last_hidden_state
        assert out.shape == ref.shape
        cos = torch.nn.functional.cosine_similarity(out.mean(1), ref.mean(1)).item()
    assert cos > 0.5


def test_minilm_ratio_zero(minilm) -> None:
    model, x = minilm
    m = copy.deepcopy(model)
    sk.prune_(m, sk.StructuredPruneConfig(ratio=0.0), example_inputs=x)
    with torch.no_grad():
        assert torch.equal(m(*x).last_hidden_state, model(*x).last_hidden_state)
