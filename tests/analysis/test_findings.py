"""The findings table: numbers from hand-made Parquet rows, verdicts by their rules, the paper quoted."""

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.findings import FINDINGS, all_findings, markdown
from analysis.stats import layer_order

PAPER = Path(__file__).resolve().parents[2].parent / "shared" / "paper" / "are-neural-nets-modular.md"


def _write(record: Path, study: str, table: str, rows: list[dict]) -> None:
    by_trial: dict[str, list[dict]] = {}
    for row in rows:
        by_trial.setdefault(row["trial_id"], []).append(row)
    for trial, trial_rows in by_trial.items():
        folder = record / study / "parquet" / table / f"trial_id={trial}"
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "trial_id"} for r in trial_rows]),
                       folder / "part-0.parquet")


def _layers(trial: str, shared: dict[str, float], kept_add: int, kept_mul: int) -> list[dict]:
    common = {"trial_id": trial, "experiment": "addmul-fnn", "seed": int(trial[-1]), "sweep": "addmul",
              "task": "addmul", "model.builder": "fnn", "model.size": "small"}
    rows = [{**common, "mask": "add", "layer": layer, "total": 1000, "kept": 100, "shared": int(100 * fraction)}
            for layer, fraction in shared.items()]
    rows += [{**common, "mask": "add", "layer": "all", "total": 4000, "kept": kept_add, "shared": 0},
             {**common, "mask": "mul", "layer": "all", "total": 4000, "kept": kept_mul, "shared": 0}]
    return rows


def test_sharing_and_weight_ratio_come_from_the_rows_with_their_rules(tmp_path):
    _write(tmp_path, "addmul", "layers",
           _layers("t0", {"layers.0": 0.8, "layers.1": 0.3, "layers.2": 0.4, "layers.3": 0.9}, 100, 300)
           + _layers("t1", {"layers.0": 0.6, "layers.1": 0.5, "layers.2": 0.2, "layers.3": 0.7}, 100, 500))
    rows = {f.name: f for f in all_findings(tmp_path)}
    fnn = rows["Sharing higher in input and output layers than hidden (3.1, Fig. 1, FNN)"]
    # input (0.8, 0.6): mean 70 %, sample std 14.1; hidden means 40 and 30; output mean 80: holds
    assert "layers.0 70.0 ± 14.1 %" in fnn.ours and "layers.3 80.0 ± 14.1 %" in fnn.ours
    assert fnn.verdict == "holds" and "2 seeds" in fnn.ours
    ratio = rows["Multiplication uses more weights than addition (3.1, Fig. 11)"]
    assert ratio.ours.startswith("4.00 ± 1.41 ×")  # ratios 3 and 5
    assert ratio.verdict == "holds"
    missing = rows["Masks are stable across mask seeds (B.1)"]
    assert missing.verdict == "not measured here" and "reproduction.record mask-stability" in missing.reason


def test_longer_mask_rows_read_the_mask_convergence_record_only(tmp_path):
    _write(tmp_path, "addmul", "layers", _layers("t0", {"layers.0": 0.8, "layers.1": 0.3}, 100, 200))
    _write(tmp_path, "mask-convergence", "layers", _layers("t1", {"layers.0": 0.8, "layers.1": 0.3}, 100, 350))
    rows = [f for f in all_findings(tmp_path) if f.name.startswith("Multiplication uses more weights")]
    assert [r.ours[:6] for r in rows] == ["2.00 ±", "3.50 ±"]  # 200 / 100 from addmul, 350 / 100 from the longer masks
    assert rows[1].name.endswith("masks trained 4× longer (40k steps)") and rows[1].source == "mask-convergence/layers"
    assert rows[1].verdict == "holds"  # within 25 % of the paper's 3.8


def test_output_layer_below_a_hidden_layer_does_not_hold(tmp_path):
    _write(tmp_path, "addmul", "layers", _layers("t0", {"layers.0": 0.9, "layers.1": 0.5, "layers.2": 0.6,
                                                        "layers.3": 0.4}, 100, 100))
    fnn = next(f for f in all_findings(tmp_path) if f.name.endswith("FNN)"))
    assert fnn.verdict == "partly"  # the input layer is above the hidden ones, the output layer is not


def test_lstm_layers_are_ordered_from_input_to_output():
    names = ["output_layer", "layers.1.hidden_to_gates", "layers.0.hidden_to_gates", "layers.1.input_to_gates",
             "layers.0.input_to_gates"]
    assert sorted(names, key=layer_order) == ["layers.0.input_to_gates", "layers.0.hidden_to_gates",
                                              "layers.1.input_to_gates", "layers.1.hidden_to_gates", "output_layer"]


def test_the_markdown_table_has_one_row_per_finding(tmp_path):
    table = markdown(all_findings(tmp_path))
    assert len(table.splitlines()) == 2 + len(FINDINGS)


@pytest.mark.skipif(not PAPER.exists(), reason=f"the paper is not at {PAPER}")
@pytest.mark.parametrize("study, name, paper, measure", FINDINGS, ids=[f[1][:40] for f in FINDINGS])
def test_the_paper_column_quotes_the_paper(study, name, paper, measure):
    text = " ".join(PAPER.read_text().split())
    for part in (p.strip() for p in paper.split("...")):
        if re.fullmatch(r"[\d.]+ ± [\d.]+ %.*", part):  # a number the paper states: 93.26 ± 0.96 %
            mean, std = re.findall(r"[\d.]+", part)[:2]
            assert f"{mean} \\pm {std}" in text, part
        else:
            assert " ".join(part.split()) in text, f"not in the paper: {part!r}"


def test_permuted_mnist_prefer_old_raising_sharing_below_half_holds(tmp_path):
    rows = []
    for experiment, shared, init in (("permuted-mnist", 20, "default"), ("permuted-mnist-prefer-old", 40, "prefer-old"),
                                     ("permuted-mnist-prefer-old-more", 45, "prefer-old-more")):
        for seed in (0, 1):
            for layer in ("layers.0", "layers.3"):
                common = {"trial_id": f"{experiment}-{seed}", "experiment": experiment, "sweep": "permuted-mnist",
                          "task_options.logit_init": init, "layer": layer, "total": 1000, "kept": 100}
                rows.append(common | {"after_task": 4, "shared_with_earlier": shared})
                rows.append(common | {"after_task": 2, "shared_with_earlier": 90})
    _write(tmp_path, "permuted-mnist", "continual_layers", rows)
    row = next(f for f in all_findings(tmp_path) if f.name.startswith("Permuted MNIST"))
    # after the last task (4): 200 of 200 kept -> 20 % default, 40 % and 45 % preferring old weights
    assert "permuted-mnist: 20.0 ± 0.0 %" in row.ours and "prefer-old-more: 45.0 ± 0.0 %" in row.ours
    assert row.verdict == "holds"


def _double_add(experiment: str, seed: int, shared: int, not_pair1_on_pair2: float) -> tuple[list, list]:
    """One trial's rows: its pair-1 mask keeps 100 weights, `shared` of them also in pair 2's mask."""
    common = {"trial_id": f"{experiment}-s{seed}", "experiment": experiment, "seed": seed, "sweep": "double-add",
              "task": "double_add"}
    layers = [common | {"mask": "pair1", "layer": "all", "total": 1000, "kept": 100, "shared": shared},
              common | {"mask": "pair1", "layer": "layers.0", "total": 500, "kept": 50, "shared": 0}]
    metrics = [common | {"mask": "none", "subtask": "pair2", "accuracy": 1.0},
               common | {"mask": "not-pair1", "subtask": "pair2", "accuracy": not_pair1_on_pair2}]
    return layers, metrics


def test_double_addition_judges_each_network_and_names_the_one_that_misses(tmp_path):
    layers, metrics = [], []
    for experiment, shared, accuracies in (("double-add-fnn", (20, 30), (0.9, 0.7)),
                                           ("double-add-lstm", (10, 10), (0.2, 0.3))):
        for seed in (0, 1):
            trial_layers, trial_metrics = _double_add(experiment, seed, shared[seed], accuracies[seed])
            layers, metrics = layers + trial_layers, metrics + trial_metrics
    _write(tmp_path, "double-add", "layers", layers)
    _write(tmp_path, "double-add", "metrics", metrics)
    row = next(f for f in all_findings(tmp_path) if f.name.startswith("Double addition"))
    # FNN: shared 20 and 30 % of 100 -> 25.0 ± 7.1; ¬pair1 0.9, 0.7 -> 80.0 ± 14.1 (above half of 100 %)
    assert "double-add-fnn: pair-1 weights shared 25.0 ± 7.1 %, ¬pair1 on pair 2 80.0 ± 14.1 % (2 seeds)" in row.ours
    # LSTM: low sharing, but ¬pair1 keeps 25 % of pair 2: one rule of two networks missed
    assert row.verdict == "partly" and "double-add-lstm's ¬pair1 keeps 25.0 ± 7.1 %" in row.reason
    assert "double-add-fnn" not in row.reason and row.source == "double-add/layers + metrics"


def test_sharing_vs_size_holds_when_the_size_means_differ_by_more_than_five_points(tmp_path):
    rows = []
    for size, total, fractions in (("wide", 8000, (0.50, 0.54)), ("small", 4000, (0.30, 0.34))):
        for seed, fraction in enumerate(fractions):
            for row in _layers(f"{size}-s{seed}", {}, 100, 200):
                rows.append(row | {"model.size": size, "sweep": "sharing-vs-capacity", "total": total,
                                   "shared": int(100 * fraction) if row["mask"] == "add" else 0})
    _write(tmp_path, "sharing-vs-capacity", "layers", rows)
    row = next(f for f in all_findings(tmp_path) if f.name.startswith("Sharing changes with network size"))
    # smallest network first, whatever the order of the rows; 20 points apart
    assert "small (4,000 weights): 32.0 ± 2.8 %; wide (8,000 weights): 52.0 ± 2.8 %" in row.ours
    assert row.verdict == "holds"


def test_the_readme_table_is_what_the_committed_record_gives():
    """README's findings block equals the table computed from reproduction/'s Parquet now (regenerate
    with `python -m analysis.findings reproduction --readme README.md` after the record changes)."""
    from analysis.findings import END, START

    root = Path(__file__).resolve().parents[2]
    block = (root / "README.md").read_text().split(START, 1)[1].split(END, 1)[0].strip()
    assert block == markdown(all_findings(root / "reproduction"))
