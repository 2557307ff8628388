"""`python -m analysis` redraws a results folder with torch, Ray and MLflow unimportable; figures
are found by being registered, under the name of the files they draw."""

import os
import subprocess
import sys
from pathlib import Path

from analysis.__main__ import main
from analysis.plotting import FIGURES, Skip

ROOT = Path(__file__).resolve().parents[2]
RECORD = ROOT / "reproduction" / "addmul"  # committed Parquet of 10 add/mul trials and the report drawn from it
# An import hook that refuses torch, ray and mlflow (and their submodules), then the module as `python -m`.
REFUSE_TRAINING_STACK = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "ray", "mlflow"):
            raise ImportError(f"{name} is blocked: analysis must run without it")

sys.meta_path.insert(0, Refuse())
"""
RUN_ANALYSIS = """
import runpy
sys.argv = ["python -m analysis", *sys.argv[1:]]
runpy.run_module("analysis", run_name="__main__", alter_sys=True)
"""


def _run(code: str, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *arguments], capture_output=True, text=True, cwd=ROOT,
                          env=os.environ | {"PYTHONPATH": str(ROOT)}, timeout=300)


def _sections(report: str) -> set[str]:
    return {"## " + section for section in report.split("\n## ")[1:]}


def test_the_module_redraws_a_results_folder_without_torch_ray_or_mlflow(tmp_path):
    result = _run(REFUSE_TRAINING_STACK + RUN_ANALYSIS, str(RECORD), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for name in ("fig01_sharing_per_layer_addmul", "fig07_keep_probability_histograms",
                 "fig10_addmul_inverted_masks", "fig11_weights_per_operation", "fig12_operation_performed"):
        assert (tmp_path / f"{name}.png").stat().st_size and (tmp_path / f"{name}.pdf").stat().st_size, name
    report = (tmp_path / "report.md").read_text()
    committed = (RECORD / "report.md").read_text()
    drawn = {s for s in _sections(committed) if not s.split("\n")[0].endswith("skipped")}
    assert drawn and drawn <= _sections(report)  # every drawn figure's numbers as committed
    assert f"report: {tmp_path / 'report.md'}" in result.stderr


def test_the_import_hook_does_refuse_torch():
    result = _run(REFUSE_TRAINING_STACK + "import torch")
    assert result.returncode != 0 and "torch is blocked" in result.stderr


def test_unusable_input_is_an_error_message_not_a_traceback(tmp_path, caplog):
    assert main([str(tmp_path)]) == 2
    assert "no Parquet tables under" in caplog.text
    assert main(["s3://bucket/results"]) == 2
    assert "give --out" in caplog.text


def test_every_registered_figure_is_named_as_its_files(tmp_path):
    """The registry's name is the name a figure draws (and skips) under: report order and file names agree."""
    assert len(FIGURES) >= 25 and {"fig01_sharing_per_layer_addmul", "fig05_mathematics_hard", "figB1_mask_iou",
                                   "fig04a_scan_mask_accuracy", "permuted_mnist_accuracy"} <= set(FIGURES)
    for name, draw in FIGURES.items():
        outcome = draw({}, tmp_path)
        assert isinstance(outcome, Skip) and outcome.name == name
