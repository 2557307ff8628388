"""ray_cluster.yaml passes Ray's own cluster-config schema, sets the project up on every node, and
works: its variant on Ray's fake multi-node provider autoscales a smoke sweep on this machine."""

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.pipeline.local_ray import cluster_environment, free_port, node_processes, start_node, stop_node
from tests.pipeline.test_sweep import TINY

CONFIG = Path(__file__).resolve().parents[1] / "ray_cluster.yaml"
FAKE_CONFIG = Path(__file__).resolve().parent / "fixtures" / "ray_cluster_fake_multinode.yaml"
FAKE_HEAD_TYPE = "ray.head.default"  # the node type Ray's fake provider gives its head
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"  # and its node id; worker nodes count up from it


def test_cluster_config_validates_against_ray_schema():
    config = prepare_config(yaml.safe_load(CONFIG.read_text()))
    validate_config(config)
    assert config["provider"]["type"] == "aws"
    gpu_types = [t for t in config["available_node_types"].values() if t["node_config"]["InstanceType"].startswith("g")]
    assert gpu_types, "a GPU worker type"


def test_cluster_setup_installs_project_and_starts_mlflow_on_head():
    config = yaml.safe_load(CONFIG.read_text())
    assert any("pip install" in c and "modular-masks" in c for c in config["setup_commands"])
    assert any("mlflow server" in c for c in config["head_setup_commands"])
    assert "~/modular-masks" in config["file_mounts"]


def test_mlflow_database_is_on_the_heads_local_disk_not_the_shared_mount():
    """sqlite on NFS is not safe under concurrent writers: the server's database stays on the head."""
    config = yaml.safe_load(CONFIG.read_text())
    shared = {m for c in config["setup_commands"] for m in re.findall(r"mountpoint -q (\S+)", c)}
    assert shared == {"/mnt/shared"}  # the EFS mount, found independently of the server command
    server = next(c for c in config["head_setup_commands"] if "mlflow server" in c)
    store = re.search(r"--backend-store-uri (\S+)", server).group(1)
    assert store.startswith("sqlite:///")
    path = store.removeprefix("sqlite:///")
    assert path.startswith(("$HOME/", "/home/", "/tmp/", "/var/")) and not path.startswith(tuple(shared))
    assert re.search(r"--artifacts-destination s3://", server)


def test_schema_check_would_catch_a_broken_config():
    import jsonschema

    config = prepare_config(yaml.safe_load(CONFIG.read_text()))
    with pytest.raises(jsonschema.ValidationError):
        validate_config(config | {"head_node_typo": "head"})


# -- the fake multi-node variant ---------------------------------------------------------------------------
def test_fake_variant_differs_from_the_cluster_config_only_where_the_provider_requires():
    real, fake = yaml.safe_load(CONFIG.read_text()), yaml.safe_load(FAKE_CONFIG.read_text())
    differing = {"provider", "available_node_types", "head_node_type"}
    assert {k: real[k] for k in real if k not in differing} == {k: fake[k] for k in fake if k not in differing}
    assert fake["provider"]["type"] == "fake_multinode" and fake["head_node_type"] == FAKE_HEAD_TYPE
    names = {real["head_node_type"]: FAKE_HEAD_TYPE}
    assert set(fake["available_node_types"]) == {names.get(n, n) for n in real["available_node_types"]}
    for name, node_type in real["available_node_types"].items():
        faked = fake["available_node_types"][names.get(name, name)]
        for key in ("min_workers", "max_workers"):
            assert faked.get(key) == node_type.get(key), (name, key)
        # a cloud type without resources gets them from its instance type; a fake node only has what it states
        assert faked["resources"] == node_type["resources"] or (not node_type["resources"] and
                                                                set(faked["resources"]) == {"CPU"}), name


def _bootstrap_config(gcs_address: str, path: Path) -> Path:
    """The variant as `ray up` would hand it to the head's autoscaler: defaults filled in (this Ray wheel
    lacks the fake provider's defaults file that prepare_config would read), validated by Ray's schema."""
    config = yaml.safe_load(FAKE_CONFIG.read_text())
    config["provider"]["gcs_address"] = gcs_address
    for key, default in {"cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_filter": [],
                         "docker": {}, "upscaling_speed": 1.0}.items():
        config.setdefault(key, default)
    validate_config(config)
    path.write_text(json.dumps(config))
    return path


def _serve_mlflow(host: str, folder: Path) -> tuple[subprocess.Popen, int]:
    """An MLflow server as ray_cluster.yaml's head runs one: sqlite on local disk, its own artifact store."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--workers", "1",
                               "--artifacts-destination", (folder / "mlartifacts").as_uri(),
                               # MLflow accepts Host headers of localhost and private IPs (a cloud VPC's);
                               # this machine's address may be in neither
                               "--allowed-hosts", f"{host}:{port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # killed with its uvicorn workers, as a group
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2)
            return server, port
        except OSError:
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGKILL)
    pytest.fail("mlflow server did not answer /health within 120 s")


@pytest.mark.slow
def test_fake_multinode_cluster_autoscales_a_smoke_sweep_that_logs_to_the_heads_mlflow(tmp_path):
    """The head (no CPUs) starts with the variant's autoscaler; the sweep's two trials make it launch
    worker nodes, each trial runs on one and logs to the head's MLflow server. The server listens on
    the head's IP only, so a trial handed the driver's "localhost" URI could not reach it."""
    import mlflow
    import ray.util

    head_ip = ray.util.get_node_ip_address()
    server, mlflow_port = _serve_mlflow(head_ip, tmp_path / "head")
    environment = cluster_environment(secrets.token_hex(16)) | {"RAY_FAKE_CLUSTER": "1",
                                                                "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    port = free_port()
    bootstrap = _bootstrap_config(f"{head_ip}:{port}", tmp_path / "bootstrap.json")
    head_cpus = yaml.safe_load(FAKE_CONFIG.read_text())["available_node_types"][FAKE_HEAD_TYPE]["resources"]["CPU"]
    head = start_node(environment, num_cpus=head_cpus, head_port=port, options=(f"--autoscaling-config={bootstrap}",))
    results = tmp_path / "results"
    try:
        command = [sys.executable, "-m", "pipeline.cli", "sweep", "sharing-vs-capacity", "--smoke", "--seeds", "1",
                   "--address", f"{head_ip}:{port}", "--results-dir", str(results)]
        command += [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
        sweep = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600,
                               env=environment | {"MLFLOW_TRACKING_URI": f"http://localhost:{mlflow_port}"})
        output = sweep.stdout + sweep.stderr
        assert sweep.returncode == 0 and "2 trials done, 0 failed" in output, output[-3000:]
        monitor = "".join(p.read_text() for p in head.glob("session_*/logs/monitor.log"))
    finally:
        stop_node(head, remove=False)  # the head with its autoscaler and every node it launched
        left = node_processes(head)
        stop_node(head)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    assert not left
    assert re.search(r"Adding \d+ node\(s\) of type gpu_worker", monitor), monitor[-3000:]

    # each trial ran on a worker node the autoscaler launched (the head has no CPUs)
    finals = [json.loads(p.read_text().splitlines()[-1]) for p in results.glob("ray/sharing-vs-capacity/*/result.json")]
    assert len(finals) == 2 and all(r["done"] == 1 for r in finals)
    nodes = {r["node_id"] for r in finals}
    assert all(n.startswith("f" * 51) and n != FAKE_HEAD_NODE_ID for n in nodes)

    # every run is on the head's server (none in a local store), each trial's artifacts in its store
    assert not (results / "mlflow.db").exists()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'head' / 'mlflow.db'}")  # the stopped server's database
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    trials = [r for r in runs if "trial_id" in r.data.tags]
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    table = ds.dataset(results / "parquet" / "metrics", partitioning="hive").to_table()
    ids = set(table.column("trial_id").to_pylist())
    assert sorted(r.data.tags["trial_id"] for r in trials) == sorted(ids) and len(ids) == 2
    for run in trials:
        stored = tmp_path / "head" / "mlartifacts" / run.info.experiment_id / run.info.run_id / "artifacts"
        assert (stored / "masks" / "add.masks.pt").is_file(), sorted(p.name for p in stored.rglob("*"))
