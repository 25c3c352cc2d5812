"""Embedding fidelity metrics and the offline sentence set (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimkit.data.sentences import TOPICS, sentence_topics, sentences, split_sentences
from slimkit.errors import DataError
from slimkit.evaluation.embedding_fidelity import (
    cosine_stats,
    embedding_fidelity,
    neighbours,
    retrieval_agreement,
    top1_agreement,
)


def test_sentence_set_is_fixed_varied_and_split() -> None:
    s = sentences()
    assert len(s) == 300 and len(set(s)) == 300 and len(TOPICS) == 30
    assert sentence_topics()[:10] == [0] * 10 and sentence_topics()[-1] == 29
    lengths = [len(x.split()) for x in s]
    assert min(lengths) == 1 and max(lengths) >= 14
    calib, evals = split_sentences(100)
    assert len(calib) == 100 and len(evals) == 200 and not set(calib) & set(evals)
    assert {sentence_topics()[s.index(x)] for x in calib} == set(range(30))  # every topic calibrates
    assert split_sentences(100) == (calib, evals)
    with pytest.raises(DataError):
        split_sentences(301)


def test_identical_embeddings_are_perfect() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 16))
    f = embedding_fidelity(a, a.copy(), k=5)
    assert f["cosine"] == pytest.approx(1.0) and f["cosine_min"] == pytest.approx(1.0)
    assert f["top1_agreement"] == 1.0 and f["retrieval_overlap@5"] == 1.0 and f["retrieval_unchanged@5"] == 1.0
    # scale does not matter (cosine), torch tensors are accepted
    assert embedding_fidelity(torch.from_numpy(3 * a), a)["cosine_min"] == pytest.approx(1.0)


def test_noise_lowers_fidelity_and_retrieval() -> None:
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(10, 32))
    a = np.repeat(centers, 4, axis=0) + 0.3 * rng.normal(size=(40, 32))  # 10 clusters of 4
    noisy = a + 1.5 * rng.normal(size=a.shape)
    f = embedding_fidelity(noisy, a, k=3)
    assert f["cosine"] < 0.95 and f["cosine_min"] < f["cosine"]
    assert f["retrieval_overlap@3"] < 1.0 and f["retrieval_unchanged@3"] <= f["retrieval_overlap@3"]
    # neighbours of a clustered set are in the same cluster
    nb = neighbours(a, 3)
    assert nb.shape == (40, 3) and all((nb[i] // 4 == i // 4).all() for i in range(40))
    assert 0.0 <= top1_agreement(noisy, a) <= 1.0
    ra = retrieval_agreement(noisy, a, 3)
    assert set(ra) == {"overlap", "unchanged"}


def test_cosine_stats_exact_and_errors() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[1.0, 0.0], [1.0, 1.0]])
    c = cosine_stats(a, b)
    assert c["cosine_min"] == pytest.approx(2 ** -0.5) and c["cosine"] == pytest.approx((1 + 2 ** -0.5) / 2)
    with pytest.raises(DataError):
        cosine_stats(a, b[:1])
    with pytest.raises(DataError):
        cosine_stats(np.zeros(3), np.zeros(3))
    with pytest.raises(DataError):
        neighbours(a, 2)  # k must be < n
