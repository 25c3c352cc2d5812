"""Quantized checkpoints: packed weights on disk (real sizes), rebuild hooks, bit-exact reload."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.context import PassContext
from slimkit.exporters import export_model, load_model, load_state, save_model
from slimkit.exporters.safetensors_io import encoded_state
from slimkit.registry import spec_for
from tests.models import ToyCNN, ToyMLP

torch.set_num_threads(1)


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return ToyMLP(d_in=64, hidden=128).eval(), torch.randn(16, 64)


def _cnn() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    m = ToyCNN().eval()
    return m, torch.randn(8, *m.example_inputs[0].shape[1:])


def _build(factory, cfg):
    def build(_spec):
        torch.manual_seed(123)  # other random weights than the saved model: everything must come from the file
        m = factory()[0]
        rebuild = spec_for(cfg).rebuild
        assert rebuild is not None, f"{type(cfg).__name__} has no rebuild hook"
        return rebuild(m, cfg, json.loads((tmp / "manifest.json").read_text())) or m
    return build


def _weight_bytes(model: nn.Module) -> int:
    return sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d))


CASES = [
    ("ptq8", _cnn, sk.PTQConfig(), 0.25),
    ("ptq4", _cnn, sk.PTQConfig(weights=sk.Int(4, per_channel=True), activations=None), 0.125),
    ("ptq4-groups", _mlp, sk.PTQConfig(weights=sk.Int(4, group_size=32), activations=None), 0.125),
    ("log4", _mlp, sk.LogQuantConfig(bits=4), 0.125),
    ("binary", _mlp, sk.BinaryConfig(), 1 / 32),
    ("weight-only4", _mlp, sk.WeightOnlyConfig(bits=4, group_size=32), 0.125 + 5 / 32 / 4),
    ("weight-only8", _mlp, sk.WeightOnlyConfig(bits=8), 0.25),
    ("dynamic", _mlp, sk.DynamicConfig(), 0.25),
    ("fp16", _cnn, sk.FP16Config(), 0.5),
    ("bf16", _mlp, sk.BF16Config(), 0.5),
]


@pytest.mark.parametrize("name,factory,cfg,ratio", CASES, ids=[c[0] for c in CASES])
def test_quantized_checkpoint_is_small_and_reloads_exactly(tmp_path, name, factory, cfg, ratio):
    global tmp
    tmp = tmp_path / "ckpt"
    model, x = factory()
    fp32 = save_model(model, tmp_path / "fp32").stat().st_size
    q = sk.quantize_(copy.deepcopy(model), cfg, calibration=[x], example_inputs=(x[:1],))
    path = save_model(q, tmp, spec={"arch": name})
    size = path.stat().st_size
    weights = _weight_bytes(model)
    other = fp32 - weights  # biases, norms, header
    # the weights shrink to their bit width (plus scales); the rest of the file stays as it was
    assert size - other < weights * ratio * 1.35 + 2048, (size, fp32, weights)
    assert size < fp32 * (ratio + 0.2)
    loaded = load_model(tmp, _build(factory, cfg)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x)), (loaded(x) - q(x)).abs().max()
    manifest = json.loads((tmp / "manifest.json").read_text())
    if name.startswith(("ptq", "log", "binary")):
        assert {e["encoding"] for e in manifest["tensors"].values()} >= {"codec"}
    if name in ("fp16", "bf16"):
        dtypes = {e["dtype"] for k, e in manifest["tensors"].items() if k.endswith("weight")}
        assert ("float16" if name == "fp16" else "bfloat16") in dtypes


def test_encoded_state_matches_the_file_and_export_parity(tmp_path):
    model, x = _cnn()
    q = sk.quantize_(copy.deepcopy(model), sk.PTQConfig(weights=sk.Int(3, per_channel=True)), calibration=[x])
    res = export_model(q, tmp_path / "d")  # safetensors round trip is checked against the encoded state
    assert res["parity"]["ok"]
    loaded, expected = load_state(tmp_path / "d"), encoded_state(q)
    assert set(loaded) == set(expected) and all(torch.equal(loaded[k], expected[k]) for k in loaded)


def test_qat_checkpoint_rebuilds_learned_scales(tmp_path):
    global tmp
    tmp = tmp_path / "q"
    model, x = _cnn()
    y = torch.randint(0, 10, (x.shape[0],))
    cfg = sk.QATConfig(bits=4, finetune=sk.FinetuneConfig(epochs=1, lr=1e-3))
    q = spec_for(cfg).handler(copy.deepcopy(model).train(), cfg, PassContext(train_loader=[(x, y)])).eval()
    save_model(q, tmp)
    loaded = load_model(tmp, _build(_cnn, cfg)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
    assert torch.equal(loaded.conv1.weight_fake_quant.scale, q.conv1.weight_fake_quant.scale)
