"""``slimkit quantize`` (a one-stage quantize recipe through the runner) and ``slimkit export`` (ONNX or
safetensors of a finished run's model). Registered on the app by :func:`register` (called in app.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from slimkit.errors import ConfigError, RecipeError, RunError


def stage_for(method: str, bits: int | None, group_size: int | None = None) -> dict[str, Any]:
    """The recipe stage ``{"quantize": {...}}`` for a registered quantize method and the CLI's shorthand
    flags (the config's ``shorthand``; values are validated later by the recipe parser, so out-of-range
    values are reported with their recipe path)."""
    from slimkit.errors import did_you_mean
    from slimkit.registry import kinds

    specs = kinds().get("quantize", {})
    if method not in specs:
        raise ConfigError(f"unknown --method {method!r}.{did_you_mean(method, specs)} "
                          f"Expected one of {', '.join(sorted(specs))}.")
    return {"quantize": specs[method].config_cls.shorthand(bits=bits, group_size=group_size)}


# recipe paths of a one-stage quantize recipe -> the CLI flag that set them (for errors about flags)
_FLAGS = (("group_size", "--group-size"), ("bits", "--bits"), ("data.", "--data"), ("model.kwargs", "--arch-kwargs"),
          ("model.weights", "--weights"), ("model.arch", "--arch / RECIPE_OR_MODEL"), ("model.train", "--train-epochs"),
          ("name", "--name"), ("export.", "--onnx"))


def flag_error(exc: RecipeError) -> ConfigError:
    """A RecipeError about the recipe built from CLI flags, retold in terms of the flags."""
    lines = []
    for path, msg in exc.problems:
        flag = next((f for key, f in _FLAGS if key in path.rsplit(".", 1)[-1] or path.startswith(key)), None)
        lines.append(f"  - {flag}: {msg}" if flag else f"  - {path or 'recipe'}: {msg}")
    return ConfigError("invalid option value(s):\n" + "\n".join(lines),
                       hint="See `slimkit quantize --help` for the accepted values.")


def build_recipe(source: str | None, *, method: str, bits: int | None, group_size: int | None, arch: str | None,
                 weights: Path | None, data: str | None, train_epochs: int | None, onnx: str | None,
                 name: str | None, arch_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A one-stage quantize recipe: model/data/evaluation from an existing recipe (``source`` is a YAML file),
    or from ``--arch``/``--weights``/``--data`` (``source`` may be the arch name)."""

    stage = stage_for(method, bits, group_size)
    recipe: dict[str, Any]
    if source is not None and (source.endswith((".yaml", ".yml")) or Path(source).is_file()):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"recipe file {source} does not exist.", hint="Give a recipe YAML or a model arch name.")
        from slimkit._io import read_yaml

        base = read_yaml(path, what="recipe file")
        if not isinstance(base, dict):
            raise ConfigError(f"{source} does not hold a recipe mapping.")
        recipe = {k: v for k, v in base.items() if k in ("seed", "model", "data", "evaluate")}
        if arch or weights or arch_kwargs:
            raise ConfigError("--arch/--weights/--arch-kwargs cannot be combined with a recipe; the recipe names "
                              "the model.", hint="Edit model.kwargs in the recipe, or give an arch name instead.")
        if data:
            recipe["data"] = {**(recipe.get("data") or {}), "name": data}
        default_name = f"{base.get('name', path.stem)}-{method}"
    else:
        arch = arch or source
        if not arch:
            raise ConfigError("give a recipe YAML or a model: slimkit quantize RECIPE.yaml --method ptq, or "
                              "slimkit quantize ARCH --weights W.safetensors --data digits --method ptq.")
        model: dict[str, Any] = {"arch": arch}
        if arch_kwargs:
            model["kwargs"] = arch_kwargs
        if weights is not None:
            if not weights.is_file():
                raise ConfigError(f"weights file {weights} does not exist.")
            model["weights"] = str(weights)
        elif train_epochs:
            model["train"] = {"epochs": train_epochs}
        else:
            raise ConfigError(f"model {arch!r} has no weights: quantizing a random network measures nothing.",
                              hint="Pass --weights PATH (safetensors or a weights-only .pt), or --train-epochs N "
                                   "to train a baseline on the data first.")
        recipe = {"model": model, "data": {"name": data or "digits"}}
        default_name = f"{arch}-{method}"
    if train_epochs and "weights" not in recipe["model"]:
        recipe["model"] = {**recipe["model"], "train": {**(recipe["model"].get("train") or {}),
                                                        "epochs": train_epochs}}
    recipe["name"] = name or default_name
    recipe["stages"] = [stage]
    recipe["export"] = {"formats": ["safetensors", "onnx"], "onnx": {"precision": onnx}} if onnx else \
        {"formats": ["safetensors"]}
    return recipe


def parse_arch_kwargs(text: str | None) -> dict[str, Any] | None:
    """``--arch-kwargs '{widths: [32, 64]}'`` (a YAML or JSON mapping) -> the architecture's keyword arguments."""
    if text is None:
        return None
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--arch-kwargs {text!r} is not a YAML/JSON mapping: {str(exc).splitlines()[0]}",
                          hint="Example: --arch-kwargs '{widths: [32, 64]}'.") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--arch-kwargs {text!r} is not a mapping.", hint="Example: --arch-kwargs '{widths: [32, 64]}'.")
    return value


def register(app: typer.Typer) -> None:
    """Add ``quantize`` and ``export`` to the CLI ``app``."""

    @app.command()
    def quantize(
        source: Annotated[str | None, typer.Argument(help="a recipe YAML (its model and data) or a model arch name")]
        = None,
        method: Annotated[str, typer.Option("--method", "-m", help="a registered quantize method (ptq, dynamic, "
                                            "qat, weight-only, fp16, bf16, log, binary, ...; an unknown one lists "
                                            "them)")] = "ptq",
        bits: Annotated[int | None, typer.Option("--bits", help="weight bits, for methods with a bit width")] = None,
        group_size: Annotated[int | None, typer.Option("--group-size", help="per-group scales, for methods "
                                                       "with groups")] = None,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="run directory (default runs/<name>)")] = None,
        arch: Annotated[str | None, typer.Option("--arch", help="built-in architecture")] = None,
        weights: Annotated[Path | None, typer.Option("--weights", help="weights of --arch")] = None,
        arch_kwargs: Annotated[str | None, typer.Option(
            "--arch-kwargs", help="keyword arguments of the arch, YAML/JSON: '{widths: [32, 64]}'")] = None,
        data: Annotated[str | None, typer.Option("--data", help="dataset (digits, fashion-mnist)")] = None,
        train_epochs: Annotated[int | None, typer.Option("--train-epochs", help="train a baseline first")] = None,
        onnx: Annotated[str | None, typer.Option("--onnx", help="also export ONNX: fp32, fp16 or int8")] = None,
        name: Annotated[str | None, typer.Option("--name", help="run name")] = None,
    ) -> None:
        """Quantize a model with one method: a one-stage recipe run by the runner (report, checkpoints)."""
        from slimkit.cli.progress import cli_reporter, print_report
        from slimkit.pipeline.runner import coerce_recipe, run_recipe

        if onnx is not None and onnx not in ("fp32", "fp16", "int8"):
            raise ConfigError(f"--onnx {onnx!r}: expected fp32, fp16 or int8.")
        spec = build_recipe(source, method=method, bits=bits, group_size=group_size, arch=arch, weights=weights,
                            data=data, train_epochs=train_epochs, onnx=onnx, name=name,
                            arch_kwargs=parse_arch_kwargs(arch_kwargs))
        from slimkit.pipeline.fit import check_fit

        try:
            recipe = coerce_recipe(spec)
            check_fit(recipe)  # weights of other kwargs, channels, classes: told in terms of the flags
        except RecipeError as exc:
            raise flag_error(exc) from None
        run_dir = out or Path("runs") / recipe.name
        with cli_reporter():
            report = run_recipe(recipe, out=run_dir)
        print_report(report, run_dir)
        for e in report.get("exports", []):
            if e.get("note"):
                typer.echo(f"export {e.get('artifact')}: {e['note']}")

    @app.command("export")
    def export_(
        run_dir: Annotated[Path, typer.Argument(help="a run directory written by slimkit run / quantize")],
        fmt: Annotated[str, typer.Option("--format", help="onnx | safetensors")] = "onnx",
        precision: Annotated[str, typer.Option("--precision", help="fp32 | fp16 | int8 (ONNX)")] = "fp32",
        out: Annotated[Path | None, typer.Option("--out", "-o", help="output file (.onnx) or directory")] = None,
        stage: Annotated[str, typer.Option(help="'final', 'baseline' or a stage index")] = "final",
        opset: Annotated[int, typer.Option(help="ONNX opset")] = 18,
        atol: Annotated[float | None, typer.Option(
            "--atol", help="absolute parity tolerance; default 1e-3 for fp32, 1e-2 for fp16")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print the export entry as JSON")] = False,
    ) -> None:
        """Export the saved model of a run: ONNX (fp32, fp16, int8 with parity and latency vs fp32) or
        safetensors + manifest."""
        import json

        from slimkit.cli.progress import cli_reporter

        if fmt not in ("onnx", "safetensors"):
            raise ConfigError(f"--format {fmt!r}: expected onnx or safetensors.")
        if precision not in ("fp32", "fp16", "int8"):
            raise ConfigError(f"--precision {precision!r}: expected fp32, fp16 or int8.")
        if fmt == "safetensors" and precision != "fp32":
            raise ConfigError("--precision applies to ONNX; a safetensors export keeps the model's own precision.")
        if not (run_dir / "recipe.yaml").is_file():
            raise RunError(f"{run_dir} is not a slimkit run directory (no recipe.yaml).",
                           hint="Give the directory that `slimkit run` or `slimkit quantize` wrote.")
        if atol is not None and atol <= 0:
            raise ConfigError(f"--atol {atol}: expected a positive tolerance, e.g. 0.01.")
        with cli_reporter():
            entry = export_run(run_dir, fmt=fmt, precision=precision, out=out, stage=stage, opset=opset, atol=atol)
        if as_json:
            typer.echo(json.dumps(entry, indent=1, default=str))
        else:
            from slimkit.cli.progress import console

            console.print(export_summary(entry), highlight=False)


def export_summary(entry: dict[str, Any]) -> str:
    """A few plain lines for a person: file, size, parity, and for int8 the fp32 comparison and latency."""
    from slimkit.pipeline.report.render import fmt

    lines = [f"exported {entry.get('format')} {entry.get('precision', '')}".rstrip()
             + f": {entry.get('artifact')} ({fmt('size_bytes', entry)}, {entry.get('size_bytes'):,} bytes)"]
    parity = entry.get("parity") or {}
    if "max_abs_diff" in parity and parity["max_abs_diff"] is not None:
        cos = parity.get("cosine")
        lines.append(f"  parity vs PyTorch: max |diff| {parity['max_abs_diff']:.2g}"
                     + (f", cosine {cos:.6f}" if cos is not None else "")
                     + (" (ok)" if parity.get("ok") else " (outside the tolerance)"))
    elif "round_trip_exact" in parity:
        lines.append(f"  round trip: {'exact' if parity['round_trip_exact'] else 'NOT exact'}")
    fp32 = entry.get("fp32")
    if isinstance(fp32, dict):
        ratio = entry.get("size_ratio")
        lines.append(f"  fp32 comparison kept beside it: {fp32.get('artifact')} ({fmt('size_bytes', fp32)}"
                     + (f"; int8 is {100 * ratio:.1f}% of it" if ratio else "") + ")")
        lat, lat32 = entry.get("latency_ms"), fp32.get("latency_ms")
        if lat and lat32:
            lines.append(f"  onnxruntime latency: int8 {lat['median']:.3g} ms, fp32 {lat32['median']:.3g} ms "
                         f"(batch {lat.get('batch', 1)}, median)")
    if entry.get("note"):
        lines.append(f"  note: {entry['note']}")
    return "\n".join(lines)


def export_run(run_dir: Path, *, fmt: str = "onnx", precision: str = "fp32", out: Path | None = None,
               stage: str = "final", opset: int = 18, atol: float | None = None) -> dict[str, Any]:
    """Export the saved model of ``stage`` of a run (see ``slimkit export``); returns the export entry.
    ``atol`` (None: the recipe's ``export.onnx.parity_atol`` when it was set for this precision, else the
    precision's default) is the parity tolerance."""
    from slimkit.data import load_data
    from slimkit.exporters import export_model
    from slimkit.pipeline.artifacts import load_saved, locate_stage
    from slimkit.pipeline.runner import relative_artifacts

    recipe, _, _ = locate_stage(run_dir, stage)
    if atol is None and recipe.export.onnx.precision == precision:  # a recipe's tolerance is for its precision
        atol = recipe.export.onnx.parity_atol
    model, example = load_saved(run_dir, stage)
    if fmt == "safetensors":
        target = out or run_dir / "export"
        res = export_model(model, target, spec={"model": recipe.model.model_dump(mode="json")})
        return {"format": "safetensors", "artifact": str(res["artifact"]), "size_bytes": res["size_bytes"],
                "parity": res["parity"]}
    target = out or run_dir / f"model.{stage}.{precision}.onnx"
    if target.suffix != ".onnx":
        raise ConfigError(f"--out {target} must end in .onnx for --format onnx.")
    target.parent.mkdir(parents=True, exist_ok=True)
    calibration = load_data(recipe.data).calibration if precision == "int8" else None
    entry = export_model(model, target, example_inputs=example, precision=precision, opset=opset,
                         atol=atol, quantize="auto" if precision == "int8" else None,
                         calibration=calibration, latency=recipe.evaluate.latency)
    return {"format": "onnx", "precision": precision, **relative_artifacts(entry, target.parent),
            "artifact": str(target)}
