"""``slimkit sensitivity``: per-layer sensitivity of PTQ and a sensitivity-guided mixed-precision plan.

A one-stage recipe ``quantize: {method: ptq, weights: {bits: B}, mixed: {...}}`` (built like ``slimkit quantize``)
run by the runner; prints the ranked table and writes ``sensitivity.json`` and ``sensitivity.png`` next to the
report in the run directory. Registered on the app by :func:`register` (called in app.py)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Any

import typer

from slimkit.errors import ConfigError


def build_sensitivity_recipe(source: str | None, *, bits: int, metric: str, floor: float, max_keep: int | None,
                             keep_as: str, layers: list[str], batches: int, arch: str | None, weights: Path | None,
                             data: str | None, train_epochs: int | None, name: str | None) -> dict[str, Any]:
    """The one-stage PTQ recipe with ``mixed`` (validated by the recipe parser, so out-of-range values are
    reported with their recipe path, e.g. ``stages[0].quantize.mixed.floor``)."""
    from slimkit.cli.quantize import build_recipe

    recipe = build_recipe(source, method="ptq", bits=bits, group_size=None, arch=arch, weights=weights, data=data,
                          train_epochs=train_epochs, onnx=None, name=name)
    if name is None:
        recipe["name"] = recipe["name"].removesuffix("-ptq") + f"-sensitivity-{bits}bit"
    mixed: dict[str, Any] = {"metric": metric, "floor": floor, "keep_as": keep_as, "batches": batches}
    if max_keep is not None:
        mixed["max_keep"] = max_keep
    if layers:
        mixed["layers"] = layers
    recipe["stages"][0]["quantize"]["mixed"] = mixed
    return recipe


def check_layers_first(recipe: Any) -> None:
    """Check ``mixed.layers`` against the (untrained) architecture before any training or calibration, so a bad
    layer name fails in seconds with the list of quantizable layers."""
    from slimkit.data import load_data
    from slimkit.models import build_model
    from slimkit.passes.quantize.mixed import candidate_layers

    cfg = recipe.stages[0]
    bundle = load_data(recipe.data)
    model = build_model(recipe.model, input_shape=bundle.input_shape, num_classes=bundle.num_classes,
                        seed=recipe.seed)
    candidate_layers(model, cfg)


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def register(app: typer.Typer) -> None:
    """Add ``sensitivity`` to the CLI ``app``."""

    @app.command()
    def sensitivity(
        source: Annotated[str | None, typer.Argument(help="a recipe YAML (its model and data) or a model arch name")]
        = None,
        bits: Annotated[int, typer.Option("--bits", help="PTQ weight bits of the compressed layers (2..8)")] = 4,
        metric: Annotated[str, typer.Option("--metric", help="top1_agreement | cosine | accuracy")]
        = "top1_agreement",
        floor: Annotated[float, typer.Option("--floor", help="fidelity the mixed model must reach, in (0, 1]")]
        = 0.99,
        max_keep: Annotated[int | None, typer.Option("--max-keep", help="keep at most N layers")] = None,
        keep_as: Annotated[str, typer.Option("--keep-as", help="auto | float | int8")] = "auto",
        layers: Annotated[list[str] | None, typer.Option("--layer", "-l", help="candidate layer glob (repeat, or "
                                                          "comma-separated); default: every quantized layer")] = None,
        batches: Annotated[int, typer.Option("--batches", help="batches of validation data to score on")] = 8,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="run directory (default runs/<name>)")] = None,
        arch: Annotated[str | None, typer.Option("--arch", help="built-in architecture")] = None,
        weights: Annotated[Path | None, typer.Option("--weights", help="weights of --arch")] = None,
        data: Annotated[str | None, typer.Option("--data", help="dataset (digits, fashion-mnist)")] = None,
        train_epochs: Annotated[int | None, typer.Option("--train-epochs", help="train a baseline first")] = None,
        name: Annotated[str | None, typer.Option("--name", help="run name")] = None,
    ) -> None:
        """Rank layers by the fidelity they lose quantized alone (PTQ at --bits), keep the most sensitive at higher
        precision until --floor is met, apply it, and report (sensitivity.json, sensitivity.png, report.html)."""
        from rich import box
        from rich.table import Table

        from slimkit._io import atomic_write_bytes, atomic_write_json
        from slimkit.cli.progress import cli_reporter, console, print_report
        from slimkit.pipeline.report.render import sensitivity_png
        from slimkit.pipeline.runner import coerce_recipe, run_recipe

        recipe = coerce_recipe(build_sensitivity_recipe(
            source, bits=bits, metric=metric, floor=floor, max_keep=max_keep, keep_as=keep_as, layers=_split(layers),
            batches=batches, arch=arch, weights=weights, data=data, train_epochs=train_epochs, name=name))
        if recipe.stages[0].mixed.layers:  # type: ignore[attr-defined]
            check_layers_first(recipe)
        run_dir = out or Path("runs") / recipe.name
        with cli_reporter():
            report = run_recipe(recipe, out=run_dir)
        stage = report["stages"][0]
        res = stage.get("sensitivity")
        if not res:
            raise ConfigError("the quantize stage recorded no sensitivity result.")
        atomic_write_json(run_dir / "sensitivity.json", res)
        atomic_write_bytes(run_dir / "sensitivity.png", base64.b64decode(sensitivity_png(stage)))
        print_report(report, run_dir)
        kept = set(res["keep"])
        table = Table(title=f"per-layer sensitivity ({res['metric']}, {res['bits']}-bit PTQ alone)",
                      box=box.SIMPLE_HEAD)
        for col in ("rank", "layer", f"{res['metric']} alone", "loss", "kept"):
            table.add_column(col, justify="left" if col in ("layer", "kept") else "right", no_wrap=True)
        for row in res["table"]:
            table.add_row(str(row["rank"]), row["unit"], f"{row['score']:.4f}", f"{row['loss']:.4g}",
                          f"[red]{res['keep_as']}[/]" if row["unit"] in kept else "")
        console.print(table)
        mark = "[green]met[/]" if res["met"] else "[red]NOT met[/]"
        console.print(f"floor {res['floor']:.4g}: {res['score']:.4f} with the plan -> {mark} "
                      f"({res['all_compressed']:.4f} with every layer at {res['bits']} bits); {res['reason']}.")
        console.print(f"Sensitivity: {(run_dir / 'sensitivity.json').resolve()}, "
                      f"{(run_dir / 'sensitivity.png').resolve()}")
