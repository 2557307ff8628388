"""Fig. 5 from Parquet: accuracy on the hard validation split of each Mathematics Dataset module
without a mask, with the mask trained on the IID train set and with the mask trained on "easy"."""

from __future__ import annotations

import matplotlib.pyplot as plt

from analysis import paper as said
from analysis.plotting import Figure, Skip, bars, figure, lookup, save
from analysis.selection import mixed, with_config
from analysis.stats import mean_std, where

MATHEMATICS = {"task": "mathematics"}  # the trials this figure draws, as recorded; a bar group per module
CONDITIONS = {"none": "no mask", "iid": "IID mask", "easy": "easy mask"}
HARD = "valid-hard"
PAPER_CLAIM = "easy mask below IID mask on hard"


@figure("fig05_mathematics_hard")
def figure_5(tables, out) -> Figure | Skip:
    name = "fig05_mathematics_hard"
    if "metrics" not in tables:
        return Skip(name, "no metrics table")
    metrics = with_config(tables["metrics"], MATHEMATICS)
    if not metrics.num_rows or "task_options.module" not in metrics.column_names:
        return Skip(name, "needs trials of task mathematics; run the mathematics sweep")
    if reason := mixed(metrics, ("task_options.module",)):
        return Skip(name, reason)
    rows = mean_std(where(metrics, subtask=HARD, mask=list(CONDITIONS)), ["task_options.module", "mask"], "accuracy")
    modules = sorted({r["task_options.module"] for r in rows})
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(modules)), 3.5))
    series = {label: [tuple(100 * x for x in lookup(rows, mask=mask, **{"task_options.module": m}))
                      for m in modules] for mask, label in CONDITIONS.items()}
    bars(ax, [m.replace("__", ": ") for m in modules], series, "accuracy on hard [%]")
    fig.suptitle("Fig. 5: Mathematics Dataset, hard validation split", y=1.02)
    return Figure(name, "Fig. 5: Mathematics Dataset, accuracy on hard", save(fig, out, name),
                  _numbers(rows, modules),
                  {PAPER_CLAIM: said.FIG5_DROP, "(n=": said.FIG5_SEEDS})


def _numbers(rows: list[dict], modules: list[str]) -> dict:
    """Per module: mean ± std for each condition; and on how many modules the easy mask loses on hard."""
    numbers = {}
    drops = 0
    for module in modules:
        values = {mask: lookup(rows, mask=mask, **{"task_options.module": module}) for mask in CONDITIONS}
        seeds = max((r["n"] for r in rows if r["task_options.module"] == module), default=0)
        numbers[f"{module} (n={seeds})"] = ", ".join(
            f"{label} {100 * values[mask][0]:.1f} ± {100 * values[mask][1]:.1f}%" for mask, label in CONDITIONS.items())
        drops += values["easy"][0] < values["iid"][0]
    numbers[PAPER_CLAIM] = f"{drops} of {len(modules)} modules"
    return numbers

