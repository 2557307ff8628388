"""The permuted-MNIST transfer recipe: frozen weights, re-initialised free weights, new-mask logits,
no forgetting, and an exact resume in the middle of a task."""

import json

import mlflow
import pyarrow.dataset as ds
import pytest
import torch

import pipeline.studies.permuted_mnist as study
from models.masking import Masks
from pipeline.config import override
from pipeline.experiments import get_experiment
from pipeline.run import run_trial
from pipeline.stages import TrialContext
from pipeline.storage import Storage
from tests.conftest import SHARED_DATA
from pipeline.trial import resolve

TASKS = 3
SMALL = {"model.size": "24,24,8", "task_options.permutations": str(TASKS), "mask.steps": "12", "eval_size": "600",
         "checkpoint_every": "4", "mask.fused": "false", "mask.batch_size": "32"}


@pytest.fixture(autouse=True)
def local_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def small(shared_data, name="permuted-mnist", **extra):
    return override(get_experiment(name, smoke=True), SMALL | {"data_dir": str(shared_data)} | extra)


def _phase(result, t):
    folder = result.trial_dir / "phases" / f"task{t}"
    return torch.load(folder / "weights.pt", weights_only=True), Masks.load(folder / "masks.pt")


def _context(config, results_dir):
    from pipeline.experiments import task_of

    return TrialContext(resolve(config), task_of(config), results_dir, Storage(results_dir, None))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One small trial of the prefer-old variant, shared by the tests below (module scope, so the
    shared_data fixture is not available: the same folder is read from conftest)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("the shared datasets are not available")
    results = tmp_path_factory.mktemp("permuted")
    config = small(SHARED_DATA, "permuted-mnist-prefer-old")
    return config, results, run_trial(config, results)


@pytest.mark.slow
def test_frozen_weights_never_change_bit_for_bit(finished):
    _, _, result = finished
    phases = [_phase(result, t) for t in range(TASKS)]
    for s, (weights_s, mask_s) in enumerate(phases):
        for weights_later, _ in phases[s + 1:]:
            for name, keep in mask_s.tensors.items():
                assert torch.equal(weights_later[name][keep], weights_s[name][keep]), (s, name)


@pytest.mark.slow
def test_every_task_keeps_its_accuracy_exactly(finished):
    _, results, result = finished
    rows = ds.dataset(results / "parquet" / "continual", partitioning="hive").to_table().to_pylist()
    assert {(r["after_task"], r["evaluated_task"]) for r in rows} == {(t, s) for t in range(TASKS) for s in range(t + 1)}
    for s in range(TASKS):
        scores = {r["accuracy"] for r in rows if r["evaluated_task"] == s}
        assert len(scores) == 1, f"task {s} changed after later tasks: {scores}"
    # the first task learned something in 12 steps (chance is 0.1; the std of chance on 600 images is 0.012)
    assert [r["accuracy"] for r in rows if r["evaluated_task"] == 0][0] > 0.15
    metrics = ds.dataset(results / "parquet" / "metrics", partitioning="hive").to_table().to_pylist()
    assert {(r["mask"], r["subtask"]) for r in metrics} == {(f"task{s}", f"task{s}") for s in range(TASKS)}


@pytest.mark.slow
def test_sharing_rows_match_the_saved_masks(finished):
    _, results, result = finished
    rows = ds.dataset(results / "parquet" / "continual_layers", partitioning="hive").to_table().to_pylist()
    masks = [_phase(result, t)[1] for t in range(TASKS)]
    row = [r for r in rows if r["after_task"] == 2 and r["layer"] == "layers.3" and r["parameter"] == "weight"][0]
    new, earlier = masks[2].tensors["layers.3.weight"], masks[0].tensors["layers.3.weight"] | masks[1].tensors[
        "layers.3.weight"]
    assert row["total"] == 8 * 10 and row["kept"] == int(new.sum())
    assert row["shared_with_earlier"] == sum(bool(a and b) for a, b in zip(new.flatten().tolist(),
                                                                          earlier.flatten().tolist()))
    assert all(r["shared_with_earlier"] is None for r in rows if r["after_task"] == 0)


@pytest.mark.slow
def test_one_mlflow_run_with_the_per_task_accuracies(finished):
    _, results, result = finished
    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].data.tags["trial_id"] == result.trial_id
    assert {f"accuracy/task{s}/task{s}" for s in range(TASKS)} <= set(runs[0].data.metrics)


@pytest.mark.slow
def test_next_phase_reinitialises_free_weights_and_sets_prefer_old_logits(finished):
    config, results, result = finished
    ctx = _context(config, results)
    task = ctx.task.with_seed(config.seed)
    weights_0, mask_0 = _phase(result, 0)
    masked, used = study.prepare_phase(ctx, task, 1)
    assert all(torch.equal(used.tensors[n], mask_0.tensors[n]) for n in mask_0.tensors)
    start = dict(masked.model.named_parameters())
    logits = masked.logits_by_name()
    for name, keep in used.tensors.items():
        assert torch.equal(start[name][keep], weights_0[name][keep])
        if name.endswith("weight"):  # biases re-initialise to nn.Linear's uniform too, but may share values
            assert bool((start[name][~keep] != weights_0[name][~keep]).all()), name
            bound = start[name].shape[1] ** -0.5  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            assert bool((start[name][~keep].abs() <= bound).all())
        # prefer-old (Fig. 15a): logit 2 on weights earlier tasks use, 0 on free ones
        assert torch.equal(logits[name].detach(), torch.where(keep, 2.0, 0.0)), name


def test_first_task_logits_and_prefer_old_more(shared_data, tmp_path):
    config = small(shared_data, "permuted-mnist-prefer-old-more")
    ctx = _context(config, tmp_path)
    masked, used = study.prepare_phase(ctx, ctx.task.with_seed(0), 0)
    assert used is None and all(bool((l == 2.0).all()) for l in masked.logits)
    assert ctx.task.initial_logits == (2.0, -1.0)


@pytest.mark.slow
def test_resume_inside_a_task_gives_identical_results(shared_data, tmp_path, monkeypatch):
    config = small(shared_data)
    reference = run_trial(config, tmp_path / "reference")
    calls = {"count": 0}
    original = study.training_step

    def failing_step(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 12 + 6:  # task 1, after its checkpoint at step 4
            raise RuntimeError("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(study, "training_step", failing_step)
    with pytest.raises(RuntimeError, match="killed"):
        run_trial(config, tmp_path / "resumed")
    assert (tmp_path / "resumed" / "trials" / reference.trial_id / "phases" / "task1" / "checkpoint.pt").exists()
    calls["count"] = -10_000
    resumed = run_trial(config, tmp_path / "resumed")
    assert calls["count"] == -10_000 + (12 - 4) + 12  # the rest of task 1 from step 4, then task 2
    for t in range(TASKS):
        (weights_a, masks_a), (weights_b, masks_b) = _phase(reference, t), _phase(resumed, t)
        assert all(torch.equal(weights_a[n], weights_b[n]) for n in weights_a)
        assert all(torch.equal(masks_a.tensors[n], masks_b.tensors[n]) for n in masks_a.tensors)
        evaluation = [json.loads((r.trial_dir / "phases" / f"task{t}" / "evaluation.json").read_text())
                      for r in (reference, resumed)]
        assert evaluation[0] == evaluation[1]


@pytest.mark.slow
def test_bad_settings_are_rejected_before_any_work(shared_data, tmp_path):
    with pytest.raises(ValueError, match="logit_init must be one of"):
        run_trial(small(shared_data, **{"task_options.logit_init": "prefer-new"}), tmp_path)
    with pytest.raises(ValueError, match="permutations must be at least 2"):
        run_trial(small(shared_data, **{"task_options.permutations": "1"}), tmp_path)
    assert not (tmp_path / "trials").exists()
    with pytest.raises(ValueError, match="needs every parameter masked"):
        run_trial(small(shared_data, **{"mask.mask_biases": "false"}), tmp_path)
    assert not list((tmp_path / "trials").glob("*/phases/task0/*.pt"))
