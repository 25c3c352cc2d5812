"""The offline photo set: natural photographs from installed packages, calibration and held-out halves that
never overlap, deterministic crops, typed errors."""

from __future__ import annotations

import pytest
import torch

from slimkit.data import sample_images as si
from slimkit.errors import DataError


def test_installed_packages_give_photos() -> None:
    names = {p.name for p in si.available_photos()}
    # scikit-learn and matplotlib are slimkit dependencies: their three photographs are always there
    assert {"china", "flower", "grace_hopper"} <= names
    for name in names:
        img = si.load_photo(name)
        assert img.dim() == 3 and img.shape[0] == 3 and min(img.shape[1:]) >= 256
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0 and float(img.std()) > 0.05


def test_halves_partition_each_photo_and_parts_never_share_one() -> None:
    photos = si.available_photos()
    index = {p.name: i for i, p in enumerate(si.PHOTOS)}
    for p in photos:
        img = si.load_photo(p.name)
        a, b = si._half(img, 0), si._half(img, 1)
        dim = 2 if img.shape[2] >= img.shape[1] else 1
        assert torch.equal(torch.cat([a, b], dim), img)
        assert si.part_half(index[p.name], "calibration") != si.part_half(index[p.name], "heldout")
    cal, held = si.photo_specs("calibration"), si.photo_specs("heldout")
    used = {(s.photo, s.half) for s in cal}
    assert not used & {(s.photo, s.half) for s in held}
    assert {s.photo for s in cal} == {s.photo for s in held} == {p.name for p in photos}
    # both halves (left/top and right/bottom) serve calibration, alternately
    if len(photos) > 1:
        assert {h for _, h in used} == {0, 1}


def test_crops_are_deterministic_distinct_and_normalized() -> None:
    n = len(si.available_photos())
    x = si.photo_crops("calibration", n)
    assert x.shape == (n, 3, 224, 224) and x.dtype == torch.float32
    assert torch.equal(x, si.photo_crops("calibration", n))
    # the first n crops are one per photo
    assert len({s.photo for s in si.photo_specs("calibration")[:n]}) == n
    flat = x.reshape(n, -1)
    assert torch.cdist(flat, flat).add(torch.eye(n) * 1e9).min() > 1.0
    raw = si.photo_crops("heldout", 4, normalize=False, size=64)
    assert raw.shape == (4, 3, 64, 64) and 0.0 <= float(raw.min()) and float(raw.max()) <= 1.0
    batches = si.photo_batches("heldout", 3, 7, size=32)
    assert [len(b) for b in batches] == [3, 3, 1]


def test_specs_have_no_duplicates() -> None:
    specs = si.photo_specs("heldout")
    keys = [(s.photo, s.scale, *si._corner(s.photo, s.half, s.scale, s.position, 224), s.flip) for s in specs]
    assert len(keys) == len(set(keys))
    assert len(specs) >= 4 * len(si.available_photos())


def test_errors_are_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="unknown photo"):
        si.load_photo("no-such-photo")
    with pytest.raises(DataError, match="n=0"):
        si.photo_crops("heldout", 0)
    with pytest.raises(DataError, match="part="):
        si.photo_specs("train")  # type: ignore[arg-type]
    monkeypatch.setattr(si, "_package_dir", lambda package: None)
    with pytest.raises(DataError, match="none of scikit-learn, matplotlib or scikit-image") as err:
        si.photo_crops("calibration", 4)
    assert "pip install" in (err.value.hint or "")
