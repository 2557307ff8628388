"""Analysis on small Parquet datasets whose expected numbers are worked out by hand."""

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.arithmetic import figure_8, figure_9, figure_11, multiplication_to_addition_ratio, recommend_beta
from analysis.data import AnalysisInputError, load_tables
from analysis.plotting import Figure, Skip
from analysis.report import analyze
from analysis.stats import mean_std, weights_by_size, with_ratio

BASE = {"experiment": "addmul-fnn", "study": "masks", "task": "addmul", "model.builder": "fnn", "sweep": "s"}


def _write(root: Path, table: str, rows: list[dict]):
    by_trial: dict[str, list] = {}
    for row in rows:
        by_trial.setdefault(row["trial_id"], []).append({k: v for k, v in row.items() if k != "trial_id"})
    for trial, trial_rows in by_trial.items():
        path = root / "parquet" / table / f"trial_id={trial}" / "part-0.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(trial_rows), path)


def _layers_row(trial, seed, size, beta, mask, layer, total, kept, shared):
    return {"trial_id": trial, **BASE, "seed": seed, "model.size": size, "mask.beta": beta, "mask": mask,
            "layer": layer, "total": total, "kept": kept, "shared": shared}


def _metrics_row(trial, seed, size, beta, mask, subtask, accuracy):
    return {"trial_id": trial, **BASE, "seed": seed, "model.size": size, "mask.beta": beta, "mask": mask,
            "subtask": subtask, "accuracy": accuracy}


def test_mean_and_sample_std_by_hand():
    table = pa.table({"g": ["a", "a", "a", "b"], "v": [1.0, 2.0, 6.0, 5.0]})
    rows = mean_std(table, ["g"], "v")
    # a: mean 3, sample variance ((4 + 1 + 9) / 2) = 7
    assert rows[0]["g"] == "a" and rows[0]["mean"] == pytest.approx(3.0) and rows[0]["std"] == pytest.approx(7 ** 0.5)
    assert rows[1] == {"g": "b", "mean": 5.0, "std": 0.0, "n": 1}


def test_sharing_ratio_and_size_figure_by_hand(tmp_path):
    rows = [
        _layers_row("t1", 0, "small", 1e-4, "add", "all", 100, 40, 30),   # 0.75
        _layers_row("t2", 1, "small", 1e-4, "add", "all", 100, 50, 25),   # 0.50
        _layers_row("t3", 0, "big", 1e-4, "add", "all", 100, 20, 5),      # 0.25
        _layers_row("t4", 1, "big", 1e-4, "add", "all", 100, 10, 5),      # 0.50
        _layers_row("t1", 0, "small", 1e-4, "mul", "all", 100, 80, 30),
        _layers_row("t2", 1, "small", 1e-4, "mul", "all", 100, 150, 25),
    ]
    _write(tmp_path, "layers", rows)
    tables = load_tables([tmp_path])
    ratios = with_ratio(tables["layers"], "shared", "kept", "s").column("s").to_pylist()
    assert sorted(ratios) == sorted([0.75, 0.5, 0.25, 0.5, 30 / 80, 25 / 150])
    figure = figure_9(tables, tmp_path / "out")
    assert isinstance(figure, Figure) and all(p.exists() for p in figure.files)
    assert figure.numbers["size small"].startswith("62.5 ± 17.7%")  # mean 0.625, std sqrt(0.03125)=0.1768
    assert figure.numbers["size big"].startswith("37.5 ± 17.7%")
    # mul/add weights: (80/40 + 150/50) / 2 = 2.5
    assert multiplication_to_addition_ratio(tables["layers"]) == pytest.approx(2.5)
    figure = figure_11(tables, tmp_path / "out")  # one panel per size: small has both masks
    assert figure.numbers["addmul-fnn (small) mul/add weights"] == "2.50x"


def test_size_figure_orders_networks_by_weight_count_not_by_name(tmp_path):
    # one hidden layer of 1000 has more weights than two of 200, though "1000" sorts before "200,200"
    rows = [_layers_row(f"t{i}", 0, size, 1e-4, "add", "all", total, 100, shared)
            for i, (size, total, shared) in enumerate([("1000", 900_000, 10), ("small", 600, 50),
                                                        ("200,200", 80_000, 20)])]
    _write(tmp_path, "layers", rows)
    tables = load_tables([tmp_path])
    assert list(weights_by_size(tables["layers"])) == ["small", "200,200", "1000"]
    figure = figure_9(tables, tmp_path / "out")
    assert list(figure.numbers) == ["size small", "size 200,200", "size 1000"]
    assert [figure.numbers[k][:4] for k in figure.numbers] == ["50.0", "20.0", "10.0"]


def test_beta_recommendation_by_hand():
    rows = []
    for seed, none_accuracy in [(0, 1.0), (1, 0.9)]:  # unmasked mean 0.95 -> threshold 0.9025
        rows.append(_metrics_row(f"t{seed}", seed, "big", 1e-5, "none", "full", none_accuracy))
        for beta, control in [(1e-5, 0.95), (1e-4, 0.92), (1e-3, 0.80)]:
            rows.append(_metrics_row(f"t{seed}-{beta}", seed, "big", beta, "full", "full", control + 0.01 * seed))
    table = pa.Table.from_pylist(rows)
    # control means: 1e-5 -> 0.955, 1e-4 -> 0.925, 1e-3 -> 0.805: the largest ≥ 0.9025 is 1e-4
    assert recommend_beta(table) == {"big": 1e-4}


def test_figures_without_their_inputs_are_skipped_with_a_reason(tmp_path):
    _write(tmp_path, "metrics", [_metrics_row("t1", 0, "small", 1e-4, "none", "full", 1.0)])
    tables = load_tables([tmp_path])
    skipped = figure_8(tables, tmp_path / "out")
    assert isinstance(skipped, Skip) and "layers" in skipped.reason
    assert isinstance(figure_11(tables, tmp_path / "out"), Skip)
    report, outcomes = analyze([tmp_path], tmp_path / "out")
    assert "skipped" in report.read_text() and all(isinstance(o, (Figure, Skip)) for o in outcomes)


def test_bad_input_names_what_is_missing(tmp_path):
    with pytest.raises(AnalysisInputError, match="no Parquet tables"):
        load_tables([tmp_path])
    _write(tmp_path, "metrics", [{"trial_id": "t1", "experiment": "addmul-fnn", "accuracy": 1.0}])
    with pytest.raises(AnalysisInputError, match=r"lacks column\(s\) \['seed', 'sweep'"):
        load_tables([tmp_path])


def test_results_of_another_sweep_are_a_clear_error(tmp_path):
    _write(tmp_path, "metrics", [_metrics_row("t1", 0, "small", 1e-4, "none", "full", 1.0)])
    with pytest.raises(AnalysisInputError, match=r"no results of sweep 'other'.*holds sweeps \['s'\]"):
        load_tables([tmp_path], sweep="other")


def test_analysis_never_imports_torch_ray_or_mlflow(tmp_path):
    _write(tmp_path, "metrics", [_metrics_row("t1", 0, "small", 1e-4, "none", "full", 1.0)])
    code = (f"import sys; from pathlib import Path; from analysis.report import analyze; "
            f"analyze([Path({str(tmp_path)!r})], Path({str(tmp_path / 'o')!r})); "
            f"print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_report_quotes_the_paper_and_every_drawn_figure_has_a_title(tmp_path):
    rows = [_layers_row(f"t{i}", i % 2, size, 1e-4, mask, layer, 100, kept, kept // 2)
            for i, size in enumerate(["small", "small", "big", "big"])
            for mask, kept in (("add", 40), ("mul", 80)) for layer in ("layers.0", "all")]
    _write(tmp_path, "layers", rows)
    report, outcomes = analyze([tmp_path], tmp_path / "out")
    drawn = [o for o in outcomes if isinstance(o, Figure)]
    assert {o.name for o in drawn} >= {"fig09_sharing_vs_size", "fig11_weights_per_operation"}
    text = report.read_text()
    for figure in drawn:
        assert figure.title.startswith("Fig. ")
        section = text.split(f"## {figure.title}")[1].split("\n## ")[0]
        measured_rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
        assert measured_rows and all(line.split(" | ")[2].strip() for line in measured_rows), section
    fig11 = text.split("## Fig. 11")[1].split("\n## ")[0]
    assert '"the multiplication uses 3.8 times more weights than the addition (Fig. 11)" (Sec. 3.1)' in fig11
