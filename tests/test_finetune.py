"""The fine-tuning loop and the finetune pass, on Gaussian blobs through small MLPs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from models import ToyMLP
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import slimkit
from slimkit.config.finetune import FinetuneConfig
from slimkit.context import PassContext
from slimkit.errors import ConfigError, DataError
from slimkit.passes.finetune.loop import TrainResult, accuracy, resolve_amp, train_model
from slimkit.passes.prune.unstructured import magnitude_prune_
from slimkit.progress import use_reporter

D_IN, CLASSES = 16, 4


def blobs(n: int, seed: int, *, label_offset: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(1234)
    centers = torch.randn(CLASSES, D_IN, generator=g) * 2.0
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = centers[y] + torch.randn(n, D_IN, generator=g)
    return TensorDataset(x, y + label_offset)


def loader(n: int = 256, seed: int = 0, label_offset: int = 0) -> DataLoader:
    return DataLoader(blobs(n, seed, label_offset=label_offset), batch_size=32)


def mlp() -> ToyMLP:
    torch.manual_seed(0)
    return ToyMLP(d_in=D_IN, hidden=32, num_classes=CLASSES)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_learns_and_reports_history() -> None:
    model = mlp()
    val = loader(128, seed=1)
    before = accuracy(model, val)
    res = train_model(model, loader(), FinetuneConfig(epochs=3, lr=1e-2), val_loader=val)
    assert isinstance(res, TrainResult)
    assert res.epochs_run == 3 and not res.stopped_early
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.best_val_accuracy == max(h["val_accuracy"] for h in res.history) > max(before, 0.9)
    assert model.training  # mode restored (ToyMLP starts in train mode)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_optimizers_and_schedules_run(optimizer: str, schedule: str) -> None:
    model = mlp()
    cfg = FinetuneConfig(epochs=1, lr=1e-2, optimizer=optimizer, schedule=schedule, grad_clip=1.0,
                         max_steps_per_epoch=3, weight_decay=1e-4)
    res = train_model(model, loader(), cfg)
    assert res.epochs_run == 1 and res.best_val_accuracy is None and res.best_epoch == 1


def test_same_seed_same_weights() -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(D_IN, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, CLASSES))
    a, b, c = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    cfg = FinetuneConfig(epochs=2, lr=1e-2)
    train_model(a, loader(), cfg, seed=3)
    torch.manual_seed(999)  # the global RNG state before the call must not matter
    train_model(b, loader(), cfg, seed=3)
    train_model(c, loader(), cfg, seed=4)  # dropout draws differ
    assert same_weights(a, b)
    assert not same_weights(a, c)


def test_keep_sparsity_holds_zeros_and_off_lets_them_regrow() -> None:
    kept, free = mlp(), mlp()
    for m in (kept, free):
        magnitude_prune_(m, 0.6, "layer")
    zeros_before = {n: (p == 0) for n, p in kept.named_parameters() if n.endswith("weight")}
    train_model(kept, loader(), FinetuneConfig(epochs=2, lr=1e-2))
    train_model(free, loader(), FinetuneConfig(epochs=2, lr=1e-2, keep_sparsity=False))
    for name, p in kept.named_parameters():
        if name.endswith("weight"):
            assert torch.equal(p == 0, zeros_before[name]), name
    regrown = sum(int(((p != 0) & zeros_before[n]).sum()) for n, p in free.named_parameters()
                  if n.endswith("weight"))
    assert regrown > 0.5 * sum(int(z.sum()) for z in zeros_before.values())


def test_zero_initialized_layer_still_trains() -> None:
    model = mlp()
    magnitude_prune_(model, 0.5, "layer")
    with torch.no_grad():
        model.fc3.weight.zero_()
    train_model(model, loader(), FinetuneConfig(epochs=1, lr=1e-2))
    assert zeros_of(model.fc3.weight) < model.fc3.weight.numel() // 2  # all-zero head: not held
    assert zeros_of(model.fc1.weight) == model.fc1.weight.numel() // 2  # pruned layer: held


def zeros_of(t: torch.Tensor) -> int:
    return int((t == 0).sum())


def test_explicit_masks_win_and_are_checked() -> None:
    model = mlp()
    mask = torch.ones_like(model.fc2.weight, dtype=torch.bool)
    mask[:, :8] = False
    train_model(model, loader(), FinetuneConfig(epochs=1, lr=1e-2, keep_sparsity=False), masks={"fc2": mask})
    assert torch.count_nonzero(model.fc2.weight[:, :8]) == 0
    assert torch.count_nonzero(model.fc2.weight[:, 8:]) == model.fc2.weight[:, 8:].numel()
    with pytest.raises(ConfigError, match="shape"):
        train_model(model, loader(), FinetuneConfig(epochs=1), masks={"fc2": mask[:4]})
    with pytest.raises(ConfigError, match="nope"):
        train_model(model, loader(), FinetuneConfig(epochs=1), masks={"nope": mask})


def test_early_stopping_and_keep_best_restore_epoch_weights() -> None:
    # labels outside the model's classes: val accuracy is 0 every epoch, so it can never improve
    val = loader(64, seed=1, label_offset=CLASSES)
    cfg = FinetuneConfig(epochs=10, lr=1e-2, schedule="constant", patience=1)
    best = mlp()
    res = train_model(best, loader(), cfg, val_loader=val)
    assert res.stopped_early and res.epochs_run == 2 and res.best_epoch == 1
    assert res.best_val_accuracy == 0.0

    one_epoch = mlp()
    train_model(one_epoch, loader(), cfg.model_copy(update={"epochs": 1}), val_loader=val)
    last = mlp()
    train_model(last, loader(), cfg.model_copy(update={"keep_best": False}), val_loader=val)
    assert same_weights(best, one_epoch)  # restored to epoch 1
    assert not same_weights(best, last)  # epoch 2 moved the weights


def test_without_val_loader_no_early_stop() -> None:
    res = train_model(mlp(), loader(), FinetuneConfig(epochs=2, patience=1, max_steps_per_epoch=2))
    assert res.epochs_run == 2 and not res.stopped_early and res.best_epoch == 2


def test_amp_modes_on_cpu() -> None:
    model = mlp()
    assert resolve_amp(model, "auto").dtype is None  # fp32 on CPU
    assert resolve_amp(model, "bf16").dtype == torch.bfloat16
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="fp16"):
        train_model(model, loader(), FinetuneConfig(epochs=1, amp="fp16"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    res = train_model(model, loader(), FinetuneConfig(epochs=1, amp="bf16", max_steps_per_epoch=4))
    assert math.isfinite(res.history[0]["train_loss"])
    assert model.fc1.weight.dtype == torch.float32


def test_model_dtype_followed() -> None:
    model = mlp().double()
    magnitude_prune_(model, 0.5, "layer")
    res = train_model(model, loader(), FinetuneConfig(epochs=1, lr=1e-2), val_loader=loader(64, seed=1))
    assert model.fc1.weight.dtype == torch.float64 and res.history[0]["val_accuracy"] is not None
    assert float((model.fc1.weight == 0).float().mean()) >= 0.5


def test_progress_and_max_steps() -> None:
    events: list[tuple] = []

    class Task:
        def advance(self, n: int = 1) -> None:
            events.append(("advance", n))

        def update(self, **info: object) -> None:
            events.append(("update", info))

    class Reporter:
        def start(self, description: str, total: int | None) -> Task:
            events.append(("start", description, total))
            return Task()

        def finish(self, task: Task) -> None:
            events.append(("finish",))

    with use_reporter(Reporter()):
        train_model(mlp(), loader(), FinetuneConfig(epochs=2, max_steps_per_epoch=3),
                    val_loader=loader(32, seed=1), description="ft")
    assert events[0] == ("start", "ft", 6) and events[-1] == ("finish",)
    assert sum(1 for e in events if e[0] == "advance") == 6
    updates = [e[1] for e in events if e[0] == "update"]
    assert len(updates) == 2 and set(updates[0]) == {"loss", "val_acc"}


def test_custom_loss_fn_and_bad_batches() -> None:
    calls = []

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return model(x).pow(2).mean()

    train_model(mlp(), loader(), FinetuneConfig(epochs=1, max_steps_per_epoch=2), loss_fn=loss_fn)
    assert calls == [32, 32]
    with pytest.raises(DataError, match=r"\(x, y\)"):
        train_model(mlp(), [torch.randn(4, D_IN)], FinetuneConfig(epochs=1))
    with pytest.raises(DataError, match="no batches"):
        train_model(mlp(), [], FinetuneConfig(epochs=1))


def test_public_verb_and_pass_context() -> None:
    model = mlp()
    out = slimkit.finetune(model, loader(), slimkit.FinetuneConfig(epochs=1, lr=1e-2))
    assert out is model
    ctx = PassContext(train_loader=loader(), val_loader=loader(64, seed=1), seed=1)
    slimkit.apply_pass(model, slimkit.FinetuneConfig(epochs=1), ctx)
    assert isinstance(ctx.extras["train_result"], TrainResult)
    assert ctx.extras["train_result"].best_val_accuracy > 0.9
