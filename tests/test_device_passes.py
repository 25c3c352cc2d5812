"""Every registered pass on a model that lives on a CUDA device (issue 15 item 7): it runs there, leaves every
parameter and buffer there, and computes what the same pass computes on CPU (outputs close, the same
sparsity). On a CPU-only machine the CUDA cases skip with the reason; the table of cases is checked against the
registry everywhere, so a new pass cannot go untested on the GPU."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from models import ToyCNN
from torch import nn

import slimkit as sk
from slimkit import registry

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device (torch.cuda.is_available() is False)")

CASES: dict[str, Callable[[], Any]] = {
    "DistillConfig": lambda: sk.DistillConfig(epochs=1),
    "FeatureDistillConfig": lambda: sk.FeatureDistillConfig(epochs=1, features=[{"student": "conv2", "teacher": "conv2"}]),
    "MutualDistillConfig": lambda: sk.MutualDistillConfig(epochs=1),
    "FinetuneConfig": lambda: sk.FinetuneConfig(epochs=1, lr=0.01),
    "SVDConfig": lambda: sk.SVDConfig(rank_ratio=0.5),
    "NMSparsityConfig": lambda: sk.NMSparsityConfig(),
    "MagnitudePruneConfig": lambda: sk.MagnitudePruneConfig(sparsity=0.5),
    "WandaPruneConfig": lambda: sk.WandaPruneConfig(sparsity=0.5),
    "SparseGPTConfig": lambda: sk.SparseGPTConfig(sparsity=0.5),
    "StructuredPruneConfig": lambda: sk.StructuredPruneConfig(ratio=0.25),
    "PostTrainPruneConfig": lambda: sk.PostTrainPruneConfig(target_macs=0.75),
    "WeightOnlyConfig": lambda: sk.WeightOnlyConfig(),
    "DynamicConfig": lambda: sk.DynamicConfig(),
    "PrecisionConfig": lambda: sk.PrecisionConfig(),
    "FP16Config": lambda: sk.FP16Config(),
    "BF16Config": lambda: sk.BF16Config(),
    "PTQConfig": lambda: sk.PTQConfig(),
    "LogQuantConfig": lambda: sk.LogQuantConfig(),
    "BinaryConfig": lambda: sk.BinaryConfig(),
    # QAT steps from a random start are chaotic (1e-3 input noise moves its output by 1.2 on CPU alone): a tiny
    # lr keeps its observers, fake quantizers and STE backward under test without amplifying TF32 differences
    "QATConfig": lambda: sk.QATConfig(finetune={"epochs": 1, "lr": 1e-6}),
}
TRAINING = {"DistillConfig", "FeatureDistillConfig", "MutualDistillConfig", "FinetuneConfig", "QATConfig"}
HALF = {"PrecisionConfig", "FP16Config", "BF16Config"}


def test_every_registered_pass_has_a_device_case():
    assert {s.config_cls.__name__ for s in registry.all_specs()} == set(CASES)


def _batches(device: str, labels: bool, n: int = 4) -> list[Any]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
        out.append((x.to(device), y.to(device)) if labels else x.to(device))
    return out


def _compressed(name: str, device: str) -> nn.Module:
    torch.manual_seed(0)
    model = ToyCNN()
    with torch.no_grad():  # trained-like BatchNorm statistics, drawn on CPU: the same on both devices
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    model = model.to(device)
    return registry.apply_pass(model, CASES[name](), example_inputs=(torch.randn(2, 1, 8, 8).to(device),),
                               calibration=_batches(device, False), train_loader=_batches(device, True),
                               teacher=copy.deepcopy(model), num_classes=10, seed=0)


def _out(model: nn.Module, device: str) -> torch.Tensor:
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(2)).to(device)
    with torch.no_grad():
        return model.eval()(x).float().cpu()


def _zeros(model: nn.Module) -> float:
    ws = [m.weight.detach() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    ws = [w for w in ws if type(w) is torch.Tensor]  # packed int8 tensor subclasses are not counted
    return sum(int((w == 0).sum()) for w in ws) / max(1, sum(w.numel() for w in ws))


def _devices(model: nn.Module) -> set[str]:
    return {t.device.type for t in itertools.chain(model.parameters(), model.buffers())}


@needs_cuda
@pytest.mark.parametrize("name", sorted(CASES))
def test_pass_on_a_cuda_model_matches_cpu(name: str) -> None:
    try:
        gpu = _compressed(name, "cuda")
    except sk.errors.SlimkitError as exc:  # a pass that cannot run on CUDA must say so with the fix
        assert exc.hint, f"{name} refused CUDA without a hint: {exc}"
        pytest.skip(f"{name} refuses CUDA: {exc.message} ({exc.hint})")
    assert _devices(gpu) == {"cuda"}, f"{name} moved tensors off the GPU: {_devices(gpu)}"
    cpu = _compressed(name, "cpu")
    yg, yc = _out(gpu, "cuda"), _out(cpu, "cpu")
    assert torch.isfinite(yg).all()
    rel = float((yg - yc).norm() / yc.norm().clamp_min(1e-12))
    # training passes take the same steps from the same start; half precision rounds differently per device
    limit = 0.15 if name in TRAINING else 0.05 if name in HALF else 0.02
    assert rel <= limit, f"{name}: CUDA output differs from CPU by {rel:.4f} (limit {limit})"
    assert _zeros(gpu) == pytest.approx(_zeros(cpu), abs=0.01)
