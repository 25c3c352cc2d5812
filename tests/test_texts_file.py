"""A user's own unlabelled texts as calibration and test data (``data: {name: sentences, path: ...}``):
``read_texts`` reads one text per line (or ``.jsonl`` ``"text"`` fields) and names the file and line of every
problem; the bundle splits them, seeded, into calibration and test texts that never overlap."""

from __future__ import annotations

import json

import pytest

from slimkit.config.recipe import DataConfig, parse_recipe
from slimkit.data.sentences import read_texts
from slimkit.errors import DataError, RecipeError


def test_read_texts_one_per_line_stripped_deduplicated_in_order(tmp_path) -> None:
    f = tmp_path / "texts.txt"
    f.write_bytes("\ufeffThe first line.\n\n  second one  \r\nThe first line.\nthird\n".encode())
    assert read_texts(f) == ["The first line.", "second one", "third"]


def test_read_texts_jsonl(tmp_path) -> None:
    f = tmp_path / "texts.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in ({"text": "a b"}, {"text": " c ", "id": 3}, {"text": ""})) + "\n")
    assert read_texts(f) == ["a b", "c"]


@pytest.mark.parametrize(("content", "match"), [
    (None, "texts file not found"),
    (b"ok\n\xff\xfe bad\n", "not UTF-8 text: byte 0xff on line 2"),
    (b"\n  \n", "holds no text"),
])
def test_read_texts_errors_name_the_problem(tmp_path, content, match) -> None:
    f = tmp_path / "texts.txt"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(DataError, match=match) as err:
        read_texts(f)
    assert err.value.hint


@pytest.mark.parametrize(("lines", "match"), [
    (['{"text": "fine"}', "{not json"], "line 2 is not JSON"),
    (['{"text": "fine"}', '{"body": "x"}'], 'line 2 has no "text" string'),
    (['["a list"]'], 'line 1 has no "text" string'),
])
def test_read_texts_jsonl_errors_name_the_line(tmp_path, lines, match) -> None:
    f = tmp_path / "texts.jsonl"
    f.write_text("\n".join(lines))
    with pytest.raises(DataError, match=match):
        read_texts(f)


def test_read_texts_refuses_a_directory(tmp_path) -> None:
    with pytest.raises(DataError, match="is a directory"):
        read_texts(tmp_path)


def test_path_applies_only_where_data_is_read_from_it() -> None:
    with pytest.raises(RecipeError, match="data.path applies to"):
        parse_recipe({"name": "x", "model": {"arch": "cnn-small"}, "data": {"name": "digits", "path": "x.txt"}})
    assert DataConfig(name="sentences", tokenizer="t", path="texts.txt").path is not None


def test_sentences_from_a_file_split_seeded_and_disjoint(tmp_path) -> None:
    from test_posttrain_sentence import _tiny_sentence_folder

    from slimkit.data import load_data

    folder = _tiny_sentence_folder(tmp_path / "tiny-st")
    abc = "abcdefghijklmnopqrstuvwxyz"  # the tiny tokenizer spells letters: texts distinct in their first tokens
    texts = [f"{abc[i // 26]}{abc[i % 26]} is sentence {abc[i % 7]}." for i in range(80)]
    f = tmp_path / "mine.txt"
    f.write_text("\n".join(texts))

    def split(seed: int) -> tuple[list[str], list[str]]:
        b = load_data(DataConfig(name="sentences", tokenizer=folder, path=f, batch_size=16, calibration_samples=48,
                                 max_length=16, seed=seed))
        assert b.info["calibration_size"] == 48 and b.info["test_size"] == 32 and str(f) in b.info["source"]
        assert sum(len(x["input_ids"]) for x in b.calibration) == 48 and sum(len(x["input_ids"]) for x in b.test) == 32
        return b.calibration, b.test  # type: ignore[return-value]

    cal, test = split(0)
    decode = {tuple(x["input_ids"][i].tolist()) for x in cal for i in range(len(x["input_ids"]))}
    held = {tuple(x["input_ids"][i].tolist()) for x in test for i in range(len(x["input_ids"]))}
    assert len(decode) == 48 and len(held) == 32 and not decode & held
    again, _ = split(0)
    assert all(bool((a["input_ids"] == b["input_ids"]).all()) for a, b in zip(cal, again, strict=True))
    other, _ = split(1)
    assert any(a["input_ids"].shape != b["input_ids"].shape or bool((a["input_ids"] != b["input_ids"]).any())
               for a, b in zip(cal, other, strict=True))
    with pytest.raises(DataError, match="holds 1 distinct text"):
        one = tmp_path / "one.txt"
        one.write_text("only this\nonly this\n")
        load_data(DataConfig(name="sentences", tokenizer=folder, path=one))
