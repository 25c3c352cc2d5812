"""Exact encoder graph rewrites (slimkit.exporters.encoder_graph) and the transformer-optimizer fusion
without SkipLayerNormalization, on a tiny random BERT sentence encoder (no model package needed, a few
seconds): outputs unchanged, Attention fused, no SkipLayerNormalization after onnxruntime's own session
optimizations, shape subgraphs gone; and int8 with the rewrites keeps a cosine floor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from slimkit.exporters.onnx_transformer import export_encoder_onnx
    from slimkit.models.sentence import SentenceEncoder

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=2048, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    enc = SentenceEncoder(transformers.BertModel(cfg, add_pooling_layer=False).eval())
    return export_encoder_onnx(enc, tmp_path_factory.mktemp("tiny") / "fp32.onnx")


def _feeds(batch: int, seq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    ids = g.integers(1000, 1200, (batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    mask[-1, seq // 2:] = 0  # padding
    return ids, mask


def _session_ops(path) -> dict[str, int]:
    """op counts of the graph onnxruntime actually runs (after its session-level fusions)."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(path) + ".session.onnx"
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops: dict[str, int] = {}
    for n in onnx.load(opts.optimized_model_filepath).graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return ops


def test_rewrites_are_exact_and_block_skip_layernorm(tiny_onnx, tmp_path) -> None:
    from slimkit.exporters.encoder_graph import block_skip_layernorm, static_reshapes
    from slimkit.exporters.onnx_transformer import ort_embed

    proto = onnx.load(str(tiny_onnx))
    n_before = len(proto.graph.node)
    assert static_reshapes(proto) >= 4  # per layer: Q, K, V heads split and the context merged back
    assert block_skip_layernorm(proto) == 1 + 2 * 2  # embeddings + two residual adds per layer
    sums = [len(n.input) for n in proto.graph.node if n.op_type == "Sum"]
    assert sorted(sums) == [2, 2, 2, 2, 3]  # (words + token types) + positions folded into one Sum
    assert len(proto.graph.node) < n_before - 20  # the Shape/Gather/Unsqueeze/Concat chains are gone
    onnx.checker.check_model(proto)
    out = tmp_path / "rewritten.onnx"
    onnx.save(proto, str(out))
    for b, s in ((1, 5), (4, 23), (2, 64)):  # shapes other than the probes
        ids, mask = _feeds(b, s)
        np.testing.assert_allclose(ort_embed(out, ids, mask), ort_embed(tiny_onnx, ids, mask), rtol=0, atol=1e-6)
    ops = _session_ops(out)
    assert "SkipLayerNormalization" not in ops and ops.get("LayerNormalization") == 5
    before = _session_ops(tiny_onnx)
    assert sum(ops.values()) < sum(before.values()) and ops.get("Concat", 0) < before["Concat"]


def test_optimizer_fuses_attention_without_skip_layernorm(tiny_onnx, tmp_path) -> None:
    from slimkit.exporters.onnx_transformer import optimize_encoder_onnx, ort_embed

    fused = tmp_path / "fused.onnx"
    stats = optimize_encoder_onnx(tiny_onnx, fused, num_heads=4, hidden_size=32)
    assert stats["Attention"] == 2 and stats["SkipLayerNormalization"] == 0
    ops = _session_ops(fused)
    assert ops.get("Attention") == 2 and "SkipLayerNormalization" not in ops and ops.get("Sum") == 4
    for b, s in ((2, 16), (3, 40)):
        ids, mask = _feeds(b, s, seed=1)
        ref = ort_embed(tiny_onnx, ids, mask)
        np.testing.assert_allclose(ort_embed(fused, ids, mask), ref, rtol=0, atol=1e-4)
    full = tmp_path / "full.onnx"
    assert optimize_encoder_onnx(tiny_onnx, full, num_heads=4, hidden_size=32,
                                 skip_layer_norm=True)["SkipLayerNormalization"] == 4
    # bias_gelu=False: the FFN bias Add stays before Gelu (for int8: the bias folds into the quantized MatMul)
    plain = tmp_path / "no-bias-gelu.onnx"
    stats = optimize_encoder_onnx(tiny_onnx, plain, num_heads=4, hidden_size=32, bias_gelu=False)
    assert stats["Attention"] == 2 and stats["BiasGelu"] == 0 and stats["Gelu"] == 2
    assert stats == {**optimize_encoder_onnx(tiny_onnx, fused, num_heads=4, hidden_size=32), "BiasGelu": 0, "Gelu": 2}
    ids, mask = _feeds(3, 40, seed=1)
    np.testing.assert_allclose(ort_embed(plain, ids, mask), ort_embed(tiny_onnx, ids, mask), rtol=0, atol=1e-4)


def test_int8_with_rewrites_keeps_cosine(tiny_onnx, tmp_path) -> None:
    from slimkit.evaluation.embedding_fidelity import cosine_stats
    from slimkit.exporters.encoder_int8 import EncoderInt8Config, quantize_encoder_int8
    from slimkit.exporters.onnx_transformer import ort_embed

    calib = [dict(zip(("input_ids", "attention_mask"), _feeds(8, 24, seed=s), strict=True)) for s in range(3)]
    cfg = EncoderInt8Config(weight_only=(), outlier_channels=4, outlier_select=False, smooth_select=False,
                            fold_token_types=True)  # on the unfused graph only when asked
    res = quantize_encoder_int8(tiny_onnx, tmp_path / "int8.onnx", calibration=calib, config=cfg)
    assert res["rewrites"]["static_reshapes"] >= 4 and res["rewrites"]["sum_before_layernorm"] == 5
    assert res["rewrites"]["token_type_fold"] == 1
    ids, mask = _feeds(6, 30, seed=7)
    fid = cosine_stats(ort_embed(res["artifact"], ids, mask), ort_embed(tiny_onnx, ids, mask))
    assert fid["cosine"] >= 0.99 and fid["cosine_min"] >= 0.98, fid
    assert "SkipLayerNormalization" not in _session_ops(res["artifact"])
    sums = [len(n.input) for n in onnx.load(str(res["artifact"])).graph.node if n.op_type == "Sum"]
    assert sorted(sums) == [2, 2, 2, 2, 2]  # the token types are in the position table: words + positions
    plain = quantize_encoder_int8(tiny_onnx, tmp_path / "plain.onnx", calibration=calib,
                                  config=EncoderInt8Config(weight_only=(), outlier_channels=4, outlier_select=False,
                                                           smooth_select=False, static_shapes=False,
                                                           fold_token_types=True,
                                                           block_skip_layernorm=False))
    same = cosine_stats(ort_embed(plain["artifact"], ids, mask), ort_embed(res["artifact"], ids, mask))
    assert same["cosine_min"] > 0.99999  # the rewrites do not change what int8 computes


def test_per_tensor_nodes_mixes_weight_scales(tiny_onnx, tmp_path) -> None:
    from slimkit.exporters.encoder_int8 import EncoderInt8Config, quantize_encoder_int8

    calib = [dict(zip(("input_ids", "attention_mask"), _feeds(8, 24, seed=s), strict=True)) for s in range(2)]
    cfg = EncoderInt8Config(weight_only=(), outlier_channels=4, per_tensor_nodes=(r"attention/self/query/",),
                            scalar_zero_points=False)  # the zero-point vector tells per-channel weights apart
    res = quantize_encoder_int8(tiny_onnx, tmp_path / "mixed.onnx", calibration=calib, config=cfg)
    proto = onnx.load(str(res["artifact"]))
    inits = {t.name: t for t in proto.graph.initializer}
    scales = {n.name: int(np.prod(inits[n.input[3]].dims)) for n in proto.graph.node
              if n.op_type == "MatMulInteger" and n.input[3] in inits}  # weight zero point: 1 or per channel
    assert scales, "no MatMulInteger with a weight zero point"
    query = [k for k in scales if "self/query" in k]
    assert query and all(scales[k] == 1 for k in query)
    assert any(v > 1 for k, v in scales.items() if "self/query" not in k)


def test_fused_graph_smoothing_and_outliers_exact_then_int8(tiny_onnx, tmp_path) -> None:
    """On the fused graph (Attention, BiasGelu), smoothing of the packed Q/K/V weight and the FFN input and
    the outlier side paths leave the fp32 outputs unchanged; int8 of it keeps a cosine floor and runs
    QAttention."""
    from slimkit.evaluation.embedding_fidelity import cosine_stats
    from slimkit.exporters.encoder_int8 import EncoderInt8Config, prepare_encoder_int8, quantize_encoder_int8
    from slimkit.exporters.onnx_transformer import ort_embed

    calib = [dict(zip(("input_ids", "attention_mask"), _feeds(8, 24, seed=s), strict=True)) for s in range(3)]
    cfg = EncoderInt8Config(weight_only=(), outlier_channels=4, fuse_attention_heads=4, outlier_select=False,
                            smooth_select=False)
    proto, info = prepare_encoder_int8(tiny_onnx, calib, cfg, tmp_path)
    assert sorted(n for n in info["smoothed"] if n.startswith("Attention_")) == ["Attention_0", "Attention_1"]
    # packed Q/K/V and FFN input (input Mul), attention output projection (folded into the value columns)
    assert len(info["smoothed"]) == 6 and len(info["outlier_side_nodes"]) == 4  # 2 layers: up + down each
    assert sum("attention/output/dense" in n for n in info["smoothed"]) == 2
    ops = [n.op_type for n in proto.graph.node]
    # BiasGelu on the 2 side paths only: the FFNs keep MatMul + bias Add + Gelu (the bias folds into the int8 MatMul)
    assert ops.count("Attention") == 2 and ops.count("BiasGelu") == 2 and ops.count("Gelu") == 2
    onnx.save_model(proto, str(tmp_path / "prepared.onnx"))
    ids, mask = _feeds(6, 30, seed=7)
    np.testing.assert_allclose(ort_embed(tmp_path / "prepared.onnx", ids, mask), ort_embed(tiny_onnx, ids, mask),
                               rtol=1e-4, atol=1e-5)
    res = quantize_encoder_int8(tiny_onnx, tmp_path / "int8.onnx", calibration=calib, config=cfg)
    q_ops = [n.op_type for n in onnx.load(str(res["artifact"])).graph.node]
    assert q_ops.count("QAttention") == 2 and "QEmbedLayerNormalization" in q_ops
    run = _session_ops(res["artifact"])  # what onnxruntime runs: the FFN biases inside DynamicQuantizeMatMul
    assert run.get("Gelu") == 2 and run.get("BiasGelu") == 2 and run.get("DynamicQuantizeMatMul") == 6
    fid = cosine_stats(ort_embed(res["artifact"], ids, mask), ort_embed(tiny_onnx, ids, mask))
    assert fid["cosine"] >= 0.99 and fid["cosine_min"] >= 0.98, fid


def test_fused_int8_without_side_paths_runs_only_the_smoothing_muls_extra(tiny_onnx, tmp_path) -> None:
    """outlier_channels=0 on the fused graph (bench/minilm.py's int8-fused-smooth row): no fp32 side MatMul,
    no BiasGelu; beyond what the peer's fused int8 graph runs, only the smoothing Muls (one per smoothed
    LayerNorm output); the int8 output keeps a cosine floor against fp32."""
    from slimkit.evaluation.embedding_fidelity import cosine_stats
    from slimkit.exporters.encoder_int8 import EncoderInt8Config, quantize_encoder_int8
    from slimkit.exporters.onnx_transformer import ort_embed

    calib = [_feeds(8, 24, seed=s) for s in range(3)]
    cfg = EncoderInt8Config(weight_only=(), outlier_channels=0, fuse_attention_heads=4, outlier_select=False,
                            smooth_select=False)
    res = quantize_encoder_int8(tiny_onnx, tmp_path / "int8.onnx", calibration=calib, config=cfg)
    assert res["outlier_side_nodes"] == [] and len(res["smoothed"]) == 6
    run = _session_ops(res["artifact"])
    assert run.get("QAttention") == 2 and run.get("DynamicQuantizeMatMul") == 6 and run.get("Gelu") == 2
    # the only extra Muls are the smoothing ones: 2 layers x (packed QKV input, FFN input)
    assert "BiasGelu" not in run and "MatMul" not in run
    smooth_muls = [n.name for n in onnx.load(str(res["artifact"])).graph.node if n.name.endswith("_SmoothMul")]
    assert len(smooth_muls) == 4 and run.get("Mul", 0) == 4 + 1  # + 1 Mul of the fp32 graph
    ids, mask = _feeds(6, 30, seed=7)
    fid = cosine_stats(ort_embed(res["artifact"], ids, mask), ort_embed(tiny_onnx, ids, mask))
    assert fid["cosine"] >= 0.99 and fid["cosine_min"] >= 0.98, fid


def test_outlier_paths_selected_per_layer_by_measured_fidelity(tiny_onnx, tmp_path) -> None:
    """outlier_select measures each side path left out and drops those the calibration floors do not need,
    and smooth_select then does the same for each smoothing Mul: with floors any int8 build meets, every
    path and Mul goes (each measured once); with floors none meets, every one stays; a subset of paths
    (prepare_encoder_int8(outlier_nodes=...)) still computes the fp32 outputs."""
    from slimkit.evaluation.embedding_fidelity import cosine_stats
    from slimkit.exporters.encoder_int8 import EncoderInt8Config, prepare_encoder_int8, quantize_encoder_int8
    from slimkit.exporters.onnx_transformer import ort_embed

    calib = [dict(zip(("input_ids", "attention_mask"), _feeds(8, 24, seed=s), strict=True)) for s in range(2)]
    loose = EncoderInt8Config(weight_only=(), outlier_channels=4, cosine_floor=0.5, cosine_min_floor=0.5,
                              fuse_attention_heads=4)  # the fused graph: both FFNs have a side path
    res = quantize_encoder_int8(tiny_onnx, tmp_path / "loose.onnx", calibration=calib, config=loose)
    sel = res["outlier_selection"]
    assert len(sel["without"]) == 2 and sel["kept"] == [] and res["outlier_side_nodes"] == []
    assert [s["dropped"] for s in sel["steps"]] == [True, True]
    assert [n.op_type for n in onnx.load(str(res["artifact"])).graph.node].count("BiasGelu") == 0  # no side path
    smooth = res["smoothing_selection"]  # then the smoothing Mul of each group (packed QKV, FFN input): all go
    assert len(smooth["without"]) == 4 and smooth["kept"] == [] and [s["dropped"] for s in smooth["steps"]] == [True] * 4
    assert not [n for n in onnx.load(str(res["artifact"])).graph.node if n.name.endswith("_SmoothMul")]
    assert sorted(res["smoothed"]) == [f"/transformer/encoder/layer.{i}/attention/output/dense/MatMul" for i in (0, 1)]
    # the last step's build is the written file: same calibration fidelity
    assert abs(smooth["steps"][-1]["cosine_min"] - res["calibration_fidelity"]["cosine_min"]) < 1e-9
    strict = EncoderInt8Config(weight_only=(), outlier_channels=4, cosine_floor=1.0, cosine_min_floor=1.0,
                               fuse_attention_heads=4)
    res = quantize_encoder_int8(tiny_onnx, tmp_path / "strict.onnx", calibration=calib, config=strict)
    assert res["outlier_selection"]["without"] == [] and len(res["outlier_side_nodes"]) == 4
    assert res["smoothing_selection"]["without"] == [] and len(res["smoothing_selection"]["kept"]) == 4
    assert len([n for n in onnx.load(str(res["artifact"])).graph.node if n.name.endswith("_SmoothMul")]) == 4
    first = "/transformer/encoder/layer.0/output/dense/MatMul"
    proto, info = prepare_encoder_int8(tiny_onnx, calib, strict, tmp_path, outlier_nodes=[first])
    assert info["outlier_targets"] == [first, first.replace("layer.0", "layer.1")]
    assert info["outlier_side_nodes"] == [f"{first}_OutlierUp", f"{first}_OutlierDown"]
    onnx.save_model(proto, str(tmp_path / "one-path.onnx"))
    ids, mask = _feeds(5, 21, seed=3)
    same = cosine_stats(ort_embed(tmp_path / "one-path.onnx", ids, mask), ort_embed(tiny_onnx, ids, mask))
    assert same["cosine_min"] > 0.99999


def test_token_type_fold_and_scalar_zero_points_are_exact(tiny_onnx, tmp_path) -> None:
    """fold_token_types on the unfused export and on the fused graph (EmbedLayerNormalization loses its
    segment inputs): outputs equal to float rounding, the token-type lookup and its id subgraph gone;
    scalar_weight_zero_points on per-channel int8 (MatMulInteger and QAttention): bit-identical outputs."""
    from onnxruntime.quantization import quantize_dynamic

    from slimkit.exporters.encoder_graph import fold_token_types, scalar_weight_zero_points
    from slimkit.exporters.onnx_transformer import optimize_encoder_onnx, ort_embed

    fused = tmp_path / "fused.onnx"
    optimize_encoder_onnx(tiny_onnx, fused, num_heads=4, hidden_size=32)
    for src in (tiny_onnx, fused):
        proto = onnx.load(str(src))
        n_before = len(proto.graph.node)
        assert fold_token_types(proto) == 1 and fold_token_types(proto) == 0  # nothing left to fold
        assert len(proto.graph.node) < n_before - 20  # the Shape/Slice/Expand/GatherElements chain is gone
        assert not [i for i in proto.graph.initializer if "token_type" in i.name]
        emb = [n for n in proto.graph.node if n.op_type == "EmbedLayerNormalization"]
        assert all(n.input[1] == "" and n.input[4] == "" for n in emb)
        out = tmp_path / f"folded-{src.name}"
        onnx.save(proto, str(out))
        for b, s in ((1, 5), (3, 40)):
            ids, mask = _feeds(b, s, seed=2)
            np.testing.assert_allclose(ort_embed(out, ids, mask), ort_embed(src, ids, mask), rtol=0, atol=1e-6)
    pc = tmp_path / "pc.onnx"
    quantize_dynamic(str(tmp_path / "folded-fused.onnx"), str(pc), per_channel=True,
                     op_types_to_quantize=["MatMul", "Attention", "EmbedLayerNormalization"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    proto = onnx.load(str(pc))
    assert scalar_weight_zero_points(proto) == 2 + 2 * 3  # 2 QAttention; per layer attention output, FFN in, out
    zps = [n.input[3 if n.op_type == "MatMulInteger" else 7] for n in proto.graph.node
           if n.op_type in ("MatMulInteger", "QAttention")]
    inits = {t.name: t for t in proto.graph.initializer}
    assert zps and all(int(np.prod(inits[z].dims)) == 1 for z in zps)
    onnx.save(proto, str(tmp_path / "zp.onnx"))
    ids, mask = _feeds(3, 33, seed=4)
    np.testing.assert_array_equal(ort_embed(tmp_path / "zp.onnx", ids, mask), ort_embed(pc, ids, mask))


def test_output_projection_smoothing_folds_into_values_exactly(tmp_path) -> None:
    """smooth_into_values on the unfused export (distinct, non-zero biases, so the value bias is an initializer
    of its own): both attention output projections smoothed, no node added, fp32 outputs unchanged."""
    from slimkit.exporters.encoder_int8 import EncoderInt8Config, prepare_encoder_int8
    from slimkit.exporters.onnx_transformer import export_encoder_onnx, ort_embed
    from slimkit.models.sentence import SentenceEncoder

    torch.manual_seed(1)
    cfg = transformers.BertConfig(vocab_size=2048, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    src = export_encoder_onnx(SentenceEncoder(model), tmp_path / "biased.onnx")
    calib = [_feeds(8, 24, seed=s) for s in range(2)]
    only_values = EncoderInt8Config(smooth_nodes=(), outlier_channels=0)
    proto, info = prepare_encoder_int8(src, calib, only_values, tmp_path)
    assert info["smoothed"] == [f"/transformer/encoder/layer.{i}/attention/output/dense/MatMul" for i in (0, 1)]
    plain, _ = prepare_encoder_int8(src, calib, EncoderInt8Config(smooth_nodes=(), outlier_channels=0,
                                                                  smooth_output_nodes=()), tmp_path)
    assert [n.op_type for n in proto.graph.node] == [n.op_type for n in plain.graph.node]  # no run-time op
    ws = [{t.name: onnx.numpy_helper.to_array(t) for t in g.graph.initializer} for g in (proto, plain)]
    changed = [k for k in ws[1] if ws[1][k].dtype == np.float32 and not np.array_equal(ws[0][k], ws[1][k])]
    assert len(changed) == 2 * 3, changed  # per layer: value weight and bias, output projection weight
    onnx.save_model(proto, str(tmp_path / "smoothed.onnx"))
    ids, mask = _feeds(5, 21, seed=3)
    np.testing.assert_allclose(ort_embed(tmp_path / "smoothed.onnx", ids, mask), ort_embed(src, ids, mask),
                               rtol=1e-4, atol=1e-5)
