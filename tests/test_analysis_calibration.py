"""Streaming input statistics: exact against directly computed X^T X, conv unfolding exact, batch shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from models import ToyCNN, ToyMLP
from torch import nn

from slimkit.analysis.calibration import collect_input_stats, conv_patches
from slimkit.errors import ConfigError, DataError


def _captured_inputs(model: nn.Module, name: str, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    h = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    with torch.no_grad():
        for x in batches:
            model(x)
    h.remove()
    return seen


def test_linear_xtx_equals_direct_product_over_batches():
    torch.manual_seed(0)
    model = ToyMLP().eval()
    batches = [torch.randn(7, 64) for _ in range(5)]
    loader = [(x, torch.zeros(len(x), dtype=torch.long)) for x in batches]  # (x, y) pairs
    stats = collect_input_stats(model, loader, ["fc1", "fc2"])
    for name in ("fc1", "fc2"):
        x = torch.cat(_captured_inputs(model, name, batches)).double()
        s = stats[name]
        assert s.count == 35 and s.groups == 1
        assert torch.allclose(s.xtx[0], x.T @ x, rtol=1e-5, atol=1e-5)
        assert torch.allclose(s.sum[0], x.sum(0), atol=1e-10)
        assert torch.allclose(s.col_norms()[0], x.norm(dim=0), atol=1e-10)
        assert torch.allclose(s.second_moment()[0], x.T @ x / 35, rtol=1e-5, atol=1e-6)
    # hooks removed, model not changed
    assert not model.fc1._forward_pre_hooks


@pytest.mark.parametrize("kw", [
    dict(padding=1), dict(padding=2, stride=2, dilation=2), dict(padding="same"),
    dict(padding=1, padding_mode="reflect"), dict(padding=1, groups=4), dict(padding=1, groups=8),
])
def test_conv_patches_reproduce_the_convolution(kw):
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 16, 3, bias=True, **kw)
    x = torch.randn(2, 8, 9, 9)
    y = conv(x)
    cols = conv_patches(conv, x)  # [g, N*L, d]
    g = conv.groups
    w = conv.weight.reshape(g, 16 // g, -1)
    out = torch.einsum("gnd,god->gno", cols, w)  # [g, N*L, out/g]
    n, length = 2, y.shape[2] * y.shape[3]
    out = out.reshape(g, n, length, 16 // g).permute(1, 0, 3, 2).reshape(n, 16, y.shape[2], y.shape[3])
    assert torch.allclose(out + conv.bias.view(1, -1, 1, 1), y, atol=1e-5)


def test_conv_stats_are_per_group_and_match_unfold():
    torch.manual_seed(2)
    model = ToyCNN(width=8).eval()
    batches = [torch.randn(3, 1, 8, 8) for _ in range(4)]
    stats = collect_input_stats(model, batches, ["conv1", "conv2"])
    for name in ("conv1", "conv2"):
        conv = model.get_submodule(name)
        x = torch.cat([conv_patches(conv, t) for t in _captured_inputs(model, name, batches)], dim=1).double()
        s = stats[name]
        assert s.count == 4 * 3 * 64
        assert torch.allclose(s.xtx, x.transpose(1, 2) @ x, rtol=1e-5, atol=1e-5)
    dw = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4))
    s = collect_input_stats(dw, [torch.randn(2, 4, 5, 5)], ["0"])["0"]
    assert s.xtx.shape == (4, 9, 9) and s.count == 2 * 25


def test_dict_batches_use_only_unmasked_tokens():
    class Enc(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(20, 6)
            self.lin = nn.Linear(6, 4)

        def forward(self, input_ids, attention_mask):
            return self.lin(self.emb(input_ids))

    torch.manual_seed(3)
    enc = Enc().eval()
    ids = torch.randint(0, 20, (3, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    stats = collect_input_stats(enc, [{"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(3)}],
                                {"lin": enc.lin}, full=False)
    s = stats["lin"]
    x = enc.emb(ids)[mask.bool()].double().detach()
    assert s.count == 9 and s.xtx is None
    assert torch.allclose(s.sq_norms[0], (x * x).sum(0), atol=1e-10)


def test_errors_are_typed():
    model = ToyMLP()
    with pytest.raises(ConfigError):
        collect_input_stats(model, [torch.randn(2, 64)], ["act"])
    with pytest.raises(ConfigError):
        collect_input_stats(model, [torch.randn(2, 64)], ["nope"])
    with pytest.raises(DataError):
        collect_input_stats(model, [], ["fc1"])

    class Padded(nn.Conv2d):
        def forward(self, x):
            return super().forward(F.pad(x, (1, 1, 1, 1)))

    with pytest.raises(ConfigError):
        collect_input_stats(nn.Sequential(Padded(1, 2, 3)), [torch.randn(1, 1, 4, 4)], ["0"])


def test_output_error_matches_a_forward_pass():
    torch.manual_seed(4)
    lin = nn.Linear(12, 5)
    x = torch.randn(40, 12)
    s = collect_input_stats(nn.Sequential(lin), [x[:25], x[25:]], ["0"])["0"]
    w2 = lin.weight.detach() * (torch.rand_like(lin.weight) > 0.3)
    direct = ((x @ (lin.weight - w2).T) ** 2).sum() / (lin(x) ** 2).sum()
    assert s.output_error(lin.weight, w2, lin.bias) == pytest.approx(float(direct), rel=1e-5)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    xc = torch.randn(3, 4, 6, 6)
    sc = collect_input_stats(nn.Sequential(conv), [xc], ["0"])["0"]
    w3 = conv.weight.detach() * 0.5
    y, y3 = conv(xc), F.conv2d(xc, w3, conv.bias, padding=1, groups=2)
    direct = ((y - y3) ** 2).sum() / (y ** 2).sum()
    assert sc.output_error(conv.weight, w3, conv.bias) == pytest.approx(float(direct), rel=1e-5)


def test_layers_fed_the_same_tensor_get_the_same_statistics():
    class QKV(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4)

        def forward(self, x):
            h = self.q(x)
            x = x * 2  # a new tensor: v sees different inputs
            return h + self.k(x / 2), self.v(x)

    torch.manual_seed(6)
    m = QKV()
    xs = [torch.randn(5, 8) for _ in range(3)]
    st = collect_input_stats(m, xs, ["q", "k", "v"])
    x = torch.cat(xs).double()
    assert torch.allclose(st["q"].xtx[0], x.T @ x, rtol=1e-5, atol=1e-5)
    assert torch.allclose(st["k"].xtx[0], st["q"].xtx[0], rtol=1e-6, atol=1e-6)
    assert torch.allclose(st["v"].xtx[0], 4 * (x.T @ x), rtol=1e-5, atol=1e-5)


def test_layers_fed_same_shaped_tensors_in_turn_keep_their_own_statistics():
    # inverted-residual-like blocks: each 1x1 conv's input is freed before the next one of the same shape is
    # allocated, often at the same address; collecting all layers at once must equal collecting each alone
    torch.manual_seed(7)
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                   nn.ReLU()]
    m = nn.Sequential(*layers).eval()
    xs = [torch.randn(4, 8, 6, 6) for _ in range(2)]
    names = [str(i) for i in range(0, 20, 5)]
    together = collect_input_stats(m, xs, names)
    for n in names:
        alone = collect_input_stats(m, xs, [n])[n]
        assert torch.equal(together[n].xtx, alone.xtx), n
        assert torch.equal(together[n].sum, alone.sum), n
