"""The structured-pruning bench's deployment path (bench/prune_resnet.py): round_to=16 keeps every pruned conv a
multiple of 16 channels, and BatchNorm folding after pruning is exact in eval, in both memory formats."""

from __future__ import annotations

import copy

import torch
from torch import nn

import slimkit as sk
from slimkit.models.zoo.resnet import resnet_fmnist
from slimkit.passes.prune.structured import count_macs
from slimkit.passes.quantize.ptq import fold_bn


def _pruned(round_to: int) -> tuple[nn.Module, nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    base = resnet_fmnist(10, in_channels=1, width=32)
    for m in base.modules():  # non-trivial BN statistics, so folding has something to fold
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    base.eval()
    x = (torch.randn(1, 1, 28, 28),)
    pruned = copy.deepcopy(base)
    sk.prune_(pruned, sk.StructuredPruneConfig(target_macs=0.5, importance="l2", round_to=round_to),
              example_inputs=x)
    return base, pruned.eval(), x


def test_round_to_16_gives_multiples_of_16() -> None:
    base, pruned, x = _pruned(16)
    widths = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert widths and all(w % 16 == 0 for w in widths), widths
    assert widths != [m.out_channels for m in base.modules() if isinstance(m, nn.Conv2d)]
    ratio = count_macs(pruned, x) / count_macs(base, x)
    assert 0.35 < ratio < 0.6, ratio


def test_fold_bn_after_pruning_is_exact_in_both_memory_formats() -> None:
    _, pruned, _ = _pruned(16)
    xb = torch.randn(4, 1, 28, 28)
    with torch.inference_mode():
        ref = pruned(xb)
    folded = copy.deepcopy(pruned)
    pairs = fold_bn(folded)
    assert len(pairs) == sum(isinstance(m, nn.BatchNorm2d) for m in pruned.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    cl = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = folded(xb)
        out_cl = cl(xb.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_cl, ref, rtol=1e-4, atol=1e-4)
