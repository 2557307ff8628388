"""One trial, resolved once at the edge (`pipeline run`, or the sweep plan) and carried whole.

A TrialSpec holds the full config (seed and sweep included), its task's version and the trial id
computed from both. The Tune search space carries it, the worker runs it, the records writer keys
rows by its id and the summary finds its folder with it: nothing downstream rebuilds a config from
a preset name or builds a task to read its version.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import UNKEYED, ExperimentConfig, fingerprint, flatten
from tasks.registry import task_class


@dataclass(frozen=True)
class TrialSpec:
    config: ExperimentConfig
    task_version: int
    id: str  # "<experiment>-s<seed>-<fingerprint>": the trial's folder, Parquet partition and MLflow tag

    def folder(self, results_dir: Path) -> Path:
        """Where the trial keeps its files: results/trials/<id>."""
        return Path(results_dir) / "trials" / self.id

    @property
    def params(self) -> dict:
        """The flat config with the task version: MLflow params and every Parquet row's columns."""
        return flatten(self.config) | {"task_version": self.task_version}


def resolve(config: ExperimentConfig, seed: int | None = None, sweep: str | None = None) -> TrialSpec:
    """The trial `config` describes (with `seed` and `sweep` set where given); the task's version is
    its class's (no task is built)."""
    changes = {k: v for k, v in {"seed": seed, "sweep": sweep}.items() if v is not None}
    config = dataclasses.replace(config, **changes) if changes else config
    version = task_class(config.task).version
    return TrialSpec(config, version, trial_id(config, version))


def trial_id(config: ExperimentConfig, task_version: int) -> str:
    """Everything that decides the trial's results (not where its data lives, not how often it logs,
    not how its masks are packed), hashed: the same settings find the same trial again."""
    values = {k: v for k, v in flatten(config).items() if k not in UNKEYED}
    return f"{config.experiment}-s{config.seed}-{fingerprint(values | {'task_version': task_version})}"
