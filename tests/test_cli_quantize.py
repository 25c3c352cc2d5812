"""``slimkit quantize`` and ``slimkit export``: one-stage recipes through the runner; user errors exit 2."""

from __future__ import annotations

import json

import pytest
import yaml

from slimkit.cli.quantize import build_recipe, stage_for
from slimkit.config.recipe import parse_recipe
from slimkit.errors import ConfigError, RecipeError
from tests.test_cli import slimkit


def _recipe(tmp_path, **over) -> str:
    r = {"name": "base", "seed": 1, "model": {"arch": "mlp", "kwargs": {"hidden": [128]}, "train": {"epochs": 4}},
         "data": {"name": "digits"}, "evaluate": {"latency": {"batch": 1, "warmup": 1, "repeats": 3, "threads": 1}},
         "stages": [{"prune": {"sparsity": 0.5}}], **over}
    p = tmp_path / "base.yaml"
    p.write_text(yaml.safe_dump(r))
    return str(p)


@pytest.mark.parametrize("method,bits", [("ptq", 4), ("dynamic", None), ("qat", 4), ("weight-only", 4),
                                         ("fp16", None), ("bf16", None), ("log", 3), ("binary", None)])
def test_every_method_builds_a_valid_one_stage_recipe(tmp_path, method, bits):
    r = build_recipe(_recipe(tmp_path), method=method, bits=bits, group_size=None, arch=None, weights=None,
                     data=None, train_epochs=None, onnx="int8", name=None)
    parsed = parse_recipe(r)
    assert [f"{s.kind}:{s.method}" for s in parsed.stages] == [f"quantize:{method}"]
    assert parsed.model.arch == "mlp" and r["name"] == f"base-{method}"


def test_bad_bits_are_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="--bits 4 does not apply to --method fp16"):
        stage_for("fp16", 4)
    with pytest.raises(RecipeError, match=r"stages\[0\]\.quantize\.weights.*bits: must be <= 8"):
        parse_recipe(build_recipe(_recipe(tmp_path), method="ptq", bits=12, group_size=None, arch=None, weights=None,
                                  data=None, train_epochs=None, onnx=None, name=None))


def _main(capsys, *args: str) -> tuple[int, str]:
    """Run the CLI entry point in this process (fast); returns (exit code, stderr with whitespace collapsed)."""
    import sys

    from slimkit.cli import app as cli

    argv = sys.argv
    sys.argv = ["slimkit", *args]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
    return code, " ".join(capsys.readouterr().err.split())


def test_cli_user_errors_exit_2(tmp_path, capsys):
    cases = [
        (["quantize", _recipe(tmp_path), "--method", "quantise"], "unknown --method"),
        (["quantize", _recipe(tmp_path), "--method", "ptq", "--bits", "12"], "must be <= 8"),
        (["quantize", _recipe(tmp_path), "--method", "binary", "--bits", "4"], "binary weights are 1 bit"),
        (["quantize", "mlp", "--method", "ptq"], "--weights"),
        (["quantize", str(tmp_path / "gone.yaml")], "gone.yaml"),
        (["export", str(tmp_path), "--precision", "int4"], "--precision"),
        (["export", str(tmp_path)], "not a slimkit run directory"),
    ]
    for args, needle in cases:
        code, err = _main(capsys, *args)
        assert code == 2, (args, err)
        assert needle in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "runs").exists()


def test_cli_quantize_then_export_int8(tmp_path, capsys):
    out = tmp_path / "q"
    code, err = _main(capsys, "quantize", _recipe(tmp_path), "--method", "ptq", "--out", str(out))
    assert code == 0, err[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["stages"][0]["pass"] == "quantize:ptq"
    assert report["stages"][0]["metrics"]["size_bytes"] < 0.4 * report["baseline"]["size_bytes"]
    onnx = tmp_path / "m.onnx"
    import sys

    argv = sys.argv
    sys.argv = ["slimkit", "export", str(out), "--format", "onnx", "--precision", "int8", "--out", str(onnx), "--json"]
    try:
        from slimkit.cli import app as cli

        cli.main()
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err[-2000:]
    finally:
        sys.argv = argv
    stdout = capsys.readouterr().out
    entry = json.loads(stdout[stdout.index("{"):])
    assert entry["route"] == "fakequant-qdq" and onnx.exists() and entry["parity"]["ok"]
    assert entry["size_bytes"] < 0.5 * entry["fp32"]["size_bytes"] and entry["latency_ms"]["median"] > 0


def test_cli_subprocess_user_error():
    r = slimkit("quantize", "mlp", "--method", "fp16", "--bits", "4")
    assert r.returncode == 2 and "--bits 4 does not apply" in " ".join(r.stderr.split())
    assert "Traceback" not in r.stderr
