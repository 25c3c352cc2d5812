"""Distillation on Fashion-MNIST: a small student trained with and without KD from a larger teacher.

A ResNet-mini teacher (about 78k parameters) is trained once on the full training pool (and kept in
bench/_work between runs); then a small MLP student (784-32-10) is trained on a 5.4k-image subset for the
same epochs, same data and same seeds:
  - no KD (cross-entropy only),
  - logit KD (T=1, alpha=0.5: picked on the validation split among T in {1, 2, 4}, seed 0),
  - feature KD (logit KD plus an MSE between the student's hidden activation and the teacher's pooled
    features, through a Linear adapter),
  - mutual learning with a second, identical student (DML; no teacher).
Training uses a fixed list of batches (one seeded shuffle, then the same order every epoch) so the
teacher's outputs can be cached (``cache_teacher``); every variant sees exactly the same batches.

    .venv/bin/python bench/distill.py            # full: 3 seeds, ~2 min (+ ~5 min to train the teacher once)
    .venv/bin/python bench/distill.py --quick    # < 1 minute, numbers not meaningful
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, command_line, machine_info, torch_latency_ms, write_result  # noqa: E402

from slimkit.config.distill import DistillConfig  # noqa: E402
from slimkit.config.finetune import FinetuneConfig  # noqa: E402
from slimkit.config.recipe import DataConfig  # noqa: E402
from slimkit.data import load_data  # noqa: E402
from slimkit.evaluation.cost import count_macs, count_params  # noqa: E402
from slimkit.models import build_model  # noqa: E402
from slimkit.passes.distill.mutual import mutual_learning  # noqa: E402
from slimkit.passes.distill.trainer import distill_model  # noqa: E402
from slimkit.passes.finetune.loop import accuracy, train_model  # noqa: E402

FULL = dict(teacher_limit=None, limit=6000, teacher=("resnet-mini", {}), teacher_epochs=2,
            student=("mlp", {"hidden": [32]}), epochs=8, seeds=[0, 1, 2], batch=128, T=1.0, alpha=0.5)
QUICK = dict(teacher_limit=2000, limit=1500, teacher=("cnn-small", {"widths": [16, 32]}), teacher_epochs=1,
             student=("mlp", {"hidden": [16]}), epochs=1, seeds=[0], batch=128, T=4.0, alpha=0.5)


def fixed_batches(loader, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """All training samples as a fixed list of batches (one seeded shuffle)."""
    xs, ys = zip(*[(x, y) for x, y in loader], strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    bs = xs[0].shape[0]
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]


def model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def row(variant: str, model: torch.nn.Module, accs: list[float], example: torch.Tensor, notes: str) -> dict:
    return {
        "system": "slimkit", "variant": variant, "size_bytes": model_bytes(model),
        "latency_ms": {"b1": torch_latency_ms(model, (example,), batch=1, threads=1),
                       "b32": torch_latency_ms(model, (example,), batch=32, threads=1)},
        "quality": {"accuracy": statistics.fmean(accs), "accuracy_min": min(accs), "accuracy_max": max(accs),
                    "accuracy_std": statistics.pstdev(accs) if len(accs) > 1 else 0.0},
        "params": count_params(model), "macs": count_macs(model, (example,)),
        "notes": notes + f"; per seed: {', '.join(f'{a:.4f}' for a in accs)}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="result file (default bench/results/distill.json)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    p = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    bundle = load_data(DataConfig(name="fashion-mnist", batch_size=p["batch"], limit=p["limit"]))
    t_bundle = load_data(DataConfig(name="fashion-mnist", batch_size=p["batch"], limit=p["teacher_limit"]))
    shape, ncls = bundle.input_shape, bundle.num_classes
    train = fixed_batches(bundle.train, seed=0)
    test = bundle.test
    example = bundle.example_inputs[0]

    # teacher: trained once, reused between runs with the same settings
    t_arch, t_kw = p["teacher"]
    teacher = build_model({"arch": t_arch, "kwargs": t_kw}, input_shape=shape, num_classes=ncls, seed=100)
    ckpt = WORK / f"distill_teacher_{t_arch}_{p['teacher_limit']}_{p['teacher_epochs']}.pt"
    if ckpt.exists():
        teacher.load_state_dict(torch.load(ckpt, weights_only=True))
        print(f"teacher loaded from {ckpt}")
    else:
        t0 = time.perf_counter()
        train_model(teacher, t_bundle.train, FinetuneConfig(epochs=p["teacher_epochs"], lr=3e-3, keep_best=True),
                    val_loader=t_bundle.val, seed=100, description="teacher")
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save(teacher.state_dict(), ckpt)
        print(f"teacher trained in {time.perf_counter() - t0:.0f}s")
    teacher.eval()
    t_acc = accuracy(teacher, test)
    print(f"teacher {t_arch} test accuracy {t_acc:.4f}", flush=True)

    s_arch, s_kw = p["student"]
    e, lr = p["epochs"], 3e-3

    def student(seed: int) -> torch.nn.Module:
        return build_model({"arch": s_arch, "kwargs": s_kw}, input_shape=shape, num_classes=ncls, seed=seed)

    accs: dict[str, list[float]] = {"ce": [], "kd": [], "feature": [], "mutual": []}
    secs: dict[str, float] = dict.fromkeys(accs, 0.0)
    last: dict[str, torch.nn.Module] = {}
    base = dict(epochs=e, lr=lr, keep_best=False)
    # the student's last hidden activation -> the teacher's pooled features (a Linear adapter)
    feat_pairs = [{"student": "features.2", "teacher": "avgpool"}]
    for seed in p["seeds"]:
        t0 = time.perf_counter()
        m = student(seed)
        train_model(m, train, FinetuneConfig(**base), seed=seed, description=f"student CE seed {seed}")
        accs["ce"].append(accuracy(m, test))
        secs["ce"] += time.perf_counter() - t0
        last["ce"] = m

        t0 = time.perf_counter()
        m = student(seed)
        distill_model(m, teacher, train, DistillConfig(temperature=p["T"], alpha=p["alpha"], cache_teacher=True, **base),
                      seed=seed)
        accs["kd"].append(accuracy(m, test))
        secs["kd"] += time.perf_counter() - t0
        last["kd"] = m

        t0 = time.perf_counter()
        m = student(seed)
        distill_model(m, teacher, train, DistillConfig(method="feature", features=feat_pairs, beta=1.0,
                                                       temperature=p["T"], alpha=p["alpha"], cache_teacher=True,
                                                       **base),
                      seed=seed)
        accs["feature"].append(accuracy(m, test))
        secs["feature"] += time.perf_counter() - t0
        last["feature"] = m

        t0 = time.perf_counter()
        a, b = student(seed), student(seed + 1000)
        mutual_learning(a, b, train, DistillConfig(method="mutual", temperature=1.0, alpha=0.5, **base), seed=seed)
        accs["mutual"].append(accuracy(a, test))
        secs["mutual"] += time.perf_counter() - t0
        last["mutual"] = a
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in accs.items()), flush=True)

    n_train = sum(len(x) for x, _ in train)
    common = f"Fashion-MNIST, {n_train} training images, {e} epochs, AdamW lr {lr} cosine, batch {p['batch']}"
    rows = [
        row(f"teacher {t_arch}", teacher, [t_acc], example,
            f"teacher, {p['teacher_epochs']} epochs on the same images (trained once, cached in bench/_work)"),
        row(f"student {s_arch} {s_kw['hidden']} CE", last["ce"], accs["ce"], example,
            f"{common}; cross-entropy only; {secs['ce']:.0f}s for all seeds"),
        row(f"student {s_arch} {s_kw['hidden']} KD T={p['T']:g} a={p['alpha']}", last["kd"], accs["kd"], example,
            f"{common}; logit KD from the teacher, teacher logits cached; {secs['kd']:.0f}s"),
        row(f"student {s_arch} {s_kw['hidden']} feature-KD", last["feature"], accs["feature"], example,
            f"{common}; logit KD + MSE {feat_pairs[0]['student']} -> teacher {feat_pairs[0]['teacher']} via "
            f"1x1 conv adapter, beta 1; {secs['feature']:.0f}s"),
        row(f"student {s_arch} {s_kw['hidden']} mutual", last["mutual"], accs["mutual"], example,
            f"{common}; deep mutual learning with a second identical student (T=1, alpha 0.5), no teacher; "
            f"{secs['mutual']:.0f}s"),
    ]
    gain = 100 * (statistics.fmean(accs["kd"]) - statistics.fmean(accs["ce"]))
    result = {"bench": "distill", "command": command_line(), "machine": machine_info(1), "rows": rows,
              "summary": {"kd_gain_points": round(gain, 3), "seeds": p["seeds"], "quick": args.quick,
                          "seconds": round(time.perf_counter() - t_start, 1),
                          "note": "2 CPU cores shared with other jobs while measuring: latencies are noisy"}}
    if args.quick and args.out is None:
        args.out = WORK / "distill-quick.json"
    path = write_result("distill", result, args.out)
    print(f"KD gain over CE: {gain:+.2f} points (mean of {len(p['seeds'])} seed(s)); wrote {path}")


if __name__ == "__main__":
    main()
