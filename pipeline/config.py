"""Typed, frozen configs composed per stage, with strict dotted overrides (`mask.beta=4e-4`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field

from tasks.registry import suggest


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "fnn"  # "fnn" or "lstm"
    size: str = "small"  # FNN: small / medium / big / huge, or hidden sizes "800,800"
    lstm_hidden: int = 256


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 20_000
    lr: float = 1e-3
    batch_size: int = 128
    clip: float = 1.0


@dataclass(frozen=True)
class MaskStageConfig:
    steps: int = 20_000
    lr: float = 1e-2
    beta: float = 1e-4  # β = b·α (Appendix C.1)
    batch_size: int = 128
    num_samples: int = 4
    mask_biases: bool = False
    fused: bool = True


@dataclass(frozen=True)
class ExperimentConfig:
    experiment: str = "addmul-fnn"
    task: str = "addmul"
    presentation: str = "direct"  # how the task's examples reach the model, see pipeline.experiments
    sweep: str = ""  # the sweep a trial belongs to ("" for `pipeline run`)
    seed: int = 0
    device: str = "cpu"
    eval_size: int = 4096
    checkpoint_every: int = 1000
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    mask: MaskStageConfig = field(default_factory=MaskStageConfig)

    def __post_init__(self):
        for key, value in flatten(self).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{key} must not be negative, got {value}")
        for key in ("pretrain.steps", "mask.steps", "pretrain.batch_size", "mask.batch_size", "eval_size",
                    "checkpoint_every", "mask.num_samples"):
            if flatten(self)[key] < 1:
                raise ValueError(f"{key} must be >= 1")


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
    """A copy of `config` with dotted keys replaced; unknown keys and wrong types are errors."""
    known = flatten(config)
    for key, value in assignments.items():
        if key not in known:
            raise KeyError(f"unknown config key {key!r}{suggest(key, known)}; known keys: {', '.join(known)}")
        config = _override_one(config, key.split("."), value, key)
    return config


def _override_one(config, path: list[str], value, full_key: str):
    head = path[0]
    if len(path) > 1:
        return dataclasses.replace(config, **{head: _override_one(getattr(config, head), path[1:], value, full_key)})
    expected = typing.get_type_hints(type(config))[head]
    return dataclasses.replace(config, **{head: _coerce(value, expected, full_key)})


def _coerce(value, expected: type, key: str):
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
