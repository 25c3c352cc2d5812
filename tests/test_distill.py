"""Distillation: the KD loss against a hand computation, its temperature scaling, feature KD with adapters,
mutual learning, teacher caching, students, the verb and recipe stages."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from models import ToyCNN, ToyMLP
from torch import nn

import slimkit
from slimkit.config.distill import DistillConfig, FeaturePair, MutualDistillConfig
from slimkit.errors import ConfigError
from slimkit.passes.distill.feature import FeatureAdapter, build_adapters, tapped
from slimkit.passes.distill.losses import feature_loss, kd_loss, mutual_losses, soft_kl
from slimkit.passes.distill.student import (
    arch_student,
    copy_student,
    keep_indices,
    layer_student,
    make_student,
)
from slimkit.passes.distill.trainer import distill_model
from slimkit.registry import parse_stage


def _hand_kd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float, alpha: float) -> float:  # noqa: N803
    """The loss written out with explicit exp / log, in float64."""
    s, t = s.double(), t.double()
    b = s.shape[0]
    ce = 0.0
    kl = 0.0
    for i in range(b):
        ce += -(s[i, y[i]] - torch.log(torch.exp(s[i]).sum()))
        pt = torch.exp(t[i] / T) / torch.exp(t[i] / T).sum()
        ps = torch.exp(s[i] / T) / torch.exp(s[i] / T).sum()
        kl += (pt * (torch.log(pt) - torch.log(ps))).sum()
    return float(alpha * ce / b + (1 - alpha) * T * T * kl / b)


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (4.0, 0.3), (2.5, 0.0), (10.0, 0.9)])
def test_kd_loss_equals_hand_computation(T, alpha):  # noqa: N803
    torch.manual_seed(3)
    s, t = torch.randn(6, 5) * 3, torch.randn(6, 5) * 3
    y = torch.randint(0, 5, (6,))
    assert math.isclose(float(kd_loss(s, t, y, T, alpha)), _hand_kd(s, t, y, T, alpha), rel_tol=1e-6, abs_tol=1e-6)


def test_alpha_one_is_pure_cross_entropy_and_no_targets_is_soft_only():
    s, t = torch.randn(8, 4), torch.randn(8, 4)
    y = torch.randint(0, 4, (8,))
    assert torch.equal(kd_loss(s, t, y, 4.0, 1.0), F.cross_entropy(s, y))
    torch.testing.assert_close(kd_loss(s, t, None, 4.0, 0.3), soft_kl(s, t, 4.0))
    assert float(kd_loss(t, t, None, 3.0, 0.5)) == pytest.approx(0.0, abs=1e-7)  # KL(p || p) = 0


def _soft_grad(s: torch.Tensor, t: torch.Tensor, T: float) -> torch.Tensor:  # noqa: N803
    s = s.clone().requires_grad_(True)
    soft_kl(s, t, T).backward()
    return s.grad


def test_gradient_of_soft_term_is_T_times_prob_difference():
    """d/ds [T^2 KL(p_t || p_s)] / B = T (softmax(s/T) - softmax(t/T)) / B, exactly."""
    torch.manual_seed(0)
    s, t = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    for T in (0.5, 1.0, 2.0, 4.0, 16.0):
        expected = T * (torch.softmax(s / T, -1) - torch.softmax(t / T, -1)) / s.shape[0]
        torch.testing.assert_close(_soft_grad(s, t, T).double(), expected, atol=1e-6, rtol=1e-6)


def test_gradient_magnitude_is_invariant_in_T_for_large_T():
    """As T grows, the gradient tends to ((s - mean s) - (t - mean t)) / (K B): the T^2 factor cancels the
    1/T^2 shrinkage of the softened KL, so the soft term keeps its weight against the CE term."""
    torch.manual_seed(1)
    b, k = 4, 10
    s, t = torch.randn(b, k, dtype=torch.float64), torch.randn(b, k, dtype=torch.float64)
    limit = ((s - s.mean(-1, keepdim=True)) - (t - t.mean(-1, keepdim=True))) / (k * b)
    norms = {}
    for T in (20.0, 50.0, 200.0):
        g = _soft_grad(s, t, T).double()
        norms[T] = float(g.norm())
        rel = float((g - limit).norm() / limit.norm())
        assert rel < 3.0 / T  # the error of the first-order expansion is O(1/T)
    assert norms[200.0] / norms[20.0] == pytest.approx(1.0, rel=0.05)
    # without the T^2 factor the gradient would fall like 1/T^2
    s2 = s.clone().requires_grad_(True)
    (soft_kl(s2, t, 200.0) / 200.0 ** 2).backward()
    assert float(s2.grad.norm()) / norms[20.0] < 1e-3


def test_mutual_losses_are_two_way_kd():
    a, b = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    la, lb = mutual_losses(a, b, y, 2.0, 0.5)
    torch.testing.assert_close(la, kd_loss(a, b, y, 2.0, 0.5))
    (la + lb).backward()
    ga = a.grad.clone()
    a.grad = None
    kd_loss(a, b.detach(), y, 2.0, 0.5).backward()
    torch.testing.assert_close(ga, a.grad)  # no gradient crosses from b's loss into a


def test_feature_loss_kinds():
    x = torch.randn(3, 4, 2, 2)
    assert float(feature_loss(x, x, "mse")) == 0.0
    assert float(feature_loss(2 * x, x, "cosine")) == pytest.approx(0.0, abs=1e-6)
    assert float(feature_loss(-x, x, "cosine")) == pytest.approx(2.0, abs=1e-6)


def test_adapters_match_shapes():
    a = FeatureAdapter((2, 4, 8, 8), (2, 16, 4, 4))
    assert a(torch.randn(2, 4, 8, 8)).shape == (2, 16, 4, 4) and isinstance(a.proj, nn.Conv2d)
    a = FeatureAdapter((2, 4, 2, 2), (2, 16, 4, 4))  # smaller map: resized up
    assert a(torch.randn(2, 4, 2, 2)).shape == (2, 16, 4, 4)
    a = FeatureAdapter((2, 5, 12), (2, 5, 32))  # token features
    assert a(torch.randn(2, 5, 12)).shape == (2, 5, 32) and isinstance(a.proj, nn.Linear)
    assert FeatureAdapter((2, 12), (2, 32, 1, 1))(torch.randn(2, 12)).shape == (2, 32, 1, 1)  # vector -> pooled
    assert FeatureAdapter((2, 12, 1, 1), (2, 32))(torch.randn(2, 12, 1, 1)).shape == (2, 32)
    assert isinstance(FeatureAdapter((2, 8), (2, 8)).proj, nn.Identity)
    assert isinstance(FeatureAdapter((2, 8), (2, 8), always=True).proj, nn.Linear)
    with pytest.raises(ConfigError):
        FeatureAdapter((2, 8), (2, 3, 4, 4))


def _data(n: int = 256, seed: int = 0) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], nn.Module]:
    """A fixed teacher (ToyCNN width 16, trained briefly would be slower: its own argmax is the label)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    torch.manual_seed(seed)
    teacher = ToyCNN(width=16).eval()
    with torch.no_grad():
        y = teacher(x).argmax(-1)
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)], teacher


@torch.no_grad()
def _kl(a: nn.Module, b: nn.Module, loader) -> float:
    a.eval()
    b.eval()
    return sum(float(soft_kl(a(x), b(x), 1.0)) for x, _ in loader) / len(loader)


def test_feature_kd_adapters_and_loss_decreases():
    loader, teacher = _data()
    student = ToyCNN(width=4)
    pairs = [{"student": "conv2", "teacher": "conv2"}, {"student": "relu", "teacher": "relu"}]
    cfg = DistillConfig(method="feature", features=pairs, alpha=1.0, beta=1.0, epochs=1, lr=1e-2,
                        keep_best=False)
    # adapters from the first batch's shapes
    with tapped(student, ["conv2"], "student") as st, tapped(teacher, ["conv2"], "teacher") as tt:
        x0 = loader[0][0]
        student(x0), teacher(x0)
        adapters = build_adapters(st.take(), tt.take())
    assert adapters[0](torch.randn(32, 8, 8, 8)).shape == (32, 32, 8, 8)

    losses = []
    for _ in range(4):
        info = distill_model(student, teacher, loader, cfg)
        losses.append(info["train"].history[-1]["train_loss"])
        assert [type(a.proj) for a in info["adapters"]] == [nn.Conv2d, nn.Conv2d]
    assert losses[-1] < 0.7 * losses[0]


def test_feature_names_are_checked():
    loader, teacher = _data(64)
    cfg = DistillConfig(method="feature", features=[FeaturePair(student="conv3", teacher="conv2")], epochs=1)
    with pytest.raises(ConfigError, match="conv3.*Did you mean"):
        distill_model(ToyCNN(width=4), teacher, loader, cfg)


def test_logit_distill_verb_reduces_kl_and_leaves_teacher_alone():
    loader, teacher = _data()
    teacher.train()  # the pass must use eval mode and restore this afterwards
    before = copy.deepcopy(teacher.state_dict())
    student = ToyCNN(width=4)
    kl0 = _kl(student, teacher, loader)
    teacher.train()
    out = slimkit.distill(student, teacher, loader, slimkit.DistillConfig(temperature=4.0, alpha=0.0, epochs=4,
                                                                          lr=1e-2))
    assert out is student
    assert teacher.training
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running stats included: the teacher ran in eval mode
    assert _kl(student, teacher, loader) < 0.3 * kl0


def test_teacher_cache_gives_identical_training():
    loader, teacher = _data(128)
    s1 = ToyCNN(width=4)
    s2 = copy.deepcopy(s1)
    cfg = DistillConfig(epochs=3, lr=1e-2)
    distill_model(s1, teacher, loader, cfg, seed=5)
    info = distill_model(s2, teacher, loader, cfg.model_copy(update={"cache_teacher": True}), seed=5)
    assert info["misses"] == len(loader) and info["hits"] == 2 * len(loader)
    for (k, v1), v2 in zip(s1.state_dict().items(), s2.state_dict().values(), strict=True):
        torch.testing.assert_close(v1, v2, msg=k)


def test_mutual_learning_trains_both_peers_and_copies_the_teacher():
    loader, _ = _data(128)
    a, b = ToyCNN(width=4), ToyCNN(width=4)
    b0 = copy.deepcopy(b.state_dict())
    ctx_extras: dict = {}
    from slimkit.context import PassContext

    ctx = PassContext(train_loader=loader, teacher=b, extras=ctx_extras)
    slimkit.apply_pass(a, MutualDistillConfig(epochs=1, lr=1e-2, temperature=1.0), ctx)
    peer = ctx_extras["distill"]["peer"]
    assert peer is not b and all(torch.equal(v, b0[k]) for k, v in b.state_dict().items())
    assert any(not torch.equal(v, b0[k]) for k, v in peer.state_dict().items())
    from slimkit.passes.distill.mutual import mutual_learning

    mutual_learning(a, b, loader, DistillConfig(method="mutual", epochs=1))
    assert any(not torch.equal(v, b0[k]) for k, v in b.state_dict().items())


def test_distill_after_pruning_keeps_zeros():
    loader, teacher = _data(64)
    student = copy_student(teacher)
    with torch.no_grad():
        student.conv2.weight[::2] = 0.0
    slimkit.distill(student, teacher, loader, DistillConfig(epochs=1, lr=1e-2))
    assert float(student.conv2.weight.detach()[::2].abs().sum()) == 0.0


def test_errors_before_training():
    loader, teacher = _data(64)
    with pytest.raises(ConfigError, match="teacher"):
        slimkit.apply_pass(ToyCNN(width=4), DistillConfig(), train_loader=loader)
    with pytest.raises(ConfigError, match="same module"):
        slimkit.distill(teacher, teacher, loader, DistillConfig())
    flat = [(x.flatten(1), y) for x, y in loader]
    with pytest.raises(ConfigError, match="shape"):
        slimkit.distill(ToyMLP(num_classes=3), ToyMLP(num_classes=10), flat, DistillConfig())


def test_students():
    teacher = ToyCNN()
    s = make_student(teacher)
    assert s is not teacher and all(torch.equal(a, b) for a, b in zip(s.parameters(), teacher.parameters(),
                                                                     strict=True))
    small = arch_student("cnn-small", input_shape=(1, 28, 28), num_classes=10, widths=[8, 16])
    assert small(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert make_student(teacher, "arch", arch="mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[32])(
        torch.randn(1, 1, 8, 8)).shape == (1, 10)
    assert keep_indices(6, 2) == [1, 3, 5] and keep_indices(12, 3) == [2, 5, 8, 11] and keep_indices(4, 1) == [0, 1, 2, 3]


def test_layer_student_from_bert_like_encoder():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=6, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    torch.manual_seed(0)
    teacher = transformers.BertModel(cfg).eval()
    student = layer_student(teacher, every=2).eval()
    assert len(student.encoder.layer) == 3 and student.config.num_hidden_layers == 3
    assert teacher.config.num_hidden_layers == 6
    torch.testing.assert_close(student.encoder.layer[0].output.dense.weight, teacher.encoder.layer[1].output.dense.weight)
    ids = torch.randint(0, 50, (2, 7))
    assert student(input_ids=ids).last_hidden_state.shape == (2, 7, 16)
    with pytest.raises(ConfigError):
        layer_student(teacher, layers=[0, 9])


def test_recipe_stages_parse_with_paths():
    cfg, problems = parse_stage({"distill": {"temperature": 4}}, 0)
    assert problems == [] and type(cfg) is DistillConfig and cfg.temperature == 4 and cfg.method == "logits"
    cfg, problems = parse_stage({"distill": {"method": "mutual", "alpha": 0.2}}, 1)
    assert problems == [] and cfg.method == "mutual" and isinstance(cfg, DistillConfig)
    cfg, problems = parse_stage({"distill": {"method": "feature", "features": [{"student": "a", "teacher": "b"}]}}, 0)
    assert problems == [] and cfg.features[0].teacher == "b"
    _, problems = parse_stage({"distill": {"temperature": -1, "alpha": 2}}, 3)
    paths = dict(problems)
    assert "stages[3].distill.temperature" in paths and "stages[3].distill.alpha" in paths
    _, problems = parse_stage({"distill": {"method": "feature", "features": [{"student": "a", "teachr": "b"}]}}, 0)
    assert any(p.startswith("stages[0].distill.features[0]") for p, _ in problems)
    _, problems = parse_stage({"distill": {"method": "feature"}}, 0)
    assert problems and "features" in problems[0][1]
    _, problems = parse_stage({"distill": {"method": "logit"}}, 0)
    assert "Did you mean 'logits'" in problems[0][1]
