"""ray_cluster.yaml passes Ray's own cluster-config schema and sets the project up on every node."""

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG = Path(__file__).resolve().parents[1] / "ray_cluster.yaml"


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


def test_schema_check_would_catch_a_broken_config():
    import jsonschema
    import pytest

    config = prepare_config(yaml.safe_load(CONFIG.read_text()))
    with pytest.raises(jsonschema.ValidationError):
        validate_config(config | {"head_node_typo": "head"})
