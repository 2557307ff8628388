"""One registry for every task: unique names, near-match suggestions for typos."""

from __future__ import annotations

import difflib
from typing import Callable

_TASKS: dict[str, Callable] = {}


def register_task(name: str):
    """Class decorator: make a task constructible by name. Duplicate names are an error."""

    def decorate(factory):
        if name in _TASKS:
            raise ValueError(f"task {name!r} is already registered (by {_TASKS[name].__module__})")
        _TASKS[name] = factory
        return factory

    return decorate


def get_task(name: str):
    """A fresh instance of the registered task `name`."""
    if name not in _TASKS:
        raise KeyError(f"unknown task {name!r}{suggest(name, _TASKS)}; known tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]()


def task_names() -> list[str]:
    return sorted(_TASKS)


def suggest(name: str, choices) -> str:
    """' (did you mean 'x'?)' for the nearest choice, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
