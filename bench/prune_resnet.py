"""Structured pruning benchmark: a small ResNet on Fashion-MNIST pruned to 2x fewer MACs, fine-tuned, with
every importance criterion and Torch-Pruning at the same budget, all in one run; plus MiniLM with 50% of
heads and 50% of FFN width removed (cosine fidelity of embeddings and latency).

    .venv/bin/python bench/prune_resnet.py            # full
    .venv/bin/python bench/prune_resnet.py --quick    # smoke test (small data, 1 epoch, two criteria)
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, machine_info, ort_latency_ms, torch_latency_ms, write_result  # noqa: E402

import slimkit as sk  # noqa: E402
from slimkit.models.zoo import resnet_tiny  # noqa: E402
from slimkit.passes.prune.structured import count_macs  # noqa: E402


def data(n_train: int, n_test: int) -> tuple[list, list]:
    from slimkit.data.fashion_mnist import fashion_mnist_arrays

    arr = fashion_mnist_arrays()

    def prep(x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - 0.286) / 0.353

    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(arr["train_y"]), generator=g)[:n_train]
    xtr, ytr = prep(arr["train_x"][idx]), arr["train_y"][idx]
    xte, yte = prep(arr["test_x"][:n_test]), arr["test_y"][:n_test]
    train = [(xtr[i:i + 128], ytr[i:i + 128]) for i in range(0, len(ytr), 128)]
    test = [(xte[i:i + 256], yte[i:i + 256]) for i in range(0, len(yte), 256)]
    return train, test


def train(model: torch.nn.Module, loader: list, epochs: int, lr: float = 2e-3) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    steps = max(1, epochs * len(loader))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: list) -> float:
    model.eval()
    right = total = 0
    for x, y in loader:
        right += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return round(right / total, 4)


def measure(model: torch.nn.Module, x: tuple, threads: int, workdir: Path, tag: str) -> dict[str, Any]:
    from slimkit.exporters import export_onnx

    lat = {"b1": torch_latency_ms(model, x, batch=1, threads=threads),
           "b32": torch_latency_ms(model, x, batch=32, threads=threads)}
    path = export_onnx(model, workdir / f"{tag}.onnx", x)
    lat["ort_b1"] = ort_latency_ms(path, x, batch=1, threads=threads)
    lat["ort_b32"] = ort_latency_ms(path, x, batch=32, threads=threads)
    return {"latency_ms": lat, "size_bytes": path.stat().st_size}


def tp_prune(model: torch.nn.Module, x: tuple, target: float) -> torch.nn.Module:
    """Torch-Pruning (MagnitudeImportance, L2, same 50% MACs budget; ratio found by bisection)."""
    import torch_pruning as tp

    base = count_macs(model, x)
    lo, hi, best = 0.0, 0.9, None
    for _ in range(12):
        mid = (lo + hi) / 2
        m = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(m, x[0], importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=mid, ignored_layers=[m.fc])
        pruner.step()
        r = count_macs(m, x) / base
        if best is None or abs(r - target) < abs(best[0] - target):
            best = (r, m)
        if abs(r - target) < 0.01:
            break
        lo, hi = (mid, hi) if r > target else (lo, mid)
    assert best is not None
    return best[1]


def minilm_rows(threads: int) -> list[dict[str, Any]]:
    from transformers import AutoTokenizer

    from slimkit.models.zoo import load_minilm, minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    sents = ["A man is playing a guitar.", "The weather is lovely today.", "Structured pruning removes heads.",
             "Cats sleep most of the day.", "The stock market fell sharply.", "She reads a book in the park.",
             "Quantum computers use qubits.", "He cooked pasta for dinner."]
    enc = tok(sents, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    x = (enc["input_ids"], enc["attention_mask"])
    base = load_minilm().eval()
    pruned = copy.deepcopy(base)
    sk.prune_(pruned, sk.StructuredPruneConfig(ratio=0.5), example_inputs=(x[0][:1], x[1][:1]))

    @torch.no_grad()
    def embed(m: torch.nn.Module) -> torch.Tensor:
        h = m(*x).last_hidden_state
        mask = x[1].unsqueeze(-1).float()
        return F.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)

    cos = F.cosine_similarity(embed(base), embed(pruned))
    rows = []
    for variant, m in (("minilm-fp32", base), ("minilm-heads50-ffn50", pruned)):
        ex = (x[0][:1], x[1][:1])
        lat = {"b1_s32": torch_latency_ms(m, ex, batch=1, threads=threads),
               "b8_s32": torch_latency_ms(m, ex, batch=8, threads=threads)}
        q = {"cosine": 1.0, "cosine_min": 1.0} if m is base else {"cosine": round(float(cos.mean()), 4),
                                                                  "cosine_min": round(float(cos.min()), 4)}
        rows.append({"system": "slimkit", "variant": variant, "size_bytes": None, "latency_ms": lat, "quality": q,
                     "params": sum(p.numel() for p in m.parameters()), "macs": count_macs(m, ex),
                     "notes": "no fine-tuning; mean-pooled sentence embeddings vs the unpruned model"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-minilm", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n_train, n_test, epochs, ft = (3000, 1000, 1, 1) if args.quick else (60000, 10000, 6, 3)
    criteria = ["l2", "taylor"] if args.quick else ["l1", "l2", "bn_scale", "taylor", "entropy"]
    train_dl, test_dl = data(n_train, n_test)
    x = (torch.randn(1, 1, 28, 28),)
    base = resnet_tiny(10, in_channels=1, width=32)
    t0 = time.time()
    train(base, train_dl, epochs)
    base_macs = count_macs(base, x)
    rows = []
    notes = f"ResNet-style (BasicBlock x4, width 32), {n_train} train images, {epochs} epochs"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows.append({"system": "torch", "variant": "fp32", "quality": {"accuracy": accuracy(base, test_dl)},
                     "macs": base_macs, "params": sum(p.numel() for p in base.parameters()), "notes": notes,
                     **measure(base, x, args.threads, work, "base")})
        for crit in criteria:
            m = copy.deepcopy(base)
            calib = train_dl[:4]
            sk.prune_(m, sk.StructuredPruneConfig(target_macs=0.5, importance=crit, round_to=8), example_inputs=x,
                      calibration=calib)
            acc0 = accuracy(m, test_dl)
            train(m, train_dl, ft, lr=1e-3)
            rows.append({"system": "slimkit", "variant": f"pruned-2x-{crit}",
                         "quality": {"accuracy": accuracy(m, test_dl), "accuracy_before_finetune": acc0},
                         "macs": count_macs(m, x), "params": sum(p.numel() for p in m.parameters()),
                         "notes": f"target_macs=0.5, round_to=8, fine-tuned {ft} epoch(s)",
                         **measure(m, x, args.threads, work, crit)})
        try:
            m = tp_prune(base, x, 0.5)
            acc0 = accuracy(m, test_dl)
            train(m, train_dl, ft, lr=1e-3)
            rows.append({"system": "torch-pruning", "variant": "pruned-2x-l2",
                         "quality": {"accuracy": accuracy(m, test_dl), "accuracy_before_finetune": acc0},
                         "macs": count_macs(m, x), "params": sum(p.numel() for p in m.parameters()),
                         "notes": f"torch-pruning MetaPruner, MagnitudeImportance(p=2), fine-tuned {ft} epoch(s)",
                         **measure(m, x, args.threads, work, "tp")})
        except ImportError:
            pass
    if not args.no_minilm:
        rows += minilm_rows(args.threads)
    result = {"bench": "prune_resnet", "command": command_line(), "machine": machine_info(args.threads),
              "rows": rows, "quick": args.quick, "seconds": round(time.time() - t0, 1)}
    path = write_result("prune_resnet", result)
    for r in rows:
        sys.stdout.write(f"{r['system']:14s} {r['variant']:24s} macs={r.get('macs')} q={r['quality']} "
                         f"lat={r['latency_ms']}\n")
    sys.stdout.write(f"wrote {path}\n")


if __name__ == "__main__":
    main()
