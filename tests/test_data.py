"""slimkit.data: digits, Fashion-MNIST (IDX), image folders, tensor files, splits and determinism."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from conftest import FMNIST_DIR, needs_fmnist

from slimkit.config.recipe import DataConfig
from slimkit.data import DataBundle, calibration_loader, load_data, stratified_split
from slimkit.data.core import TensorPairDataset
from slimkit.data.idx import parse_idx, read_idx, write_idx
from slimkit.errors import DataError, RecipeError


def _first(loader):
    return next(iter(loader))


# ---------------------------------------------------------------- digits
def test_digits_shapes_classes_and_split_sizes():
    b = load_data(DataConfig())
    assert isinstance(b, DataBundle)
    assert b.name == "digits" and b.num_classes == 10 and b.input_shape == (1, 8, 8)
    assert b.class_names == [str(i) for i in range(10)]
    n_test = round(0.25 * 1797)  # 449
    n_val = round(0.1 * (1797 - n_test))  # 135
    assert len(b.test.dataset) == n_test
    assert len(b.val.dataset) == n_val
    assert len(b.train.dataset) == 1797 - n_test - n_val == 1213
    assert b.info["train_size"] == 1213
    x, y = _first(b.train)
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0  # /16
    assert len(b.example_inputs) == 1 and b.example_inputs[0].shape == (1, 1, 8, 8)
    assert len(b.calibration.dataset) == 256
    # stratified: every class is in test with 44 or 45 samples (1797 / 4 / 10 ~ 45)
    counts = torch.bincount(b.test.dataset.y, minlength=10)
    assert int(counts.min()) >= 43 and int(counts.max()) <= 47


def test_digits_matches_sklearn_load_digits():
    from sklearn.datasets import load_digits

    from slimkit.data.digits import digits_arrays

    x, y = digits_arrays()
    ref = load_digits()
    np.testing.assert_array_equal(x, ref.data.astype(np.float32))
    np.testing.assert_array_equal(y, ref.target)


def test_splits_are_disjoint_and_cover_everything():
    b = load_data(DataConfig(seed=3))
    rows = torch.cat([b.train.dataset.x, b.val.dataset.x, b.test.dataset.x]).flatten(1)
    assert rows.shape[0] == 1797
    from slimkit.data.digits import digits_arrays

    # the three splits hold exactly the 1797 rows of the dataset (as a multiset)
    ref = digits_arrays()[0]
    assert sorted(r.numpy().tobytes() for r in rows) == sorted(r.tobytes() for r in ref)


def test_digits_deterministic_batches():
    x1, y1 = _first(load_data(DataConfig(seed=0)).train)
    x2, y2 = _first(load_data(DataConfig(seed=0)).train)
    x3, y3 = _first(load_data(DataConfig(seed=1)).train)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    # the test split is not shuffled: two iterations give the same order
    b = load_data(DataConfig(seed=0))
    assert torch.equal(_first(b.test)[1], _first(b.test)[1])
    cal1 = torch.cat([x for x, _ in load_data(DataConfig(seed=0)).calibration])
    cal2 = torch.cat([x for x, _ in load_data(DataConfig(seed=0)).calibration])
    assert torch.equal(cal1, cal2)


def test_digits_limit_and_no_val():
    b = load_data(DataConfig(limit=100, val_fraction=0.0, batch_size=32, calibration_samples=1000))
    assert b.val is None
    assert len(b.train.dataset) == 100
    assert len(b.test.dataset) == 449  # the test split is not limited
    assert len(b.calibration.dataset) == 100  # capped at the training set
    assert len(b.train) == 4  # batches of 32
    assert set(b.train.dataset.y.tolist()) == set(range(10))  # stratified even when small

    b = load_data({"limit": 200, "val_fraction": 0.2})
    assert len(b.train.dataset) + len(b.val.dataset) == 200 and len(b.val.dataset) == 40


def test_load_data_accepts_mapping_and_reports_bad_config():
    assert load_data({"name": "digits", "batch_size": 16}).train.batch_size == 16
    with pytest.raises(RecipeError, match="batch_size"):
        load_data({"batch_size": 0})


def test_stratified_split_counts():
    y = np.repeat(np.arange(3), [10, 20, 70])
    kept, taken = stratified_split(y, 0.2, seed=0)
    assert len(taken) == 20 and len(kept) == 80
    assert np.bincount(y[taken]).tolist() == [2, 4, 14]
    assert not set(kept) & set(taken)
    kept2, taken2 = stratified_split(y, 0.2, seed=0)
    assert np.array_equal(taken, taken2)


def test_calibration_loader_deterministic_subset():
    ds = TensorPairDataset(torch.arange(100, dtype=torch.float32).view(100, 1), torch.zeros(100, dtype=torch.long))
    a = torch.cat([x for x, _ in calibration_loader(ds, 10, 4, seed=5)])
    b = torch.cat([x for x, _ in calibration_loader(ds, 10, 4, seed=5)])
    c = torch.cat([x for x, _ in calibration_loader(ds, 10, 4, seed=6)])
    assert a.shape == (10, 1) and torch.equal(a, b) and not torch.equal(a, c)
    assert len(set(a.flatten().tolist())) == 10  # without replacement


# ---------------------------------------------------------------- IDX / Fashion-MNIST
def _write_fake_fmnist(root, n_train=40, n_test=20):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return root


def test_idx_parser_on_handwritten_bytes(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = struct.pack(">HBB3I", 0, 0x08, 3, 2, 3, 4) + arr.tobytes()
    np.testing.assert_array_equal(parse_idx(raw), arr)
    p = tmp_path / "a.idx.gz"
    p.write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(p), arr)
    ints = np.array([1, -2, 300000], dtype=np.int32)  # big-endian int32 round trip
    write_idx(tmp_path / "i.idx", ints)
    assert read_idx(tmp_path / "i.idx").tolist() == [1, -2, 300000]


def test_idx_truncated_and_bad_magic(tmp_path):
    raw = struct.pack(">HBB3I", 0, 0x08, 3, 2, 3, 4) + bytes(24)
    with pytest.raises(DataError, match="truncated"):
        parse_idx(raw[:-1])
    with pytest.raises(DataError, match="not an IDX file"):
        parse_idx(b"\x12\x34" + raw[2:])
    p = tmp_path / "cut.gz"
    p.write_bytes(gzip.compress(raw)[:-6])  # a cut-off gzip stream
    with pytest.raises(DataError, match="truncated"):
        read_idx(p)


def test_fashion_mnist_from_custom_dir(tmp_path):
    root = _write_fake_fmnist(tmp_path / "fm")
    b = load_data(DataConfig(name="fashion-mnist", path=root, val_fraction=0.25, batch_size=8))
    assert b.input_shape == (1, 28, 28) and b.num_classes == 10 and b.class_names[0] == "T-shirt/top"
    assert len(b.test.dataset) == 20 and len(b.val.dataset) == 10 and len(b.train.dataset) == 30
    x, y = _first(b.train)
    assert x.dtype == torch.float32 and x.shape == (8, 1, 28, 28)
    raw = read_idx(root / "train-images-idx3-ubyte.gz")
    lo, hi = (0 - 0.2860) / 0.3530, (1 - 0.2860) / 0.3530
    assert lo - 1e-5 <= float(x.min()) and float(x.max()) <= hi + 1e-5
    assert raw.shape == (40, 28, 28)


def test_fashion_mnist_truncated_file(tmp_path):
    root = _write_fake_fmnist(tmp_path / "fm")
    f = root / "train-labels-idx1-ubyte.gz"
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes())[:-3]))  # valid gzip, short payload
    with pytest.raises(DataError, match="truncated"):
        load_data(DataConfig(name="fashion-mnist", path=root))


def test_fashion_mnist_missing_names_apt_package(tmp_path):
    with pytest.raises(DataError) as info:
        load_data(DataConfig(name="fashion-mnist", path=tmp_path / "nowhere"))
    msg = str(info.value)
    assert "dataset-fashion-mnist" in msg and "apt-get install" in msg and str(tmp_path / "nowhere") in msg


@needs_fmnist
def test_real_fashion_mnist():
    b = load_data(DataConfig(name="fashion-mnist", batch_size=256))
    assert b.info["train_size"] == 54000 and b.info["val_size"] == 6000 and b.info["test_size"] == 10000
    assert read_idx(FMNIST_DIR / "t10k-labels-idx1-ubyte.gz").shape == (10000,)
    assert torch.bincount(b.test.dataset.y).tolist() == [1000] * 10
    x, y = _first(b.train)
    assert x.shape == (256, 1, 28, 28)
    assert abs(float(b.train.dataset._prep(b.train.dataset.x[:5000]).mean())) < 0.05  # normalised


# ---------------------------------------------------------------- image folder
def _write_pngs(root, classes=("cat", "dog", "emu"), per_class=6, size=(20, 12)):
    from PIL import Image

    for ci, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            color = (40 * ci + 10, 200 - 30 * ci, 5 * i)
            img = Image.new("RGB" if i % 2 else "L", size, color if i % 2 else 80 + ci)
            img.save(root / name / f"{i}.{'png' if i % 3 else 'jpg'}")
    return root


def test_image_folder(tmp_path):
    root = _write_pngs(tmp_path / "imgs")
    b = load_data(DataConfig(name="image-folder", path=root, image_size=16, test_fraction=1 / 3,
                             val_fraction=0.0, batch_size=4))
    assert b.class_names == ["cat", "dog", "emu"] and b.num_classes == 3
    assert b.input_shape == (3, 16, 16)
    assert len(b.test.dataset) == 6 and len(b.train.dataset) == 12
    assert torch.bincount(b.test.dataset.y).tolist() == [2, 2, 2]
    x, y = _first(b.train)
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert load_data(DataConfig(name="image-folder", path=root)).input_shape == (3, 32, 32)  # default size


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_data(DataConfig(name="image-folder", path=tmp_path / "empty"))
    (tmp_path / "one" / "cls").mkdir(parents=True)
    (tmp_path / "one" / "cls" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="without images.*cls"):
        load_data(DataConfig(name="image-folder", path=tmp_path / "one"))
    with pytest.raises(DataError, match="not found"):
        load_data(DataConfig(name="image-folder", path=tmp_path / "missing"))


# ---------------------------------------------------------------- tensors file
def test_tensors_safetensors_and_pt(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 2, 6, 6, generator=g)
    y = torch.arange(50) % 5
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"))
    b = load_data(DataConfig(name="tensors", path=tmp_path / "d.safetensors", test_fraction=0.2, val_fraction=0.0))
    assert b.input_shape == (2, 6, 6) and b.num_classes == 5 and len(b.test.dataset) == 10
    xb, yb = _first(b.train)
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64

    xt = torch.randint(0, 256, (8, 4, 4), dtype=torch.uint8)
    torch.save({"x": torch.randint(0, 256, (30, 4, 4), dtype=torch.uint8), "y": torch.arange(30) % 3,
                "x_test": xt, "y_test": torch.arange(8) % 3}, tmp_path / "d.pt")
    b = load_data(DataConfig(name="tensors", path=tmp_path / "d.pt", val_fraction=0.0))
    assert b.input_shape == (1, 4, 4) and b.num_classes == 3 and len(b.test.dataset) == 8
    xtest = torch.cat([xx for xx, _ in b.test])
    assert torch.allclose(xtest, xt.unsqueeze(1).float() / 255)


def test_tensors_wrong_keys_and_shapes(tmp_path):
    from safetensors.torch import save_file

    save_file({"inputs": torch.zeros(4, 3), "labels": torch.zeros(4)}, str(tmp_path / "a.safetensors"))
    with pytest.raises(DataError) as info:
        load_data(DataConfig(name="tensors", path=tmp_path / "a.safetensors"))
    assert "lacks key(s) x, y" in str(info.value) and "inputs: (4, 3)" in str(info.value)
    save_file({"x": torch.zeros(4, 3), "y": torch.zeros(5, dtype=torch.long)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(DataError, match=r"one label per row.*\(5,\)"):
        load_data(DataConfig(name="tensors", path=tmp_path / "b.safetensors"))
    (tmp_path / "c.pt").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot load tensors"):
        load_data(DataConfig(name="tensors", path=tmp_path / "c.pt"))
