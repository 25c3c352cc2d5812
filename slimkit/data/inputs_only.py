"""Unlabelled, offline inputs for real pretrained models, as DataBundles a recipe can name.

- ``sample-images``: ImageNet-style photo crops (:mod:`slimkit.data.sample_images`): test = the evaluation
  grid (96 crops), calibration/train = the disjoint calibration grid (72 crops); 3 x ``image_size`` (224)
  pixels, ImageNet-normalized; ``num_classes`` 1000 (ImageNet's, which the crops are meant for).
- ``sentences``: the 300 offline English sentences (:mod:`slimkit.data.sentences`), tokenized with
  ``DataConfig.tokenizer``; calibration/train = ``calibration_samples`` sentences (at most 100) spread over
  every topic, test = the rest. With ``path``, the user's own texts instead (``read_texts``: one per line, or
  ``.jsonl`` with a ``"text"`` field), shuffled with ``seed``: calibration = the first ``calibration_samples``
  (at most all but one), test = the rest; the two never overlap. Batches are ``{"input_ids",
  "attention_mask"}`` mappings padded per batch.

Batches carry no labels (``DataBundle.labelled`` is False): a run on them reports fidelity to the
baseline model (cosine, top-1 agreement) instead of accuracy. ``test_limit`` takes a prefix of the test
inputs (every prefix of both grids and of the sentence order covers both photographs / every topic).
"""

from __future__ import annotations

from typing import Any

from slimkit.data.core import DataBundle
from slimkit.errors import DataError

__all__ = ["load_sample_images_bundle", "load_sentences_bundle"]


def _take(n: int, limit: int | None) -> int:
    return n if limit is None else min(n, limit)


def load_sample_images_bundle(cfg: Any) -> DataBundle:
    from slimkit.data.sample_images import CALIBRATION_SCALES, NUM_CROPS, crop_specs, sample_image_batches

    size = cfg.image_size or 224
    bs = int(cfg.batch_size)
    n_test = _take(NUM_CROPS, cfg.test_limit)
    n_cal = _take(len(crop_specs(CALIBRATION_SCALES)), cfg.calibration_samples)
    test = sample_image_batches(bs, n_test, size=size)
    calibration = sample_image_batches(bs, n_cal, size=size, scales=CALIBRATION_SCALES)
    return DataBundle(train=calibration, val=None, test=test, calibration=calibration,  # type: ignore[arg-type]
                      num_classes=1000, input_shape=(3, size, size), example_inputs=(test[0][:1].clone(),),
                      class_names=[str(i) for i in range(1000)], name=str(cfg.name), labelled=False,
                      info={"source": "scikit-learn sample photographs (china.jpg, flower.jpg)",
                            "preprocess": f"crops {size}x{size}, ImageNet mean/std", "test_size": n_test,
                            "calibration_size": n_cal, "labels": "none: fidelity to the baseline is measured"})


def _token_batches(tokenizer: Any, texts: list[str], batch_size: int, max_length: int,
                   padding: str = "longest") -> list[dict[str, Any]]:
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding=padding, truncation=True, max_length=max_length,
                        return_tensors="pt")
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


def load_sentences_bundle(cfg: Any) -> DataBundle:
    from slimkit.data.sentences import read_texts, split_sentences
    from slimkit.models.hf import load_hf_tokenizer

    if cfg.tokenizer is None:
        raise DataError("data 'sentences' needs a tokenizer.", hint="Set data.tokenizer or use a model.hf model.")
    if cfg.path is None:
        source = "slimkit.data.sentences (300 offline sentences, 30 topics)"
        calib, rest = split_sentences(min(100, int(cfg.calibration_samples)))
    else:
        import random

        source = f"{cfg.path} (the user's texts, shuffled with seed {cfg.seed})"
        texts = read_texts(cfg.path)
        if len(texts) < 2:
            raise DataError(f"data.path {cfg.path} holds {len(texts)} distinct text; calibration and the test need "
                            "at least one each.", hint="Give a few hundred texts, one per line.")
        random.Random(cfg.seed).shuffle(texts)
        n_cal = min(int(cfg.calibration_samples), len(texts) - 1)
        calib, rest = texts[:n_cal], texts[n_cal:]
    tokenizer = load_hf_tokenizer(cfg.tokenizer)
    rest = rest[:_take(len(rest), cfg.test_limit)]
    if not calib or not rest:
        raise DataError(f"data 'sentences' left {len(calib)} calibration and {len(rest)} test sentences.",
                        hint="Use calibration_samples >= 1 and test_limit >= 1.")
    bs = int(cfg.batch_size)
    test = _token_batches(tokenizer, rest, bs, cfg.max_length, cfg.padding)
    calibration = _token_batches(tokenizer, calib, bs, cfg.max_length, cfg.padding)
    # padding "max_length": the example (latency, export trace) is max_length tokens long, like every batch
    first = tokenizer(rest[:1], truncation=True, max_length=cfg.max_length, return_tensors="pt",
                      padding=cfg.padding)
    example = (first["input_ids"], first["attention_mask"])
    return DataBundle(train=calibration, val=None, test=test, calibration=calibration,  # type: ignore[arg-type]
                      num_classes=0, input_shape=tuple(example[0].shape[1:]), example_inputs=example,
                      class_names=[], name=str(cfg.name), labelled=False,
                      info={"source": source,
                            "tokenizer": cfg.tokenizer, "test_size": len(rest), "calibration_size": len(calib),
                            "labels": "none: fidelity to the baseline is measured"})
