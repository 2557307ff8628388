"""The SCAN recipe end to end at tiny size: tables, baselines, and exact resume of an interrupted mask."""

import pyarrow.dataset as ds
import pytest
import torch

import pipeline.stages
from models.masking import Masks
from pipeline.config import override
from pipeline.experiments import get_experiment
from pipeline.run import run_trial
from tasks.scan import SPLITS

TINY = {"pretrain.steps": "4", "mask.steps": "6", "checkpoint_every": "2", "eval_size": "8",
        "pretrain.batch_size": "8", "mask.batch_size": "8", "mask.fused": "false",
        "model.hidden": "8", "model.embedding_size": "4"}


@pytest.fixture(autouse=True)
def local_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def tiny(data_dir):
    return override(get_experiment("scan-lstm", smoke=True), TINY | {"data_dir": str(data_dir)})


def _table(results_dir, name):
    return ds.dataset(results_dir / "parquet" / name, partitioning="hive").to_table().to_pylist()


@pytest.mark.slow
def test_interrupted_scan_trial_resumes_to_bit_identical_masks(tmp_path, monkeypatch, shared_data):
    straight = run_trial(tiny(shared_data), tmp_path / "straight")

    calls = {"n": 0}
    real_step = pipeline.stages.training_step

    def failing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:  # the second mask (length), after its checkpoint at step 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(pipeline.stages, "training_step", failing_step)
    with pytest.raises(KeyboardInterrupt):
        run_trial(tiny(shared_data), tmp_path / "resumed")
    masks_dir = tmp_path / "resumed" / "trials" / straight.trial_id / "masks"
    assert (masks_dir / "simple.logits.pt").exists() and (masks_dir / "length.checkpoint.pt").exists()
    monkeypatch.setattr(pipeline.stages, "training_step", real_step)
    resumed = run_trial(tiny(shared_data), tmp_path / "resumed")

    for name in SPLITS:
        a = torch.load(straight.trial_dir / "masks" / f"{name}.logits.pt")
        b = torch.load(resumed.trial_dir / "masks" / f"{name}.logits.pt")
        assert all(torch.equal(a[k], b[k]) for k in a), name
        a, b = (Masks.load(result.trial_dir / "masks" / f"{name}.masks.pt") for result in (straight, resumed))
        assert a.shapes() == b.shapes() and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors), name

    metrics = _table(tmp_path / "straight", "metrics")
    assert {r["subtask"] for r in metrics if r["mask"] == "baseline"} == set(SPLITS)
    assert {r["mask"] for r in metrics} == {"none", "baseline", *SPLITS, *(f"not-{s}" for s in SPLITS)}
    assert len(list((tmp_path / "straight" / "pretrained").iterdir())) == 4  # simple + three baselines
    removal = _table(tmp_path / "straight", "output_removal")
    assert {r["mask"] for r in removal} == set(SPLITS) and {r["token"] for r in removal} >= {"I_JUMP", "<end>"}
    assert all(r["weights"] == 8 for r in removal)  # hidden size: one output-layer row per token
