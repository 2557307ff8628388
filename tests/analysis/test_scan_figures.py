"""SCAN figures (4a, 4b, 16) from hand-made Parquet rows: mean ± std over seeds by hand."""

import pytest

from analysis.report import analyze
from analysis.scan import figure_4a, figure_4b, figure_16
from analysis.data import load_tables
from tests.analysis.test_analysis import _write

SPLITS = ["simple", "length", "addprim_jump", "addprim_turn_left"]


def _metrics(trial, seed, mask, subtask, accuracy):
    return {"trial_id": trial, "experiment": "scan-lstm", "task": "scan", "sweep": "scan", "seed": seed, "mask": mask,
            "subtask": subtask, "accuracy": accuracy}


def _removal(trial, seed, mask, token, percent):
    return {"trial_id": trial, "experiment": "scan-lstm", "task": "scan", "sweep": "scan", "seed": seed, "mask": mask,
            "token": token, "weights": 200, "removed": int(2 * percent), "removed_percent": percent}


@pytest.fixture
def results(tmp_path):
    metrics, removal = [], []
    for seed, jump_own in [(0, 0.1), (1, 0.3)]:
        trial = f"t{seed}"
        for split in SPLITS:
            metrics += [_metrics(trial, seed, "none", split, 0.9), _metrics(trial, seed, "simple", split, 0.8),
                        _metrics(trial, seed, "baseline", split, 0.05),
                        _metrics(trial, seed, split, split, jump_own if split == "addprim_jump" else 0.5)]
        removal += [_removal(trial, seed, "addprim_jump", "I_JUMP", 40.0 + 10 * seed),
                    _removal(trial, seed, "addprim_jump", "I_WALK", 5.0)]
    _write(tmp_path, "metrics", metrics)
    _write(tmp_path, "output_removal", removal)
    return tmp_path


def test_scan_figures_numbers_by_hand(results, tmp_path):
    tables = load_tables([results], "scan")
    fig4a = figure_4a(tables, tmp_path / "out")
    # addprim_jump own mask: seeds 0.1 and 0.3 -> mean 20.0 %, sample std 14.1 %
    assert "addprim_jump 20.0±14.1%" in fig4a.numbers["scan-lstm mask trained on the split"]
    assert "length 80.0±0.0%" in fig4a.numbers["scan-lstm mask trained on simple (full problem)"]
    fig16 = figure_16(tables, tmp_path / "out")
    assert "simple 5.0±0.0%" in fig16.numbers["scan-lstm baseline: trained on the split"]
    fig4b = figure_4b(tables, tmp_path / "out")
    assert "I_JUMP 45, I_WALK 5" in fig4b.numbers["scan-lstm mask addprim_jump: removed % per token"]
    assert all(f.exists() for f in fig4a.files + fig4b.files + fig16.files)


def test_scan_figures_are_in_the_report_and_skipped_without_scan_rows(results, tmp_path):
    report, outcomes = analyze([results], tmp_path / "analysis", "scan")
    text = report.read_text()
    assert "Fig. 4a" in text and "Fig. 4b" in text and "Fig. 16" in text and "Almost half" in text
    _write(tmp_path / "other", "metrics", [{**_metrics("a", 0, "none", "full", 1.0), "experiment": "addmul-fnn"}])
    skipped = figure_4b(load_tables([tmp_path / "other"]), tmp_path / "o")
    assert "output_removal" in skipped.reason
