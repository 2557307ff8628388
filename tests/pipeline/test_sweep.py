"""Sweeps on a real local Ray instance, a real sqlite MLflow store and real Parquet files."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.sweep import SweepOptions, run_sweep, summary_lines
from pipeline.trainable import FAULT_VARIABLE
from tests.pipeline.local_ray import free_port, start_node, stop_node

TINY = {"pretrain.steps": "40", "mask.steps": "20", "eval_size": "64", "checkpoint_every": "10", "mask.fused": "false"}
pytestmark = pytest.mark.slow  # real Ray: tens of seconds each


@pytest.fixture(autouse=True)
def local_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def _sweep(results_dir, **kwargs):
    options = dict(seeds=2, scale="smoke", overrides=TINY, num_cpus=2, max_failures=1)
    return run_sweep(SweepOptions("sharing-vs-capacity", results_dir, **(options | kwargs)))


def _trial_runs(client) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return [r for r in client.search_runs(experiments) if "trial_id" in r.data.tags] if experiments else []


def _assert_each_trial_once(results_dir, trials: int):
    table = ds.dataset(results_dir / "parquet" / "metrics", partitioning="hive").to_table()
    ids = table.column("trial_id").to_pylist()
    assert len(set(ids)) == trials
    rows_per_trial = {i: ids.count(i) for i in set(ids)}
    assert len(set(rows_per_trial.values())) == 1  # nobody has a duplicated set of rows
    client = mlflow.MlflowClient(f"sqlite:///{results_dir / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    nested = [r for r in runs if "trial_id" in r.data.tags]
    parents = [r for r in runs if "sweep_parent" in r.data.tags]
    assert len(parents) == 1
    assert sorted(r.data.tags["trial_id"] for r in nested) == sorted(set(ids))
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in nested)
    assert {r.data.tags["size"] for r in nested} == {"small", "400,400,400,400"}


def test_smoke_sweep_of_four_trials_then_every_figure_it_allows(tmp_path):
    summary = _sweep(tmp_path)
    assert (summary.done, summary.failed, summary.retried) == (4, 0, 0)
    _assert_each_trial_once(tmp_path, 4)
    # two seeds share nothing, two sizes share nothing: four pretrained nets
    assert len(list((tmp_path / "pretrained").iterdir())) == 4
    # each trial reported its stages to Tune with a checkpoint naming the last finished stage
    trial_folders = [f for f in (tmp_path / "ray" / "sharing-vs-capacity").iterdir() if f.is_dir()]
    assert len(trial_folders) == 4
    for folder in trial_folders:  # one checkpoint per stage: pretrain, mask add, mask mul, mask full
        markers = sorted(folder.glob("checkpoint_*/stage.json"))
        assert [json.loads(m.read_text())["stage"] for m in markers] == ["pretrain", "mask add", "mask mul", "mask full"]

    result = CliRunner().invoke(main, ["analyze", "sharing-vs-capacity", "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "analysis" / "sharing-vs-capacity"
    for drawn in ("fig01", "fig07", "fig09", "fig10", "fig11", "fig12"):
        assert len(list(folder.glob(f"{drawn}_*.p*"))) == 2, drawn  # PNG and PDF
    for skipped in ("fig02", "fig08", "fig13", "fig14"):
        assert f"skipped {skipped}" in result.output
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
              if "sweep_parent" in r.data.tags][0]
    assert "analysis" in [a.path for a in client.list_artifacts(parent.info.run_id)]


def test_trial_that_fails_once_succeeds_on_retry(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_VARIABLE, "1")  # the first attempt of every trial fails
    summary = _sweep(tmp_path, max_failures=1)
    assert (summary.done, summary.failed, summary.retried) == (4, 0, 4)
    _assert_each_trial_once(tmp_path, 4)


def test_errored_sweep_resumes_and_records_each_trial_once(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_VARIABLE, "1")  # the first attempt of every trial fails
    first = _sweep(tmp_path, max_failures=0)
    assert first.failed == 4
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    failed = [r for r in runs if "trial_id" in r.data.tags]
    assert len(failed) == 4 and {r.info.status for r in failed} == {"FAILED"}  # each failed trial left a trace
    assert all("injected failure" in r.data.tags["error"] for r in failed)
    assert [r.info.status for r in runs if "sweep_parent" in r.data.tags] == ["FAILED"]
    resumed = _sweep(tmp_path, resume=True)
    assert resumed.resumed and (resumed.done, resumed.failed, resumed.unfinished) == (4, 0, 0)
    assert (resumed.retried, resumed.resumed_trials) == (0, 4)  # resumes are not retries
    _assert_each_trial_once(tmp_path, 4)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 5  # the same runs, now finished


def test_a_sweep_asked_again_with_more_seeds_runs_the_new_trials_and_keeps_the_finished(tmp_path):
    """The Tune state of another plan is not resumed (Tune would run only its own grid, or give its
    stored trial placeholders other trials): Tune starts anew, and the trials the first run finished
    are found by id in their folders and not run again."""
    first = _sweep(tmp_path, seeds=1)
    assert (first.done, first.failed) == (2, 0)
    again = _sweep(tmp_path, seeds=2)
    assert not again.resumed and (again.done, again.failed, again.unfinished, again.finished_earlier) == (4, 0, 0, 2)
    _assert_each_trial_once(tmp_path, 4)


def test_a_sweep_state_of_an_older_version_with_other_context_keys_starts_anew(tmp_path, monkeypatch):
    """A version of this tool that gave its trials other context keys left a Tune state that Tune refuses
    to restore ("Invalid `param_space` input to `Tuner.restore()`"), seen when the record was resumed
    across versions: the same command starts Tune anew and keeps the trials the older one finished."""
    import pipeline.sweep as sweep

    newer = sweep._context
    monkeypatch.setattr(sweep, "_context", lambda *args: newer(*args) | {"older_key": 1})
    first = _sweep(tmp_path, seeds=1)
    assert (first.done, first.failed) == (2, 0)
    monkeypatch.setattr(sweep, "_context", newer)
    again = _sweep(tmp_path, seeds=1)
    assert not again.resumed and (again.done, again.failed, again.finished_earlier) == (2, 0, 2)
    _assert_each_trial_once(tmp_path, 2)


def test_killed_driver_then_same_command_resumes(tmp_path):
    """SIGKILL the whole sweep (driver and local Ray) after a trial finished; run it again."""
    command = [sys.executable, "-m", "pipeline.cli", "sweep", "sharing-vs-capacity", "--smoke", "--seeds", "2",
               "--results-dir", str(tmp_path)] + [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=os.environ | {"MLFLOW_TRACKING_URI": ""})
    deadline = time.time() + 240
    while not list((tmp_path / "trials").glob("*/recorded.json")) and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(2)  # a Ray worker outside the driver's process group may take a moment to die
    finished_before = len(list((tmp_path / "trials").glob("*/recorded.json")))
    assert finished_before >= 1
    started = {f.parent for f in (tmp_path / "trials").glob("*/attempts.json")}
    unfinished_started = {f for f in started if not (f / "recorded.json").exists()}

    summary = _sweep(tmp_path)  # the same sweep again: resumes
    assert summary.resumed and summary.failed == 0
    # the summary counts what the folders showed before the resume: finished, started, never started
    assert (summary.finished_earlier, summary.resumed_trials) == (finished_before, len(unfinished_started))
    _assert_each_trial_once(tmp_path, 4)


@pytest.mark.parametrize("signal_name, to_group, returncode", [
    ("SIGINT", False, 130), ("SIGTERM", False, 143), ("SIGTERM", True, 143)],
    ids=["sigint-driver", "sigterm-driver", "sigterm-process-group"])
def test_stopped_sweep_says_so_with_its_exit_code_and_leaves_no_run_running(tmp_path, signal_name, to_group,
                                                                             returncode):
    """One SIGINT (Ctrl-C) or SIGTERM (Slurm, Kubernetes, systemd, docker stop) during the first mask
    stage, to the driver alone or to its whole process group: an honest summary with the resume hint,
    exit code 128 + the signal, no C++ stack dump, the parent run KILLED and no run left RUNNING."""
    command = [sys.executable, "-m", "pipeline.cli", "sweep", "sharing-vs-capacity", "--smoke", "--seeds", "1",
               "--results-dir", str(tmp_path), "--set", "pretrain.steps=40", "--set", "mask.steps=4000",
               "--set", "mask.fused=false", "--set", "checkpoint_every=10", "--set", "eval_size=64",
               "--set", "log_every=10"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=os.environ | {"MLFLOW_TRACKING_URI": ""}, start_new_session=to_group)
    # while it runs, MLflow shows the trials RUNNING with growing curves
    deadline, points = time.time() + 240, []
    while not (tmp_path / "trials").exists() and time.time() < deadline:  # the store exists by then
        time.sleep(0.5)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    while time.time() < deadline and len(points) < 2:
        time.sleep(1)
        running = [r for r in _trial_runs(client) if r.info.status == "RUNNING"]
        points = client.get_metric_history(running[0].info.run_id, "mask/add/loss") if running else []
    assert len(points) >= 2 and process.poll() is None, "no growing curve of a running trial in MLflow"
    number = getattr(signal, signal_name)
    os.killpg(process.pid, number) if to_group else process.send_signal(number)
    output = process.communicate(timeout=240)[0]
    assert process.returncode == returncode, output[-3000:]
    said = "INTERRUPTED by SIGTERM: " if signal_name == "SIGTERM" else "INTERRUPTED"  # Ctrl-C: as before
    assert said in output and "0 trials done" in output and "2 unfinished" in output, output[-3000:]
    assert "resume:" in output and "SIGTERM received" not in output and "Tuner.restore(" not in output
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and "RUNNING" not in {r.info.status for r in runs}
    assert [r.info.status for r in runs if "sweep_parent" in r.data.tags] == ["KILLED"]
    parent = [r for r in runs if "sweep_parent" in r.data.tags][0]
    assert parent.data.metrics["sweep/done"] == 0 and parent.data.metrics["sweep/unfinished"] == 2


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["sweep", "sharing-vs-capacty"], "did you mean 'sharing-vs-capacity'"),
        (["sweep", "sharing-vs-capacity", "--set", "mask.bta=1"], "did you mean 'mask.beta'"),
        (["sweep", "sharing-vs-capacity", "--address", "127.0.0.1:9"], "cannot reach the Ray cluster"),
        (["sweep", "sharing-vs-capacity", "--resume"], "nothing to resume"),
        (["sweep", "alpha-sensitivity", "--set", "mask.num_samples=3"], "not divisible"),
        (["sweep", "alpha-sensitivity", "--pack-size", "0"], "0 is not in the range x>=1"),
    ],
)
def test_sweep_bad_input(tmp_path, arguments, message):
    result = CliRunner().invoke(main, [*arguments, "--results-dir", str(tmp_path / "out")])
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "out" / "trials").exists()


def test_sweep_unwritable_storage(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(main, ["sweep", "sharing-vs-capacity", "--results-dir", str(blocker / "x")])
    assert result.exit_code != 0 and "cannot write to the results directory" in result.output


def test_sweep_rejects_a_uri_results_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["sweep", "sharing-vs-capacity", "--results-dir", "gs://bucket/results"])
    assert result.exit_code != 0 and "looks like a URI" in result.output
    assert not list(tmp_path.iterdir())


def test_sweep_with_a_storage_uri_keeps_tune_state_and_results_there(tmp_path):
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    summary = _sweep(tmp_path / "local", storage_uri=bucket.as_uri())
    assert (summary.done, summary.failed) == (4, 0)
    assert (bucket / "ray" / "sharing-vs-capacity").is_dir()
    assert len(list(bucket.glob("trials/*/recorded.json"))) == 4
    assert len(list(bucket.glob("parquet/metrics/trial_id=*/part-0.parquet"))) == 4
    assert len(list(bucket.glob("pretrained/*/model.pt"))) == 4


def test_second_driver_of_a_running_sweep_refuses_and_names_the_first(tmp_path):
    command = [sys.executable, "-m", "pipeline.cli", "sweep", "sharing-vs-capacity", "--smoke", "--seeds", "1",
               "--results-dir", str(tmp_path), "--set", "pretrain.steps=4000", "--set", "mask.fused=false"]
    first = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=os.environ | {"MLFLOW_TRACKING_URI": ""})
    try:
        deadline = time.time() + 120
        while not (tmp_path / "ray" / "sharing-vs-capacity.driver.json").exists() and time.time() < deadline:
            time.sleep(0.2)
        result = CliRunner().invoke(main, command[3:])
        assert result.exit_code != 0 and "is already running" in result.output
        assert f'"pid": {first.pid}' in result.output
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def _start_head(tmp_path, token: str) -> tuple[str, Path]:
    """A Ray head with token authentication, in its own temp dir (so the test stops only its processes)."""
    port = free_port()
    temp_dir = start_node(os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}, num_cpus=2, head_port=port)
    return f"127.0.0.1:{port}", temp_dir


def test_joining_a_cluster_with_token_authentication(tmp_path):
    """The head requires a token; a driver that has it (RAY_AUTH_TOKEN) but no RAY_AUTH_MODE runs the
    sweep. With a wrong token: one clear error, and no MLflow run left RUNNING. Each driver is a fresh
    process, as a user's is (Ray keeps the token it loaded for the life of a process)."""
    address, temp_dir = _start_head(tmp_path, "a" * 32)
    command = [sys.executable, "-m", "pipeline.cli", "sweep", "sharing-vs-capacity", "--smoke", "--seeds", "1",
               "--address", address] + [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    environment = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    try:
        good = subprocess.run([*command, "--results-dir", str(tmp_path / "good")], capture_output=True, text=True,
                              env=environment | {"RAY_AUTH_TOKEN": "a" * 32, "MLFLOW_TRACKING_URI": ""}, timeout=600)
        assert good.returncode == 0 and "2 trials done, 0 failed" in good.stdout, (good.stdout + good.stderr)[-3000:]
        bad = subprocess.run([*command, "--results-dir", str(tmp_path / "bad")], capture_output=True, text=True,
                             env=environment | {"RAY_AUTH_TOKEN": "b" * 32, "MLFLOW_TRACKING_URI": ""}, timeout=600)
        output = bad.stdout + bad.stderr
        assert bad.returncode != 0 and "cannot join the Ray cluster" in output, output[-3000:]
        assert "auth_token" in output and "Traceback" not in output
        # one error naming the reason, not Ray's 20 retries of a C++ warning line
        assert "InvalidAuthToken" in output and "gcs_client" not in output and output.count("cannot join") == 1
        client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'bad' / 'mlflow.db'}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert [r.info.status for r in runs] == ["FAILED"]
    finally:
        stop_node(temp_dir)


def test_trials_killed_for_memory_fail_and_the_sweep_says_so(tmp_path, monkeypatch):
    """Ray's memory monitor kills a worker when the node's memory use passes its threshold; made to
    fire here by a threshold below what the node already uses. Each such trial is retried, then
    failed — the sweep still ends with its summary — and the summary names the trials and what the
    node had (formerly: no summary, "'NoneType' object is not subscriptable")."""
    monkeypatch.setenv("RAY_memory_usage_threshold", "0.01")  # read by the local Ray the sweep starts
    summary = _sweep(tmp_path, seeds=1, max_failures=1)
    assert (summary.done, summary.failed) == (0, 2)
    assert len(summary.killed_for_memory) == 2 and summary.killed_for_memory[0].startswith("addmul-fnn-s0-")
    assert re.fullmatch(r"[\d.]+\s*[KMGT]?B used / [\d.]+\s*[KMGT]?B limit", summary.node_memory)
    assert any("killed by Ray for memory" in line and "--memory-per-trial" in line for line in summary_lines(summary))


def test_memory_per_trial_is_reserved_and_more_than_a_node_has_is_refused(tmp_path):
    summary = _sweep(tmp_path / "fits", seeds=1, memory_per_trial=0.5)
    assert (summary.done, summary.failed) == (2, 0)
    with pytest.raises(ValueError, match="--memory-per-trial 100000 GB is more than any node offers"):
        _sweep(tmp_path / "too-much", seeds=1, memory_per_trial=100_000)
