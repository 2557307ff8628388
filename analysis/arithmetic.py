"""The paper's arithmetic figures (Sections 3.1-3.2, Appendices C.2-C.4) from Parquet tables: mean ±
std over seeds, PNG and PDF.

Each figure function takes the loaded tables and an output folder and returns a Figure (with its
key numbers beside the paper's) or a Skip with the reason it could not be drawn. It picks its trials
by their recorded study and config (ADDMUL, DOUBLE_ADD, ...), and draws a panel per experiment and
every other setting that differs among them.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analysis import paper as said
from analysis.plotting import Figure, Skip, bars, figure, lookup, save
from analysis.selection import describe, groups, with_config
from analysis.stats import layer_order, mean_std, weights_by_size, where, with_ratio

# The trials of each figure, as recorded (the presets are in pipeline/studies/arithmetic.py).
ADDMUL = {"study": "masks", "task": "addmul"}
ADDMUL_FNN = ADDMUL | {"model.builder": "fnn"}
DOUBLE_ADD = {"study": "masks", "task": "double_add"}
BOTH_PAIRS_AT_ONCE = DOUBLE_ADD | {"task_options.presentation": ["two_passes", "repeat6"]}
ONE_PAIR_AT_A_TIME = DOUBLE_ADD | {"task_options.presentation": "sequential_pairs"}
MAX_PANELS = 8  # more settings than this in one figure: it refuses and says how to select


def _setting_panels(tables, table: str, name: str, selection: dict):
    """One panel per setting of the selected trials: experiment, model size and every other config
    key that differs among them (β, ...): (fig, [(ax, Group)]) or a Skip saying there are none, or
    too many to show and how to select."""
    if table not in tables:
        return Skip(name, f"no {table} table")
    rows = with_config(tables[table], selection)
    if not rows.num_rows:
        return Skip(name, f"needs trials of {describe(selection)}")
    found = groups(rows, by=("experiment", "model.size"), limit=MAX_PANELS)
    if isinstance(found, str):
        return Skip(name, found)
    fig, axes = plt.subplots(1, len(found), figsize=(5 * len(found), 3.5), squeeze=False)
    return fig, list(zip(axes[0], found))


# -- sharing per layer: Figs. 1 and 13 -----------------------------------------------------------------
def _sharing_per_layer(tables, out, name, selection, title, paper: dict) -> Figure | Skip:
    def panel(ax, group) -> dict:
        table = group.rows(tables["layers"])
        table = with_ratio(table.filter(table["shared"].is_valid()), "shared", "kept", "shared_fraction")
        rows = mean_std(table, ["mask", "layer"], "shared_fraction")
        masks = sorted({r["mask"] for r in rows})
        layers = [l for l in dict.fromkeys(r["layer"] for r in rows) if l != "all"]
        layers = sorted(layers, key=layer_order) + ["all"]
        bars(ax, layers, {m: [tuple(100 * x for x in lookup(rows, mask=m, layer=l)) for l in layers] for m in masks},
             "shared [%]")
        return {f"{group.label} {m}: shared % per layer": ", ".join(
            f"{l} {100 * lookup(rows, mask=m, layer=l)[0]:.0f}" for l in layers) for m in masks}

    return _panel_figure(tables, out, name, "layers", selection, title, paper, panel)


def _panel_figure(tables, out, name, table, selection, title, paper: dict, panel) -> Figure | Skip:
    """One panel per setting of the selected trials; panel(ax, group) draws one -> its numbers."""
    panels = _setting_panels(tables, table, name, selection)
    if isinstance(panels, Skip):
        return panels
    fig, panels = panels
    numbers = {}
    for ax, group in panels:
        numbers |= panel(ax, group)
        ax.set_title(group.label)
    fig.suptitle(title, y=1.03)
    return Figure(name, title, save(fig, out, name), numbers, paper)


@figure("fig01_sharing_per_layer_addmul")
def figure_1(tables, out):
    return _sharing_per_layer(tables, out, "fig01_sharing_per_layer_addmul", ADDMUL,
                              "Fig. 1: weights shared between add and mul, per layer",
                              {"sharing per layer": said.FIG1_IO_SHARING})


@figure("fig13_sharing_per_layer_double_add")
def figure_13(tables, out):
    return _sharing_per_layer(tables, out, "fig13_sharing_per_layer_double_add", DOUBLE_ADD,
                              "Fig. 13: weights shared between pair 1 and pair 2, per layer",
                              {"sharing": said.FIG13_LOW, "first and last layers": said.FIG13_ZERO})


# -- accuracy with (inverted) masks: Figs. 2, 10, 14 -----------------------------------------------
def _mask_accuracy(tables, out, name, selection, masks, subtasks, title, paper: dict) -> Figure | Skip:
    def panel(ax, group) -> dict:
        rows = mean_std(group.rows(tables["metrics"]), ["mask", "subtask"], "accuracy")
        labels = [m.replace("not-", "¬") for m in masks]
        bars(ax, labels, {s: [tuple(100 * x for x in lookup(rows, mask=m, subtask=s)) for m in masks]
                          for s in subtasks}, "accuracy [%]")
        return {f"{group.label} mask {m}": ", ".join(
            f"{s} {100 * lookup(rows, mask=m, subtask=s)[0]:.1f}%" for s in subtasks) for m in masks}

    return _panel_figure(tables, out, name, "metrics", selection, title, paper, panel)


PAIR_MASKS, PAIRS = ["none", "pair1", "pair2", "not-pair1", "not-pair2"], ["pair1", "pair2"]


@figure("fig02_double_add_accuracy")
def figure_2(tables, out):
    return _mask_accuracy(tables, out, "fig02_double_add_accuracy", BOTH_PAIRS_AT_ONCE,
                          PAIR_MASKS, PAIRS, "Fig. 2: double addition, accuracy per pair with each mask",
                          {"mask not-pair": said.FIG2_INDEPENDENT})


@figure("fig14_double_add_sequential_accuracy")
def figure_14(tables, out):
    return _mask_accuracy(tables, out, "fig14_double_add_sequential_accuracy", ONE_PAIR_AT_A_TIME,
                          PAIR_MASKS, PAIRS, "Fig. 14: LSTM with one pair at a time",
                          {"against Fig. 2": said.FIG14_NO_IMPROVEMENT})


@figure("fig10_addmul_inverted_masks")
def figure_10(tables, out):
    return _mask_accuracy(tables, out, "fig10_addmul_inverted_masks", ADDMUL,
                          ["none", "add", "mul", "not-add", "not-mul"], ["add", "mul"],
                          "Fig. 10: add/mul accuracy with masks and inverted masks",
                          {"mask not-": said.FIG10_INVERTED})


# -- Fig. 11: weights per operation --------------------------------------------------------------------
@figure("fig11_weights_per_operation")
def figure_11(tables, out):
    name = "fig11_weights_per_operation"
    panels = _setting_panels(tables, "layers", name, ADDMUL)
    if isinstance(panels, Skip):
        return panels
    fig, panels = panels
    numbers = {}
    for ax, group in panels:
        label = group.label
        table = where(group.rows(tables["layers"]), mask=["add", "mul"])
        rows = mean_std(table, ["mask", "layer"], "kept")
        layers = sorted({r["layer"] for r in rows if r["layer"] != "all"}, key=layer_order)
        bars(ax, layers, {m: [lookup(rows, mask=m, layer=l) for l in layers] for m in ("add", "mul")}, "weights")
        ax.set_title(label)
        ratio = multiplication_to_addition_ratio(group.rows(tables["layers"]))
        numbers[f"{label} mul/add weights"] = f"{ratio:.2f}x"
    fig.suptitle("Fig. 11: weights used per operation", y=1.03)
    return Figure(name, "Fig. 11: weights per operation per layer", save(fig, out, name), numbers,
                  {"mul/add weights": said.FIG11_RATIO})


def multiplication_to_addition_ratio(layers: pa.Table) -> float:
    """Mean over trials of kept(mul) / kept(add), whole network."""
    rows = where(layers, layer="all").select(["trial_id", "mask", "kept"]).to_pylist()
    per_trial: dict[str, dict] = {}
    for r in rows:
        per_trial.setdefault(r["trial_id"], {})[r["mask"]] = r["kept"]
    ratios = [t["mul"] / t["add"] for t in per_trial.values() if t.get("add") and "mul" in t]
    return float(np.mean(ratios)) if ratios else float("nan")


# -- Fig. 12: operation performed ----------------------------------------------------------------------
@figure("fig12_operation_performed")
def figure_12(tables, out):
    name = "fig12_operation_performed"
    operations = with_config(tables["operations"], ADDMUL) if "operations" in tables else None
    if operations is None or not operations.num_rows:
        return Skip(name, f"needs trials of {describe(ADDMUL)} (operations table)")
    found = groups(operations, by=("experiment", "model.size"), limit=4)
    if isinstance(found, str):
        return Skip(name, found)
    fig, axes = plt.subplots(len(found), 3, figsize=(10, 3 * len(found)), squeeze=False)
    numbers = {}
    for row_axes, group in zip(axes, found):
        label = group.label
        rows = mean_std(group.rows(operations), ["mask", "subtask", "operation"], "fraction")
        for ax, mask in zip(row_axes, ["none", "add", "mul"]):
            grid = np.array([[lookup(rows, mask=mask, subtask=s, operation=o)[0] for o in ("add", "mul", "none")]
                             for s in ("add", "mul")])
            ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
            ax.set_xticks(range(3), ["add", "mul", "none"])
            ax.set_yticks(range(2), ["add", "mul"])
            ax.set_title(f"{label}: mask {mask}", fontsize=9)
            for (i, j), v in np.ndenumerate(grid):
                ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", color="w")
            if mask != "none":
                other = "mul" if mask == "add" else "add"
                numbers[f"{label} mask {mask} asked for {other}: performs"] = ", ".join(
                    f"{o} {100 * lookup(rows, mask=mask, subtask=other, operation=o)[0]:.0f}%"
                    for o in ("add", "mul", "none"))
    fig.suptitle("Fig. 12: operation performed (rows: asked, columns: performed)", y=1.03)
    return Figure(name, "Fig. 12: operation actually performed under each mask", save(fig, out, name), numbers,
                  {"operation performed": said.FIG12_BEHAVIOUR})


# -- Fig. 7: histograms of σ(l) --------------------------------------------------------------------
LOW_CUTOFF = 0.0002  # Fig. 7a leaves out σ(l) below this: "bottom 10% of the first bin" of 500


@figure("fig07_keep_probability_histograms")
def figure_7(tables, out):
    name = "fig07_keep_probability_histograms"
    if "histograms" not in tables or tables["histograms"].num_rows == 0:
        return Skip(name, "no histograms table")
    table = tables["histograms"]
    found = groups(table, by=("experiment",), limit=MAX_PANELS)
    if isinstance(found, str):
        return Skip(name, found)
    fig, (linear, log) = plt.subplots(1, 2, figsize=(10, 3.5))
    numbers, whole_first_bin = {}, False
    for group in found:
        left, counts, low = _histogram(group.rows(table))
        width = left[1] - left[0] if len(left) > 1 else 1.0
        density = counts / counts.sum() / width
        # (a) without σ(l) < 0.0002: their number dwarfs the kept weights (Fig. 7a). Results written
        # before evaluate counted them drop the whole first bin instead.
        kept = counts.copy()
        kept[0] = counts[0] - low if low is not None else 0
        whole_first_bin |= low is None
        linear.plot(left + width / 2, kept / kept.sum() / width, label=group.label)
        log.semilogy(left + width / 2, np.maximum(density, 1e-9), label=group.label)
        middle = counts[(left >= 0.1) & (left < 0.9)].sum() / counts.sum()
        numbers[f"{group.label}: share of σ(l) in [0.1, 0.9)"] = f"{100 * middle:.2f}%"
        if low is not None:
            share = f"{100 * low / counts.sum():.2f}%"
            numbers[f"{group.label}: share of σ(l) < {LOW_CUTOFF:g} (left out of a)"] = share
    linear.set_title("(a) linear, first bin removed (no count below 0.0002 recorded)" if whole_first_bin
                     else f"(a) linear, σ(l) < {LOW_CUTOFF:g} removed")
    log.set_title("(b) all, log scale")
    for ax in (linear, log):
        ax.set_xlabel("σ(l)")
        ax.legend(fontsize=7)
    return Figure(name, "Fig. 7: histogram of mask probabilities σ(l)", save(fig, out, name), numbers,
                  {"[0.1, 0.9)": said.FIG7_THRESHOLD, f"< {LOW_CUTOFF:g}": said.FIG7_LOW_VALUES})


def _histogram(table: pa.Table) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Counts summed over trials and masks -> (bin left edges, counts, how many σ(l) < LOW_CUTOFF or
    None when the table does not record it: `low_count` on each mask's first bin, for `low_cutoff`)."""
    rows = table.group_by(["bin_left"]).aggregate([("count", "sum")]).to_pylist()
    rows = sorted(rows, key=lambda r: r["bin_left"])
    left = np.array([r["bin_left"] for r in rows])
    counts = np.array([r["count_sum"] for r in rows], dtype=float)
    if "low_count" not in table.column_names:
        return left, counts, None
    first = table.filter(table["low_count"].is_valid())
    cutoffs = set(first.column("low_cutoff").to_pylist())
    if cutoffs != {LOW_CUTOFF} or first.num_rows != table.group_by(["trial_id", "mask"]).aggregate([]).num_rows:
        return left, counts, None
    return left, counts, float(pc.sum(first["low_count"]).as_py())


# -- Figs. 8 and 9: sweeps over β and size --------------------------------------------------------------
def recommend_beta(metrics: pa.Table, threshold: float = 0.95) -> dict[str, float | None]:
    """Appendix C.2: per model size, the largest β whose control mask keeps ≥ 95 % of the
    unmasked accuracy on the full task (means over seeds)."""
    full = where(metrics, subtask="full")
    baseline = {r["model.size"]: r["mean"] for r in mean_std(where(full, mask="none"), ["model.size"], "accuracy")}
    control = mean_std(where(full, mask="full"), ["model.size", "mask.beta"], "accuracy")
    best: dict[str, float | None] = {size: None for size in baseline}
    for r in control:
        size = r["model.size"]
        if size in baseline and r["mean"] >= threshold * baseline[size]:
            best[size] = max(best[size] or 0.0, r["mask.beta"])
    return best


PAPER_BETA = 1e-4  # Fig. 8's red line and star: "the value chosen for our experiments" (App. C.3: β = 10⁻⁴)


@figure("fig08_beta_sensitivity")
def figure_8(tables, out):
    name = "fig08_beta_sensitivity"
    if "metrics" not in tables or "layers" not in tables:
        return Skip(name, "needs metrics and layers tables")
    metrics = with_config(tables["metrics"], ADDMUL_FNN)
    if not metrics.num_rows:
        return Skip(name, f"needs trials of {describe(ADDMUL_FNN)}; run the alpha-sensitivity sweep")
    found = groups(metrics, by=("model.size",), across=("mask.beta",), limit=4)
    if isinstance(found, str):
        return Skip(name, found)
    panels = [g for g in found if len(set(g.rows(metrics).column("mask.beta").to_pylist())) > 1]
    if not panels:
        return Skip(name, "needs add/mul FNN trials of one size at several β; run the alpha-sensitivity sweep")
    layers = where(with_config(tables["layers"], ADDMUL_FNN), mask="add", layer="all")
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    numbers = {}
    for ax, group in zip(axes[0], panels):
        recommended = _beta_panel(ax, fig, group.rows(metrics), group.rows(layers))
        ax.set_title(f"size {group.label}" if group.label else "")
        numbers[f"recommended β, {group.label or 'all'}"] = recommended
    fig.suptitle("Fig. 8: β sensitivity (colour: total sharing %)", y=1.03)
    return Figure(name, "Fig. 8: sensitivity to β", save(fig, out, name), numbers,
                  {"recommended β": said.FIG8_HEURISTIC, "red line and star": said.FIG8_CHOSEN,
                   "chosen β": said.FIG8_BETA, "sensitivity": said.FIG8_INSENSITIVE},
                  {"recommended β": "App. C.2's heuristic on our control masks; drawn beside the paper's β = 1e-4"})


def _beta_panel(ax, fig, metrics: pa.Table, layers: pa.Table) -> float | None:
    """Control-mask accuracy against β, coloured by sharing, with the paper's chosen β and the
    heuristic's (App. C.2) marked and labelled. -> the heuristic's β."""
    rows = mean_std(where(metrics, mask="full", subtask="full"), ["mask.beta"], "accuracy")
    sharing = mean_std(with_ratio(layers, "shared", "kept", "s"), ["mask.beta"], "s")
    x = [r["mask.beta"] for r in rows]
    accuracy = [100 * r["mean"] for r in rows]
    ax.errorbar(x, accuracy, [100 * r["std"] for r in rows], marker="o", label="control-mask accuracy", zorder=2)
    points = ax.scatter(x, accuracy, c=[100 * lookup(sharing, **{"mask.beta": b})[0] for b in x], cmap="viridis",
                        zorder=3)
    fig.colorbar(points, ax=ax, label="total sharing [%]")
    recommended = next(iter(recommend_beta(metrics).values()), None)
    heuristic = f"heuristic's β = {recommended:g} (App. C.2)" if recommended else ""
    for beta, style, label in ((PAPER_BETA, "r", "paper's chosen β = 1e-4 (Fig. 8, App. C.3)"),
                               (recommended, "m", heuristic)):
        if beta is None:
            continue
        ax.axvline(beta, color=style, linestyle="-" if style == "r" else "--", label=label)
        near = min(rows, key=lambda r: abs(np.log(r["mask.beta"]) - np.log(beta)))
        ax.plot([beta], [100 * near["mean"]], f"{style}*", ms=14 if style == "r" else 10, zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("β")
    ax.set_ylabel("control-mask accuracy [%]")
    ax.legend(fontsize=7)
    return recommended


@figure("fig09_sharing_vs_size")
def figure_9(tables, out):
    name = "fig09_sharing_vs_size"
    if "layers" not in tables:
        return Skip(name, "no layers table")
    layers = where(with_config(tables["layers"], ADDMUL_FNN), mask="add", layer="all")
    if not layers.num_rows:
        return Skip(name, f"needs trials of {describe(ADDMUL_FNN)} at several sizes; run sharing-vs-capacity")
    weights = weights_by_size(layers)
    sizes = list(weights)
    if len(sizes) < 2:
        return Skip(name, f"needs add/mul FNN trials of several sizes (found {sizes}); run sharing-vs-capacity")
    lines = groups(layers, across=("model.size",), limit=MAX_PANELS)
    if isinstance(lines, str):
        return Skip(name, lines)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    numbers = {}
    for line in lines:
        rows = mean_std(with_ratio(line.rows(layers), "shared", "kept", "s"), ["model.size"], "s")
        rows = sorted(rows, key=lambda r: sizes.index(r["model.size"]))
        ax.errorbar([sizes.index(r["model.size"]) for r in rows], [100 * r["mean"] for r in rows],
                    [100 * r["std"] for r in rows], marker="o", label=line.label or None)
        prefix = f"{line.label}: " if line.label else ""
        numbers |= {f"{prefix}size {r['model.size']}": f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}% (n={r['n']})"
                    for r in rows}
    ax.set_xticks(range(len(sizes)), [f"{size}\n{weights[size]:,} weights" for size in sizes], fontsize=7)
    ax.set_ylabel("add weights shared with mul [%]")
    ax.set_title("Fig. 9: sharing of the add mask against network size")
    if len(lines) > 1:
        ax.legend(fontsize=7)
    return Figure(name, "Fig. 9: sharing against network size", save(fig, out, name), numbers,
                  {"size": said.FIG9_CHANGES, "underfitting": said.FIG9_UNDERFITTING})

