"""A fast contract over everything registered: every preset at every scale builds and validates
(its model built on the meta device), every sweep at every scale expands its grid and packs, and
every task keeps a small contract — without training anything."""

import pytest
import torch

from pipeline.config import override
from pipeline.experiments import EXPERIMENTS, SWEEPS, experiment_names, get_experiment, sweep_names, validate
from pipeline.plan import plan_sweep
from tasks.registry import get_task, task_names
from tasks.registry import options_for

SCALED = [(name, scale) for name in experiment_names() for scale in ("paper", *EXPERIMENTS[name].scales)]
# Presets whose data the contract points at a small copy (the Mathematics sample, not v1.0).
DATA_OPTIONS = {"mathematics": {"task_options.subfolder": "mathematics_dataset_sample"}}


def _with_test_data(config, data_dir):
    return override(config, {"data_dir": str(data_dir)} | DATA_OPTIONS.get(config.task, {}))


@pytest.mark.parametrize("name, scale", SCALED, ids=[f"{n}-{s}" for n, s in SCALED])
def test_every_preset_at_every_scale_validates_with_its_model_on_the_meta_device(name, scale, test_data):
    if name == "custom":
        pytest.skip("the template has no task until one is set")
    config = get_experiment(name, scale=scale)
    task = validate(_with_test_data(config, test_data))  # builds the task and the model on the meta device
    assert task.version >= 1


@pytest.mark.parametrize("sweep", sweep_names())
@pytest.mark.parametrize("scale", ["paper", "cpu", "smoke"])
def test_every_sweep_expands_its_grid_and_packs_into_valid_trials(sweep, scale, test_data):
    spec = SWEEPS[sweep]
    if scale == "cpu" and scale not in spec.scales:
        pytest.skip(f"{sweep} has no CPU scale")
    spec = spec.at(scale)
    data = {"data_dir": str(test_data)} | next(
        (DATA_OPTIONS[get_experiment(e).task] for e in spec.experiments if get_experiment(e).task in DATA_OPTIONS), {})
    plan = plan_sweep(sweep, scale, overrides=data, pack_size=4)
    grid_points = _product([len(values) for values in spec.grid.values()])
    assert len(plan.trials) == len(spec.experiments) * grid_points * spec.seeds  # every grid point of every seed once
    assert len({t.id for t in plan.trials}) == len(plan.trials)
    assert all(len(run.trials) <= 4 for run in plan.runs)
    packed = {tuple(sorted((k, getattr(t.config.mask, k[5:])) for k in spec.grid if k.startswith("mask."))) for t in plan.trials}
    assert packed == _packed_points(spec.grid)
    for trial in plan.runs[0].trials:
        assert trial.config.sweep == sweep and trial.config.seed == 0
        validate(trial.config)


TASK_OPTIONS = {"mathematics": {"subfolder": "mathematics_dataset_sample", "validation_size": 20},
                "text": {"data": "text-demo/sentences.csv", "tokenizer": "text-demo/tokenizer"}}  # no default data


@pytest.mark.parametrize("name", task_names())
def test_every_task_is_deterministic_under_a_seed_and_its_dims_match_a_batch(name, test_data):
    task = get_task(name, options_for(name, **TASK_OPTIONS.get(name, {})), test_data)
    assert isinstance(task.version, int) and task.version >= 1
    assert task.pretrain_split and task.eval_splits and task.mask_splits
    assert task.control_mask is None or task.control_mask in task.mask_splits
    first = task.sample(task.pretrain_split, 4, torch.Generator().manual_seed(7))
    again = task.sample(task.pretrain_split, 4, torch.Generator().manual_seed(7))
    other = task.sample(task.pretrain_split, 4, torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(_tensors(first), _tensors(again))), f"{name}: same seed, other batch"
    assert not all(torch.equal(a, b) for a, b in zip(_tensors(first), _tensors(other))), f"{name}: seed ignored"
    inputs = _tensors(first)[0]
    if "input_size" in task.dims and inputs.is_floating_point():
        assert inputs.shape[-1] == task.dims["input_size"], f"{name}: dims {task.dims} vs inputs {tuple(inputs.shape)}"


def _product(numbers: list[int]) -> int:
    result = 1
    for number in numbers:
        result *= number
    return result


def _packed_points(grid: dict) -> set:
    """The distinct combinations of the grid's mask.* axes (what packs hold), {()} without any."""
    import itertools

    keys = [k for k in grid if k.startswith("mask.")]
    return {tuple(sorted(zip(keys, combo))) for combo in itertools.product(*(grid[k] for k in keys))}


def _tensors(batch) -> list:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, dict):
        return [t for v in batch.values() for t in _tensors(v)]
    if isinstance(batch, (tuple, list)):
        return [t for v in batch for t in _tensors(v)]
    return []
