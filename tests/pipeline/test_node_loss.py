"""Sweeps on a multi-node cluster. A node dies mid-stage on a real multi-node Ray cluster on this
machine: a head and worker nodes started with `ray start`, each in its own temp dir, sharing the
results folder (the local disk)."""

import json
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import ray.util
import torch

from pipeline.cluster import tracking_uri_for_cluster
from tests.pipeline.local_ray import cluster_environment, free_port, start_node, stop_node
from tests.pipeline.test_sweep import TINY, _assert_each_trial_once

MASK_STEPS = 200  # long enough that the second mask stage is still running when the node is killed


def _wait_for(find, timeout: float, driver: subprocess.Popen):
    deadline = time.time() + timeout
    while time.time() < deadline and driver.poll() is None:
        found = find()
        if found:
            return found
        time.sleep(0.2)
    driver.kill()
    pytest.fail(f"waited {timeout} s in vain (driver exit code {driver.poll()}): {driver.communicate()[0][-3000:]}")


def _tune_reports(results_dir: Path, trial_dir: Path) -> list[dict]:
    """Every result Tune recorded for the trial that writes to trial_dir, in order, over all its attempts."""
    for path in (results_dir / "ray" / "sharing-vs-capacity").glob("*/result.json"):
        reports = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if reports and reports[0]["trial_dir"] == str(trial_dir):
            return reports
    raise AssertionError(f"no Tune results of {trial_dir}")


@pytest.mark.parametrize("uri, expected", [
    ("http://localhost:5000", "http://10.0.0.7:5000"),  # ray_cluster.yaml's head
    ("http://127.0.0.1:5000/prefix", "http://10.0.0.7:5000/prefix"),
    ("https://user:secret@localhost", "https://user:secret@10.0.0.7"),
    ("http://10.0.0.9:5000", "http://10.0.0.9:5000"),  # already reachable from other nodes
    ("sqlite:////shared/results/mlflow.db", "sqlite:////shared/results/mlflow.db"),
])
def test_trials_on_other_nodes_get_the_drivers_ip_for_a_localhost_tracking_server(uri, expected):
    assert tracking_uri_for_cluster(uri, "10.0.0.7") == expected


@pytest.mark.slow
def test_trial_on_a_lost_node_finishes_on_another_node_from_its_last_checkpoint(tmp_path):
    """Head without CPUs (as in ray_cluster.yaml) + one 1-CPU worker, so trials run one at a time on it.
    When the first trial is inside its second mask stage, the worker dies (SIGKILL of all its
    processes); a new worker joins. The trial is retried there: its pretrained network and first mask
    are kept, the second mask continues from its checkpoint, and both trials are recorded once."""
    environment = cluster_environment(secrets.token_hex(16))
    port = free_port()
    nodes = [start_node(environment, num_cpus=0, head_port=port)]
    driver = None
    try:
        address = f"{ray.util.get_node_ip_address()}:{port}"
        nodes.append(start_node(environment, num_cpus=1, address=address))
        results = tmp_path / "results"
        overrides = TINY | {"mask.steps": str(MASK_STEPS), "checkpoint_every": "20"}
        command = [sys.executable, "-m", "pipeline.cli", "sweep", "sharing-vs-capacity", "--smoke", "--seeds", "1",
                   "--address", address, "--results-dir", str(results)]
        command += [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
        driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)

        checkpoint = _wait_for(lambda: next(results.glob("trials/*/masks/mul.checkpoint.pt"), None), 300, driver)
        trial_dir = checkpoint.parents[1]
        assert stop_node(nodes[1]) >= 2  # raylet and the trial's worker process at least
        kept = [*results.glob("pretrained/*/*"), *trial_dir.glob("masks/add.*")]  # finished stages' files
        stamps = {path: path.stat().st_mtime_ns for path in kept}
        resumes_at = torch.load(checkpoint, weights_only=False)["step"]
        assert 0 < resumes_at < MASK_STEPS
        nodes.append(start_node(environment, num_cpus=2, address=address))  # the replacement

        output = driver.communicate(timeout=600)[0]
        assert driver.returncode == 0, output[-3000:]
        logs = "".join(p.read_text(errors="replace") for p in nodes[2].glob("session_*/logs/worker-*.err"))
    finally:
        if driver and driver.poll() is None:
            driver.kill()
        for node in nodes:
            stop_node(node)

    assert "2 trials done, 0 failed, 0 unfinished, 1 retried after a failure" in output, output[-3000:]
    _assert_each_trial_once(results, 2)
    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}  # parent + 2 trials
    assert json.loads((trial_dir / "attempts.json").read_text()).popitem()[1] == 2  # one retry, one driver

    # the retry ran on the new node and did not redo what the lost one had finished
    # (the lost attempt's last report, "mask add", may die with the node before the driver records it)
    reports = _tune_reports(results, trial_dir)
    stages = [r["stage"] for r in reports]
    retry = len(stages) - 1 - stages[::-1].index("pretrain")
    assert stages[:retry] in (["pretrain"], ["pretrain", "mask add"]), stages
    assert stages[retry:] == ["pretrain", "mask add", "mask mul", "mask full", "evaluate"]
    assert reports[0]["node_id"] != reports[-1]["node_id"]
    assert {path: path.stat().st_mtime_ns for path in kept} == stamps and len(kept) >= 5
    # the retried second mask started at its checkpoint's step: tqdm's first line on the new node
    assert re.search(rf"mask mul:\s+\d+%\|[^|]*\| {resumes_at}/{MASK_STEPS} \[00:00<\?", logs), logs[-3000:]
