"""The README's "Your own task and model" example, run exactly as written there."""

import re
import shlex
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner

from pipeline.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_example() -> tuple[dict[str, str], list[str]]:
    """({relative file: code}, the `pipeline run custom` command's arguments) from the README."""
    text = README.read_text()
    files = {m.group(2): m.group(1) for m in re.finditer(r"```python\n(# (mypkg/\w+\.py)\n.*?)```", text, re.S)}
    command = re.search(r"^pipeline run custom .*$", text, re.M).group(0)
    return files, shlex.split(command)[1:]


@pytest.mark.slow
def test_readme_custom_task_and_model_run_end_to_end(tmp_path, monkeypatch):
    files, arguments = _readme_example()
    assert set(files) == {"mypkg/tasks.py", "mypkg/nets.py"}
    for name, code in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(main, [*arguments, "--results-dir", str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    metrics = ds.dataset(tmp_path / "results" / "parquet" / "metrics", partitioning="hive").to_table().to_pylist()
    assert {(r["mask"], r["subtask"]) for r in metrics} == {
        (m, s) for m in ("none", "copy", "xor", "both", "not-copy", "not-xor", "not-both") for s in ("both", "copy", "xor")}
    assert all(r["model.builder"] == "mypkg.nets:build" and r["model.hidden"] == 32 for r in metrics)
    accuracy = {(r["mask"], r["subtask"]): r["accuracy"] for r in metrics}
    assert accuracy[("none", "both")] > 0.95  # the network learned the toy task


def test_unimportable_task_or_builder_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["run", "custom", "--set", "task=nowhere.tasks:Task", "--set",
                                       "model.builder=fnn", "--results-dir", str(tmp_path)])
    assert result.exit_code != 0 and "cannot import task 'nowhere.tasks:Task'" in result.output
