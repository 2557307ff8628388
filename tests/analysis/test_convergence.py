"""The report's per-trial convergence check on Parquet files written here with pyarrow."""

import pyarrow as pa
import pyarrow.parquet as pq

from analysis.convergence import mask_rows, pretrained_rows
from analysis.report import analyze


def _write(root, table, rows):
    """One hive partition per trial, as the pipeline writes them (trial_id in the folder name)."""
    for trial in sorted({r["trial_id"] for r in rows}):
        path = root / "parquet" / table / f"trial_id={trial}" / "part-0.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "trial_id"}
                                             for r in rows if r["trial_id"] == trial]), path)


def _trial(trial, task, experiment, sweep="", size="big", seed=0):
    return {"trial_id": trial, "experiment": experiment, "sweep": sweep, "seed": seed, "task": task,
            "model.size": size}


def _metrics(tmp_path):
    rows = [
        _trial("good", "addmul", "addmul-fnn") | {"mask": "none", "subtask": "full", "accuracy": 0.995},
        _trial("good", "addmul", "addmul-fnn") | {"mask": "none", "subtask": "add", "accuracy": 0.5},  # not the goal's
        _trial("weak", "double_add", "double-add-fnn") | {"mask": "none", "subtask": "full", "accuracy": 0.98},
        _trial("narrow", "addmul", "addmul-fnn", "sharing-vs-capacity", "small") | {
            "mask": "none", "subtask": "full", "accuracy": 0.90},
        _trial("wide", "addmul", "addmul-fnn", "sharing-vs-capacity", "huge") | {
            "mask": "none", "subtask": "full", "accuracy": 0.90},
    ]
    rows += [_trial("mnist", "permuted_mnist", "permuted-mnist") | {"mask": f"task{t}", "subtask": f"task{t}",
                                                                     "accuracy": a}
             for t, a in ((0, 0.98), (1, 0.96))]
    _write(tmp_path, "metrics", rows)


def _convergence(tmp_path):
    def row(trial, mask, kept, kept80, uncertain):
        return _trial(trial, "addmul", "addmul-fnn") | {"mask": mask, "steps": 20000, "kept_fraction": kept,
                                                        "kept_fraction_at_80": kept80, "uncertain_fraction": uncertain}
    _write(tmp_path, "convergence", [
        row("good", "add", 0.1005, 0.1000, 0.01),   # change 0.5 %: settled
        row("good", "mul", 0.1100, 0.1000, 0.01),   # change 10 %: still moving
        row("weak", "pair1", 0.2000, 0.2000, 0.06),  # 6 % undecided
    ])


def test_pretrained_accuracy_against_the_tasks_goal_per_trial(tmp_path):
    _metrics(tmp_path)
    report, _ = analyze([tmp_path], tmp_path / "out")
    status = {r["trial_id"]: r["status"] for r in pretrained_rows({"metrics": pq.read_table(
        tmp_path / "parquet" / "metrics")})}
    assert status["good"] == "ok"  # 99.5 % ≥ 99 % on the full task
    assert status["weak"] == "BELOW GOAL"  # 98 % < 99 %
    assert status["narrow"].startswith("below goal, allowed")  # a small FNN of sharing-vs-capacity
    assert status["wide"] == "BELOW GOAL"  # the huge FNN of the same sweep must solve the task
    assert status["mnist"] == "BELOW GOAL"  # worst permutation 96 % < 97 %
    text = report.read_text()
    assert "Convergence (last section): 3 of 5 pretrained networks below their goal" in text
    assert "no convergence table in these results" in text  # older results: one line, no crash
    assert "| weak | double-add-fnn | 0 | 98.00% (unmasked, full task) | ≥ 99% | BELOW GOAL |" in text


def test_masks_that_did_not_settle_are_flagged(tmp_path):
    _metrics(tmp_path)
    _convergence(tmp_path)
    rows = {(r["trial_id"], r["mask"]): r for r in mask_rows({"convergence": pq.read_table(
        tmp_path / "parquet" / "convergence")})}
    assert rows[("good", "add")]["status"] == "ok"
    assert rows[("good", "mul")]["status"].startswith("NOT SETTLED: kept share still moving (10.00%")
    assert rows[("weak", "pair1")]["status"] == "NOT SETTLED: 6.0% of σ(l) undecided in [0.1, 0.9) (≥ 5%)"
    text = analyze([tmp_path], tmp_path / "out")[0].read_text()
    assert "2 of 3 masks not settled" in text
    assert "| good | mul | 20000 | 11.00% | 10.00% | 10.00% | 1.00% | NOT SETTLED" in text


def test_a_convergence_table_without_its_columns_is_one_line(tmp_path):
    _write(tmp_path, "convergence", [_trial("t", "addmul", "addmul-fnn") | {"mask": "add", "steps": 10}])
    assert mask_rows({"convergence": pq.read_table(tmp_path / "parquet" / "convergence")}).startswith(
        "the convergence table lacks column(s) ['kept_fraction'")
