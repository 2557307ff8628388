"""Packed sweeps: trials that differ only in mask settings train their masks in one pass, and each
stays its own trial (files, Parquet rows, MLflow run, resume), with the masks it gets alone."""

import json

import mlflow
import pyarrow.dataset as ds
import pytest
import torch

from pipeline.sweep import SweepOptions, run_sweep
from pipeline.trainable import FAULT_VARIABLE
from tests.pipeline.test_sweep import local_tracking  # noqa: F401 (an autouse fixture: no cluster, a local store)

TINY = {"pretrain.steps": "40", "mask.steps": "30", "eval_size": "64", "checkpoint_every": "10", "mask.fused": "false"}
BETAS = {1e-5, 1e-4, 1e-3}  # the smoke grid of alpha-sensitivity
pytestmark = pytest.mark.slow  # real Ray: tens of seconds each


def _sweep(results_dir, **kwargs):
    options = dict(seeds=1, scale="smoke", overrides=TINY, num_cpus=2, max_failures=1)
    return run_sweep(SweepOptions("alpha-sensitivity", results_dir, **(options | kwargs)))


def _logits(results_dir) -> dict:
    return {path.relative_to(results_dir).as_posix(): torch.load(path)
            for path in (results_dir / "trials").glob("*/masks/*.logits.pt")}


def _assert_each_trial_once(results_dir, trials: int) -> set:
    table = ds.dataset(results_dir / "parquet" / "metrics", partitioning="hive").to_table()
    ids = table.column("trial_id").to_pylist()
    assert len(set(ids)) == trials
    assert len({ids.count(i) for i in set(ids)}) == 1  # nobody has a duplicated set of rows
    assert set(table.column("mask.beta").to_pylist()) == BETAS
    client = mlflow.MlflowClient(f"sqlite:///{results_dir / 'mlflow.db'}")
    runs = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
            if "trial_id" in r.data.tags]
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(set(ids))  # one run per trial
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {float(r.data.params["mask.beta"]) for r in runs} == BETAS
    return set(ids)


def test_packed_sweep_gives_the_masks_of_unpacked_trials_and_records_each_trial_once(tmp_path):
    packed, alone = tmp_path / "packed", tmp_path / "alone"
    summary = _sweep(packed, pack_size=3)
    assert (summary.done, summary.failed, summary.unfinished) == (3, 0, 0)
    assert (_sweep(alone, pack_size=1).done) == 3
    packed_ids = _assert_each_trial_once(packed, 3)
    assert packed_ids == _assert_each_trial_once(alone, 3)  # the same trials

    packed_logits, alone_logits = _logits(packed), _logits(alone)
    assert sorted(packed_logits) == sorted(alone_logits) and len(packed_logits) == 9  # 3 trials × 3 masks
    for path, logits in packed_logits.items():
        for name, value in logits.items():
            assert torch.equal(value, alone_logits[path][name]), f"{path} {name}"

    # one Tune trial ran the pack; its checkpoints name each member's stages
    tune_trials = [f for f in (packed / "ray" / "alpha-sensitivity").iterdir() if f.is_dir()]
    assert len(tune_trials) == 1
    stages = [json.loads(m.read_text()) for m in tune_trials[0].glob("checkpoint_*/stage.json")]
    assert sorted({s["member"] for s in stages}) == [0, 1, 2]
    assert sorted(s["stage"] for s in stages if s["member"] == 1) == ["mask add", "mask full", "mask mul", "pretrain"]
    assert len([f for f in (alone / "ray" / "alpha-sensitivity").iterdir() if f.is_dir()]) == 3


def test_failed_pack_resumes_and_records_each_trial_once(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_VARIABLE, "1")  # the first attempt of every trial fails
    first = _sweep(tmp_path, max_failures=0, pack_size=3)
    assert (first.done, first.failed) == (0, 3)  # every member failed after its first stage
    resumed = _sweep(tmp_path, resume=True, pack_size=3)
    assert resumed.resumed and (resumed.done, resumed.failed, resumed.unfinished) == (3, 0, 0)
    assert (resumed.retried, resumed.resumed_trials) == (0, 3)
    _assert_each_trial_once(tmp_path, 3)
