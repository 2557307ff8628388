"""Experiment presets by name, registered by the studies (pipeline/studies/), and the checks that
run before any work."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from models.registry import build_model, model_family
from pipeline.config import ExperimentConfig, override
from models.common import Registry, suggest
from tasks.registry import get_task


# Scales of every preset and sweep: the paper's settings, a CPU scale whose networks and masks
# converge on a 2-core machine (the reproduction record, reproduction/), and a smoke test.
SCALES = ("paper", "cpu", "smoke")
SCALE_HELP = {"paper": "the paper's settings (GPU-sized)",
              "cpu": "reduced networks and steps that converge on 2 CPU cores (reproduction/)",
              "smoke": "minutes on 2 CPU cores: checks that everything runs, results mean nothing"}


@dataclass(frozen=True)
class Preset:
    config: ExperimentConfig  # the paper's settings
    scales: dict = field(default_factory=dict)  # scale name -> overrides of the paper's settings
    description: str = ""
    tiny: dict = field(default_factory=dict)  # on top of smoke: a seconds-long run for the contract test

    @property
    def smoke(self) -> dict:
        return self.scales.get("smoke", {})


@dataclass(frozen=True)
class SweepSpec:
    """experiments × grid (config key -> values) × seeds, at the paper's scale; `scales` replaces
    any of these at another scale, e.g. {"cpu": {"grid": {...}, "seeds": 5}}."""

    experiments: tuple[str, ...]
    grid: dict = field(default_factory=dict)
    seeds: int = 10
    smoke_grid: dict | None = None  # replaces `grid` under --smoke
    description: str = ""
    scales: dict = field(default_factory=dict)

    def at(self, scale: str) -> "SweepSpec":
        """This sweep at `scale`: its grid, seeds and experiments there."""
        check_scale(scale)
        fields = {"grid": self.smoke_grid, "seeds": SMOKE_SEEDS} if scale == "smoke" and self.smoke_grid is not None \
            else {"seeds": SMOKE_SEEDS} if scale == "smoke" else {}
        fields = {k: v for k, v in fields.items() if v is not None} | self.scales.get(scale, {})
        return dataclasses.replace(self, **fields)


SMOKE_SEEDS = 2  # a smoke sweep runs 2 seeds unless --seeds says otherwise
# What the studies register: every module of pipeline/studies and of the entry-point group.
STUDIES = dict(package="pipeline.studies", group="modular_masks.studies")
EXPERIMENTS = Registry("experiment", **STUDIES)
SWEEPS = Registry("sweep", **STUDIES)
RECIPES = Registry("study", **STUDIES)


def register_study(name: str):
    """Decorator on a recipe `recipe(ctx: TrialContext) -> dict[str, list[dict]]`."""
    return RECIPES.register(name)


def get_study(name: str):
    return RECIPES.find(name)


def study_names() -> list[str]:
    return RECIPES.names()


def check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}{suggest(scale, SCALES)}; choose one of {', '.join(SCALES)}")


def register_experiment(name: str, config: ExperimentConfig, smoke: dict | None = None, description: str = "",
                        tiny: dict | None = None, cpu: dict | None = None) -> None:
    """A preset: the paper's settings, `smoke` overrides for `--smoke`, `cpu` ones for `--scale cpu`
    (where the preset has one), `tiny` ones on top of smoke for the contract test."""
    scales = {"smoke": smoke or {}} | ({"cpu": cpu} if cpu is not None else {})
    for overrides in scales.values():  # an override that does not fit fails at import
        override(config, overrides)
    override(config, (smoke or {}) | (tiny or {}))
    EXPERIMENTS.register(name)(Preset(dataclasses.replace(config, experiment=name), scales, description, tiny or {}))


def register_sweep(name: str, spec: SweepSpec) -> None:
    for scale in ("paper", *spec.scales):
        missing = [e for e in spec.at(scale).experiments if e not in EXPERIMENTS]
        if missing:
            raise ValueError(f"sweep {name!r} names unregistered experiments {missing}; register them first")
    SWEEPS.register(name)(spec)


def get_sweep(name: str) -> SweepSpec:
    return SWEEPS.find(name)


def sweep_names() -> list[str]:
    return SWEEPS.names()


def get_experiment(name: str, smoke: bool = False, scale: str | None = None) -> ExperimentConfig:
    """The preset `name` at `scale` (paper, cpu or smoke; smoke=True is scale="smoke")."""
    scale = scale or ("smoke" if smoke else "paper")
    check_scale(scale)
    preset = EXPERIMENTS.find(name)
    if scale == "paper":
        return preset.config
    if scale not in preset.scales:
        raise ValueError(f"experiment {name!r} has no {scale} scale (it has: paper, {', '.join(preset.scales)}); "
                         f"`pipeline list` shows each preset's scales")
    return override(preset.config, preset.scales[scale])


def experiment_names() -> list[str]:
    return EXPERIMENTS.names()


def task_of(config: ExperimentConfig):
    """The trial's task, built from its name, options and data folder."""
    return get_task(config.task, config.task_options, config.data_dir or None)


def validate(config: ExperimentConfig, task=None):
    """Fail before any work on settings that would only fail later. -> the task (`task`, when the
    caller built it already, else built here)."""
    if not config.task:
        raise ValueError("no task: set one with --set task=NAME (see `pipeline list`)")
    if config.model is None:
        raise ValueError("no model: set one with --set model.builder=NAME (see `pipeline list`)")
    get_study(config.study)
    task = task if task is not None else task_of(config)
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
