"""A sweep's plan: every trial resolved once (pipeline.trial), grouped into the Tune trials that run
them, and the Tune search space that carries them whole.

Grid axes of the mask stage (`mask.*`: β...) change nothing before the masks, so their grid points
share one pretrained network and can train their masks in one pass: they are grouped into packs of
at most `pack_size` trials (1: no packs). Tune schedules packs; each member stays its own trial.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from pipeline.config import fingerprint, override
from pipeline.experiments import SweepSpec, get_experiment, get_sweep, validate
from pipeline.trial import TrialSpec, resolve

PACKABLE_PREFIX = "mask."  # grid axes whose trials share everything before the mask stage
MAX_PACK = 16  # trials per pack by default with device=cuda
MAX_PACK_CPU = 4  # ... and on a CPU (measured: packs of 3 even to 8 % faster, 16 slower; benchmarks/README.md)
PLAN_FORMAT = 2  # of what the Tune space carries; a sweep state of another format is not resumed by Tune


@dataclass(frozen=True)
class TuneTrial:
    """What one Tune trial runs: one trial, or a pack of trials that differ only in mask settings.
    `columns`: its grid values as the progress table shows them."""

    trials: tuple[TrialSpec, ...]
    columns: dict

    def as_tune_value(self) -> dict:
        """Tune keeps the trial specs in its object store and its own state holds placeholders for them
        (by their place in the grid); the ids are kept as plain strings beside them, for the driver's
        side (folder names, summary) and for the worker to check it got the trials it was planned with."""
        return self.columns | {"ids": [trial.id for trial in self.trials], "specs": self.trials}


@dataclass(frozen=True)
class SweepPlan:
    name: str
    scale: str
    spec: SweepSpec  # the sweep at its scale
    seeds: int
    runs: tuple[TuneTrial, ...]
    tasks: dict  # trial id -> its task (built once per grid point, for the checks and the workload)

    @property
    def trials(self) -> list[TrialSpec]:
        return [trial for run in self.runs for trial in run.trials]

    @property
    def devices(self) -> set[str]:
        return {trial.config.device for trial in self.trials}

    def space(self) -> dict:
        """Tune's search space: one grid axis, "trial", whose values carry the resolved trials."""
        from ray import tune

        return {"trial": tune.grid_search([run.as_tune_value() for run in self.runs])}

    def columns(self) -> list[str]:
        """The progress table's columns (the keys every Tune trial shows)."""
        return [key for key in self.runs[0].columns if any(run.columns[key] != "" for run in self.runs)]

    def fingerprint(self) -> str:
        """The plan's trials in order: a Tune state of another plan resolves its placeholders to other trials."""
        return fingerprint({"format": PLAN_FORMAT, "trials": [trial.id for trial in self.trials]})

    def workload(self):
        """The sweep's training steps (pipeline.estimate), every trial of every grid point."""
        from pipeline.estimate import workload

        return workload([(trial, self.tasks[trial.id]) for trial in self.trials])


def plan_sweep(name: str, scale: str = "paper", seeds: int | None = None, overrides: dict | None = None,
               pack_size: int | None = None, spec: SweepSpec | None = None) -> SweepPlan:
    """Every trial of sweep `name` (or of `spec`, named `name`) at `scale`: experiments × grid × seeds,
    each config validated once per grid point (a bad key or value fails here, before Ray starts).
    pack_size None: by device."""
    spec = (spec or get_sweep(name)).at(scale)
    if pack_size is not None and pack_size < 1:
        raise ValueError(f"pack size must be >= 1 (1: no packing), got {pack_size}")
    overrides = overrides or {}
    fixed = {k: v for k, v in overrides.items() if k not in spec.grid}
    points = _grid_points(spec, scale, fixed)
    pack_size = pack_size or default_pack_size({config.device for _, config, _ in points})
    packed = [k for k in spec.grid if k.startswith(PACKABLE_PREFIX)] if pack_size != 1 else []
    runs, tasks = [], {}
    for seed in range(seeds or spec.seeds):
        for key, group in _groups(points, packed).items():
            members = [(values, resolve(config, seed, name), task) for values, config, task in group]
            tasks |= {trial.id: task for _, trial, task in members}
            for pack in packs(members, pack_size):
                runs.append(TuneTrial(tuple(trial for _, trial, _ in pack), _columns(key, seed, packed, pack)))
    return SweepPlan(name, scale, spec, seeds or spec.seeds, tuple(runs), tasks)


def _grid_points(spec: SweepSpec, scale: str, fixed: dict) -> list[tuple[dict, object, object]]:
    """[(grid values with "experiment", config, task)] of every experiment × grid point, validated;
    a task is built once for all points that share it."""
    built: dict = {}
    points = []
    for experiment in spec.experiments:
        for combo in itertools.product(*spec.grid.values()):
            values = dict(zip(spec.grid, combo))
            config = override(get_experiment(experiment, scale=scale), values | fixed)
            key = (config.task, config.task_options, config.data_dir)
            built[key] = validate(config, built.get(key))
            points.append(({"experiment": experiment} | values, config, built[key]))
    return points


def _groups(points: list, packed: list[str]) -> dict[tuple, list]:
    """Grid points by experiment and unpacked grid values (in order): each group shares a pretrained network."""
    groups: dict[tuple, list] = {}
    for point in points:
        values = point[0]
        unpacked = tuple((k, v) for k, v in values.items() if k != "experiment" and k not in packed)
        groups.setdefault((values["experiment"], unpacked), []).append(point)
    return groups


def _columns(key: tuple, seed: int, packed: list[str], pack: list) -> dict:
    experiment, unpacked = key
    label = " ".join(f"{k}={','.join(str(values[k]) for values, _, _ in pack)}" for k in packed)
    return {"experiment": experiment, "seed": seed, **{k: str(v) for k, v in unpacked}, "pack": label}


def packs(members: list, pack_size: int | None) -> list[list]:
    """Members split into the fewest packs of at most pack_size (None: MAX_PACK), sizes as equal as can be."""
    size = min(pack_size or MAX_PACK, len(members))
    count = -(-len(members) // size)
    return [members[i::count] for i in range(count)]


def default_pack_size(devices: set[str]) -> int:
    """Large packs on a GPU, where M small passes are launch-bound; small ones on a CPU, where a pack
    of 3 made a sweep up to 8 % faster and packs of 16 made mask steps slower (benchmarks/README.md)."""
    return MAX_PACK if any(d.startswith("cuda") for d in devices) else MAX_PACK_CPU
