"""Figures never average trials whose settings differ; --where selects trials by recorded config."""

import matplotlib.pyplot as plt
import pyarrow as pa
import pytest

from analysis.arithmetic import _beta_panel, _histogram, figure_1, figure_7, figure_9, figure_10, figure_11
from analysis.data import load_tables
from analysis.plotting import Figure, Skip
from analysis.selection import SelectionError, parse_where, select
from tests.analysis.test_analysis import _layers_row, _metrics_row, _write


def _two_betas(tmp_path, betas=(1e-4, 1e-3), sizes=("small",)):
    """add/mul masks per (size, β, seed); add shares 40 of 80 kept at β=1e-4, 10 of 80 at every other β."""
    rows, metrics = [], []
    for size in sizes:
        for beta in betas:
            for seed in (0, 1):
                trial = f"{size}-{beta}-{seed}"
                shared = 40 if beta == 1e-4 else 10
                for layer in ("layers.0", "all"):
                    rows += [_layers_row(trial, seed, size, beta, "add", layer, 100, 80, shared),
                             _layers_row(trial, seed, size, beta, "mul", layer, 100, 160 if beta == 1e-4 else 80,
                                         shared)]
                metrics += [_metrics_row(trial, seed, size, beta, mask, subtask, 0.5)
                            for mask in ("none", "add", "mul", "not-add", "not-mul") for subtask in ("add", "mul")]
    _write(tmp_path, "layers", rows)
    _write(tmp_path, "metrics", metrics)
    return load_tables([tmp_path])


def test_each_beta_gets_its_own_labelled_panel(tmp_path):
    tables = _two_betas(tmp_path)
    figure = figure_1(tables, tmp_path / "out")
    # averaging both β would give (40 + 10) / 2 / 80 = 31 %; per β: 40/80 = 50 % and 10/80 = 12.5 % -> 12
    assert figure.numbers["addmul-fnn (mask.beta=0.0001) add: shared % per layer"] == "layers.0 50, all 50"
    assert figure.numbers["addmul-fnn (mask.beta=0.001) add: shared % per layer"] == "layers.0 12, all 12"
    ratios = figure_11(tables, tmp_path / "out").numbers
    assert ratios == {"addmul-fnn (mask.beta=0.0001) mul/add weights": "2.00x",  # 160 / 80
                      "addmul-fnn (mask.beta=0.001) mul/add weights": "1.00x"}
    assert set(figure_10(tables, tmp_path / "out").numbers) == {
        f"addmul-fnn (mask.beta={b}) mask {m}" for b in ("0.0001", "0.001")
        for m in ("none", "add", "mul", "not-add", "not-mul")}


def test_sharing_against_size_draws_one_line_per_beta(tmp_path):
    figure = figure_9(_two_betas(tmp_path, sizes=("small", "big")), tmp_path / "out")
    assert figure.numbers["mask.beta=0.0001: size small"].startswith("50.0 ± 0.0%")
    assert figure.numbers["mask.beta=0.001: size big"].startswith("12.5 ± 0.0%")
    assert len(figure.numbers) == 4


def test_too_many_settings_refuse_naming_the_key_and_how_to_select(tmp_path):
    betas = [float(f"{b:.3g}") for b in (1e-5 * 10 ** (i / 12.5) for i in range(25))] + [1e-4]  # 26 values
    tables = _two_betas(tmp_path, betas=betas)
    for draw in (figure_1, figure_10, figure_11):
        skipped = draw(tables, tmp_path / "out")
        assert isinstance(skipped, Skip), draw
        assert "mask.beta (26 values" in skipped.reason and "--where mask.beta=1e-05" in skipped.reason
    chosen = select(tables, parse_where(["mask.beta=1e-4"]))
    figure = figure_1(chosen, tmp_path / "out")
    assert isinstance(figure, Figure) and figure.numbers == {
        "addmul-fnn add: shared % per layer": "layers.0 50, all 50",
        "addmul-fnn mul: shared % per layer": "layers.0 25, all 25"}  # 40 / 160


def test_where_selects_by_recorded_config_and_names_what_exists(tmp_path):
    tables = _two_betas(tmp_path, sizes=("small", "big"))
    chosen = select(tables, parse_where(["mask.beta=0.001", "model.size=big", "model.size=small"]))
    assert set(chosen["layers"].column("mask.beta").to_pylist()) == {1e-3}
    assert set(chosen["metrics"].column("model.size").to_pylist()) == {"small", "big"}
    with pytest.raises(SelectionError, match=r"no trial records a config key 'mask.bta'.*mask\.beta"):
        select(tables, parse_where(["mask.bta=1e-4"]))
    with pytest.raises(SelectionError, match=r"mask.beta=0.5: no trial has that value; recorded values: 0.0001, 0.001"):
        select(tables, parse_where(["mask.beta=0.5"]))
    with pytest.raises(SelectionError, match="KEY=VALUE"):
        parse_where(["mask.beta"])


def test_fig8_marks_the_papers_beta_and_the_heuristics_both_labelled(tmp_path):
    rows = []
    for seed in (0, 1):
        rows.append(_metrics_row(f"n{seed}", seed, "big", 1e-5, "none", "full", 1.0))
        for beta, control in ((1e-5, 0.99), (1e-4, 0.97), (1e-3, 0.96), (1e-2, 0.5)):
            rows.append(_metrics_row(f"t{seed}-{beta}", seed, "big", beta, "full", "full", control))
    metrics = pa.Table.from_pylist(rows)
    layers = pa.Table.from_pylist([_layers_row(r["trial_id"], r["seed"], "big", r["mask.beta"], "add", "all",
                                               100, 50, 25) for r in rows])
    fig, ax = plt.subplots()
    recommended = _beta_panel(ax, fig, metrics, layers)
    assert recommended == 1e-3  # largest β with ≥ 95 % of the unmasked 100 % (App. C.2)
    labels = ax.get_legend_handles_labels()[1]
    assert "paper's chosen β = 1e-4 (Fig. 8, App. C.3)" in labels and "heuristic's β = 0.001 (App. C.2)" in labels
    assert sorted(line.get_xdata()[0] for line in ax.lines if line.get_marker() == "*") == [1e-4, 1e-3]
    plt.close(fig)


def _histogram_rows(trial, counts, low=None):
    """500 bins of width 0.002 with the given leading counts; `low` on the first bin when recorded."""
    rows = [{"trial_id": trial, "experiment": "addmul-fnn", "sweep": "", "seed": 0, "mask": "add",
             "bin_left": i / 500, "bin_right": (i + 1) / 500, "count": counts[i] if i < len(counts) else 0}
            for i in range(500)]
    if low is not None:
        for i, row in enumerate(rows):
            row |= {"low_count": low if i == 0 else None, "low_cutoff": 0.0002 if i == 0 else None}
    return rows


def test_fig7a_leaves_out_only_values_below_two_ten_thousandths(tmp_path):
    # first bin [0, 0.002): 90 values, 60 of them < 0.0002; 10 more values in the second bin
    _write(tmp_path, "histograms", _histogram_rows("a", [90, 10], low=60))
    tables = load_tables([tmp_path])
    left, counts, low = _histogram(tables["histograms"])
    assert low == 60 and counts[0] == 90
    figure = figure_7(tables, tmp_path / "out")
    assert figure.numbers["addmul-fnn: share of σ(l) < 0.0002 (left out of a)"] == "60.00%"  # 60 of 100


def test_fig7a_of_older_results_without_the_count_drops_the_first_bin(tmp_path):
    _write(tmp_path, "histograms", _histogram_rows("a", [90, 10]))
    left, counts, low = _histogram(load_tables([tmp_path])["histograms"])
    assert low is None
    assert not any("0.0002" in key for key in figure_7(load_tables([tmp_path]), tmp_path / "out").numbers)


def test_study_figures_refuse_to_average_other_settings(tmp_path):
    """Permuted MNIST, SCAN, Mathematics and CIFAR figures: one experiment's trials at two model sizes."""
    from analysis.cifar10 import figure_iou
    from analysis.mathematics import figure_5
    from analysis.permuted_mnist import figure_accuracy
    from analysis.scan import figure_4a

    tasks = {"permuted-mnist": "permuted_mnist", "scan-lstm": "scan", "mathematics-x": "mathematics",
             "mask-stability": "cifar10"}

    def trial(experiment, size, seed, **row):
        return {"trial_id": f"{experiment}-{size}-{seed}", "experiment": experiment, "task": tasks[experiment],
                "sweep": "", "seed": seed, "model.size": size, **row}

    pairs = [(size, seed) for size in ("a", "b") for seed in (0, 1)]
    _write(tmp_path, "continual", [trial("permuted-mnist", s, k, after_task=0, evaluated_task=0, accuracy=0.9)
                                   for s, k in pairs])
    _write(tmp_path, "metrics", [trial(e, s, k, mask="none", subtask=sub, accuracy=0.5, **{"task_options.module": e})
                                 for e, sub in (("scan-lstm", "simple"), ("mathematics-x", "valid-hard"))
                                 for s, k in pairs])
    _write(tmp_path, "mask_iou", [trial("mask-stability", s, k, pair="a-b", layer="all", iou=0.9) for s, k in pairs])
    tables = load_tables([tmp_path])
    for draw in (figure_accuracy, figure_4a, figure_5, figure_iou):
        skipped = draw(tables, tmp_path / "out")
        assert isinstance(skipped, Skip) and "model.size (2 values: a, b)" in skipped.reason, (draw, skipped)
        assert "--where model.size=a" in skipped.reason
    assert isinstance(figure_iou(select(tables, parse_where(["model.size=a"])), tmp_path / "out"), Figure)


def test_a_folder_of_alpha_sensitivity_and_sharing_vs_capacity_smoke_sweeps(tmp_path):
    """The issue's check: Figs. 1, 9, 10, 11 per β, Fig. 8 with both markers (smoke grids of both sweeps)."""
    from analysis.report import analyze

    points = [("alpha-sensitivity", "small", b) for b in (1e-5, 1e-4, 1e-3)] + [
        ("sharing-vs-capacity", size, 1e-4) for size in ("small", "400,400,400,400")]
    layers, metrics = [], []
    for sweep, size, beta in points:
        for seed in (0, 1):
            trial = f"{sweep}-{size}-{beta}-{seed}"
            base = {"trial_id": trial, "experiment": "addmul-fnn", "study": "masks", "task": "addmul",
                    "model.builder": "fnn", "sweep": sweep, "seed": seed, "model.size": size, "mask.beta": beta}
            layers += [base | {"mask": m, "layer": layer, "total": 100, "kept": 50, "shared": 25}
                       for m in ("add", "mul") for layer in ("layers.0", "all")]
            metrics += [base | {"mask": m, "subtask": s, "accuracy": 0.9} for m in ("none", "add", "mul", "not-add",
                                                                                   "not-mul", "full")
                        for s in ("add", "mul", "full")]
    _write(tmp_path, "layers", layers)
    _write(tmp_path, "metrics", metrics)
    report, outcomes = analyze([tmp_path], tmp_path / "out")
    drawn = {o.name: o for o in outcomes if isinstance(o, Figure)}
    for name in ("fig01_sharing_per_layer_addmul", "fig10_addmul_inverted_masks", "fig11_weights_per_operation"):
        assert any("(small, mask.beta=1e-05)" in key for key in drawn[name].numbers), name
        assert any("(400,400,400,400, mask.beta=0.0001)" in key for key in drawn[name].numbers), name
    assert set(drawn["fig09_sharing_vs_size"].numbers) == {
        "mask.beta=1e-05: size small", "mask.beta=0.0001: size small", "mask.beta=0.0001: size 400,400,400,400",
        "mask.beta=0.001: size small"}
    assert drawn["fig08_beta_sensitivity"].numbers == {"recommended β, small": 1e-3}  # 0.9 ≥ 95 % of 0.9
    assert "red line and star" in report.read_text()
