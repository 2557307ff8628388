"""The engine knows no task or model by name, and every registered preset fits it."""

import ast
from pathlib import Path

import pyarrow.dataset as ds
import pytest

import models
import tasks
from analysis.data import REQUIRED_COLUMNS
from models.registry import model_families
from pipeline.config import flatten, override
from pipeline.experiments import EXPERIMENTS, experiment_names, get_experiment
from pipeline.run import run_trial
from tasks.registry import task_names

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
GENERIC = sorted(PIPELINE.glob("*.py")) + [PIPELINE / "studies" / "__init__.py", PIPELINE / "studies" / "masks.py"]
TINY = {"pretrain.steps": "3", "mask.steps": "2", "eval_size": "16", "checkpoint_every": "1", "mask.fused": "false",
        "pretrain.batch_size": "8", "mask.batch_size": "8"}


@pytest.mark.parametrize("path", GENERIC, ids=lambda p: p.relative_to(PIPELINE.parent).as_posix())
def test_generic_pipeline_code_names_no_task_and_no_model(path):
    """No import of a task or model module, no string equal to a task or model-family name."""
    task_modules = {f"tasks.{p.stem}" for p in Path(tasks.__file__).parent.glob("*.py")} - {"tasks.registry",
                                                                                            "tasks.__init__"}
    model_modules = {f"models.{p.stem}" for p in Path(models.__file__).parent.glob("*.py")} - {
        "models.registry", "models.common", "models.__init__"}
    names = set(task_names()) | set(model_families())
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.module not in task_modules | model_modules, f"{path.name} imports {node.module}"
        if isinstance(node, ast.Import):
            assert not {a.name for a in node.names} & (task_modules | model_modules), path.name
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert node.value not in names, f"{path.name} names {node.value!r}"


def test_every_preset_has_a_task_and_model_except_the_template():
    for name in experiment_names():
        config = get_experiment(name)
        assert (config.task and config.model is not None) or name == "custom", name


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in experiment_names() if n != "custom"])
def test_every_preset_runs_through_the_engine_to_parquet(name, tmp_path, monkeypatch, test_data):
    """Contract: tiny version of each preset -> its study's stages -> Parquet with the columns
    analysis needs and every config key. Data: the shared datasets plus a generated CIFAR-10."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    preset = EXPERIMENTS[name]
    config = override(get_experiment(name, smoke=True), TINY | preset.tiny | {"data_dir": str(test_data)})
    result = run_trial(config, tmp_path)
    parquet = tmp_path / "parquet"
    assert (parquet / "metrics").is_dir(), "every study writes a metrics table"
    for table_dir in parquet.iterdir():
        table = ds.dataset(table_dir, partitioning="hive").to_table()
        assert table.num_rows > 0, table_dir.name
        expected = set(REQUIRED_COLUMNS.get(table_dir.name, ["trial_id", "experiment", "sweep"]))
        assert expected | set(flatten(config)) <= set(table.column_names), table_dir.name
        assert set(table.column("trial_id").to_pylist()) == {result.trial_id}


@pytest.mark.parametrize("path", sorted((PIPELINE / "studies").glob("*.py")), ids=lambda p: p.name)
def test_studies_reach_tasks_and_models_through_their_registries_only(path):
    """A study names tasks and model families (its presets) but imports none of their modules."""
    allowed = {"tasks.registry", "models.registry", "models.common"}  # and the masking core, which is generic
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        modules = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for module in modules:
            if module.split(".")[0] in ("tasks", "models"):
                assert module in allowed or module.startswith("models.masking"), f"{path.name} imports {module}"
