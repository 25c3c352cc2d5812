"""Block reconstruction after post-training compression (``block_refit``, issue 11): each block refit to the
original's block output on unlabelled calibration data. Checked with numbers on a tiny random BERT and a small
CNN (seconds): the held-out error goes down, zeros and shapes stay, a refit that does not help is undone, and
bad settings are typed errors before anything changes."""

from __future__ import annotations

import copy

import pytest
import torch
from models import hidden_rel_err, tiny_bert, token_batches
from torch import nn

import slimkit as sk
from slimkit.config.base import build
from slimkit.errors import ConfigError, RecipeError, SlimkitError
from slimkit.passes.blockfit import default_blocks, refit_blocks, refit_output

transformers = pytest.importorskip("transformers")


def test_sparsegpt_block_refit_lowers_the_heldout_error_and_keeps_the_zeros() -> None:
    base, cal, test = tiny_bert(), token_batches(1, n=10), token_batches(2, n=4)
    plain = copy.deepcopy(base)
    sk.prune_(plain, sk.SparseGPTConfig(sparsity=0.6), calibration=cal)
    fitted = copy.deepcopy(base)
    sk.prune_(fitted, sk.SparseGPTConfig(sparsity=0.6, block_refit=sk.BlockRefitConfig(steps=150, lr=1e-3)),
              calibration=cal)
    for (name, p), q in zip(plain.named_parameters(), fitted.parameters(), strict=True):
        if p.dim() == 2 and "embeddings" not in name:  # the same zeros: the refit never fills one
            assert torch.equal(p == 0, q == 0), name
    before, after = hidden_rel_err(plain, base, test), hidden_rel_err(fitted, base, test)
    assert after < 0.8 * before, (before, after)  # measured ~0.5x on these inputs, never seen in the fit


def test_block_refit_rows_and_default_blocks() -> None:
    base, cal = tiny_bert(), token_batches(3, n=10)
    model = copy.deepcopy(base)
    with torch.no_grad():
        for p in model.encoder.layer[0].intermediate.dense.parameters():
            p.add_(0.3 * torch.randn_like(p))
    assert default_blocks(model, cal[0]) == ["encoder.layer.0", "encoder.layer.1"]
    rows = refit_blocks(model, base, cal, sk.BlockRefitConfig(steps=100, lr=1e-3))
    assert [r["block"] for r in rows] == ["encoder.layer.0", "encoder.layer.1"]
    first = rows[0]
    assert first["kept"] and first["heldout_after"] < 0.5 * first["heldout_before"], first


def test_a_refit_that_does_not_help_is_undone() -> None:
    base, cal = tiny_bert(), token_batches(4, n=10)
    model = copy.deepcopy(base)  # nothing compressed: the error is 0 and cannot go down
    state = copy.deepcopy(model.state_dict())
    rows = refit_blocks(model, base, cal, sk.BlockRefitConfig(steps=5, lr=1e-2))
    assert not any(r["kept"] for r in rows)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_posttrain_and_svd_take_block_refit() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    cal = [torch.randn(16, 3, 12, 12) for _ in range(6)]
    ref = copy.deepcopy(model)
    sk.lowrank_(model, sk.SVDConfig(rank_ratio=0.25, include=["Conv2d"], block_refit={"steps": 60, "lr": 1e-3}),
                calibration=cal)
    plain = copy.deepcopy(ref)
    sk.lowrank_(plain, sk.SVDConfig(rank_ratio=0.25, include=["Conv2d"]))
    x = torch.randn(32, 3, 12, 12)
    with torch.no_grad():
        err = float((model(x) - ref(x)).norm() / ref(x).norm())
        err_plain = float((plain(x) - ref(x)).norm() / ref(x).norm())
    assert err < err_plain, (err, err_plain)


def test_block_refit_errors_are_typed_and_change_nothing() -> None:
    base = tiny_bert()
    model = copy.deepcopy(base)
    with pytest.raises(ConfigError, match="not modules of both models"):
        refit_blocks(model, base, token_batches(5, n=10), sk.BlockRefitConfig(blocks=["encoder.layer.9"]))
    with pytest.raises(SlimkitError, match="calibration"):
        sk.lowrank_(copy.deepcopy(base), sk.SVDConfig(rank_ratio=0.5, block_refit={}))
    with pytest.raises(SlimkitError, match="at least 2 calibration batches"):
        refit_blocks(model, base, token_batches(5, n=1), sk.BlockRefitConfig())
    with pytest.raises(RecipeError, match="block_refit.steps"):  # as a recipe stage validates it
        build(sk.SparseGPTConfig, {"sparsity": 0.5, "block_refit": {"steps": 0}})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), base.state_dict().values(),
                                                 strict=True))


def test_a_block_whose_output_lost_channels_is_left_and_the_next_one_fit() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()),
                          nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()),
                          nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))).eval()
    cal = [torch.randn(16, 3, 12, 12) for _ in range(6)]
    pruned = copy.deepcopy(model)
    sk.prune_(pruned, sk.PostTrainPruneConfig(ratio=0.5), calibration=cal, example_inputs=(cal[0][:1],))
    assert pruned[0][0].out_channels == 8
    with torch.no_grad():  # something for the last block to correct
        pruned[2][2].weight.mul_(1.5)
    rows = refit_blocks(pruned, model, cal, sk.BlockRefitConfig(steps=30, lr=1e-3))
    assert [r["block"] for r in rows] == ["0", "1", "2"]
    assert all(r["skipped"].startswith("output shape") for r in rows[:2])  # both lost half their channels
    assert rows[2]["heldout_after"] < rows[2]["heldout_before"] and rows[2]["kept"], rows[2]


def test_final_steps_fit_the_whole_model_output_keep_zeros_and_lower_the_heldout_error() -> None:
    base, cal, test = tiny_bert(), token_batches(1, n=10), token_batches(2, n=4)
    blocks = copy.deepcopy(base)
    sk.prune_(blocks, sk.SparseGPTConfig(sparsity=0.6), calibration=cal)
    zeros = {n: p == 0 for n, p in blocks.named_parameters() if p.dim() == 2 and "embeddings" not in n}
    final = copy.deepcopy(blocks)
    refit_blocks(blocks, base, cal, sk.BlockRefitConfig(steps=150, lr=1e-3))
    rows = refit_blocks(final, base, cal, sk.BlockRefitConfig(steps=150, lr=1e-3, final_steps=120, final_check=20))
    last = rows[-1]
    assert last["block"] == "(whole model)" and last["kept"], last
    assert 20 <= last["steps"] <= 120 and last["heldout_after"] < last["heldout_before"], last
    for name, p in final.named_parameters():
        if name in zeros:
            assert torch.equal(p == 0, zeros[name]), name
    before, after = hidden_rel_err(blocks, base, test), hidden_rel_err(final, base, test)
    assert after < 0.9 * before, (before, after)  # inputs never seen in any fit


def test_final_steps_that_do_not_help_leave_the_model_as_it_was() -> None:
    base, cal = tiny_bert(), token_batches(4, n=10)
    model = copy.deepcopy(base)  # nothing compressed: the held-out error is 0 and cannot go down
    state = copy.deepcopy(model.state_dict())
    rows = refit_blocks(model, base, cal, sk.BlockRefitConfig(steps=2, lr=1e-2, final_steps=10, final_check=5,
                                                              final_lr=1e-2))
    assert rows[-1]["block"] == "(whole model)" and not rows[-1]["kept"]
    row = refit_output(model, base, cal, sk.BlockRefitConfig(final_steps=10, final_check=5, final_lr=1e-2))
    assert not row["kept"] and row["steps"] == 10  # 2 checks, neither improved: the state is restored
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ConfigError, match="final_steps"):
        refit_output(model, base, cal, sk.BlockRefitConfig())


def test_cosine_schedule_decays_the_block_fit_learning_rate() -> None:
    base, cal = tiny_bert(), token_batches(3, n=10)
    noisy = copy.deepcopy(base)
    with torch.no_grad():
        for p in noisy.encoder.layer[0].intermediate.dense.parameters():
            p.add_(0.3 * torch.randn_like(p))
    out = {}
    for schedule in ("constant", "cosine"):
        model = copy.deepcopy(noisy)
        rows = refit_blocks(model, base, cal, sk.BlockRefitConfig(steps=100, lr=1e-3, schedule=schedule))
        out[schedule] = (rows[0], model.encoder.layer[0].intermediate.dense.weight.detach().clone())
    first = out["cosine"][0]
    assert first["kept"] and first["heldout_after"] < 0.5 * first["heldout_before"], first
    assert not torch.allclose(out["cosine"][1], out["constant"][1])  # the schedule changed the fit
