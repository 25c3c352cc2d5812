"""GPU: MiniLM (all-MiniLM-L6-v2) in fp16/bf16 against torch autocast, and 2:4 semi-structured sparsity on its
matmul-heavy layers, on one CUDA device.

    .venv/bin/python bench/gpu.py            # bench/results/gpu.json + the "GPU" section of docs/benchmarks.md
    .venv/bin/python bench/gpu.py --quick    # small, into bench/_work/gpu.json; numbers not meaningful
    .venv/bin/python bench/gpu.py --render   # only re-render the docs section from bench/results/gpu.json
    .venv/bin/python bench/gpu.py --pack DIR # a copy of MiniLM small enough to send to a GPU machine (below)
    python3 bench/gpu.py --model DIR/minilm --out OUT/gpu.json   # on the GPU machine; then copy the JSON to
                                             # bench/results/gpu.json and run --render here

``--pack`` exists because the GPU machines lent to this project take at most 64 MiB of files and the model is
87 MiB: it keeps every tensor exactly except the rows of the word-embedding table whose token ids never occur in
the bench's sentences (stored sparsely; zero on unpacking). On every input the bench feeds, the unpacked model
computes exactly what the original does (an embedding lookup reads only the rows of its ids), which ``--pack``
checks here before writing; its settings record how many rows were kept.

Rows (latency: the median of per-call CUDA-event times, slimkit.evaluation.latency.cuda_latency_forms, at
batch 1, 32 and 256 of sequence 128, each model in its fastest form: eager or replayed as a CUDA graph, both kept
in ``latency_forms``; where the eager model is bound by kernel launches from Python, batch 256 shows the arithmetic; quality: fidelity of the sentence embeddings to the fp32 model on held-out sentences):

- torch fp32; torch autocast fp16 and bf16 (fp32 weights, ``torch.autocast``): the peer;
- slimkit fp16 and bf16 (``quantize_(model, FP16Config() / BF16Config())``: half-precision weights, norms in
  fp32): half the bytes;
- 2:4 per layer: every distinct Linear shape of the encoder (q/k/v/o 384x384, FFN 384->1536 and 1536->384) at
  32x128 token rows, the dense fp16 matmul against ``to_sparse_semi_structured`` weights
  (``slimkit.passes.prune.nm.gpu_speed_check``);
- slimkit 2:4 end to end: ``prune_(model, NMSparsityConfig())`` then fp16, its Linear weights swapped for
  semi-structured tensors, against the dense fp16 model;
- slimkit int8 dynamic (``quantize_(model, DynamicConfig())``, torchao's int8 weights and per-token int8
  activations) where torchao imports on the machine; its absence is recorded, not hidden.

On a machine without a CUDA device it says so and exits without writing anything (status 0, so ``make bench``
goes on). The fp32 model's own latency is measured in the same process, interleaved with every variant.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, WORK, command_line, machine_info, update_doc_section, write_result  # noqa: E402

HEADING = "GPU"
SEQ = 128


def _time_batches(model: Any, batches: dict[int, dict[str, torch.Tensor]], repeats: int, device: torch.device,
                  min_batch: int = 1) -> tuple[dict[str, float], dict[str, Any]]:
    """``(latency_ms, latency_forms)`` of ``model(input_ids, attention_mask)`` at each batch size from
    ``min_batch`` up: the median ms of its fastest form (eager or CUDA graph), and both forms per batch."""
    from slimkit.evaluation.latency import cuda_latency_forms

    lat: dict[str, float] = {}
    forms: dict[str, Any] = {}
    for b, enc in batches.items():
        if b < min_batch:
            continue
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        res = cuda_latency_forms(lambda i=ids, a=mask: model(i, a), warmup=10, repeats=repeats, batch=b,
                                 device=device)
        forms[f"b{b}"] = {k: None if v is None else round(v, 4) for k, v in res["forms"].items()}
        if res.get("graph_error"):
            forms[f"b{b}"]["graph_error"] = res["graph_error"]
        lat[f"b{b}"] = round(res["median"], 4)
    return lat, forms


def _encoder_rows(encoder: Any, sentences: list[str], batches: dict[int, dict[str, torch.Tensor]], repeats: int,
                  device: torch.device) -> list[dict[str, Any]]:
    """fp32, autocast fp16/bf16 and slimkit fp16/bf16 rows of the sentence encoder."""
    import slimkit as sk
    from slimkit.evaluation.embedding_fidelity import embedding_fidelity
    from slimkit.passes.quantize.packing import state_nbytes

    fp32 = encoder.to(device).eval()
    ref = fp32.encode(sentences)
    variants: list[tuple[str, str, Any, torch.dtype | None, str]] = [
        ("torch", "fp32", fp32, None, "fp32 weights and compute"),
        ("torch", "autocast-fp16", fp32, torch.float16, "fp32 weights, torch.autocast(float16)"),
        ("torch", "autocast-bf16", fp32, torch.bfloat16, "fp32 weights, torch.autocast(bfloat16)"),
    ]
    for name, cfg in (("fp16", sk.FP16Config()), ("bf16", sk.BF16Config())):
        model = sk.quantize_(copy.deepcopy(fp32), cfg)
        variants.append(("slimkit", name, model, None, f"quantize_(model, {type(cfg).__name__}()): half-precision "
                                                       "weights, LayerNorm kept in fp32"))
    rows = []
    for system, variant, model, autocast, note in variants:
        def ctx(dtype: torch.dtype | None = autocast) -> Any:
            return torch.autocast("cuda", dtype=dtype) if dtype is not None else torch.autocast("cuda", enabled=False)

        with torch.no_grad(), ctx():
            emb = model.encode(sentences)
            lat, forms = _time_batches(model, batches, repeats, device)
        fid = embedding_fidelity(emb.float(), ref)
        rows.append({"system": system, "variant": variant, "size_bytes": state_nbytes(model.state_dict()), "latency_ms": lat,
                     "latency_forms": forms, "quality": {"cosine": fid["cosine"], "cosine_min": fid["cosine_min"],
                                                         "top1_agreement": fid["top1_agreement"]}, "notes": note})
    return rows


def _sparse_layer_rows(encoder: Any, repeats: int) -> list[dict[str, Any]]:
    """Dense fp16 vs 2:4 semi-structured matmul (each backend) for each distinct Linear shape of the encoder,
    plus one large layer (4096x4096) where sparse tensor cores are expected to pay."""
    from slimkit.passes.prune.nm import gpu_speed_check

    shapes: dict[tuple[int, int], list[str]] = {}
    for name, mod in encoder.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layer.0." in name:
            shapes.setdefault((mod.in_features, mod.out_features), []).append(name.split(".layer.0.")[1])
    shapes[(4096, 4096)] = ["a large reference layer, not in MiniLM"]
    rows = []
    for (fin, fout), names in shapes.items():
        res = gpu_speed_check(fin, fout, 32 * SEQ, repeats=repeats)
        if "dense_ms" not in res:
            print(f"2:4 {fin}x{fout}: skipped: {res['skipped']}", file=sys.stderr)
            continue
        where = ", ".join(names) + (" (one layer of 6)" if fin != 4096 else "")
        rows.append({"system": "torch", "variant": f"linear-{fin}x{fout}-dense-fp16", "size_bytes": None,
                     "latency_ms": {f"rows{32 * SEQ}": round(res["dense_ms"], 4)}, "quality": {"max_abs_diff": 0.0},
                     "notes": f"{where}; fastest form {res['dense_form']}"})
        for backend, r in res["backends"].items():
            if "sparse_ms" not in r:
                print(f"2:4 {fin}x{fout} {backend}: skipped: {r['skipped']}", file=sys.stderr)
                rows.append({"system": "slimkit", "variant": f"linear-{fin}x{fout}-2:4-fp16-{backend}",
                             "size_bytes": None, "latency_ms": {f"rows{32 * SEQ}": None}, "quality": {},
                             "notes": f"{where}; failed: {r['skipped']}"})
                continue
            rows.append({"system": "slimkit", "variant": f"linear-{fin}x{fout}-2:4-fp16-{backend}", "size_bytes": None,
                         "latency_ms": {f"rows{32 * SEQ}": round(r["sparse_ms"], 4)},
                         "quality": {"max_abs_diff": r["max_abs_diff"]},
                         "notes": f"{where}; speed-up {r['speedup']:.2f}x over dense; fastest form {r['form']}"})
    return rows


def _sparse_model_rows(encoder: Any, sentences: list[str], batches: dict[int, dict[str, torch.Tensor]],
                       repeats: int, device: torch.device) -> list[dict[str, Any]]:
    """The whole encoder: dense fp16 against 2:4-pruned fp16 with semi-structured Linear weights (each
    backend of torch.sparse), at batch 32."""
    import slimkit as sk
    from slimkit.evaluation.embedding_fidelity import embedding_fidelity

    ref = encoder.to(device).eval().encode(sentences)
    dense = sk.quantize_(copy.deepcopy(encoder), sk.FP16Config())
    pruned = sk.quantize_(sk.prune_(copy.deepcopy(encoder), sk.NMSparsityConfig()), sk.FP16Config())
    variants: list[tuple[str, Any, str]] = [("dense-fp16", dense, "fp16, dense")]
    from slimkit.passes.prune.nm import semi_structured_backends

    for backend, cls in semi_structured_backends().items():
        model = copy.deepcopy(pruned)
        try:
            swapped = 0
            for mod in model.modules():
                if isinstance(mod, torch.nn.Linear) and mod.weight.dtype == torch.float16:
                    mod.weight = torch.nn.Parameter(cls.from_dense(mod.weight.detach()), requires_grad=False)
                    swapped += 1
        except Exception as exc:  # kernels missing for this build or device: a result, not a crash
            print(f"2:4 end to end ({backend}): skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        variants.append((f"2:4-fp16-{backend}", model,
                         f"prune_(NMSparsityConfig()) + fp16, {swapped} Linear weights as {cls.__name__}; one-shot "
                         "magnitude 2:4 without fine-tuning, so the fidelity shows its cost (it is about speed here)"))
    rows = []
    for variant, model, note in variants:
        try:
            with torch.no_grad():
                fid = embedding_fidelity(model.encode(sentences).float(), ref)
                # sparse kernels pay off on many token rows (if at all)
                lat, forms = _time_batches(model, batches, repeats, device, min_batch=32)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run the model: recorded
            print(f"2:4 end to end {variant}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        rows.append({"system": "torch" if variant == "dense-fp16" else "slimkit", "variant": f"minilm-{variant}",
                     "size_bytes": None, "latency_ms": lat, "latency_forms": forms,
                     "quality": {"cosine": fid["cosine"], "cosine_min": fid["cosine_min"]}, "notes": note})
    return rows


PACKED = "model.packed.safetensors"
WORD_EMB = "embeddings.word_embeddings.weight"


def _bench_token_ids(tokenizer: Any) -> torch.Tensor:
    """Every token id the bench can feed the model: all of slimkit's sentences and the special tokens."""
    from slimkit.data.sentences import sentences

    ids = set(tokenizer.all_special_ids)
    for s in sentences():
        ids.update(tokenizer(s)["input_ids"])
    return torch.tensor(sorted(ids), dtype=torch.long)


def pack_minilm(out_dir: Path) -> Path:
    """Write ``out_dir/minilm``: the MiniLM folder with the word-embedding rows the bench never reads left out
    (see the module docstring); checked here to give the original's outputs on the bench's sentences."""
    import shutil

    from safetensors.torch import load_file, save_file

    from slimkit.models.hf import resolve_hf_source
    from slimkit.models.sentence import MINILM, load_sentence_encoder

    src = resolve_hf_source(MINILM)
    assert src is not None
    dst = out_dir / "minilm"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors", "*.bin", "onnx", "openvino"))
    state = load_file(str(src / "model.safetensors"))
    original = load_sentence_encoder(str(src))
    ids = _bench_token_ids(original.tokenizer)
    table = state.pop(WORD_EMB)
    state[WORD_EMB + ".ids"], state[WORD_EMB + ".rows"] = ids, table[ids].contiguous()
    save_file(state, str(dst / PACKED), metadata={"format": "pt", "rows": str(table.shape[0]),
                                                  "dim": str(table.shape[1])})
    packed = load_packed_minilm(dst)
    from slimkit.data.sentences import sentences

    with torch.no_grad():
        same = torch.equal(packed.encode(sentences()), original.encode(sentences()))
    if not same:
        raise SystemExit("bench/gpu.py --pack: the packed model does not reproduce MiniLM on the bench's sentences")
    print(f"packed {dst} ({sum(f.stat().st_size for f in dst.rglob('*') if f.is_file()) / 2**20:.1f} MiB, "
          f"{len(ids)} of {table.shape[0]} word-embedding rows kept; outputs identical on all sentences)")
    return dst


def packed_info(path: Path) -> tuple[dict[str, str], int]:
    """(metadata, rows kept) of a file written by :func:`pack_minilm`."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata(), f.get_slice(WORD_EMB + ".ids").get_shape()[0]


def load_packed_minilm(folder: Path) -> Any:
    """A SentenceEncoder from a folder written by :func:`pack_minilm` (or a plain model folder)."""
    import shutil
    import tempfile

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from slimkit.models.sentence import load_sentence_encoder

    if not (folder / PACKED).exists():
        return load_sentence_encoder(str(folder))
    with safe_open(str(folder / PACKED), "pt") as f:
        meta = f.metadata()
    state = load_file(str(folder / PACKED))
    ids, rows = state.pop(WORD_EMB + ".ids"), state.pop(WORD_EMB + ".rows")
    table = torch.zeros(int(meta["rows"]), int(meta["dim"]), dtype=rows.dtype)
    table[ids] = rows
    state[WORD_EMB] = table
    tmp = Path(tempfile.mkdtemp(prefix="slimkit-minilm-"))
    shutil.copytree(folder, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(PACKED))
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return load_sentence_encoder(str(tmp))


def _int8_rows(encoder: Any, sentences: list[str], batches: dict[int, dict[str, torch.Tensor]], repeats: int,
               device: torch.device, ref: torch.Tensor) -> tuple[list[dict[str, Any]], str | None]:
    """slimkit dynamic int8 (torchao) on the GPU, or why it could not run."""
    import slimkit as sk
    from slimkit.evaluation.embedding_fidelity import embedding_fidelity
    from slimkit.passes.quantize.packing import state_nbytes

    try:
        model = sk.quantize_(copy.deepcopy(encoder).to(device), sk.DynamicConfig())
        with torch.no_grad():
            emb = model.encode(sentences)
            lat, forms = _time_batches(model, batches, repeats, device)
    except Exception as exc:  # a result: torchao missing or its kernels absent for this torch/GPU
        return [], f"int8 dynamic skipped: {type(exc).__name__}: {str(exc)[:300]}"
    fid = embedding_fidelity(emb.float(), ref)
    try:
        import torchao

        version = torchao.__version__
    except Exception:  # noqa: BLE001
        version = "?"
    return [{"system": "slimkit", "variant": "int8-dynamic", "size_bytes": state_nbytes(model.state_dict()),
             "latency_ms": lat, "latency_forms": forms,
             "quality": {"cosine": fid["cosine"], "cosine_min": fid["cosine_min"],
                         "top1_agreement": fid["top1_agreement"]},
             "notes": f"quantize_(model, DynamicConfig()): torchao {version} int8 weights, per-token int8 "
                      "activations"}], None


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"`{result['command']}` on {m.get('gpu')} (torch {m['torch']}); numbers from "
             "[bench/results/gpu.json](../bench/results/gpu.json). Latency: median of per-call CUDA-event times "
             f"(sequence {SEQ}), each model in its fastest form (eager, or replayed as a CUDA graph: named in "
             "brackets; both forms are in the JSON); quality: sentence-embedding fidelity to the fp32 model.", "",
             "| system | variant | size | latency | quality | notes |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        size = "—" if r["size_bytes"] is None else f"{r['size_bytes'] / 2**20:.1f} MiB"
        forms = r.get("latency_forms", {})

        def form(key: str, forms: dict[str, Any] = forms) -> str:
            f = forms.get(key) or {}
            times = {k: v for k, v in f.items() if k in ("eager", "cuda-graph") and v is not None}
            return f" ({min(times, key=times.__getitem__)})" if times else ""

        lat = ", ".join(f"{k}: {v:.3f} ms{form(k)}" for k, v in r["latency_ms"].items() if v is not None) or "—"
        q = ", ".join(f"{k} {v:.4f}" for k, v in r["quality"].items() if v is not None) or "—"
        lines.append(f"| {r['system']} | {r['variant']} | {size} | {lat} | {q} | {r.get('notes', '')} |")
    return "\n".join(lines + ["", *summary(result)])


def summary(result: dict[str, Any]) -> list[str]:
    """What the rows show, computed from them (ratios of medians in the same run)."""
    rows = {(r["system"], r["variant"]): r for r in result["rows"]}
    out = []

    def ms(system: str, variant: str, key: str) -> float | None:
        r = rows.get((system, variant))
        return None if r is None else r["latency_ms"].get(key)

    big = max((int(k[1:]) for r in result["rows"] for k in r["latency_ms"] if k.startswith("b")), default=None)
    if big is not None:
        key = f"b{big}"
        fp32, ac16 = ms("torch", "fp32", key), ms("torch", "autocast-fp16", key)
        for v in ("fp16", "bf16"):
            mine = ms("slimkit", v, key)
            if mine and fp32 and ac16:
                out.append(f"- At batch {big}, slimkit {v} runs {fp32 / mine:.2f}x faster than fp32 and "
                           f"{ac16 / mine:.2f}x the speed of torch autocast fp16, with half the bytes.")
    graph_errors = {f.get("graph_error", "")[:60] for r in result["rows"] for f in (r.get("latency_forms") or {}).values()
                    if f.get("graph_error")}
    if graph_errors:
        out.append("- The whole-model rows ran eager only: the Hugging Face forward synchronizes with the host, so it "
                   "cannot be captured as a CUDA graph; at batch 1 and 32 their times are dominated by kernel "
                   "launches from Python, not by arithmetic.")
    sparse = [r for r in result["rows"] if r["variant"].startswith("linear-") and "2:4" in r["variant"]
              and r["latency_ms"].get(f"rows{32 * SEQ}") is not None]
    for r in sparse:
        dense = rows.get(("torch", r["variant"].split("-2:4")[0] + "-dense-fp16"))
        if dense:
            out.append(f"- 2:4 {r['variant'].split('-')[1]} ({r['variant'].rsplit('-', 1)[1]}): "
                       f"{dense['latency_ms'][f'rows{32 * SEQ}'] / r['latency_ms'][f'rows{32 * SEQ}']:.2f}x "
                       "the dense fp16 matmul's speed.")
    d, s2 = ms("torch", "minilm-dense-fp16", "b256"), ms("slimkit", "minilm-2:4-fp16-cusparselt", "b256")
    if d and s2:
        out.append(f"- MiniLM with every Linear 2:4 (cuSPARSELt) end to end: {s2 / d:.1f}x the dense fp16 time at "
                   "batch 256: at MiniLM's widths the sparse kernels do not pay and the semi-structured tensors "
                   "add per-call work; 2:4 is for wide layers (see the 4096x4096 row).")
    i8, f32 = ms("slimkit", "int8-dynamic", "b256"), ms("torch", "fp32", "b256")
    if i8 and f32:
        out.append(f"- torchao int8 dynamic in eager mode: {i8 / f32:.1f}x the fp32 time at batch 256 (per-token "
                   "quantization runs as separate small kernels; torchao's int8 speed needs torch.compile, which "
                   "this bench does not run). On GPU, fp16/bf16 is the choice here.")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small and fast; results under bench/_work/")
    ap.add_argument("--render", action="store_true", help="only re-render docs/benchmarks.md from the JSON")
    ap.add_argument("--pack", type=Path, metavar="DIR", help="write DIR/minilm, a copy of MiniLM under 64 MiB "
                                                             "(see the module docstring), and exit")
    ap.add_argument("--model", type=Path, metavar="DIR", help="load MiniLM from this folder (plain or --pack'ed) "
                                                              "instead of the installed package")
    ap.add_argument("--out", type=Path, metavar="FILE", help="write the JSON here and leave docs/ alone")
    args = ap.parse_args(argv)
    if args.pack:
        pack_minilm(args.pack)
        return 0
    doc = ROOT / "docs" / "benchmarks.md"
    if args.render:
        import json

        update_doc_section(doc, HEADING, render(json.loads((RESULTS / "gpu.json").read_text())))
        return 0
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        print(f"bench/gpu.py: skipped: no CUDA device (torch.cuda.is_available() is False; torch {torch.__version__}, "
              f"{build}). It needs an NVIDIA GPU (Ampere or newer for 2:4 sparse kernels); nothing was written.",
              file=sys.stderr)
        return 0
    from slimkit.data.sentences import split_sentences
    from slimkit.models.sentence import load_minilm

    t0 = time.time()
    device = torch.device("cuda")
    encoder = load_packed_minilm(args.model) if args.model else load_minilm()
    _, sentences = split_sentences(100)
    sentences = sentences[:48] if args.quick else sentences
    repeats = 10 if args.quick else 100
    batches = {b: encoder.tokenize((sentences * 16)[:b], pad_to=SEQ) for b in (1, 32, 256)}
    rows = _encoder_rows(encoder, sentences, batches, repeats, device)
    rows += _sparse_layer_rows(encoder, repeats)
    rows += _sparse_model_rows(encoder, sentences, batches, repeats, device)
    int8, skipped = _int8_rows(encoder, sentences, batches, repeats, device,
                               encoder.to(device).eval().encode(sentences))
    rows += int8
    settings: dict[str, Any] = {"sequence": SEQ, "repeats": repeats, "sentences": len(sentences),
                                "seconds": round(time.time() - t0, 1)}
    if args.model and (args.model / PACKED).exists():
        meta, kept = packed_info(args.model / PACKED)
        settings["model"] = (f"MiniLM from bench/gpu.py --pack: {kept} of {meta['rows']} word-embedding rows kept "
                             "(all the bench's token ids), the rest zero; identical outputs on the bench's inputs")
    if skipped:
        settings["skipped"] = [skipped]
    result = {"bench": "gpu", "command": command_line(), "machine": machine_info(torch.get_num_threads()),
              "rows": rows, "settings": settings}
    out = write_result("gpu", result, args.out or (WORK / "gpu.json" if args.quick else None))
    if not args.quick and not args.out:
        update_doc_section(doc, HEADING, render(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
