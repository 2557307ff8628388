"""The MLflow store: created safely by many processes at once; curves batched without duplicates."""

import subprocess
import sys

import mlflow
import pytest

from pipeline import records


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(3))
def test_many_processes_starting_on_a_fresh_folder_all_succeed(tmp_path, attempt):
    """Each process creates the sqlite schema if missing and starts a run, at the same moment."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = ("import sys; from pipeline import records; records.check_tracking(sys.argv[1]); "
            "records.start_trial_run(sys.argv[1], 'modular/x', sys.argv[2], {'a': 1}, {})")
    processes = [subprocess.Popen([sys.executable, "-c", code, uri, f"trial-{i}"], stderr=subprocess.PIPE, text=True)
                 for i in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, errors
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("modular/x").experiment_id])
    assert sorted(r.data.tags["trial_id"] for r in runs) == [f"trial-{i}" for i in range(4)]


def test_curves_are_batched_and_a_resumed_run_repeats_no_step(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    records.check_tracking(uri)
    run_id, existed = records.start_trial_run(uri, "modular/x", "t", {"a": 1}, {})
    assert not existed
    logger = records.MetricLogger(uri, run_id, interval=3600)
    for step in (100, 200, 300):
        logger.log("mask add", step, {"loss": step / 100})
    client = mlflow.MlflowClient(uri)
    assert client.get_metric_history(run_id, "mask/add/loss") == []  # nothing sent before the flush
    logger.flush()
    # the trial dies and resumes from its checkpoint at step 200: steps 200 and 300 come again
    same_run, existed = records.start_trial_run(uri, "modular/x", "t", {"a": 1}, {})
    assert same_run == run_id and existed
    resumed = records.MetricLogger(uri, run_id, resumed=True, interval=3600)
    for step in (200, 300, 400):
        resumed.log("mask add", step, {"loss": step})
    resumed.flush()
    history = client.get_metric_history(run_id, "mask/add/loss")
    assert sorted((m.step, m.value) for m in history) == [(100, 1.0), (200, 2.0), (300, 3.0), (400, 400.0)]
    assert client.get_run(run_id).info.status == "RUNNING"


def test_a_run_that_finishes_after_a_failed_attempt_keeps_the_error_only_as_history(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    records.check_tracking(uri)
    run_id, _ = records.start_trial_run(uri, "modular/x", "t", {"a": 1}, {})
    records.end_trial_run(uri, run_id, RuntimeError("worker lost"))
    client = mlflow.MlflowClient(uri)
    assert client.get_run(run_id).data.tags["error"] == "RuntimeError: worker lost"
    same_run, _ = records.start_trial_run(uri, "modular/x", "t", {"a": 1}, {})  # the retry continues the run
    records.finish_trial_run(uri, same_run, {"accuracy": 1.0}, [])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "error" not in run.data.tags and run.data.tags["earlier_error"] == "RuntimeError: worker lost"


def test_analysis_logged_to_a_finished_sweep_leaves_its_parent_run_finished(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    records.check_tracking(uri)
    parent = records.sweep_parent_run(uri, "s", artifact_root=tmp_path / "mlartifacts")
    records.finish_sweep_parent_run(uri, parent, {"done": 1, "failed": 0, "unfinished": 0, "retried": 0,
                                                  "resumed_trials": 0, "wall_seconds": 1.0, "interrupted": False})
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "report.md").write_text("# report\n")
    assert records.log_analysis(uri, "s", tmp_path / "analysis") == parent
    client = mlflow.MlflowClient(uri)
    assert client.get_run(parent).info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(parent, "analysis")] == ["analysis/report.md"]
    assert records.log_analysis(uri, "never-run", tmp_path / "analysis") is None  # no run created either
    assert client.get_experiment_by_name(records.sweep_experiment("never-run")) is None
