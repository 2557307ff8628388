"""Model families by name: one builder each, with its own typed, frozen settings.

A family is registered with `@register_model("name", Settings, example)` on its builder. The builder
is called as `builder(**dims, **settings)`, where `dims` are the sizes a task provides (input_size,
output_size, vocabularies, ...). The example is a small instance and a batch it takes, as data, so
that tests run every registered family without a list of them. A builder given as an import path
("mypkg.nets:build") is a family too: its settings are its keyword parameters that have defaults and
annotations.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from dataclasses import dataclass
from typing import Callable

from torch import nn

from models.common import Registry


@dataclass(frozen=True)
class ExampleInput:
    """One positional input of an example batch. shape: ints, names of the example's dims, and "batch"
    where the batch size goes. Real numbers, unless `vocabulary` names the dim whose size bounds an
    input of token ids, or `fill` is the one integer every entry holds (an attention mask of ones)."""

    shape: tuple[int | str, ...]
    vocabulary: str | None = None
    fill: int | None = None


@dataclass(frozen=True)
class ModelExample:
    """A small instance of a family and the batch it takes (as transformers' `dummy_inputs`): the sizes
    a task would provide, settings that make the model small and deterministic (no dropout), replacing
    the defaults, and the positional inputs."""

    dims: dict[str, int]
    inputs: tuple[ExampleInput, ...]
    settings: dict[str, object] = dataclasses.field(default_factory=dict)
    needs: tuple[str, ...] = ()  # optional packages the builder imports


@dataclass(frozen=True)
class ModelFamily:
    name: str
    builder: Callable[..., nn.Module]
    settings: type  # a frozen dataclass whose first field is `builder`
    dims: tuple[str, ...]  # the task sizes the builder takes
    example: ModelExample | None = None


_FAMILIES = Registry("model family", package="models", group="modular_masks.models")


def register_model(name: str, settings: type, example: ModelExample | None = None):
    """Decorator on a builder `build(*dims, **settings)`; duplicate names are an error."""

    def decorate(builder):
        fields = {f.name for f in dataclasses.fields(settings)}
        if "builder" not in fields:
            raise TypeError(f"settings of model family {name!r} need a `builder` field")
        dims = tuple(p for p in inspect.signature(builder).parameters if p not in fields)
        if example is not None:
            _check_example(name, example, dims, fields)
        _FAMILIES.register(name)(ModelFamily(name, builder, settings, dims, example))
        return builder

    return decorate


def _check_example(name: str, example: ModelExample, dims: tuple[str, ...], fields: set[str]) -> None:
    """The example must give exactly the builder's dims and only settings the family has."""
    if set(example.dims) != set(dims):
        raise TypeError(f"the example of model family {name!r} gives the dims {', '.join(example.dims)}; its builder "
                        f"takes {', '.join(dims)}")
    unknown = set(example.settings) - fields
    if unknown:
        raise TypeError(f"the example of model family {name!r} sets {', '.join(sorted(unknown))}, which are not "
                        f"settings of the family")


def model_family(name: str) -> ModelFamily:
    """The registered family `name`, or the builder at import path "package.module:function"."""
    if ":" in name:
        return _family_from_path(name)
    return _FAMILIES.find(name, hint=", or an import path like mypkg.nets:build")


def model_families() -> dict[str, ModelFamily]:
    return dict(sorted(_FAMILIES.items()))


def default_settings(name: str):
    """The family's settings with every default, e.g. FNNSettings(builder="fnn", size="small")."""
    family = model_family(name)
    return family.settings(builder=name)


def model_settings(name: str, **values):
    """The family's settings with `values` replacing defaults: model_settings("fnn", size="big")."""
    return dataclasses.replace(default_settings(name), **values)


def build_model(settings, dims: dict[str, int]) -> nn.Module:
    """Build the model `settings` describes for a task that provides `dims`."""
    family = model_family(settings.builder)
    missing = [d for d in family.dims if d not in dims]
    if missing:
        raise ValueError(f"model builder {settings.builder!r} needs {', '.join(family.dims)}, but the task provides "
                         f"{', '.join(dims) or 'none'}; choose a model family that fits the task")
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name != "builder"}
    return family.builder(**{d: dims[d] for d in family.dims}, **values)


def _family_from_path(path: str) -> ModelFamily:
    module_name, _, attribute = path.partition(":")
    try:
        builder = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise KeyError(f"cannot import model builder {path!r}: {error}") from None
    parameters = inspect.signature(builder).parameters.values()
    settings_fields = [("builder", str, dataclasses.field(default=path))]
    dims = []
    for p in parameters:
        if p.default is inspect.Parameter.empty:
            dims.append(p.name)
        elif p.annotation in (int, float, str, bool, "int", "float", "str", "bool"):
            kind = {"int": int, "float": float, "str": str, "bool": bool}.get(p.annotation, p.annotation)
            settings_fields.append((p.name, kind, dataclasses.field(default=p.default)))
        else:
            raise TypeError(f"model builder {path}: keyword parameter {p.name!r} needs an int, float, str or bool "
                            "annotation to be a setting")
    settings = dataclasses.make_dataclass(f"{attribute}_settings", settings_fields, frozen=True)
    return ModelFamily(path, builder, settings, tuple(dims))
