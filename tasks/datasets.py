"""Dataset makers by name: `pipeline data NAME --option value` calls one.

A maker prepares files a task reads but nothing can download at run time (e.g. runs a generator
in its own interpreter). It is a function whose keyword parameters, each with an annotation
(int, str, float, bool or Path) and a default, become the command's options; parameters without
a default are required options. Its docstring is the command's help.
"""

from __future__ import annotations

from typing import Callable

from tasks.registry import suggest

_MAKERS: dict[str, Callable] = {}


def register_dataset(name: str):
    """Decorator on a maker function; duplicate names are an error."""

    def decorate(maker):
        if name in _MAKERS:
            raise ValueError(f"dataset {name!r} is already registered (by {_MAKERS[name].__module__})")
        _MAKERS[name] = maker
        return maker

    return decorate


def dataset_maker(name: str) -> Callable:
    if name not in _MAKERS:
        raise KeyError(f"unknown dataset {name!r}{suggest(name, _MAKERS)}; known: {', '.join(sorted(_MAKERS))}")
    return _MAKERS[name]


def dataset_names() -> list[str]:
    return sorted(_MAKERS)
