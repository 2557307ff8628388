"""Experiment presets by name, registered by the studies (pipeline/studies/), and the checks that
run before any work."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from models.registry import build_model, model_family
from pipeline.config import ExperimentConfig, override
from tasks.registry import get_task, suggest


@dataclass(frozen=True)
class Preset:
    config: ExperimentConfig
    smoke: dict = field(default_factory=dict)  # overrides that shrink it to minutes on 2 CPU cores
    description: str = ""
    tiny: dict = field(default_factory=dict)  # on top of smoke: a seconds-long run for the contract test


@dataclass(frozen=True)
class SweepSpec:
    """experiments × grid (config key -> values) × seeds."""

    experiments: tuple[str, ...]
    grid: dict = field(default_factory=dict)
    seeds: int = 10
    smoke_grid: dict | None = None  # replaces `grid` under --smoke
    description: str = ""


EXPERIMENTS: dict[str, Preset] = {}
SWEEPS: dict[str, SweepSpec] = {}


def register_experiment(name: str, config: ExperimentConfig, smoke: dict | None = None, description: str = "",
                        tiny: dict | None = None) -> None:
    """A preset: the paper's settings, `smoke` overrides for `--smoke`, `tiny` ones for the contract test."""
    if name in EXPERIMENTS:
        raise ValueError(f"experiment {name!r} is already registered")
    override(config, (smoke or {}) | (tiny or {}))  # an override that does not fit fails at import
    EXPERIMENTS[name] = Preset(dataclasses.replace(config, experiment=name), smoke or {}, description, tiny or {})


def register_sweep(name: str, spec: SweepSpec) -> None:
    if name in SWEEPS:
        raise ValueError(f"sweep {name!r} is already registered")
    missing = [e for e in spec.experiments if e not in EXPERIMENTS]
    if missing:
        raise ValueError(f"sweep {name!r} names unregistered experiments {missing}; register them first")
    SWEEPS[name] = spec


def get_sweep(name: str) -> SweepSpec:
    _load_studies()
    if name not in SWEEPS:
        raise KeyError(f"unknown sweep {name!r}{suggest(name, SWEEPS)}; known sweeps: {', '.join(SWEEPS)}")
    return SWEEPS[name]


def sweep_names() -> list[str]:
    _load_studies()
    return list(SWEEPS)


def get_experiment(name: str, smoke: bool = False) -> ExperimentConfig:
    """The preset `name`; smoke=True shrinks steps and sizes for a look in a few minutes on CPU."""
    _load_studies()
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}{suggest(name, EXPERIMENTS)}; known: {', '.join(EXPERIMENTS)}")
    preset = EXPERIMENTS[name]
    return override(preset.config, preset.smoke) if smoke else preset.config


def experiment_names() -> list[str]:
    _load_studies()
    return list(EXPERIMENTS)


def _load_studies() -> None:
    import pipeline.studies  # noqa: F401  (registers every study's presets and sweeps)


def task_of(config: ExperimentConfig):
    """The trial's task, built from its name, options and data folder."""
    return get_task(config.task, config.task_options, config.data_dir or None)


def validate(config: ExperimentConfig):
    """Fail before any work on settings that would only fail later. -> the task."""
    from pipeline.studies import get_study

    if not config.task:
        raise ValueError("no task: set one with --set task=NAME (see `pipeline list`)")
    if config.model is None:
        raise ValueError("no model: set one with --set model.builder=NAME (see `pipeline list`)")
    get_study(config.study)
    task = task_of(config)
    model_family(config.model.builder)
    with torch.device("meta"):  # builds the architecture without allocating its weights
        build_model(config.model, task.dims)
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={config.device!r} but this machine has no CUDA GPU; use device=cpu")
    if config.mask.batch_size % config.mask.num_samples:
        raise ValueError(
            f"mask.batch_size={config.mask.batch_size} is not divisible by mask.num_samples={config.mask.num_samples}"
        )
    return task
