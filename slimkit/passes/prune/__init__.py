"""Pruning passes.

- ``unstructured``: magnitude pruning to a sparsity (layer or global scope, iterative schedules).
- ``masks``, ``importance``, ``schedule``: eligibility and masks, magnitude scores, sparsity schedules.
- ``structured``: channel/head pruning over dependency groups (separate module).

Modules are imported by the registry on first use, not here, so ``import slimkit`` stays light.
"""
