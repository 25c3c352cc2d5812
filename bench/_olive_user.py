"""Olive's user script for bench/olive.py: it runs INSIDE the separate Olive environment (/work/olive-venv),
never in slimkit's, and imports neither slimkit nor anything of bench/. Olive loads it by path
(``user_script`` in the workflow JSON that bench/olive.py writes).

- dataset ``minilm_sentences``: the token batches bench/olive.py saved (``data.npz``: the held-out sentences
  or the calibration ones, every row padded to 128 tokens), as ``({input_ids, attention_mask,
  token_type_ids}, 0)`` items; Olive's default dataloader batches them (batch 8 in the workflow).
- ``embedding_cosine``: the custom metric, mean cosine (and minimum) of the mean-pooled sentence embeddings of
  the candidate model to the fp32 PyTorch model's (``reference`` in data.npz, computed by slimkit), the same
  quality bench/auto.py scores. It accepts the ONNX candidates and Olive's PyTorch input model.
- dataset ``fmnist_images`` (bench/olive.py --case mobilenet): the Fashion-MNIST images bench/olive.py saved
  (``images.npz``, preprocessed as the fp32 baseline expects: 3 channels, ImageNet normalization, the case's
  size): the calibration images (``split="calib"``, slimkit's calibration set, drawn from the training
  images) or the test images (``"test"``), as ``({input_name: image}, label)`` items.
- ``image_accuracy``: the custom metric, top-1 accuracy of the ONNX candidate on the test images, the
  accuracy bench/auto.py scores (the same images, in the same order).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from olive.data.registry import Registry


def _load(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(path)
    prefix = "" if split == "eval" else "calib_"
    return data[prefix + "input_ids"].astype(np.int64), data[prefix + "attention_mask"].astype(np.int64)


class _Rows:
    def __init__(self, ids: np.ndarray, mask: np.ndarray) -> None:
        self.ids, self.mask = ids, mask

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[dict[str, Any], int]:
        import torch

        ids = torch.from_numpy(self.ids[i])
        return {"input_ids": ids, "attention_mask": torch.from_numpy(self.mask[i]),
                "token_type_ids": torch.zeros_like(ids)}, 0


@Registry.register_dataset("minilm_sentences")
def minilm_sentences(data_path: str, split: str = "eval", **_: Any) -> _Rows:
    return _Rows(*_load(data_path, split))


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float64)
    return (hidden.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def embedding_cosine(model: Any, device: Any, execution_providers: Any, data_path: str, batch_size: int = 8,
                     threads: int = 1) -> dict[str, float]:
    """``{"cosine", "cosine_min"}`` of the model's sentence embeddings to the fp32 reference."""
    ids, mask = _load(data_path, "eval")
    ref = np.load(data_path)["reference"].astype(np.float64)
    if str(getattr(model, "framework", "")).lower().endswith("onnx"):
        settings = {"session_options": {"intra_op_num_threads": threads, "inter_op_num_threads": 1}}
        sess = model.prepare_session(inference_settings=settings, device=device,
                                     execution_providers=execution_providers)
        names = [i.name for i in sess.get_inputs()]

        def run(i: np.ndarray, m: np.ndarray) -> np.ndarray:
            feed = {"input_ids": i, "attention_mask": m, "token_type_ids": np.zeros_like(i)}
            return sess.run(None, {k: v for k, v in feed.items() if k in names})[0]
    else:  # the PyTorch input model (Olive evaluates the input model too)
        import torch

        net = model.load_model().eval()
        torch.set_num_threads(threads)

        def run(i: np.ndarray, m: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = net(input_ids=torch.from_numpy(i), attention_mask=torch.from_numpy(m))
            return (out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]).numpy()

    embs = []
    for s in range(0, len(ids), batch_size):
        out = run(ids[s:s + batch_size], mask[s:s + batch_size])
        embs.append(out if out.ndim == 2 else _mean_pool(out, mask[s:s + batch_size]))
    emb = np.concatenate(embs).astype(np.float64)
    cos = (emb * ref).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
    return {"cosine": float(cos.mean()), "cosine_min": float(cos.min())}


class _Images:
    def __init__(self, x: np.ndarray, y: np.ndarray, input_name: str) -> None:
        self.x, self.y, self.name = x, y, input_name

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[dict[str, Any], int]:
        import torch

        return {self.name: torch.from_numpy(self.x[i])}, int(self.y[i])


@Registry.register_dataset("fmnist_images")
def fmnist_images(data_path: str, split: str = "test", input_name: str = "x", **_: Any) -> _Images:
    data = np.load(data_path)
    return _Images(data[f"{split}_x"].astype(np.float32), data[f"{split}_y"].astype(np.int64), input_name)


def image_accuracy(model: Any, device: Any, execution_providers: Any, data_path: str, batch_size: int = 64,
                   threads: int = 1) -> dict[str, float]:
    """``{"accuracy"}``: top-1 accuracy of an ONNX classifier on the saved test images."""
    data = np.load(data_path)
    x, y = data["test_x"].astype(np.float32), data["test_y"].astype(np.int64)
    settings = {"session_options": {"intra_op_num_threads": threads, "inter_op_num_threads": 1}}
    sess = model.prepare_session(inference_settings=settings, device=device, execution_providers=execution_providers)
    name = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {name: x[s:s + batch_size]})[0].argmax(-1)
                           for s in range(0, len(x), batch_size)])
    return {"accuracy": float((pred == y).mean())}


def _patch_olive() -> None:
    """Four bugs of Olive 0.13.0 (with pydantic 2.14) stop an ``olive run`` search with a custom metric; each
    patched function does what it was written to do, nothing else of Olive is changed:

    - ``Metric.validate_backend`` sets a custom metric's backend to None and ``Metric.serialize_backend``
      then calls ``None.model_dump()`` (PydanticSerializationError when the run config is serialized);
    - ``find_all_resources`` probes every dict of the evaluator config as a resource path and expects a
      ValueError from the ones that are not, but ``CaseInsensitiveEnum._missing_`` calls ``None.lower()`` on
      the evaluator's default ``type: None`` (AttributeError). Non-strings now match no member (ValueError);
    - Olive's configs are dumped and rebuilt between its steps (``model_dump`` then validate), and pydantic
      2.14 dumps a metric's ``user_config`` by its declared type (``ConfigBase``, no fields), so
      ``evaluate_func`` is lost ("evaluate_func or metric_func is not specified in the metric config").
      ``ConfigBase.model_dump`` now defaults to ``serialize_as_any=True`` (each config dumped as what it is);
    - a search step whose pass output is in Olive's cache records it with ``FootprintNode.update(model_config=
      ...)``, a field whose name is ``model_config_data`` (``model_config`` is its alias, reserved by pydantic):
      ValueError, the step is dropped as FAILED, so every step after the first failed. ``update`` now maps
      the alias to the field.
    """
    from olive.common import config_utils
    from olive.engine import footprint
    from olive.evaluator import metric

    def serialize_backend(self: Any, backend: Any) -> Any:
        return backend if backend is None or isinstance(backend, str) else backend.model_dump()

    def _missing_(cls: Any, value: Any) -> Any:
        if not isinstance(value, str):
            return None
        value = value.lower()
        for member in cls:
            if member.lower() == value:
                return member
        return None

    metric.Metric.serialize_backend.__code__ = serialize_backend.__code__
    dump = config_utils.ConfigBase.model_dump

    def model_dump(self: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("serialize_as_any", True)
        return dump(self, **kwargs)

    config_utils.ConfigBase.model_dump = model_dump

    def update(self: Any, **kwargs: Any) -> None:
        for k, v in kwargs.items():
            setattr(self, "model_config_data" if k == "model_config" else k, v)

    footprint.FootprintNode.update = update
    config_utils.CaseInsensitiveEnum._missing_.__func__.__code__ = _missing_.__code__


if __name__ == "__main__":  # ``python _olive_user.py WORKFLOW.json``: olive run, with the patch above
    import sys

    _patch_olive()
    from olive.workflows import run as olive_run

    olive_run(sys.argv[1])
