"""Studies: one file each, with its presets, its sweeps and (where it has its own) its recipe.

A recipe is a function TrialContext -> {table name: rows} that calls the generic components of
pipeline.stages and pipeline.evaluate in the order the paper's procedure needs. These files are
the only ones under pipeline/ that name tasks and model families. A new study is a new file here
plus its line in the import below.
"""

from __future__ import annotations

from typing import Callable

from tasks.registry import Registry

_RECIPES = Registry("study")


def register_study(name: str):
    """Decorator on a recipe `recipe(ctx: TrialContext) -> dict[str, list[dict]]`."""
    return _RECIPES.register(name)


def get_study(name: str) -> Callable:
    return _RECIPES.find(name)


def study_names() -> list[str]:
    return sorted(_RECIPES)


from pipeline.studies import arithmetic, cifar10, huggingface, masks, mathematics, permuted_mnist, scan  # noqa: E402,F401,E501
