"""Quantizer math: SQNR floors per bit width, per-channel vs per-tensor, log vs linear, binary exactness."""

from __future__ import annotations

import pytest
import torch

from slimkit.passes.quantize import qscheme as qs


def _gauss(rows: int = 64, cols: int = 256) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(rows, cols)


def _per_tensor(w: torch.Tensor, bits: int) -> torch.Tensor:
    s, z = qs.compute_qparams(w.min(), w.max(), bits, symmetric=True)
    return qs.fake_quantize(w, s, z, *qs.qrange(bits, True))


def _per_channel(w: torch.Tensor, bits: int) -> torch.Tensor:
    s, z = qs.per_channel_qparams(w, bits)
    return qs.fake_quantize(w, s, z, *qs.qrange(bits, True), axis=0)


# Floors from the textbook 6.02 b + 1.76 dB minus a margin: Gaussian weights quantized at their extreme value
# lose ~10-13 dB per tensor (the max of 16k samples is ~4 sigma) and ~7-9 dB per channel (256 samples).
@pytest.mark.parametrize("bits", [3, 4, 5, 6, 8])
def test_sqnr_floors_linear(bits: int) -> None:
    w = _gauss()
    theory = qs.theoretical_sqnr_db(bits)
    assert qs.sqnr_db(w, _per_tensor(w, bits)) > theory - 13.5
    assert qs.sqnr_db(w, _per_channel(w, bits)) > theory - 10.5


def test_sqnr_named_floors() -> None:
    w = _gauss()
    assert qs.sqnr_db(w, _per_tensor(w, 8)) > 35.0
    assert qs.sqnr_db(w, _per_channel(w, 8)) > 40.0
    assert qs.sqnr_db(w, _per_channel(w, 4)) > 17.0
    s, z = qs.group_qparams(w, 32, 4)
    assert qs.sqnr_db(w, qs.fake_quantize_groups(w, s, z, *qs.qrange(4, True), 32)) > 19.5


def test_per_channel_beats_per_tensor_on_varied_scales() -> None:
    w = _gauss() * torch.logspace(-2, 1, 64)[:, None]
    for bits in (4, 8):
        pc, pt = _per_channel(w, bits), _per_tensor(w, bits)
        assert qs.sqnr_db(w, pc) > qs.sqnr_db(w, pt) + 5  # whole tensor
        row_pc = sum(qs.sqnr_db(w[i], pc[i]) for i in range(64)) / 64
        row_pt = sum(min(qs.sqnr_db(w[i], pt[i]), 100.0) for i in range(64)) / 64
        assert row_pc > row_pt + 10  # small channels are where per-tensor fails


def test_log_beats_linear_on_heavy_tails() -> None:
    torch.manual_seed(0)
    w = torch.distributions.StudentT(3.0).sample((64, 256))
    lin = qs.sqnr_db(w, _per_channel(w, 4))
    log = qs.sqnr_db(w, qs.log_fake_quantize(w, qs.log_scale(w), 4))
    assert log > lin + 2.0


def test_log_levels_are_signed_powers_of_two() -> None:
    w = _gauss(8, 64)
    s = qs.log_scale(w)
    wq = qs.log_fake_quantize(w, s, 4)
    ratio = (wq.abs() / s[:, None])[wq != 0]
    k = -torch.log2(ratio)
    assert torch.allclose(k, k.round()) and k.max() <= qs.log_levels(4) - 1 and k.min() >= 0
    assert torch.equal(torch.sign(wq[wq != 0]), torch.sign(w[wq != 0]))
    codes = qs.log_quantize(w, s, 4)
    assert int(codes.max()) < 16
    assert torch.equal(qs.log_dequantize(codes, s, 4), wq)
    assert qs.log_fake_quantize(torch.zeros(2, 3), torch.ones(2), 4).abs().sum() == 0


def test_binary_is_exactly_plus_minus_scale() -> None:
    w = _gauss(16, 32)
    w[0, 0] = 0.0
    s = qs.binary_scale(w)
    assert torch.allclose(s, w.abs().mean(1))
    wb = qs.binarize(w, s)
    for c in range(16):
        assert set(wb[c].unique().tolist()) <= {s[c].item(), -s[c].item()}
    assert wb[0, 0] == s[0]


def test_zero_is_exactly_representable() -> None:
    for lo, hi in [(-0.3, 2.7), (0.1, 5.0), (-4.0, -1.0), (-1.3, 1.3)]:
        for bits in (2, 4, 8):
            for sym, uns in [(True, False), (False, False), (False, True)]:
                s, z = qs.compute_qparams(torch.tensor(lo), torch.tensor(hi), bits, sym, uns)
                assert z == z.round()
                assert qs.fake_quantize(torch.zeros(3), s, z, *qs.qrange(bits, sym, uns)).abs().sum() == 0


def test_quantize_dequantize_roundtrip_and_dtypes() -> None:
    x = torch.linspace(-1, 1, 101)
    s, z = qs.compute_qparams(x.min(), x.max(), 8, symmetric=False, unsigned=True)
    q = qs.quantize(x, s, z, 0, 255)
    assert q.dtype == torch.uint8
    assert torch.allclose(qs.dequantize(q, s, z), qs.fake_quantize(x, s, z, 0, 255))
    assert (qs.dequantize(q, s, z) - x).abs().max() <= s / 2 + 1e-6
    assert qs.quantize(x, *qs.compute_qparams(x.min(), x.max(), 8, True), -127, 127).dtype == torch.int8


def test_sqnr_of_identity_is_inf() -> None:
    x = torch.randn(10)
    assert qs.sqnr_db(x, x) == float("inf")
    with pytest.raises(ValueError):
        qs.to_groups(torch.randn(4, 30), 32)
