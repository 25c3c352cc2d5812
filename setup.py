"""Package list for setuptools (everything else is in pyproject.toml).

The shipped recipes live once, in the repository's ``recipes/``; the wheel carries them as the data-only
package ``slimkit.recipes.shipped`` (``slimkit/recipes/shipped/*.yaml``), which :mod:`slimkit.recipes` reads.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["slimkit", "slimkit.*"]), "slimkit.recipes.shipped",
              "slimkit.recipes.shipped.search"],
    package_dir={"slimkit.recipes.shipped": "recipes"},
)
