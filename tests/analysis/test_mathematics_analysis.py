"""Fig. 5 on hand-made Parquet rows whose means and standard deviations are worked out by hand."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from analysis.data import load_tables
from analysis.plotting import Figure, Skip
from analysis.mathematics import figure_5


def _write_metrics(root: Path, rows: list[dict]) -> None:
    for trial in sorted({r["trial_id"] for r in rows}):
        path = root / "parquet" / "metrics" / f"trial_id={trial}" / "part-0.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "trial_id"}
                                             for r in rows if r["trial_id"] == trial]), path)


def _trial(trial: str, module: str, seed: int, none: float, iid: float, easy: float) -> list[dict]:
    base = {"trial_id": trial, "experiment": f"mathematics-{module}", "task": "mathematics", "seed": seed,
            "sweep": "mathematics", "task_options.module": module}
    rows = [base | {"mask": m, "subtask": "valid-hard", "accuracy": a} for m, a in
            (("none", none), ("iid", iid), ("easy", easy), ("not-easy", 0.0))]
    return rows + [base | {"mask": "easy", "subtask": "valid-easy", "accuracy": 0.99}]


def test_figure_5_means_stds_and_the_claim_by_hand(tmp_path):
    rows = (_trial("a0", "algebra__linear_1d", 0, 0.90, 0.88, 0.50)
            + _trial("a1", "algebra__linear_1d", 1, 0.80, 0.78, 0.70)    # easy: mean 0.60, std 0.1414
            + _trial("s0", "comparison__sort", 0, 0.60, 0.50, 0.55))      # easy above IID: no drop here
    _write_metrics(tmp_path, rows)
    figure = figure_5(load_tables([tmp_path]), tmp_path / "out")
    assert isinstance(figure, Figure) and figure.files[0].exists()
    assert figure.numbers["algebra__linear_1d (n=2)"] == \
        "no mask 85.0 ± 7.1%, IID mask 83.0 ± 7.1%, easy mask 60.0 ± 14.1%"
    assert figure.numbers["comparison__sort (n=1)"] == "no mask 60.0 ± 0.0%, IID mask 50.0 ± 0.0%, easy mask 55.0 ± 0.0%"
    assert figure.numbers["easy mask below IID mask on hard"] == "1 of 2 modules"
    assert "easy mask below IID mask on hard" in figure.paper


def test_figure_5_skips_without_mathematics_trials(tmp_path):
    _write_metrics(tmp_path, [{"trial_id": "x", "experiment": "addmul-fnn", "seed": 0, "sweep": "", "mask": "add",
                               "subtask": "add", "accuracy": 1.0}])
    outcome = figure_5(load_tables([tmp_path]), tmp_path / "out")
    assert isinstance(outcome, Skip) and "mathematics" in outcome.reason
