"""Dataset makers by name: `pipeline data NAME --option value` calls one.

A maker prepares files a task reads but nothing can download at run time (e.g. runs a generator
in its own interpreter). It is a function whose keyword parameters, each with an annotation
(int, str, float, bool or Path) and a default, become the command's options; parameters without
a default are required options. Its docstring is the command's help.
"""

from __future__ import annotations

from typing import Callable

from models.common import Registry

_MAKERS = Registry("dataset", package="tasks", group="modular_masks.tasks")


def register_dataset(name: str):
    """Decorator on a maker function; duplicate names are an error."""
    return _MAKERS.register(name)


def dataset_maker(name: str) -> Callable:
    return _MAKERS.find(name)


def dataset_names() -> list[str]:
    return _MAKERS.names()
