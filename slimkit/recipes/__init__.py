"""The recipes shipped with slimkit: inside the package after a pip install (``slimkit/recipes/shipped/``),
the repository's ``recipes/`` in a source checkout. ``slimkit run NAME`` runs one by name."""

from __future__ import annotations

from pathlib import Path

from slimkit.errors import RecipeError, did_you_mean

HERE = Path(__file__).resolve().parent


def shipped_dir() -> Path:
    """The directory of the shipped recipes (``search/`` holds the shipped searches)."""
    inside = HERE / "shipped"  # a wheel: setup.py maps the repository's recipes/ here
    return inside if inside.is_dir() else HERE.parents[1] / "recipes"


def shipped_recipes() -> dict[str, Path]:
    """Name -> path of every shipped recipe (``demo``, ``quantize-ptq-int8``, ..., ``search/digits``)."""
    root = shipped_dir()
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.yaml"))}


def shipped_recipe(name: str) -> Path:
    """The path of the shipped recipe ``name`` (with or without ``.yaml``); RecipeError naming the choices."""
    recipes = shipped_recipes()
    key = name.removesuffix(".yaml").removeprefix("recipes/")
    if key not in recipes:
        raise RecipeError([("", f"no recipe file {name!r} and no shipped recipe of that name."
                                + did_you_mean(key, recipes) + " Shipped: " + ", ".join(recipes) + ".")])
    return recipes[key]


def resolve_recipe(recipe: str | Path) -> Path:
    """``recipe`` itself when that file exists, else the shipped recipe of that name (``slimkit run NAME``)."""
    path = Path(recipe)
    return path if path.exists() else shipped_recipe(str(recipe))


def demo_recipe_path() -> Path:
    return shipped_recipe("demo")


__all__ = ["demo_recipe_path", "resolve_recipe", "shipped_dir", "shipped_recipe", "shipped_recipes"]
