"""slimkit.evaluation: metrics, cost, latency and the METRICS contract, checked with numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from models import ToyCNN, ToyMLP, ToyResNet
from torch import nn

from slimkit.config.recipe import LatencyConfig
from slimkit.errors import ConfigError, DataError
from slimkit.evaluation import (
    METRIC_KEYS,
    classification_metrics,
    count_macs,
    count_nonzero_params,
    count_params,
    evaluate_model,
    fidelity,
    file_size,
    measure_latency,
    sparsity,
    torch_latency,
)
from slimkit.evaluation.latency import batched, throughput

SCHEMA = Path(__file__).resolve().parents[1].parent / "shared" / "schemas" / "report.schema.json"


class Fixed(nn.Module):
    """Returns the logits it is given: predictions are fully controlled by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


def _handmade_loader() -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[int], list[int]]:
    y_true = [0, 0, 1, 1, 2, 2, 2, 1, 0, 2]
    y_pred = [0, 1, 1, 1, 2, 0, 2, 2, 0, 2]
    logits = torch.nn.functional.one_hot(torch.tensor(y_pred), 3).float()
    labels = torch.tensor(y_true)
    loader = [(logits[:4], labels[:4]), (logits[4:7], labels[4:7]), (logits[7:], labels[7:])]
    return loader, y_true, y_pred


def test_classification_metrics_equal_sklearn() -> None:
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    loader, y_true, y_pred = _handmade_loader()
    out = classification_metrics(Fixed(), loader)
    assert out["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred)) == pytest.approx(0.7)
    assert out["f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert out["precision"] == pytest.approx(precision_score(y_true, y_pred, average="macro"))
    assert out["recall"] == pytest.approx(recall_score(y_true, y_pred, average="macro"))


def test_metrics_restore_training_mode_and_reject_empty_loader() -> None:
    model = ToyCNN()
    model.train()
    model.bn1.eval()  # a per-module flag that must survive
    x = torch.randn(6, 1, 8, 8)
    classification_metrics(model, [(x, torch.zeros(6, dtype=torch.long))])
    assert model.training and model.conv1.training and not model.bn1.training
    with pytest.raises(DataError):
        classification_metrics(model, [])


def test_fidelity_identical_and_perturbed() -> None:
    a = ToyMLP()
    same = fidelity(a, a, a.example_inputs)
    assert same["cosine"] == pytest.approx(1.0) and same["cosine_min"] == pytest.approx(1.0)
    assert same["top1_agreement"] == 1.0
    b = ToyMLP()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.fc3.weight.add_(0.01 * torch.randn_like(b.fc3.weight))
    loader = [(torch.randn(8, 64), torch.zeros(8)) for _ in range(2)]
    near = fidelity(b, a, loader)
    assert 0.9 < near["cosine_min"] <= near["cosine"] < 1.0


def test_fidelity_on_dict_outputs_uses_last_hidden_state() -> None:
    class Enc(nn.Module):
        def __init__(self, scale: float) -> None:
            super().__init__()
            self.scale = scale

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"last_hidden_state": x * self.scale, "pooler_output": -x[:, 0]}

    x = torch.randn(3, 5, 4)
    out = fidelity(Enc(2.0), Enc(1.0), (x,))
    assert out["cosine"] == pytest.approx(1.0)
    assert out["top1_agreement"] is None  # 3-D embeddings: no class argmax


def test_params_and_nonzero_params_exact() -> None:
    model = ToyCNN()
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        model.conv2.weight.zero_()
    expected = sum(int((p != 0).sum()) for p in model.parameters())
    assert count_nonzero_params(model) == expected
    assert count_nonzero_params(model) == count_params(model) - model.conv2.weight.numel() - (16 + 32)  # BN biases start at 0


def test_macs_match_hand_computation() -> None:
    mlp = ToyMLP()
    assert count_macs(mlp, mlp.example_inputs) == 64 * 128 + 128 * 128 + 128 * 10
    cnn = ToyCNN()
    conv1 = 16 * 1 * 9 * 8 * 8
    conv2 = 32 * 16 * 9 * 8 * 8
    assert count_macs(cnn, cnn.example_inputs) == conv1 + conv2 + 32 * 10
    res = ToyResNet()
    hand = (8 * 9 * 64) + 2 * (8 * 8 * 9 * 64) + (16 * 8 * 9 * 16) + (16 * 16 * 9 * 16) + (16 * 8 * 16) + 16 * 10
    assert count_macs(res, res.example_inputs) == hand


def test_macs_do_not_mutate_model() -> None:
    model = ToyCNN().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, model.example_inputs)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched
    assert model.training
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_sparsity_after_zeroing_half_a_layer() -> None:
    model = ToyMLP()
    assert sparsity(model) == 0.0
    with torch.no_grad():
        model.fc2.weight[:64].zero_()
    total = 64 * 128 + 128 * 128 + 128 * 10
    assert sparsity(model) == pytest.approx(64 * 128 / total)
    with torch.no_grad():
        model.fc1.bias.zero_()  # biases are not counted
    assert sparsity(model) == pytest.approx(64 * 128 / total)
    assert sparsity(nn.Sequential(nn.ReLU())) is None


def test_file_size_file_dir_and_onnx_external_data(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.bin").write_bytes(b"x" * 100)
    (tmp_path / "d" / "b.bin").write_bytes(b"y" * 23)
    assert file_size(tmp_path / "d" / "a.bin") == 100
    assert file_size(tmp_path / "d") == 123
    (tmp_path / "m.onnx").write_bytes(b"not really onnx")
    (tmp_path / "m.onnx.data").write_bytes(b"z" * 1000)
    assert file_size(tmp_path / "m.onnx") == 15 + 1000
    with pytest.raises(ConfigError):
        file_size(tmp_path / "missing.onnx")


def test_measure_latency_median_p90_and_threads_restored() -> None:
    calls = []
    before = torch.get_num_threads()
    out = measure_latency(lambda: calls.append(torch.get_num_threads()), warmup=3, repeats=7, batch=4,
                          runtime="x", threads=1)
    assert len(calls) == 10 and set(calls) == {1}
    assert torch.get_num_threads() == before
    assert set(out) == {"median", "p90", "batch", "runtime"}
    assert 0 <= out["median"] <= out["p90"] and out["batch"] == 4 and out["runtime"] == "x"
    assert throughput(out) == pytest.approx(4 / (out["median"] / 1e3))


def test_torch_latency_uses_batch() -> None:
    seen = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.shape[0])
            return x

    out = torch_latency(Spy(), (torch.randn(1, 3),), LatencyConfig(batch=5, warmup=1, repeats=3, threads=1))
    assert seen == [5] * 4 and out["batch"] == 5 and out["median"] <= out["p90"]
    assert batched((torch.arange(2).reshape(2, 1),), 5)[0].reshape(-1).tolist() == [0, 1, 0, 1, 0]


def _metrics_schema() -> dict:
    if not SCHEMA.is_file():
        pytest.skip(f"schema not found at {SCHEMA}")
    schema = json.loads(SCHEMA.read_text())
    return {"$schema": schema.get("$schema"), "$defs": schema["$defs"], "$ref": "#/$defs/metrics"}


def test_evaluate_model_matches_report_schema(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = _metrics_schema()
    model = ToyCNN()
    loader = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(2)]
    artifact = tmp_path / "w.bin"
    artifact.write_bytes(b"0" * 321)
    out = evaluate_model(model, loader, example_inputs=model.example_inputs,
                         latency=LatencyConfig(warmup=1, repeats=3, threads=1), artifact=artifact,
                         run_dir=tmp_path, reference=ToyCNN())
    jsonschema.validate(json.loads(json.dumps(out)), schema)
    assert tuple(out) == METRIC_KEYS
    assert out["size_bytes"] == 321 and out["artifact"] == "w.bin"
    assert out["macs"] == 16 * 9 * 64 + 32 * 16 * 9 * 64 + 320
    assert out["latency_ms"]["batch"] == 1 and out["throughput"] > 0
    assert 0 <= out["accuracy"] <= 1 and set(out["fidelity"]) == {"cosine", "cosine_min", "top1_agreement"}


def test_evaluate_model_leaves_unmeasured_as_none() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    out = evaluate_model(ToyMLP())
    jsonschema.validate(out, _metrics_schema())
    assert out["params"] == count_params(ToyMLP())
    for key in ("accuracy", "f1", "fidelity", "macs", "size_bytes", "artifact", "latency_ms", "throughput"):
        assert out[key] is None, key
