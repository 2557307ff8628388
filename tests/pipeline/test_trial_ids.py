"""Trial ids are what a results folder is keyed by (trial folders, Parquet partitions, MLflow tags):
a refactoring that changes one makes every existing results folder start its trials again. One trial
of each study is pinned here; the ids were computed by the code before the sweep path was split
(commit c5237e4), and the add/mul, mask-stability and α ones are also trial folders of the committed
reproduction record (reproduction/*/parquet/*/trial_id=...) or of its running sweeps."""

import pytest

from pipeline.experiments import get_experiment, get_sweep
from pipeline.plan import plan_sweep

PINNED = {  # (sweep, scale): the trial with seed 1, the sweep's last experiment and the last value of each axis
    ("addmul", "cpu"): "addmul-lstm-s1-b12efd430024",
    ("alpha-sensitivity", "cpu"): "addmul-fnn-s1-f73058756a61",
    ("cifar10", "paper"): "cifar10-resnet110-s1-84f8fa6398cb",
    ("double-add", "cpu"): "double-add-lstm-sequential-s1-2ac6190aef54",
    ("mask-convergence", "cpu"): "addmul-fnn-s1-103307116fa5",
    ("mask-stability", "cpu"): "addmul-fnn-stability-s1-90cde1bc23da",
    ("mathematics", "paper"): "mathematics-polynomials__collect-s1-1d48572574dc",
    ("permuted-mnist", "cpu"): "permuted-mnist-prefer-old-more-s1-1ab030397cfb",
    ("scan", "paper"): "scan-transformer-s1-20ab3db0fd13",
    ("sharing-vs-capacity", "cpu"): "addmul-fnn-s1-ffd8b15871a8",
    ("text-modules", "paper"): "text-bert-s1-e07b9c94f28e",
}
DATA_OPTIONS = {"mathematics": {"task_options.subfolder": "mathematics_dataset_sample"}}  # the sample, not v1.0


@pytest.mark.parametrize("sweep, scale", PINNED, ids=[f"{s}-{c}" for s, c in PINNED])
def test_one_trial_of_each_study_keeps_its_id(sweep, scale, test_data):
    spec = get_sweep(sweep).at(scale)
    experiment = spec.experiments[-1]
    data = {"data_dir": str(test_data)} | DATA_OPTIONS.get(get_experiment(experiment).task, {})
    plan = plan_sweep(sweep, scale, seeds=2, overrides=data, pack_size=1)
    last = {key: values[-1] for key, values in spec.grid.items()}
    chosen = [t for t in plan.trials if t.config.seed == 1 and t.config.experiment == experiment
              and all(run_value(t.config, key) == value for key, value in last.items())]
    assert [t.id for t in chosen] == [PINNED[sweep, scale]]


def test_every_study_is_pinned():
    """A new sweep gets its pin when it is added (its ids are then what existing folders hold)."""
    from pipeline.experiments import sweep_names

    assert {sweep for sweep, _ in PINNED} == set(sweep_names())


def run_value(config, key: str):
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value
