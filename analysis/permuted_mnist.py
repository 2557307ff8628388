"""Permuted MNIST transfer (Section 3.3, Appendix C.5): Figs. 3, 15a, 15b and the no-forgetting check.

Reads the tables `continual_layers` (after_task, layer, parameter, total, kept, shared_with_earlier)
and `continual` (after_task, evaluated_task, accuracy). Task indices in the tables start at 0; the
paper's figures count from 1, so "T2" is task index 1.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pyarrow as pa
import pyarrow.compute as pc

from analysis import paper as said
from analysis.plotting import Figure, Skip, bars, figure, lookup, save
from analysis.selection import mixed, with_config
from analysis.stats import mean_std, where, with_ratio

PERMUTED_MNIST = {"task": "permuted_mnist"}  # the trials these figures draw, as recorded
LAYER_COLUMNS = ["experiment", "seed", "after_task", "layer", "parameter", "kept", "shared_with_earlier"]
ACCURACY_COLUMNS = ["experiment", "seed", "after_task", "evaluated_task", "accuracy"]

_PAPER_DEFAULT = {"(output)": said.FIG3_OUTPUT, "all layers": said.FIG3_LITTLE_SHARING}
_PAPER_PREFER_OLD = {"(input, permuted)": said.FIG15_FIRST_LAYER, "(output)": said.FIG15_OUTPUT,
                     "all layers": said.FIG15A_UNIQUE}


def sharing_percentages(layers: pa.Table) -> tuple[list[str], list[int], list[dict]]:
    """Weight matrices only (as the paper's plot) of one setting's trials: (layers in order, after-task
    indices T2, T4, ..., rows {layer, after_task, mean, std, n} of 100 · shared_with_earlier / kept over seeds)."""
    table = where(layers, parameter="weight")
    table = table.filter(table["shared_with_earlier"].is_valid())
    table = with_ratio(table, "shared_with_earlier", "kept", "shared_fraction")
    table = table.append_column("shared_percent", pc.multiply(table["shared_fraction"], 100.0))
    every_second = sorted(t for t in set(table.column("after_task").to_pylist()) if t % 2 == 1)
    table = where(table, after_task=every_second) if every_second else table
    layer_names = sorted(set(table.column("layer").to_pylist()), key=_layer_index)
    return layer_names, every_second, mean_std(table, ["layer", "after_task"], "shared_percent")


def _layer_index(layer: str) -> int:
    digits = "".join(c for c in layer if c.isdigit())
    return int(digits) if digits else 10_000


def _layer_label(index: int, count: int) -> str:
    role = " (input, permuted)" if index == 0 else " (output)" if index == count - 1 else ""
    return f"layer {index + 1}{role}"


def _table_or_skip(tables, table: str, columns: list[str], name: str):
    """The permuted-MNIST trials' rows of the table, or a Skip saying it or some of its columns are missing."""
    if table not in tables:
        return Skip(name, f"no {table} table (run the permuted-mnist sweep)")
    missing = [c for c in columns if c not in tables[table].column_names]
    if missing:
        return Skip(name, f"the {table} table lacks column(s) {missing}")
    rows = with_config(tables[table], PERMUTED_MNIST)
    return rows if rows.num_rows else Skip(name, f"no rows of task permuted_mnist in the {table} table")


def _sharing_figure(tables, out, name: str, logit_init: str, title: str, paper: dict) -> Figure | Skip:
    """Sharing per layer of the trials whose new masks started at `logit_init` (task_options.logit_init)."""
    layers = _table_or_skip(tables, "continual_layers", LAYER_COLUMNS, name)
    if isinstance(layers, Skip):
        return layers
    layers = with_config(layers, {"task_options.logit_init": logit_init})
    if not layers.num_rows:
        return Skip(name, f"needs permuted-MNIST trials with task_options.logit_init={logit_init}")
    if reason := mixed(layers):
        return Skip(name, reason)
    layer_names, tasks, rows = sharing_percentages(layers)
    if not tasks:
        return Skip(name, f"the trials with task_options.logit_init={logit_init} have no second task (T2) yet")
    labels = [_layer_label(i, len(layer_names)) for i in range(len(layer_names))]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars(ax, labels, {f"T{t + 1}": [lookup(rows, layer=l, after_task=t) for l in layer_names] for t in tasks},
         "weights shared [%]")
    ax.set_title(title, fontsize=10)
    header = ", ".join(f"T{t + 1}" for t in tasks)
    numbers = {f"{label}: shared % after {header}": ", ".join(_format(*lookup(rows, layer=l, after_task=t))
                                                             for t in tasks)
               for label, l in zip(labels, layer_names)}
    numbers[f"all layers: shared % after {header}"] = _all_layers(layers, tasks)
    numbers["seeds"] = len(set(layers.column("seed").to_pylist()))
    return Figure(name, title, save(fig, out, name), numbers, paper)


def _all_layers(layers: pa.Table, tasks: list[int]) -> str:
    """Sharing over every weight matrix: Σ shared / Σ kept per trial, then mean ± std over seeds."""
    table = where(layers, parameter="weight", after_task=tasks)
    grouped = table.group_by(["trial_id", "after_task"]).aggregate([("kept", "sum"), ("shared_with_earlier", "sum")])
    grouped = with_ratio(grouped, "shared_with_earlier_sum", "kept_sum", "fraction")
    grouped = grouped.append_column("percent", pc.multiply(grouped["fraction"], 100.0))
    rows = mean_std(grouped, ["after_task"], "percent")
    return ", ".join(_format(*lookup(rows, after_task=t)) for t in tasks)


def _format(mean: float, std: float) -> str:
    return f"{mean:.1f} ± {std:.1f}"


@figure("fig03_permuted_mnist_sharing")
def figure_3(tables, out):
    return _sharing_figure(tables, out, "fig03_permuted_mnist_sharing", "default",
                           "Fig. 3: weights shared per layer after every second permuted-MNIST task", _PAPER_DEFAULT)


@figure("fig15a_permuted_mnist_prefer_old")
def figure_15a(tables, out):
    return _sharing_figure(tables, out, "fig15a_permuted_mnist_prefer_old", "prefer-old",
                           "Fig. 15a: sharing, new masks start at logit 2 on used weights, 0 on free ones",
                           _PAPER_PREFER_OLD)


@figure("fig15b_permuted_mnist_prefer_old_more")
def figure_15b(tables, out):
    return _sharing_figure(tables, out, "fig15b_permuted_mnist_prefer_old_more", "prefer-old-more",
                           "Fig. 15b: sharing, new masks start at logit 2 on used weights, -1 on free ones",
                           _PAPER_PREFER_OLD | {"all layers": said.FIG15B_MORE})


@figure("permuted_mnist_accuracy")
def figure_accuracy(tables, out):
    """Each task's test accuracy with its own mask after the last task, and the largest change of an
    earlier task's accuracy across later tasks (frozen weights: it must be exactly 0)."""
    name = "permuted_mnist_accuracy"
    table = _table_or_skip(tables, "continual", ACCURACY_COLUMNS, name)
    if isinstance(table, Skip):
        return table
    experiments = sorted(set(table.column("experiment").to_pylist()))
    if reason := mixed(table, ("experiment",)):
        return Skip(name, reason)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    numbers = {}
    for experiment in experiments:
        rows = where(table, experiment=experiment)
        last = pc.max(rows["after_task"]).as_py()
        final = mean_std(where(rows, after_task=last), ["evaluated_task"], "accuracy")
        tasks = [r["evaluated_task"] for r in final]
        ax.errorbar([t + 1 for t in tasks], [100 * r["mean"] for r in final], yerr=[100 * r["std"] for r in final],
                    marker="o", capsize=3, label=experiment)
        numbers[f"{experiment}: accuracy % per task after T{last + 1}"] = ", ".join(
            f"{100 * r['mean']:.1f}" for r in final)
        numbers[f"{experiment}: largest change of an earlier task's accuracy"] = _largest_change(rows)
    ax.set_xlabel("task (permutation)")
    ax.set_ylabel("test accuracy with its own mask [%]")
    ax.legend(fontsize=8)
    title = "Permuted MNIST: each task's accuracy after the last task"
    ax.set_title(title, fontsize=10)
    return Figure(name, title, save(fig, out, name), numbers, {"largest change": said.FROZEN},
                  {"largest change": "frozen weights: it must be exactly 0"})


def _largest_change(rows: pa.Table) -> float | str:
    """Largest spread of one task's accuracy over its evaluations after later tasks; a task evaluated
    only once has no spread to measure (0.0 there would read as "no forgetting")."""
    grouped = rows.group_by(["trial_id", "evaluated_task"]).aggregate(
        [("accuracy", "min"), ("accuracy", "max"), ("accuracy", "count")])
    grouped = grouped.filter(pc.greater(grouped["accuracy_count"], 1))
    if not grouped.num_rows:
        return "n/a: only one evaluation per task (no later task was trained)"
    spread = pc.subtract(grouped["accuracy_max"], grouped["accuracy_min"])
    return float(pc.max(spread).as_py())

