"""Figs. 3, 15 and the accuracy check on hand-made Parquet rows with numbers worked out by hand."""


import pytest

from analysis.data import load_tables
from analysis.plotting import Figure, Skip
from analysis.permuted_mnist import figure_3, figure_15a, figure_accuracy
from analysis.report import analyze
from tests.analysis.test_analysis import _write


def _layer(trial, seed, after, layer, kept, shared, parameter="weight"):
    return {"trial_id": trial, "experiment": "permuted-mnist", "task": "permuted_mnist",
            "task_options.logit_init": "default", "sweep": "s", "seed": seed, "after_task": after,
            "layer": f"layers.{layer}", "parameter": parameter, "total": 1000, "kept": kept,
            "shared_with_earlier": shared}


def _accuracy(trial, seed, after, evaluated, accuracy):
    return {"trial_id": trial, "experiment": "permuted-mnist", "task": "permuted_mnist", "sweep": "s", "seed": seed,
            "after_task": after, "evaluated_task": evaluated, "accuracy": accuracy}


def _layer_rows():
    rows = []
    for trial, seed, shared_output in (("a", 0, 30), ("b", 1, 50)):
        rows += [_layer(trial, seed, 0, 0, 100, None), _layer(trial, seed, 0, 3, 100, None)]  # task 0: no earlier
        rows += [_layer(trial, seed, 1, 0, 100, 10), _layer(trial, seed, 1, 3, 100, shared_output)]  # T2
        rows += [_layer(trial, seed, 2, 0, 100, 90), _layer(trial, seed, 2, 3, 100, 90)]  # T3: not plotted
        rows += [_layer(trial, seed, 1, 0, 10, 10, parameter="bias")]  # biases are left out, as in the paper
    return rows


def test_sharing_per_layer_after_every_second_task_by_hand(tmp_path):
    _write(tmp_path, "continual_layers", _layer_rows())
    _write(tmp_path, "metrics", [{"trial_id": "a", "experiment": "permuted-mnist", "sweep": "s", "seed": 0,
                                  "mask": "task0", "subtask": "task0", "accuracy": 0.9}])
    figure = figure_3(load_tables([tmp_path]), tmp_path / "out")
    assert isinstance(figure, Figure) and figure.files[0].exists()
    # layer 1: 10/100 in both seeds -> 10 ± 0; output layer: 30 % and 50 % -> mean 40, sample std √200 = 14.1
    assert figure.numbers["layer 1 (input, permuted): shared % after T2"] == "10.0 ± 0.0"
    assert figure.numbers["layer 2 (output): shared % after T2"] == "40.0 ± 14.1"
    # all layers: (10 + 30) / 200 = 20 % and (10 + 50) / 200 = 30 % -> 25 ± 7.1
    assert figure.numbers["all layers: shared % after T2"] == "25.0 ± 7.1"
    assert figure.numbers["seeds"] == 2
    assert isinstance(figure_15a(load_tables([tmp_path]), tmp_path / "out"), Skip)


def test_accuracy_figure_reports_any_forgetting(tmp_path):
    rows = [_accuracy("a", 0, 0, 0, 0.9), _accuracy("a", 0, 1, 0, 0.9), _accuracy("a", 0, 1, 1, 0.8),
            _accuracy("b", 1, 0, 0, 0.7), _accuracy("b", 1, 1, 0, 0.75), _accuracy("b", 1, 1, 1, 0.6)]
    _write(tmp_path, "continual", rows)
    figure = figure_accuracy(load_tables([tmp_path]), tmp_path / "out")
    assert figure.numbers["permuted-mnist: accuracy % per task after T2"] == "82.5, 70.0"  # (0.9+0.75)/2, (0.8+0.6)/2
    assert figure.numbers["permuted-mnist: largest change of an earlier task's accuracy"] == pytest.approx(0.05)


def test_report_has_the_paper_column(tmp_path):
    _write(tmp_path, "continual_layers", _layer_rows())
    _write(tmp_path, "metrics", [{"trial_id": "a", "experiment": "permuted-mnist", "sweep": "s", "seed": 0,
                                  "mask": "task0", "subtask": "task0", "accuracy": 0.9}])
    report, outcomes = analyze([tmp_path], tmp_path / "out")
    text = report.read_text()
    assert "Fig. 3" in text and "The last layer has the lowest capacity, filling up first" in text
    assert "a new permutation needs its own first layer" not in text  # our inference, not the paper's words


def test_largest_change_is_not_measurable_after_a_single_evaluation(tmp_path):
    # one task, evaluated once: a spread of 0.0 would look like the paper's "no forgetting"
    _write(tmp_path, "continual", [_accuracy("a", 0, 0, 0, 0.9), _accuracy("b", 1, 0, 0, 0.8)])
    figure = figure_accuracy(load_tables([tmp_path]), tmp_path / "out")
    change = figure.numbers["permuted-mnist: largest change of an earlier task's accuracy"]
    assert isinstance(change, str) and change.startswith("n/a: only one evaluation")
