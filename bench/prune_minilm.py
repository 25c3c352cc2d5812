"""MiniLM (all-MiniLM-L6-v2, offline) with 50% of attention heads and 50% of FFN width removed by structured
pruning, then a short distillation of the pruned encoder toward the original on unlabelled offline sentences
(slimkit.data.sentences: its calibration split trains, its evaluation split measures). Reports the cosine of
mean-pooled sentence embeddings to the original (mean and min over the held-out sentences) and eager latency
at batch 1 and batch 8 x seq 128, all models measured alternately in the same run.

    flock /tmp/slimkit-bench.lock .venv/bin/python bench/prune_minilm.py
    .venv/bin/python bench/prune_minilm.py --quick      # smoke run; JSON not written
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    ROOT,
    command_line,
    machine_info,
    render_table,
    torch_latency_ms,
    update_doc_section,
    write_result,
)

import slimkit as sk  # noqa: E402
from slimkit.data.sentences import split_sentences  # noqa: E402
from slimkit.models.zoo import load_minilm, minilm_path  # noqa: E402
from slimkit.passes.prune.structured import count_macs  # noqa: E402


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


@torch.no_grad()
def embeddings(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    model.eval()
    return torch.cat([mean_pool(model(**b).last_hidden_state, b["attention_mask"]) for b in batches])


def distill(student: torch.nn.Module, teacher: torch.nn.Module, batches: list[dict[str, torch.Tensor]],
            epochs: int, lr: float) -> list[float]:
    """Loss per batch: (1 - cosine) of the mean-pooled embeddings plus the MSE of every layer's hidden states
    (the hidden width is not pruned, so the student's layers stay comparable to the teacher's)."""
    with torch.no_grad():
        targets = [teacher(**b, output_hidden_states=True).hidden_states for b in batches]
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * len(batches), pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    losses = []
    student.train()
    for _ in range(epochs):
        total = 0.0
        for i in torch.randperm(len(batches), generator=g).tolist():
            b, t = batches[i], targets[i]
            out = student(**b, output_hidden_states=True)
            mask = b["attention_mask"]
            cos = F.cosine_similarity(mean_pool(out.last_hidden_state, mask), mean_pool(t[-1], mask), dim=-1)
            keep = mask.unsqueeze(-1).bool()
            mse = sum(F.mse_loss(s.masked_select(keep), h.masked_select(keep)) for s, h in
                      zip(out.hidden_states[1:], t[1:], strict=True)) / (len(t) - 1)
            loss = (1 - cos).mean() + mse
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        losses.append(round(total / len(batches), 5))
    student.eval()
    return losses


def augment(texts: list[str], copies: int, seed: int = 0) -> list[str]:
    """``texts`` plus ``copies`` perturbed versions of each (a random contiguous span of at least half the
    words, then each word dropped with probability 0.15): more unlabelled inputs for distillation, still
    disjoint from the evaluation sentences."""
    import random

    rng = random.Random(seed)
    out = list(texts)
    for _ in range(copies):
        for t in texts:
            words = t.split()
            n = len(words)
            k = rng.randint(max(1, n // 2), n)
            start = rng.randint(0, n - k)
            span = [w for w in words[start:start + k] if rng.random() > 0.15] or words[start:start + k]
            out.append(" ".join(span))
    return out


def heads_and_ffn(model: torch.nn.Module) -> tuple[int, int]:
    heads = sum(int(m.num_attention_heads) for m in model.modules() if hasattr(m, "all_head_size"))
    ffn = sum(m.dense.out_features for n, m in model.named_modules() if n.endswith("intermediate"))
    return heads, ffn


def main() -> None:  # noqa: PLR0915 - a linear script
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="threads for latency")
    ap.add_argument("--train-threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--augment", type=int, default=3, help="perturbed copies of each training sentence")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    t0 = time.time()
    torch.manual_seed(0)
    torch.set_num_threads(args.train_threads)
    epochs = args.epochs or (1 if args.quick else 8)
    tok = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    train_texts, eval_texts = split_sentences()
    if args.quick:
        train_texts, eval_texts = train_texts[:16], eval_texts[:16]
    n_sentences = len(train_texts)
    train_texts = augment(train_texts, args.augment)

    def batches(texts: list[str], bs: int) -> list[dict[str, torch.Tensor]]:
        return [dict(tok(texts[i:i + bs], padding=True, truncation=True, max_length=128, return_tensors="pt"))
                for i in range(0, len(texts), bs)]

    train_b, eval_b = batches(train_texts, 8), batches(eval_texts, 32)
    base = load_minilm().eval()
    ex1 = tok(["a short example sentence for latency"], padding="max_length", max_length=128, return_tensors="pt")
    example = (ex1["input_ids"], ex1["attention_mask"])

    pruned = copy.deepcopy(base)
    t1 = time.time()
    sk.prune_(pruned, sk.StructuredPruneConfig(ratio=0.5), example_inputs=example)
    prune_s = time.time() - t1
    ref = embeddings(base, eval_b)
    cos0 = F.cosine_similarity(embeddings(pruned, eval_b), ref)
    tuned = copy.deepcopy(pruned)
    t1 = time.time()
    losses = distill(tuned, base, train_b, epochs, lr=1e-4)
    distill_s = time.time() - t1
    cos1 = F.cosine_similarity(embeddings(tuned, eval_b), ref)

    models = {"fp32": base, "heads50-ffn50": pruned, "heads50-ffn50-distilled": tuned}
    samples: dict[str, dict[str, list[float]]] = {n: {"b1_s128": [], "b8_s128": []} for n in models}
    for _ in range(1 if args.quick else args.rounds):
        for name, m in models.items():
            samples[name]["b1_s128"].append(torch_latency_ms(m, example, batch=1, threads=args.threads, warmup=5,
                                                             repeats=20))
            samples[name]["b8_s128"].append(torch_latency_ms(m, example, batch=8, threads=args.threads, warmup=2,
                                                             repeats=10))
    lat = {n: {k: round(statistics.median(v), 3) for k, v in s.items()} for n, s in samples.items()}
    h0, f0 = heads_and_ffn(base)
    h1, f1 = heads_and_ffn(pruned)
    common = (f"cosine of mean-pooled embeddings to the original on {len(eval_texts)} held-out sentences of "
              f"slimkit.data.sentences; eager, {args.threads} thread, seq 128, median of {args.rounds} interleaved "
              "rounds on a shared 2-core machine")
    notes = {
        "fp32": f"all-MiniLM-L6-v2 (offline package), {h0} heads, FFN width {f0} in total; {common}",
        "heads50-ffn50": (f"StructuredPruneConfig(ratio=0.5, importance='l2'): {h1}/{h0} heads and {f1}/{f0} FFN "
                          f"units kept, hidden width 384 kept; no training; {common}"),
        "heads50-ffn50-distilled": (f"the pruned encoder distilled toward the original for {epochs} epochs "
                                    f"({distill_s:.0f} s) on {n_sentences} other unlabelled sentences plus {args.augment} perturbed "
                                    f"copies of each (word spans, word dropout; {len(train_texts)} inputs): "
                                    "loss (1 - cosine of pooled embeddings) + MSE of every layer's hidden states; "
                                    f"AdamW lr 1e-4, batch 8; losses per epoch {losses}; {common}"),
    }
    cos = {"fp32": None, "heads50-ffn50": cos0, "heads50-ffn50-distilled": cos1}
    rows = []
    for name, m in models.items():
        c = cos[name]
        quality = ({"cosine": 1.0, "cosine_min": 1.0} if c is None else
                   {"cosine": round(float(c.mean()), 4), "cosine_min": round(float(c.min()), 4)})
        rows.append({"system": "torch" if name == "fp32" else "slimkit", "variant": name, "size_bytes":
                     sum(p.numel() * p.element_size() for p in m.parameters()), "latency_ms": lat[name],
                     "quality": quality, "macs": count_macs(m, example),
                     "params": sum(p.numel() for p in m.parameters()), "notes": notes[name]})
    result = {"bench": "prune_minilm", "command": command_line(), "machine": machine_info(args.threads),
              "rows": rows, "quick": args.quick, "shared_machine": True, "seconds": round(time.time() - t0, 1),
              "prune_seconds": round(prune_s, 1), "size_bytes_note": "bytes of the fp32 parameters in memory"}
    for r in rows:
        sys.stdout.write(f"{r['variant']:26s} params={r['params']} q={r['quality']} lat={r['latency_ms']}\n")
    if args.quick:
        return
    path = write_result("prune_minilm", result)
    body = ("`bench/prune_minilm.py` (command `" + result["command"] + "`). all-MiniLM-L6-v2 with half of its "
            "attention heads and half of its FFN width removed, before and after a short distillation toward the "
            "original on unlabelled offline sentences. Quality is the cosine of mean-pooled sentence embeddings to "
            "the original on held-out sentences (mean; min in the JSON). Size is fp32 parameter bytes.\n\n"
            + render_table(result, quality_key="cosine") + "\n\n"
            + "\n".join(f"- {r['variant']}: cosine mean {r['quality']['cosine']}, min {r['quality']['cosine_min']}; "
                        f"{r['macs'] / rows[0]['macs']:.3f} of the MACs" for r in rows))
    update_doc_section(ROOT / "docs" / "benchmarks.md", "Structured pruning: MiniLM heads and FFN", body)
    sys.stdout.write(f"wrote {path}\n")


if __name__ == "__main__":
    main()
