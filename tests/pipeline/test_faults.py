"""Corrupt files of finished stages and checkpoints are detected by checksum, reported, and redone."""

import logging

import pytest
import torch

import pipeline.stages
from pipeline.run import run_trial
from tests.pipeline.test_run import _runs, interrupt_in_second_mask, tiny


@pytest.fixture(autouse=True)
def local_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _logits(trial_dir):
    return {name: torch.load(trial_dir / "masks" / f"{name}.logits.pt") for name in ("add", "mul", "full")}


def _assert_same_logits(a, b):
    for name in a:
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name


@pytest.mark.slow
def test_truncated_pretrained_network_is_retrained_once_not_used(tmp_path, monkeypatch, caplog):
    first = run_trial(tiny(), tmp_path)
    network = next((tmp_path / "pretrained").glob("*/model.pt"))
    _truncate(network)
    calls = []
    real = pipeline.stages.train_network
    monkeypatch.setattr(pipeline.stages, "train_network", lambda *a: calls.append(1) or real(*a))
    with caplog.at_level(logging.WARNING):
        second = run_trial(tiny(**{"mask.beta": "1e-3"}), tmp_path)  # another trial on the same network
        run_trial(tiny(**{"mask.beta": "2e-3"}), tmp_path)
    assert len(calls) == 1 and str(network) in caplog.text and "does not match" in caplog.text
    assert second.trial_id != first.trial_id and network.stat().st_size > 1000


@pytest.mark.slow
def test_truncated_mask_file_redoes_its_stage_with_the_same_result(tmp_path, caplog):
    straight = run_trial(tiny(), tmp_path / "straight")
    config = tiny()
    run_trial(config, tmp_path / "damaged")
    trial_dir = tmp_path / "damaged" / "trials" / straight.trial_id
    (trial_dir / "recorded.json").unlink()  # pretend the trial stopped before recording
    _truncate(trial_dir / "masks" / "add.masks.pt")
    with caplog.at_level(logging.WARNING):
        run_trial(config, tmp_path / "damaged")
    assert "add.masks.pt" in caplog.text and "redoing the stage" in caplog.text
    _assert_same_logits(_logits(straight.trial_dir), _logits(trial_dir))
    assert len(_runs(tmp_path / "damaged")) == 1


@pytest.mark.slow
def test_corrupt_mid_stage_checkpoint_restarts_the_stage(tmp_path, monkeypatch, caplog):
    straight = run_trial(tiny(), tmp_path / "straight")
    interrupt_in_second_mask(monkeypatch, tmp_path / "resumed")
    checkpoint = tmp_path / "resumed" / "trials" / straight.trial_id / "masks" / "mul.checkpoint.pt"
    _truncate(checkpoint)
    with caplog.at_level(logging.WARNING):
        resumed = run_trial(tiny(), tmp_path / "resumed")
    assert str(checkpoint) in caplog.text and "restarting the stage from step 0" in caplog.text
    _assert_same_logits(_logits(straight.trial_dir), _logits(resumed.trial_dir))
    runs = _runs(tmp_path / "resumed")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.parametrize("damaged", ["pretrained network", "mask file", "Parquet part"])
def test_a_damaged_file_of_a_finished_trial_is_named_and_redone(tmp_path, caplog, damaged):
    """The same `pipeline run` again on a finished trial whose file was truncated: not "nothing to do",
    but the file named, its stage redone (the same result), Parquet rows rewritten once, one MLflow run."""
    import pyarrow.dataset as ds

    config = tiny()
    first = run_trial(config, tmp_path)
    path = {"pretrained network": next((tmp_path / "pretrained").glob("*/model.pt")),
            "mask file": first.trial_dir / "masks" / "add.masks.pt",
            "Parquet part": tmp_path / "parquet" / "metrics" / f"trial_id={first.trial_id}" / "part-0.parquet"}[damaged]
    logits, rows = _logits(first.trial_dir), ds.dataset(tmp_path / "parquet" / "metrics").to_table().num_rows
    _truncate(path)
    with caplog.at_level(logging.WARNING):
        second = run_trial(config, tmp_path)
    assert str(path) in caplog.text and "damaged" in caplog.text
    assert second.metrics == first.metrics and second.run_id == first.run_id
    _assert_same_logits(logits, _logits(second.trial_dir))
    assert ds.dataset(tmp_path / "parquet" / "metrics", partitioning="hive").to_table().num_rows == rows
    assert len(_runs(tmp_path)) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_trial(config, tmp_path)  # intact now: nothing to do
    assert "nothing to do" in caplog.text
