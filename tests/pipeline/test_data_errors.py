"""Every dataset's missing data through `pipeline run`: one clear line, exit code 1, no traceback, and
nothing created in the data folder before the data is known to be usable."""

import urllib.error

import pytest
from click.testing import CliRunner

from pipeline.cli import main

# (preset, words the one line must hold)
CASES = [("scan-lstm", "SCAN file"), ("permuted-mnist", "MNIST file"),
         ("mathematics-algebra__linear_1d", "no Mathematics Dataset"), ("cifar10-cnn", "CIFAR-10 not found")]


@pytest.mark.parametrize("preset, words", CASES, ids=[c[0] for c in CASES])
def test_missing_data_is_one_clear_line_and_creates_nothing(preset, words, tmp_path, monkeypatch):
    def offline(*args, **kwargs):  # no network here or in CI: a download fails as it would offline
        raise urllib.error.URLError("offline")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "absent"
    result = CliRunner().invoke(main, ["run", preset, "--smoke", "--data-dir", str(data),
                                       "--results-dir", str(tmp_path / "results")])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and words in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not data.exists(), f"{preset} created {sorted(p.name for p in data.rglob('*'))}"
