"""Mean and standard deviation over seeds, on pyarrow tables."""

from __future__ import annotations

import math
import re

import pyarrow as pa
import pyarrow.compute as pc


def mean_std(table: pa.Table, keys: list[str], value: str) -> list[dict]:
    """Rows {keys..., "mean", "std", "n"} grouped by `keys`; std is the sample std (ddof=1, 0 if n=1)."""
    if table.num_rows == 0:
        return []
    grouped = table.group_by(keys).aggregate(
        [(value, "mean"), (value, "stddev", pc.VarianceOptions(ddof=1)), (value, "count")]
    )
    rows = grouped.to_pylist()
    return sorted(
        ({**{k: r[k] for k in keys}, "mean": r[f"{value}_mean"], "std": r[f"{value}_stddev"] or 0.0,
          "n": r[f"{value}_count"]} for r in rows),
        key=lambda r: [str(r[k]) for k in keys],
    )


def with_ratio(table: pa.Table, numerator: str, denominator: str, name: str) -> pa.Table:
    """Append numerator / denominator (null where the denominator is 0 or the numerator is null)."""
    denominator_values = pc.if_else(pc.equal(table[denominator], 0), None, table[denominator])
    ratio = pc.divide(pc.cast(table[numerator], pa.float64()), pc.cast(denominator_values, pa.float64()))
    return table.append_column(name, ratio)


def where(table: pa.Table, **equal) -> pa.Table:
    """Rows whose columns equal the given values (a list value means "any of")."""
    for column, value in equal.items():
        mask = pc.is_in(table[column], pa.array(value)) if isinstance(value, list) else pc.equal(table[column], value)
        table = table.filter(mask)
    return table


def weights_by_size(layers: pa.Table) -> dict:
    """{model.size: number of maskable weights}, smallest network first (ties by name), from the
    layers table's whole-network rows ("all"), so that sizes with names like "small" and
    "400,400,400,400" are ordered by what they are, not by what they are called."""
    counts = {r["model.size"]: r["total"] for r in where(layers, layer="all").to_pylist()}
    return dict(sorted(counts.items(), key=lambda item: (item[1], item[0])))


def layer_order(layer: str) -> tuple:
    """Input side first: by the first number in the name, an LSTM layer's input projection before
    its recurrent one, names without a number (an output layer) last."""
    number = re.search(r"\d+", layer)
    return (int(number.group()) if number else math.inf, 0 if "input" in layer else 1, layer)
