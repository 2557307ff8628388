"""Did each trial converge? The report's per-trial check, flagged rather than hidden.

Pretrained network: its accuracy (metrics rows with mask "none") against the task's goal. Masks
(the `convergence` table the evaluate stage writes, one row per trial and mask: steps,
kept_fraction, kept_fraction_at_80, uncertain_fraction): the share of weights the deterministic
mask keeps moved by less than 1 % (relative) over the last 20 % of the steps, and fewer than 5 % of
σ(l) are in [0.1, 0.9). Older results have no `convergence` table: the report says so in a line.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from analysis.stats import where

KEPT_CHANGE_LIMIT = 0.01  # |kept − kept at 80 % of the steps| / kept at 80 %
UNCERTAIN_LIMIT = 0.05  # share of σ(l) in [0.1, 0.9)
CONVERGENCE_COLUMNS = ["trial_id", "mask", "steps", "kept_fraction", "kept_fraction_at_80", "uncertain_fraction"]


@dataclass(frozen=True)
class Goal:
    """Accuracy the pretrained network must reach: on `split` without a mask, or (split None) every
    subtask with its own mask (permuted MNIST, where the weights train with their masks)."""

    threshold: float
    split: str | None
    what: str


GOALS = {  # by the `task` config column
    "addmul": Goal(0.99, "full", "unmasked, full task"),
    "double_add": Goal(0.99, "full", "unmasked, full task"),
    "permuted_mnist": Goal(0.97, None, "each permutation with its own mask, worst"),
}
# Networks narrower than the paper's 2000-unit FNN are in this sweep to underfit (App. C.2, Fig. 9).
EXEMPT = {"sweep": "sharing-vs-capacity", "sizes_held_to_goal": ("big", "huge")}


def section(tables: dict[str, pa.Table]) -> list[str]:
    """The report's "Convergence per trial" section (markdown lines)."""
    lines = ["## Convergence per trial", ""]
    pretrained = pretrained_rows(tables)
    masks = mask_rows(tables)
    below = [r for r in pretrained if r["status"].startswith("BELOW")]
    unsettled = [r for r in masks if r["status"] != "ok"] if isinstance(masks, list) else []
    lines += [f"{len(below)} of {len(pretrained)} pretrained networks below their goal; "
              + (f"{len(unsettled)} of {len(masks)} masks not settled." if isinstance(masks, list) else masks), ""]
    if pretrained:
        lines += ["| trial | experiment | seed | pretrained accuracy | goal | status |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['trial_id']} | {r['experiment']} | {r['seed']} | {r['accuracy']} | {r['goal']} | "
                  f"{r['status']} |" for r in pretrained] + [""]
    if isinstance(masks, list) and masks:
        lines += ["| trial | mask | steps | kept | kept at 80 % of steps | relative change | σ(l) in [0.1, 0.9) | "
                  "status |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['trial_id']} | {r['mask']} | {r['steps']} | {100 * r['kept_fraction']:.2f}% | "
                  f"{100 * r['kept_fraction_at_80']:.2f}% | {_percent(r['change'])} | "
                  f"{100 * r['uncertain_fraction']:.2f}% | {r['status']} |" for r in masks] + [""]
    return lines


def pretrained_rows(tables: dict[str, pa.Table]) -> list[dict]:
    """Per trial of a task with a goal: accuracy, goal and status ("ok", "BELOW GOAL", allowed, n/a)."""
    if "metrics" not in tables or "task" not in tables["metrics"].column_names:
        return []
    metrics = tables["metrics"]
    rows = []
    for trial in sorted(set(metrics.column("trial_id").to_pylist())):
        trial_rows = where(metrics, trial_id=trial)
        first = trial_rows.slice(0, 1).to_pylist()[0]
        goal = GOALS.get(first["task"])
        if goal is None:
            continue
        accuracy = _goal_accuracy(trial_rows, goal)
        rows.append({"trial_id": trial, "experiment": first["experiment"], "seed": first.get("seed"),
                     "accuracy": "n/a" if accuracy is None else f"{100 * accuracy:.2f}% ({goal.what})",
                     "goal": f"≥ {100 * goal.threshold:g}%", "status": _goal_status(accuracy, goal, first)})
    return rows


def _goal_accuracy(rows: pa.Table, goal: Goal) -> float | None:
    if goal.split is not None:
        values = where(rows, mask="none", subtask=goal.split).column("accuracy").to_pylist()
    else:
        values = [r["accuracy"] for r in rows.select(["mask", "subtask", "accuracy"]).to_pylist()
                  if r["mask"] == r["subtask"]]
    return min(values) if values else None


def _goal_status(accuracy: float | None, goal: Goal, config: dict) -> str:
    if accuracy is None:
        return f"n/a: no accuracy row for {goal.what}"
    if accuracy >= goal.threshold:
        return "ok"
    if config.get("sweep") == EXEMPT["sweep"] and config.get("model.size") not in EXEMPT["sizes_held_to_goal"]:
        return "below goal, allowed: sharing-vs-capacity trains narrower networks to underfit (App. C.2)"
    return "BELOW GOAL"


def mask_rows(tables: dict[str, pa.Table]) -> list[dict] | str:
    """Per trial and mask: the convergence numbers and a status; a one-line reason when there is no
    usable `convergence` table."""
    if "convergence" not in tables:
        return "no convergence table in these results (written by the evaluate stage of newer runs): masks not checked."
    table = tables["convergence"]
    missing = [c for c in CONVERGENCE_COLUMNS if c not in table.column_names]
    if missing:
        return f"the convergence table lacks column(s) {missing}: masks not checked."
    rows = sorted(table.select(CONVERGENCE_COLUMNS).to_pylist(), key=lambda r: (r["trial_id"], r["mask"]))
    return [r | {"change": _relative_change(r), "status": _mask_status(r)} for r in rows]


def _relative_change(row: dict) -> float:
    before, after = row["kept_fraction_at_80"], row["kept_fraction"]
    if not before:
        return 0.0 if not after else float("inf")
    return abs(after - before) / before


def _mask_status(row: dict) -> str:
    problems = []
    change = _relative_change(row)
    if change >= KEPT_CHANGE_LIMIT:
        problems.append(f"kept share still moving ({_percent(change)} ≥ {100 * KEPT_CHANGE_LIMIT:g}% over the "
                        "last 20 % of steps)")
    if row["uncertain_fraction"] >= UNCERTAIN_LIMIT:
        problems.append(f"{100 * row['uncertain_fraction']:.1f}% of σ(l) undecided in [0.1, 0.9) "
                        f"(≥ {100 * UNCERTAIN_LIMIT:g}%)")
    return "NOT SETTLED: " + "; ".join(problems) if problems else "ok"


def _percent(value: float) -> str:
    return "∞" if value == float("inf") else f"{100 * value:.2f}%"
