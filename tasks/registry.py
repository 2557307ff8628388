"""One registry for every task: unique names, near-match suggestions for typos, import paths.

A task is a class registered with `@register_task("name")` (or reached as "mypkg.tasks:MyTask").
The engine (pipeline/) only uses what the `Task` protocol below lists; everything else about a
task (its files, encoding, teacher forcing, extra evaluation rows) stays inside its module.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any, Iterable, Protocol

import torch
from torch import Tensor, nn

from models.common import Registry

_TASKS = Registry("task", package="tasks", group="modular_masks.tasks")


class DataError(RuntimeError):
    """A task's data is missing, truncated or corrupt; the message names the file and how to get it.
    Every command reports it as one line (a task's own data errors derive from it)."""


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Settings of a task that has none."""


class Task(Protocol):
    """What the engine asks of a task. Constructed as Task(options, data_dir).

    version: bumped when the task's data changes; logged with every result.
    Options: a frozen dataclass of the task's own settings (`task_options.<key>` in configs).
    dims: the sizes a model builder takes (e.g. {"input_size": 42, "output_size": 20}).
    pretrain_split: the split the network is pretrained on.
    mask_splits: mask name -> the split its mask trains on (the control mask included).
    control_mask: the mask trained on the whole task, or None.
    eval_splits: the splits every mask is evaluated on.
    """

    version: int
    Options: type
    dims: dict[str, int]
    pretrain_split: str
    mask_splits: dict[str, str]
    control_mask: str | None
    eval_splits: tuple[str, ...]

    def sample(self, split: str, batch_size: int, generator: torch.Generator, device) -> Any:
        """A training batch drawn with `generator` only (so that a resumed run draws the same)."""

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        """Scalar training loss of `model` (plain or masked) on `batch`; runs the forward pass."""

    def eval_batches(self, split: str, size: int, device) -> Iterable[Any]:
        """The fixed evaluation examples of `split` (at most `size` where the task generates them)."""

    def correct(self, model: nn.Module, batch: Any) -> Tensor:
        """[B] bool: the model's prediction for each example is right (the task's notion of right)."""


def register_task(name: str):
    """Class decorator: make a task constructible by name. Duplicate names are an error."""
    return _TASKS.register(name)


def task_class(name: str) -> type:
    """The registered task `name`, or the class at import path "package.module:Class"."""
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise KeyError(f"cannot import task {name!r}: {error}") from None
    return _TASKS.find(name, hint=", or an import path like mypkg.tasks:MyTask")


def task_options(name: str):
    """The task's settings with their defaults (NoOptions() for a task without settings)."""
    return getattr(task_class(name), "Options", NoOptions)()


def options_for(name: str, **values):
    """The task's settings with `values` replacing defaults: options_for("addmul", presentation="repeat3")."""
    return dataclasses.replace(task_options(name), **values)


def get_task(name: str, options=None, data_dir: str | Path | None = None):
    """A fresh instance of the task `name` with its options (defaults if None) and data folder."""
    cls = task_class(name)
    return cls(options if options is not None else task_options(name), default_data_dir(data_dir))


def default_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data folder: the given one, else $MODULAR_DATA_DIR, else ~/.cache/modular-masks/data."""
    import os

    chosen = data_dir or os.environ.get("MODULAR_DATA_DIR") or Path.home() / ".cache" / "modular-masks" / "data"
    return Path(chosen).expanduser()


def task_names() -> list[str]:
    return _TASKS.names()


# -- dataset makers: `pipeline data NAME --option value` calls one ----------------------------------
# A maker prepares files a task reads but nothing can download at run time (e.g. runs a generator in
# its own interpreter). It is a function whose keyword parameters, each with an annotation (int, str,
# float, bool or Path) and a default, become the command's options; parameters without a default are
# required options. Its docstring is the command's help.
_MAKERS = Registry("dataset", package="tasks", group="modular_masks.tasks")


def register_dataset(name: str):
    """Decorator on a maker function; duplicate names are an error."""
    return _MAKERS.register(name)


def dataset_maker(name: str):
    return _MAKERS.find(name)


def dataset_names() -> list[str]:
    return _MAKERS.names()
