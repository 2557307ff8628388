"""The paper's SCAN figures (Section 4, Appendix C.6.1) from Parquet: Fig. 4a, 4b and 16.

metrics rows: mask "none" (the network pretrained on simple), a mask per split ("simple" is trained on
the pretraining distribution: the paper's "masks trained on the full problem"), and "baseline" (a
network trained on that split's train set alone); `subtask` is the test set. output_removal rows: per
mask and output token, the % of that token's output-layer weights the mask removes.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from analysis import paper as said
from analysis.plotting import Figure, Skip, bars, figure, lookup, save
from analysis.selection import mixed, with_config
from analysis.stats import mean_std, where

SCAN = {"task": "scan"}  # the trials these figures draw, as recorded; a panel per experiment
SPLITS = ["simple", "length", "addprim_jump", "addprim_turn_left"]
TOKENS = ["I_JUMP", "I_WALK", "I_RUN", "I_LOOK", "I_TURN_LEFT", "I_TURN_RIGHT", "<end>"]


def _present(tables, table: str, name: str):
    """(the SCAN trials' rows of `table`, their experiments), or a Skip saying why there are none."""
    if table not in tables:
        return Skip(name, f"no {table} table")
    rows = with_config(tables[table], SCAN)
    if not rows.num_rows:
        return Skip(name, f"no rows of task scan in the {table} table")
    reason = mixed(rows, ("experiment",))
    return Skip(name, reason) if reason else (rows, sorted(set(rows.column("experiment").to_pylist())))


def _panels(tables, table: str, name: str):
    """(the SCAN rows, their experiments, figure, axes with one panel per experiment) or a Skip."""
    present = _present(tables, table, name)
    if isinstance(present, Skip):
        return present
    rows, experiments = present
    fig, axes = plt.subplots(1, len(experiments), figsize=(6 * len(experiments), 3.6), squeeze=False)
    return rows, experiments, fig, axes


def _accuracy_figure(tables, out, name, title, series, paper) -> Figure | Skip:
    panels = _panels(tables, "metrics", name)
    if isinstance(panels, Skip):
        return panels
    metrics, experiments, fig, axes = panels
    numbers = {}
    for ax, experiment in zip(axes[0], experiments):
        rows = mean_std(where(metrics, experiment=experiment), ["mask", "subtask"], "accuracy")
        values = {label: [lookup(rows, mask=mask_of(split), subtask=split) for split in SPLITS]
                  for label, mask_of in series.items()}
        bars(ax, SPLITS, {label: [(100 * m, 100 * s) for m, s in v] for label, v in values.items()},
             "test accuracy [%]")
        ax.set_ylim(0, 105)
        ax.set_title(experiment)
        for label, v in values.items():
            numbers[f"{experiment} {label}"] = ", ".join(f"{split} {100 * m:.1f}±{100 * s:.1f}%"
                                                         for split, (m, s) in zip(SPLITS, v))
    fig.suptitle(title, y=1.03)
    return Figure(name, title, save(fig, out, name), numbers, paper)


@figure("fig04a_scan_mask_accuracy")
def figure_4a(tables, out):
    return _accuracy_figure(
        tables, out, "fig04a_scan_mask_accuracy",
        "Fig. 4a: SCAN test accuracy, mask trained on simple vs on the split's own train set",
        {"mask trained on simple (full problem)": lambda split: "simple",
         "mask trained on the split": lambda split: split},
        {"generalization gap": said.FIG4A_GAP})


@figure("fig16_scan_baselines")
def figure_16(tables, out):
    return _accuracy_figure(
        tables, out, "fig16_scan_baselines",
        "Fig. 16: trained on the split alone (baseline) vs pretrained on simple, with and without the split's mask",
        {"baseline: trained on the split": lambda split: "baseline",
         "pretrained on simple, no mask": lambda split: "none",
         "pretrained on simple, split's mask": lambda split: split},
        {"baseline": said.FIG16_PRETRAINING, "split's mask": said.FIG16_MASK})


@figure("fig04b_scan_output_removal")
def figure_4b(tables, out):
    name = "fig04b_scan_output_removal"
    panels = _panels(tables, "output_removal", name)
    if isinstance(panels, Skip):
        return panels
    removal, experiments, fig, axes = panels
    numbers = {}
    for ax, experiment in zip(axes[0], experiments):
        rows = mean_std(where(removal, experiment=experiment), ["mask", "token"], "removed_percent")
        masks = [m for m in SPLITS if any(r["mask"] == m for r in rows)]
        bars(ax, TOKENS, {m: [lookup(rows, mask=m, token=t) for t in TOKENS] for m in masks},
             "output-layer weights removed [%]")
        ax.set_title(experiment)
        for m in masks:
            numbers[f"{experiment} mask {m}: removed % per token"] = ", ".join(
                f"{t} {lookup(rows, mask=m, token=t)[0]:.0f}" for t in TOKENS)
    title = "Fig. 4b: output-layer weights removed per token by each mask"
    fig.suptitle(title, y=1.03)
    return Figure(name, title, save(fig, out, name), numbers,
                  {"scan-lstm mask addprim_jump": said.FIG4B_JUMP})

