"""Typed, frozen configs composed per stage, with strict dotted overrides (`mask.beta=4e-4`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from typing import Any

from models.registry import default_settings
from models.common import suggest
from tasks.registry import NoOptions, task_options


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 20_000
    lr: float = 1e-3
    batch_size: int = 128
    clip: float = 1.0
    optimizer: str = "adam"  # "adam" or "sgd" (momentum 0.9)
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    adam_beta2: float = 0.999
    lr_decay_steps: tuple[int, ...] = ()  # lr divided by 10 at each of these steps
    warmup_steps: int = 0  # linear warm-up of the lr from 0


@dataclass(frozen=True)
class MaskStageConfig:
    steps: int = 20_000
    lr: float = 1e-2
    beta: float = 1e-4  # β = b·α (Appendix C.1)
    batch_size: int = 128
    num_samples: int = 4
    mask_biases: bool = False
    mask_embeddings: bool = True
    fused: bool = True
    clip: float = 1.0
    warmup_steps: int = 0  # linear warm-up of the mask lr from 0
    pack: bool = False  # a trial's masks train together in one pass (same masks; pays off on a GPU)


OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class ExperimentConfig:
    """One trial. `task` and `model.builder` are names in the task and model registries (or import
    paths); `task_options` and `model` are the typed settings of that task and model family."""

    experiment: str = "custom"
    study: str = "masks"  # the recipe that runs the trial's stages (pipeline.studies)
    task: str = ""
    sweep: str = ""  # the sweep a trial belongs to ("" for `pipeline run`)
    seed: int = 0
    device: str = "cpu"
    data_dir: str = ""  # "" = $MODULAR_DATA_DIR or ~/.cache/modular-masks/data; not part of any key
    eval_size: int = 4096
    checkpoint_every: int = 1000
    log_every: int = 100  # steps between points of the training curves; not part of any key
    task_options: Any = field(default_factory=NoOptions)
    model: Any = None
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    mask: MaskStageConfig = field(default_factory=MaskStageConfig)

    def __post_init__(self):
        values = flatten(self)
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{key} must not be negative, got {value}")
        for key in ("pretrain.steps", "mask.steps", "pretrain.batch_size", "mask.batch_size", "eval_size",
                    "checkpoint_every", "mask.num_samples", "log_every"):
            if values[key] < 1:
                raise ValueError(f"{key} must be >= 1")
        if self.pretrain.optimizer not in OPTIMIZERS:
            raise ValueError(f"pretrain.optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.pretrain.optimizer!r}")


# Keys that pick the class of a settings section: set first, they reset that section to its defaults.
SWITCHES = {"task": ("task_options", task_options), "model.builder": ("model", default_settings)}
# Keys that do not change what is computed (where data is, how often curves are logged, whether the
# masks of a trial train together): left out of every fingerprint, so changing them finds the same trials.
UNKEYED = ("data_dir", "log_every", "mask.pack")


def flatten(config) -> dict[str, object]:
    """Nested dataclass -> {"mask.beta": 1e-4, ...}: the key names used everywhere."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update({f"{f.name}.{k}": v for k, v in flatten(value).items()})
        else:
            out[f.name] = value
    return out


def override(config, assignments: dict[str, object]):
    """A copy of `config` with dotted keys replaced; unknown keys and wrong types are errors.

    A switch key (`task`, `model.builder`) is applied first and resets its settings section to the
    new task's or model family's defaults, so `--set model.builder=lstm --set model.hidden=64` works.
    """
    for key, (section, defaults) in SWITCHES.items():
        if key in assignments:
            name = str(assignments[key])
            config = _replace_path(config, section.split("."), defaults(name))
            config = _override_one(config, key.split("."), name, key)
    known = flatten(config)
    for key, value in assignments.items():
        if key in SWITCHES:
            continue
        if key not in known:
            raise KeyError(f"unknown config key {key!r}{suggest(key, known)}; known keys: {', '.join(known)}")
        config = _override_one(config, key.split("."), value, key)
    return config


def _replace_path(config, path: list[str], value):
    if len(path) == 1:
        return dataclasses.replace(config, **{path[0]: value})
    return dataclasses.replace(config, **{path[0]: _replace_path(getattr(config, path[0]), path[1:], value)})


def _override_one(config, path: list[str], value, full_key: str):
    head = path[0]
    if len(path) > 1:
        return dataclasses.replace(config, **{head: _override_one(getattr(config, head), path[1:], value, full_key)})
    expected = typing.get_type_hints(type(config))[head]
    return dataclasses.replace(config, **{head: _coerce(value, expected, full_key)})


def _coerce(value, expected, key: str):
    if typing.get_origin(expected) is tuple:
        return _coerce_tuple(value, typing.get_args(expected)[0], key)
    if not isinstance(value, str):
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
            return value
        raise TypeError(f"{key} must be {expected.__name__}, got {value!r}")
    try:
        if expected is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        return expected(value)
    except ValueError:
        raise TypeError(f"{key} must be {expected.__name__}, got {value!r}") from None


def _coerce_tuple(value, item: type, key: str) -> tuple:
    """"32000,48000" or [32000, 48000] -> (32000, 48000); "" -> ()."""
    parts = [p for p in value.split(",") if p.strip()] if isinstance(value, str) else list(value)
    try:
        return tuple(_coerce(p.strip() if isinstance(p, str) else p, item, key) for p in parts)
    except TypeError:
        raise TypeError(f"{key} must be comma-separated {item.__name__} values, got {value!r}") from None


def parse_assignments(pairs: tuple[str, ...]) -> dict[str, str]:
    """("mask.beta=4e-4", ...) -> {"mask.beta": "4e-4"}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def fingerprint(values: dict) -> str:
    """Short stable hash of a dict of config values."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]
