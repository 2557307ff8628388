"""Adding a study is its own files and nothing else: a throw-away package (a task, a model family,
a recipe with its preset, a figure; tests/fixtures/plugin) registered through entry points only runs
through `pipeline run` and `pipeline analyze` without a line of this project changed."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "tests" / "fixtures" / "plugin"


@pytest.mark.slow
def test_a_study_from_another_package_runs_and_is_analysed(tmp_path):
    plugin = tmp_path / "site"
    shutil.copytree(PLUGIN, plugin)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"PYTHONPATH": os.pathsep.join([str(plugin), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    pipeline = [sys.executable, "-c", "from pipeline.cli import main; main()"]

    listed = subprocess.run([*pipeline, "list"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert listed.returncode == 0 and "bits" in listed.stdout and "bits-net" in listed.stdout, listed.stderr[-2000:]
    run = subprocess.run([*pipeline, "run", "bits", "--results-dir", str(tmp_path / "results")], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    rows = ds.dataset(tmp_path / "results" / "parquet" / "metrics", partitioning="hive").to_table().to_pylist()
    accuracy = {(r["mask"], r["subtask"]): r["accuracy"] for r in rows}
    assert {r["study"] for r in rows} == {"bits"} and {r["model.builder"] for r in rows} == {"bits-net"}
    assert accuracy["none", "both"] > 0.95  # the network learned the toy task, with the plug-in's own model

    analyzed = subprocess.run([*pipeline, "analyze", str(tmp_path / "results"), "--out", str(tmp_path / "figures")],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert analyzed.returncode == 0, analyzed.stdout[-2000:] + analyzed.stderr[-3000:]
    assert (tmp_path / "figures" / "fig_bits_accuracy.png").stat().st_size > 0
    report = (tmp_path / "figures" / "report.md").read_text()
    assert "Bits: accuracy per mask" in report and "copy on copy" in report
