"""slimkit.exporters: safetensors + manifest (compact sparse storage, rebuild of shrunk models) and ONNX
(dynamic batch, fp16, parity, failures), checked with numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from models import ToyCNN, ToyMLP, ToyResNet
from torch import nn

from slimkit.errors import ConfigError, ExportError, ModelLoadError
from slimkit.evaluation import evaluate_model, file_size
from slimkit.exporters import check_parity, export_model, export_onnx, load_model, load_state, save_model
from slimkit.exporters.manifest import module_shapes

# --- safetensors + manifest ---------------------------------------------------------------------------


def _states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_round_trip_exact_dense_and_sparse(tmp_path: Path) -> None:
    model = ToyCNN()
    with torch.no_grad():
        w = model.conv2.weight
        w[torch.rand_like(w) < 0.9] = 0.0
        model.fc.weight[0, 0] = -0.0  # sign of zero kept
    save_model(model, tmp_path / "m", spec={"arch": "toy_cnn"})
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["tensors"]["conv2.weight"] == {"encoding": "bitmask", "shape": [32, 16, 3, 3], "dtype": "float32"}
    assert manifest["tensors"]["conv1.weight"]["encoding"] == "dense"
    assert manifest["tensors"]["bn1.num_batches_tracked"]["dtype"] == "int64"
    assert manifest["spec"] == {"arch": "toy_cnn"} and manifest["format_version"] == 1
    assert manifest["module_shapes"]["conv2"]["out_channels"] == 32
    loaded = load_state(tmp_path / "m")
    assert _states_equal(model.state_dict(), loaded)
    assert torch.signbit(loaded["fc.weight"][0, 0])


def test_compact_storage_saves_bytes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    t = torch.randn(256, 256)
    t[torch.rand_like(t) < 0.9] = 0.0
    save_model({"w": t}, tmp_path / "sparse")
    save_model({"w": t}, tmp_path / "dense", compact=False)
    sparse, dense = file_size(tmp_path / "sparse" / "model.safetensors"), file_size(tmp_path / "dense" / "model.safetensors")
    assert sparse < 0.3 * dense, (sparse, dense)
    assert torch.equal(load_state(tmp_path / "sparse")["w"], t)


def test_tied_weights_stored_once(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.head = nn.Linear(16, 50, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.emb(x))

    model = Tied()
    save_model(model, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["tensors"]["head.weight"]["encoding"] == "alias"
    rebuilt = load_model(tmp_path, lambda spec: Tied())
    assert torch.equal(rebuilt.emb.weight, model.emb.weight)


class _Same(nn.Conv2d):
    """A Conv2d subclass (like timm's Conv2dSame): rebuilding must keep the class."""


def _shrunk_cnn() -> ToyCNN:
    model = ToyCNN()
    keep = torch.tensor([0, 2, 3, 5, 7, 11, 13, 17, 19, 23])  # 10 of 32 channels
    conv2 = _Same(16, 10, 3, padding=1, bias=False)
    bn2 = nn.BatchNorm2d(10)
    fc = nn.Linear(10, 10)
    with torch.no_grad():
        conv2.weight.copy_(model.conv2.weight[keep])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn2, name).copy_(getattr(model.bn2, name)[keep] + 0.1)
        fc.weight.copy_(model.fc.weight[:, keep])
        fc.bias.copy_(model.fc.bias)
    model.conv2, model.bn2, model.fc = conv2, bn2, fc
    return model.eval()


def _build(spec: dict) -> nn.Module:
    model = ToyCNN(**spec.get("kwargs", {}))
    model.conv2 = _Same(16, 32, 3, padding=1, bias=False)
    return model


def test_manifest_rebuilds_structurally_pruned_model(tmp_path: Path) -> None:
    model = _shrunk_cnn()
    save_model(model, tmp_path, spec={"kwargs": {"width": 16}})
    shapes = module_shapes(model)
    assert shapes["conv2"]["out_channels"] == 10 and shapes["fc"]["in_features"] == 10
    rebuilt = load_model(tmp_path, _build).eval()
    assert type(rebuilt.conv2) is _Same and rebuilt.conv2.out_channels == 10
    assert rebuilt.bn2.num_features == 10 and rebuilt.fc.in_features == 10
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(rebuilt(x), model(x))


def test_truncated_or_tampered_file_raises(tmp_path: Path) -> None:
    save_model(ToyMLP(), tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        load_state(tmp_path)
    with pytest.raises(ModelLoadError):
        load_state(tmp_path, verify=False)  # safetensors itself refuses the truncated file
    tampered = bytearray(data)
    tampered[-1] ^= 0xFF
    weights.write_bytes(bytes(tampered))
    with pytest.raises(ModelLoadError, match="checksum"):
        load_state(tmp_path)
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "nowhere", lambda spec: ToyMLP())


def test_wrong_architecture_raises(tmp_path: Path) -> None:
    save_model(ToyCNN(), tmp_path)
    with pytest.raises(ModelLoadError):
        load_model(tmp_path, lambda spec: ToyMLP())


def test_export_model_directory_size_equals_getsize(tmp_path: Path) -> None:
    model = ToyMLP()
    out = export_model(model, tmp_path / "st", example_inputs=model.example_inputs)
    assert out["artifact"] == tmp_path / "st" / "model.safetensors"
    assert out["size_bytes"] == os.path.getsize(out["artifact"])
    assert out["parity"]["ok"]


# --- ONNX ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ToyMLP, ToyCNN, ToyResNet])
def test_onnx_matches_torch_at_batch_1_and_5(tmp_path: Path, cls: type[nn.Module]) -> None:
    model = cls()
    with torch.no_grad():  # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    out = export_model(model, tmp_path / "m.onnx", example_inputs=model.example_inputs)
    assert model.training and _states_equal(before, model.state_dict())  # not mutated
    assert out["size_bytes"] == os.path.getsize(tmp_path / "m.onnx")  # weights inline, one file
    assert not (tmp_path / "m.onnx.data").exists()
    assert out["parity"]["ok"] and out["parity"]["max_abs_diff"] < 1e-4
    x1 = model.example_inputs
    x5 = (torch.randn(5, *x1[0].shape[1:]),)
    for x in (x1, x5):
        p = check_parity(model, tmp_path / "m.onnx", x, atol=1e-4, rtol=0)
        assert p["ok"] and p["max_abs_diff"] < 1e-4 and p["cosine"] > 0.99999


def test_onnx_fp16_runs_and_matches(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = ToyCNN()
    out = export_model(model, tmp_path / "m16.onnx", example_inputs=model.example_inputs, precision="fp16")
    assert out["parity"]["ok"] and out["parity"]["max_abs_diff"] < 1e-2
    sess = ort.InferenceSession(str(tmp_path / "m16.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(float16)"
    x = torch.randn(5, 1, 8, 8)
    got = sess.run(None, {sess.get_inputs()[0].name: x.half().numpy()})[0]
    assert float((torch.from_numpy(got).float() - model.eval()(x).detach()).abs().max()) < 1e-2
    assert model.conv1.weight.dtype == torch.float32  # the user's model stays fp32


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if y.sum() > 0:  # Python control flow on a tensor value
            return y * 2
        return y - 1


def test_unexportable_model_raises_export_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="y.sum"):
        export_onnx(_DataDependent(), tmp_path / "bad.onnx", (torch.randn(1, 4),))
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_fallback_to_torchscript_exporter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import slimkit.exporters.onnx_export as onnx_export

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("dynamo unavailable")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    model = ToyCNN()
    out = export_model(model, tmp_path / "ts.onnx", example_inputs=model.example_inputs)
    assert out["parity"]["ok"] and out["parity"]["max_abs_diff"] < 1e-4  # includes a batch of 3


def test_int8_needs_a_quantizer_and_hook_is_called(tmp_path: Path) -> None:
    model = ToyMLP()
    with pytest.raises(ConfigError, match="quantize"):
        export_model(model, tmp_path / "q.onnx", example_inputs=model.example_inputs, precision="int8")
    calls = []

    def fake_quantizer(src: Path, dst: Path, example_inputs: tuple) -> Path:
        calls.append(src.name)
        dst.write_bytes(src.read_bytes())
        return dst

    out = export_model(model, tmp_path / "q.onnx", example_inputs=model.example_inputs, precision="int8",
                       quantize=fake_quantizer)
    assert calls == ["q.fp32.onnx"] and not (tmp_path / "q.fp32.onnx").exists()
    assert out["parity"]["ok"]


def test_evaluate_onnx_artifact(tmp_path: Path) -> None:
    model = ToyMLP()
    export_onnx(model, tmp_path / "m.onnx", model.example_inputs)
    loader = [(torch.randn(6, 64), torch.randint(0, 10, (6,)))]
    from_torch = evaluate_model(model, loader)
    from_onnx = evaluate_model(tmp_path / "m.onnx", loader, run_dir=tmp_path)
    assert from_onnx["accuracy"] == from_torch["accuracy"]
    assert from_onnx["artifact"] == "m.onnx" and from_onnx["size_bytes"] == os.path.getsize(tmp_path / "m.onnx")
    assert from_onnx["params"] == from_torch["params"] and from_onnx["macs"] is None


def test_ort_int8_config_goes_through_the_quantization_hook(tmp_path: Path) -> None:
    quantize_ort = pytest.importorskip("slimkit.config.quantize_ort")
    model = ToyMLP()
    fp32 = export_model(model, tmp_path / "m.onnx", example_inputs=model.example_inputs)
    cfg = quantize_ort.OrtInt8Config(mode="dynamic", parity_min_top1=None, parity_min_cosine=0.9)
    out = export_model(model, tmp_path / "q.onnx", example_inputs=model.example_inputs, quantize=cfg)
    assert out["size_bytes"] == os.path.getsize(tmp_path / "q.onnx") < 0.5 * fp32["size_bytes"]
    assert out["parity"]["cosine"] > 0.9
