"""CIFAR-10 figures on hand-made Parquet rows whose numbers are worked out by hand."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.cifar10 import figure_6a, figure_6b, figure_18, figure_19, figure_20, figure_iou, relative_drops
from analysis.data import load_tables
from analysis.plotting import Figure, Skip
from analysis.report import analyze

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write(root, table, trial, rows):
    path = root / "parquet" / table / f"trial_id={trial}" / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _confusion_rows(mask, matrix, seed):
    return [{"experiment": "cifar10-cnn", "study": "class-removal", "task": "cifar10", "model.builder": "simple_cnn",
             "model.dropout": True, "sweep": "", "seed": seed, "mask": mask, "true_class": CLASSES[t],
             "predicted_class": CLASSES[p], "count": int(matrix[t, p])} for t in range(10) for p in range(10)]


def _class_removal_trial(root, trial, seed, target_correct):
    """Control: 80 of 100 images of every class right, 20 called the next class. Without class c:
    c keeps `target_correct` right (the rest called class c+5), the class after c drops from 80 to 72."""
    control = np.zeros((10, 10), int)
    for c in range(10):
        control[c, c], control[c, (c + 1) % 10] = 80, 20
    rows = _confusion_rows("all", control, seed)
    for c in range(10):
        removed = control.copy()
        removed[c, c], removed[c, (c + 1) % 10], removed[c, (c + 5) % 10] = target_correct, 20, 80 - target_correct
        following = (c + 1) % 10
        removed[following, following], removed[following, (following + 1) % 10] = 72, 28
        rows += _confusion_rows(f"without-{CLASSES[c]}", removed, seed)
    _write(root, "confusion", trial, rows)
    _write(root, "metrics", trial, [{"experiment": "cifar10-cnn", "sweep": "", "seed": seed, "mask": "all",
                                     "subtask": "test", "accuracy": 0.8}])


def test_relative_drops_by_hand():
    control = np.array([[[8, 2], [1, 9]]], float)  # class accuracies 0.8, 0.9
    removed_first = np.array([[[4, 6], [1, 9]]], float)  # first class 0.4: drop (0.8-0.4)/0.8 = 0.5
    removed_second = np.array([[[8, 2], [7, 3]]], float)  # second 0.3: drop (0.9-0.3)/0.9 = 2/3
    drops = relative_drops(["a", "b"], {"all": control, "without-a": removed_first, "without-b": removed_second})
    np.testing.assert_allclose(drops[0], [[0.5, 0.0], [0.0, 2 / 3]])


@pytest.mark.slow  # draws 10-panel figures as PNG and PDF
def test_class_removal_figures_from_parquet(tmp_path):
    _class_removal_trial(tmp_path, "t0", 0, 40)  # target drop (80-40)/80 = 50 %
    _class_removal_trial(tmp_path, "t1", 1, 24)  # target drop (80-24)/80 = 70 %
    tables = load_tables([tmp_path])
    fig_6a = figure_6a(tables, tmp_path / "figures")
    assert isinstance(fig_6a, Figure)
    assert fig_6a.numbers["simple CNN (n=2): per class [%]"].startswith("airplane 60, automobile 60")
    assert fig_6a.numbers["simple CNN: mean over classes [%]"] == "60.0"
    # other class: (80-72)/80 = 10 %; relative to the target's 50 % and 70 %: 20 % and 14.3 %, mean 17.1 %
    fig_6b = figure_6b(tables, tmp_path / "figures")
    assert fig_6b.numbers["simple CNN: mean over classes [%]"] == f"{100 * (0.2 + 0.1 / 0.7) / 2:.1f}"
    fig_18 = figure_18(tables, tmp_path / "figures")
    assert fig_18.numbers["simple CNN: accuracy with the control mask [%]"] == "80.0"
    fig_19 = figure_19(tables, tmp_path / "figures")
    # without airplane: airplane 80 -> 40 and 24 (mean -48 points), moved to dog: +40 and +56 (mean +48)
    assert fig_19.numbers["without airplane"] == "own class -48.0 points; most moved to dog (+48.0)"
    assert all(path.exists() for path in fig_19.files)
    assert isinstance(figure_20(tables, tmp_path / "figures"), Skip)


def test_iou_distribution_from_parquet(tmp_path):
    values = [0.9, 0.94, 0.92, 0.96]
    for trial, pair_values in (("n0", values[:2]), ("n1", values[2:])):
        _write(tmp_path, "mask_iou", trial, [
            {"experiment": "mask-stability", "sweep": "", "pair": f"pair-{i}", "layer": layer, "iou": value,
             "kept_a": 1, "kept_b": 1, "total": 2}
            for i, value in enumerate(pair_values) for layer, value in (("all", value), ("features.0", 0.5))])
    outcome = figure_iou(load_tables([tmp_path]), tmp_path / "figures")
    std = np.std(values, ddof=1)
    assert outcome.numbers == {"mean IoU over 4 pairs (2 networks)": f"93.00 ± {100 * std:.2f} %"}
    assert "93.26 ± 0.96%" in outcome.paper["mean IoU"].text


@pytest.mark.slow
def test_report_lists_cifar_figures_or_why_they_were_skipped(tmp_path):
    _class_removal_trial(tmp_path, "t0", 0, 40)
    report, outcomes = analyze([tmp_path], tmp_path / "figures")
    text = report.read_text()
    assert "Fig. 6a: relative accuracy drop of the removed class" in text and "ranging from 40 to 60%" in text
    assert "figB1_mask_iou — skipped" in text


def test_trials_whose_tuple_setting_is_empty_read_beside_trials_where_it_is_filled(tmp_path):
    """An empty tuple is a list of nulls in Parquet; another trial's list of ints must still read."""
    _write(tmp_path, "metrics", "a", [{"experiment": "e", "sweep": "", "seed": 0, "mask": "all", "subtask": "test",
                                       "accuracy": 0.5, "pretrain.lr_decay_steps": []}])
    _write(tmp_path, "metrics", "b", [{"experiment": "e", "sweep": "", "seed": 1, "mask": "all", "subtask": "test",
                                       "accuracy": 0.7, "pretrain.lr_decay_steps": [32000, 48000]}])
    metrics = load_tables([tmp_path])["metrics"]
    assert sorted(map(tuple, metrics.column("pretrain.lr_decay_steps").to_pylist())) == [(), (32000, 48000)]
    assert sorted(metrics.column("trial_id").to_pylist()) == ["a", "b"]
