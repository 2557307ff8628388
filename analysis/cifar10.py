"""CIFAR-10 figures from Parquet: class removal (Figs. 6a, 6b, 18-21) and mask stability (B.1).

Inputs: the `confusion` table (mask, true_class, predicted_class, count per trial; mask "all" is
the control, "without-<class>" a class-removal mask) and the `mask_iou` table (pair, layer, iou).
Accuracy of a class = its diagonal count / its row total; "relative drop" of class c under a mask
= (control accuracy of c - accuracy of c with the mask) / control accuracy of c.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np

from analysis import paper as said
from analysis.plotting import Figure, Skip, figure, save
from analysis.selection import describe, mixed, with_config
from analysis.stats import where

CLASS_REMOVAL = {"study": "class-removal", "task": "cifar10"}  # the trials of Figs. 6 and 18-21, as recorded
CONTROL = "all"


@dataclass(frozen=True, eq=False)
class Network:
    """A network the paper compares: its name there, the recorded model config that picks its trials
    and the name of its confusion-change figure (Figs. 19-21)."""

    label: str
    model: dict
    difference_figure: str


NETWORKS = [
    Network("simple CNN", {"model.builder": "simple_cnn", "model.dropout": True},
            "fig19_confusion_difference_cifar10-cnn"),
    Network("no-dropout CNN", {"model.builder": "simple_cnn", "model.dropout": False},
            "fig20_confusion_difference_cifar10-cnn-nodropout"),
    Network("ResNet-110", {"model.builder": "resnet"}, "fig21_confusion_difference_cifar10-resnet110"),
]
NETWORK_KEYS = ("model.builder", "model.dropout")  # what tells the networks apart


# -- confusion matrices from Parquet ---------------------------------------------------------------
def confusion_matrices(tables, network: Network) -> tuple[list[str], dict[str, np.ndarray]] | None:
    """-> (classes, mask -> [seeds, C, C] counts, row = true class), or None without data."""
    if "confusion" not in tables:
        return None
    rows = with_config(tables["confusion"], CLASS_REMOVAL | network.model).select(
        ["trial_id", "mask", "true_class", "predicted_class", "count"]).to_pylist()
    if not rows:
        return None
    classes = list(dict.fromkeys(r["true_class"] for r in rows))
    trials = sorted({r["trial_id"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    matrices: dict[str, np.ndarray] = {}
    for r in rows:
        counts = matrices.setdefault(r["mask"], np.zeros((len(trials), len(classes), len(classes))))
        counts[trials.index(r["trial_id"]), index[r["true_class"]], index[r["predicted_class"]]] = r["count"]
    return classes, matrices


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """[..., C, C] counts -> share of each true class's images predicted as each class."""
    totals = counts.sum(-1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts, dtype=float), where=totals > 0)


def class_accuracy(counts: np.ndarray) -> np.ndarray:
    """[S, C, C] -> [S, C] per-class accuracy."""
    return np.diagonal(row_normalised(counts), axis1=-2, axis2=-1)


def relative_drops(classes: list[str], matrices: dict[str, np.ndarray]) -> np.ndarray | None:
    """[S, removed class, class]: relative drop of every class's accuracy under each removal mask."""
    if CONTROL not in matrices or not all(f"without-{c}" in matrices for c in classes):
        return None
    control = class_accuracy(matrices[CONTROL])  # [S, C]
    removed = np.stack([class_accuracy(matrices[f"without-{c}"]) for c in classes], 1)  # [S, C, C]
    safe = np.where(control > 0, control, np.nan)[:, None, :]
    return (control[:, None, :] - removed) / safe


def _removal_data(tables):
    """Network -> (classes, matrices, drops [S, C, C]) for every network with complete data."""
    found = {}
    for network in NETWORKS:
        data = confusion_matrices(tables, network)
        if data is not None and (drops := relative_drops(*data)) is not None:
            found[network] = (*data, drops)
    return found


def _mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Over axis 0 (seeds), ignoring NaN (a class the control mask never gets right has no relative
    drop); std is the sample std (0 for one seed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return _nan_mean_std(values)


def _nan_mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    std = np.nanstd(values, 0, ddof=1) if values.shape[0] > 1 else np.zeros(values.shape[1:])
    return np.nanmean(values, 0), std


def _mixed(tables, name: str) -> Skip | None:
    """A Skip when class-removal trials of one network differ in a setting the figure would average over."""
    if "confusion" not in tables:
        return None
    rows = with_config(tables["confusion"], CLASS_REMOVAL)
    reason = mixed(rows, NETWORK_KEYS) if rows.num_rows else None
    return Skip(name, reason) if reason else None


# -- Fig. 6 -------------------------------------------------------------------------------------------
def _per_class_bars(tables, out, name: str, title: str, ylabel: str, statistic, paper: dict) -> Figure | Skip:
    if refused := _mixed(tables, name):
        return refused
    data = _removal_data(tables)
    if not data:
        return Skip(name, "needs the confusion table of a class-removal trial with all 11 masks "
                          f"(trials of {describe(CLASS_REMOVAL)})")
    fig, ax = plt.subplots(figsize=(9, 3.5))
    width = 0.8 / len(data)
    numbers = {}
    for i, (network, (classes, _, drops)) in enumerate(data.items()):
        mean, std = _mean_std(statistic(drops))
        ax.bar(np.arange(len(classes)) + i * width, 100 * mean, width, yerr=100 * std, capsize=2,
               label=network.label)
        numbers[f"{network.label} (n={drops.shape[0]}): per class [%]"] = ", ".join(
            f"{c} {100 * m:.0f}" for c, m in zip(classes, mean))
        numbers[f"{network.label}: mean over classes [%]"] = f"{100 * _mean_std(mean[:, None])[0][0]:.1f}"
    ax.set_xticks(np.arange(len(classes)) + width * (len(data) - 1) / 2, classes, rotation=30)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return Figure(name, title, save(fig, out, name), numbers, paper)


def target_drop(drops: np.ndarray) -> np.ndarray:
    """[S, C, C] -> [S, C]: relative drop of the removed class itself."""
    return np.diagonal(drops, axis1=1, axis2=2)


def largest_other_drop_ratio(drops: np.ndarray) -> np.ndarray:
    """[S, C, C] -> [S, C]: the largest relative drop of a non-target class / the target's drop."""
    others = np.where(np.eye(drops.shape[1], dtype=bool)[None] | np.isnan(drops), -np.inf, drops).max(2)
    target = target_drop(drops)
    return np.divide(others, target, out=np.full_like(others, np.nan), where=target > 0)


@figure("fig06a_class_removal_drop")
def figure_6a(tables, out):
    return _per_class_bars(tables, out, "fig06a_class_removal_drop", "Fig. 6a: relative accuracy drop of the removed class",
                           "relative drop [%]", target_drop,
                           {"simple CNN": said.FIG6A_SIMPLE, "no-dropout CNN": said.FIG6A_DROPOUT,
                            "ResNet-110": said.FIG6A_RESNET})


@figure("fig06b_non_target_drop")
def figure_6b(tables, out):
    return _per_class_bars(tables, out, "fig06b_non_target_drop",
                           "Fig. 6b: largest drop of a non-target class relative to the target's drop",
                           "largest other drop / target drop [%]", largest_other_drop_ratio,
                           {"non-target classes": said.FIG6B_SMALL})


# -- Figs. 18-21 ----------------------------------------------------------------------------------
def _matrix(ax, matrix: np.ndarray, classes: list[str], title: str, diverging: bool) -> None:
    limit = max(1e-9, float(np.abs(matrix).max()))
    image = ax.imshow(matrix, cmap="RdBu_r" if diverging else "Blues", vmin=-limit if diverging else 0, vmax=limit)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=6)
    ax.set_yticks(range(len(classes)), classes, fontsize=6)
    ax.set_title(title, fontsize=8)
    plt.colorbar(image, ax=ax, fraction=0.046)


@figure("fig18_confusion_control")
def figure_18(tables, out):
    name = "fig18_confusion_control"
    if refused := _mixed(tables, name):
        return refused
    found = {n: d for n in NETWORKS if (d := confusion_matrices(tables, n)) and CONTROL in d[1]}
    if not found:
        return Skip(name, "needs the confusion table of a class-removal trial (mask 'all')")
    fig, axes = plt.subplots(1, len(found), figsize=(4.5 * len(found), 4), squeeze=False)
    numbers = {}
    for ax, (network, (classes, matrices)) in zip(axes[0], found.items()):
        shares = row_normalised(matrices[CONTROL]).mean(0)
        _matrix(ax, 100 * shares, classes, f"{network.label}: mask on all classes [%]", False)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        numbers[f"{network.label}: accuracy with the control mask [%]"] = f"{100 * np.diag(shares).mean():.1f}"
    title = "Fig. 18: confusion matrices with masks trained on all classes"
    return Figure(name, title, save(fig, out, name), numbers,
                  {"accuracy with the control mask": said.FIG18_ACCURACY,
                   "ResNet-110 unmasked accuracy": said.RESNET_ACCURACY})


def _difference_figure(tables, out, network: Network):
    name = network.difference_figure
    if refused := _mixed(tables, name):
        return refused
    data = confusion_matrices(tables, network)
    if data is None or relative_drops(*data) is None:
        return Skip(name, f"needs a complete class-removal trial of the {network.label} ({describe(network.model)})")
    classes, matrices = data
    control = row_normalised(matrices[CONTROL]).mean(0)
    fig, axes = plt.subplots(2, (len(classes) + 1) // 2, figsize=(3.2 * ((len(classes) + 1) // 2), 6.5), squeeze=False)
    numbers = {}
    for ax, removed in zip(axes.flat, classes):
        difference = 100 * (row_normalised(matrices[f"without-{removed}"]).mean(0) - control)
        _matrix(ax, difference, classes, f"without {removed} [% points]", True)
        i = classes.index(removed)
        others = [(difference[i, j], classes[j]) for j in range(len(classes)) if j != i]
        gain, to = max(others)
        numbers[f"without {removed}"] = f"own class {difference[i, i]:+.1f} points; most moved to {to} ({gain:+.1f})"
    title = f"Fig. {name[3:5]}: {network.label}, confusion change when a class is removed"
    return Figure(name, title, save(fig, out, name), numbers,
                  {"without airplane": said.FIG19_AIRPLANE, "without cat": said.FIG19_CAT,
                   "without truck": said.FIG19_TRUCK})


@figure("fig19_confusion_difference_cifar10-cnn")
def figure_19(tables, out):
    return _difference_figure(tables, out, NETWORKS[0])


@figure("fig20_confusion_difference_cifar10-cnn-nodropout")
def figure_20(tables, out):
    return _difference_figure(tables, out, NETWORKS[1])


@figure("fig21_confusion_difference_cifar10-resnet110")
def figure_21(tables, out):
    return _difference_figure(tables, out, NETWORKS[2])


# -- Appendix B.1 -----------------------------------------------------------------------------------------
@figure("figB1_mask_iou")
def figure_iou(tables, out):
    name = "figB1_mask_iou"
    if "mask_iou" not in tables:
        return Skip(name, "needs the mask_iou table of mask-stability trials")
    if reason := mixed(tables["mask_iou"]):
        return Skip(name, reason)
    rows = where(tables["mask_iou"], layer="all").select(["trial_id", "pair", "iou"]).to_pylist()
    values = np.array([r["iou"] for r in rows if r["iou"] is not None], dtype=float)
    if not len(values):
        return Skip(name, "the mask_iou table has no pair with kept weights")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(100 * values, bins=20)
    ax.set_xlabel("IoU of two masks of one class pair [%]")
    ax.set_ylabel("pairs")
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    networks = len({r["trial_id"] for r in rows})
    title = "Appendix B.1: IoU of masks trained twice on the same class pair"
    ax.set_title(title, fontsize=9)
    numbers = {f"mean IoU over {len(values)} pairs ({networks} networks)": f"{100 * values.mean():.2f} ± {100 * std:.2f} %"}
    return Figure(name, title, save(fig, out, name), numbers, {"mean IoU": said.IOU})

