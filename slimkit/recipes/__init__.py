"""Recipes shipped inside the package (the demo runs from here after a plain pip install)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def demo_recipe_path() -> Path:
    return HERE / "demo.yaml"
