"""What every figure module shares: the figure registry, a figure's outcome (Figure or Skip), saving
it, grouped bars and the mean ± std lookup. The one place the matplotlib backend is chosen.

A figure is a function `draw(tables, out) -> Figure | Skip` registered under its file name with
`@figure("fig01_...")` in any module of this folder (found by being here), or in a plug-in package's
module named by an entry point of the group "modular_masks.figures":

    [project.entry-points."modular_masks.figures"]
    my_figures = "my_package.my_figures"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no window, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from models.common import Registry, atomic_path  # noqa: E402

FIGURES = Registry("figure", package="analysis", group="modular_masks.figures")


def figure(name: str):
    """Register a figure function under `name`, the name of the files it draws (and of its Skip)."""
    return FIGURES.register(name)


@dataclass
class Figure:
    name: str
    title: str
    files: list[Path]
    numbers: dict = field(default_factory=dict)  # key numbers we measured
    paper: dict = field(default_factory=dict)  # quantity (a substring of a numbers key) -> analysis.paper.Quote
    reading: dict = field(default_factory=dict)  # quantity -> our reading of our numbers beside the paper


@dataclass
class Skip:
    name: str
    reason: str


def save(fig, out: Path, name: str) -> list[Path]:
    """Write the figure as out/name.png and out/name.pdf (each atomically), close it -> the paths."""
    files = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in files:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], bbox_inches="tight", dpi=120)
    plt.close(fig)
    return files


def bars(ax, groups: list[str], series: dict[str, list[tuple[float, float]]], ylabel: str) -> None:
    """Grouped bars with std error bars: series name -> [(mean, std) per group]."""
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        means = [v[0] for v in values]
        stds = [v[1] for v in values]
        ax.bar(np.arange(len(groups)) + i * width, means, width, yerr=stds, label=label, capsize=3)
    ax.set_xticks(np.arange(len(groups)) + width * (len(series) - 1) / 2, groups, rotation=30, ha="right",
                  rotation_mode="anchor")  # long LSTM layer names would overlap
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def lookup(rows: list[dict], **keys) -> tuple[float, float]:
    """(mean, std) of the first mean_std row whose keys have these values; (nan, 0) when none has."""
    for row in rows:
        if all(row[k] == v for k, v in keys.items()):
            return row["mean"], row["std"]
    return float("nan"), 0.0
