"""One batch convention (slimkit.data.batch): the splitting rules, and the same numbers whether a loader yields
(x, y) tuples or Hugging Face style dicts, through evaluation, fine-tuning, PTQ calibration and ORT feeds."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from models import ToyMLP
from torch import nn

import slimkit as sk
from slimkit.data.batch import call_model, positional_inputs, split_batch
from slimkit.errors import DataError
from slimkit.evaluation.metrics import classification_metrics, fidelity
from slimkit.exporters.int8_parity import batch_arrays
from slimkit.passes.finetune.loop import train_model


def test_split_rules() -> None:
    x, y = torch.randn(4, 3), torch.arange(4)
    assert split_batch(x) == (x, None)
    for batch in ((x, y), [x, y]):
        got = split_batch(batch)
        assert got[0] is x and got[1] is y
    assert split_batch((x,)) == (x, None)
    inputs, target = split_batch(((x, x), y))
    assert isinstance(inputs, tuple) and len(inputs) == 2 and target is y
    ids, mask = torch.ones(4, 5, dtype=torch.long), torch.ones(4, 5)
    inputs, target = split_batch({"input_ids": ids, "attention_mask": mask, "labels": y})
    assert set(inputs) == {"input_ids", "attention_mask"} and target is y
    assert split_batch({"x": x, "y": y})[0] is x
    assert split_batch({"input": x})[0] is x
    assert split_batch({"input_ids": ids}) == ({"input_ids": ids}, None)


def test_split_errors() -> None:
    x = torch.randn(2, 3)
    with pytest.raises(DataError, match="labelled batch"):
        split_batch(x, labelled=True)
    with pytest.raises(DataError, match="labelled batch"):
        split_batch({"input_ids": x}, labelled=True)
    with pytest.raises(DataError, match="length 3"):
        split_batch((x, x, x))
    with pytest.raises(DataError, match="no model input"):
        split_batch({"labels": x})


class Keyword(nn.Module):
    """A model called with keywords, as Hugging Face models are."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, features: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.relu(self.fc1(features))
        return self.fc2(h if scale is None else h * scale)


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def test_call_model_keywords_and_positions() -> None:
    m = Keyword()
    x = torch.randn(2, 8)
    ref = m(x)
    assert torch.equal(call_model(m, {"features": x}), ref)
    assert torch.equal(call_model(m, (x,)), ref)
    assert torch.equal(call_model(m, x), ref)


def test_dict_and_tuple_batches_give_the_same_numbers() -> None:
    x, y = _data()
    tuples = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    dicts = [{"features": a, "labels": b} for a, b in tuples]
    torch.manual_seed(0)
    m = Keyword()
    a, b = copy.deepcopy(m), copy.deepcopy(m)

    class Pos(nn.Module):  # the same model called positionally, for the tuple batches
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.inner(features)

    ra = train_model(Pos(a), tuples, sk.FinetuneConfig(epochs=2, lr=0.05, optimizer="sgd", amp="off"), seed=3)
    rb = train_model(b, dicts, sk.FinetuneConfig(epochs=2, lr=0.05, optimizer="sgd", amp="off"), seed=3)
    assert ra.history[-1]["train_loss"] == pytest.approx(rb.history[-1]["train_loss"], rel=1e-6)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    acc_t = classification_metrics(Pos(a), tuples)
    acc_d = classification_metrics(b, dicts)
    assert acc_t == pytest.approx(acc_d) and 0 <= acc_d["accuracy"] <= 1
    f = fidelity(b, copy.deepcopy(b), dicts)
    assert f["cosine"] == pytest.approx(1.0) and f["top1_agreement"] == 1.0


def test_ptq_calibrates_on_dict_batches() -> None:
    x, y = _data()
    m = Keyword().eval()
    dicts = [{"features": x[i:i + 16], "labels": y[i:i + 16]} for i in range(0, 64, 16)]
    tuples = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    qa = sk.quantize_(copy.deepcopy(m), sk.PTQConfig(), calibration=dicts)
    qb = sk.quantize_(copy.deepcopy(m), sk.PTQConfig(), calibration=[b[0] for b in tuples])
    torch.testing.assert_close(qa(x), qb(x))  # same observers, same scales
    assert not torch.equal(qa(x), m(x))  # and it did quantize


def test_onnx_feeds_follow_the_convention() -> None:
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    for batch in (x, (x, y), (x,), {"x": x, "labels": y}):
        arrays = batch_arrays(batch)
        assert len(arrays) == 1 and np.array_equal(arrays[0], x.numpy())
    ids = torch.ones(2, 4, dtype=torch.long)
    arrays = batch_arrays({"input_ids": ids, "attention_mask": ids, "labels": y})
    assert len(arrays) == 2 and arrays[0].dtype == np.int64


def test_evaluate_uses_the_convention() -> None:
    m = ToyMLP(d_in=8, hidden=16, num_classes=3).eval()
    x, y = _data()
    res = sk.evaluate(m, [{"x": x, "labels": y}], example_inputs=(x[:1],))
    ref = sk.evaluate(m, [(x, y)], example_inputs=(x[:1],))
    assert res["accuracy"] == ref["accuracy"]


def test_positional_inputs_follow_forward_order_or_refuse():
    class Two(torch.nn.Module):
        def forward(self, input_ids, attention_mask, token_type_ids=None):
            return input_ids

    ids, mask = torch.ones(2, 3), torch.zeros(2, 3)
    got = positional_inputs(Two(), {"attention_mask": mask, "input_ids": ids})
    assert got is not None and got[0] is ids and got[1] is mask
    assert positional_inputs(Two(), {"input_ids": ids}) == (ids,)
    assert positional_inputs(Two(), {"attention_mask": mask}) is None  # not the first parameter
    assert positional_inputs(Two(), {"input_ids": ids, "pixel_values": mask}) is None
