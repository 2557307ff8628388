"""Which trials a figure may average: select by recorded config columns, group by the ones that differ.

Every Parquet row carries its trial's whole config (`mask.beta`, `model.size`, `task_options.*`,
`experiment`, ...). A figure averages over seeds only: trials whose config differs in anything
else that changes results are drawn as separate, labelled groups, or the figure refuses and says
how to select (`pipeline analyze ... --where mask.beta=0.0001`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from analysis.data import AnalysisInputError

# Top-level config keys (pipeline.config.ExperimentConfig) besides the dotted section keys.
TOP_LEVEL_KEYS = ("experiment", "study", "task", "task_version", "sweep", "seed", "device", "data_dir",
                  "eval_size", "checkpoint_every", "log_every")
# Keys that never change a trial's results: the seed is what figures average over; the rest are
# bookkeeping (a resumed trial is bit-identical, so checkpoint_every does not matter either).
NOT_RESULT_KEYS = ("trial_id", "seed", "sweep", "data_dir", "log_every", "checkpoint_every", "mask.pack")


class SelectionError(AnalysisInputError):
    """--where names a key or value that no trial has; the message says what there is."""


@dataclass(frozen=True)
class Group:
    """Trials sharing one setting of the keys a figure separates: label for the plot, their ids."""

    label: str
    settings: dict
    trial_ids: tuple[str, ...]

    def rows(self, table: pa.Table) -> pa.Table:
        return table.filter(pc.is_in(table["trial_id"], pa.array(self.trial_ids, table["trial_id"].type)))


def config_keys(table: pa.Table) -> list[str]:
    """The config columns of a table (section keys have a dot; table columns never do)."""
    return [c for c in table.column_names if "." in c or c in TOP_LEVEL_KEYS]


def trial_settings(table: pa.Table) -> dict[str, dict]:
    """trial_id -> {config key: value}, from the first row of each trial (config is constant per trial)."""
    trials = pc.unique(table["trial_id"])
    first = table.take(pc.index_in(trials, value_set=table["trial_id"]))
    keys = config_keys(first)
    columns = {k: first.column(k).to_pylist() for k in keys}
    return {trial: {k: _hashable(columns[k][i]) for k in keys} for i, trial in enumerate(first["trial_id"].to_pylist())}


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def differing_keys(settings: dict[str, dict], within: tuple[str, ...] = ()) -> dict[str, list]:
    """Keys (other than `within` and NOT_RESULT_KEYS) whose value differs between trials that agree on
    `within` -> the values seen, sorted."""
    cells: dict[tuple, list[dict]] = {}
    for config in settings.values():
        cells.setdefault(tuple(config.get(k) for k in within), []).append(config)
    differing: dict[str, list] = {}
    for configs in cells.values():
        for key in {k for c in configs for k in c} - set(within) - set(NOT_RESULT_KEYS):
            values = list(dict.fromkeys(c.get(key) for c in configs))
            if len(values) > 1:
                differing.setdefault(key, [])
                differing[key] += [v for v in values if v not in differing[key]]
    return {key: sorted(values, key=_sort_key) for key, values in sorted(differing.items())}


def groups(table: pa.Table, by: tuple[str, ...] = (), across: tuple[str, ...] = (),
           limit: int = 8) -> list[Group] | str:
    """One Group per setting of `by` plus every other key that differs among trials agreeing on `by`
    and `across` (the keys a figure puts on an axis), sorted; or, when that makes more than `limit`
    groups, the reason the figure cannot show them (names the keys and a --where that selects)."""
    settings = trial_settings(table)
    by = tuple(k for k in by if k in table.column_names)
    keys = (*by, *[k for k in differing_keys(settings, by + across) if k not in across])
    found: dict[tuple, list[str]] = {}
    for trial, config in settings.items():
        found.setdefault(tuple(config.get(k) for k in keys), []).append(trial)
    if len(found) > limit:
        return refusal(differing_keys(settings, by + across) or differing_keys(settings), len(found), limit)
    shown = [k for i, k in enumerate(keys) if k == keys[0] and k in by or len({v[i] for v in found}) > 1]
    return [Group(_label(dict(zip(keys, values)), shown, by), dict(zip(keys, values)), tuple(sorted(trials)))
            for values, trials in sorted(found.items(), key=lambda item: [_sort_key(v) for v in item[0]])]


def with_config(table: pa.Table, config: dict) -> pa.Table:
    """Rows of the trials whose recorded config has these values (a list: any of them), e.g.
    with_config(layers, {"task": "addmul", "model.builder": "fnn"}); no rows when the table does not
    record one of the keys. How a figure picks its trials: by what was recorded, never a preset name."""
    for key, value in config.items():
        try:
            wanted = pa.array(value if isinstance(value, list) else [value]).cast(table[key].type)
        except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return table.slice(0, 0)  # not recorded, or recorded as another type (all nulls): no such trial
        table = table.filter(pc.is_in(table[key], wanted))
    return table


def describe(config: dict) -> str:
    """{"task": "double_add", "task_options.presentation": ["a", "b"]} -> 'task double_add,
    task_options.presentation a or b': the trials a figure needs, in its Skip reason."""
    return ", ".join(f"{key} {' or '.join(map(_format, value if isinstance(value, list) else [value]))}"
                     for key, value in config.items())


def mixed(table: pa.Table, by: tuple[str, ...] = ()) -> str | None:
    """For figures that draw one group per setting of `by` only: the refusal when trials agreeing on
    `by` still differ in another key, else None."""
    differing = differing_keys(trial_settings(table), tuple(k for k in by if k in table.column_names))
    return refusal(differing, None, None) if differing else None


def _label(settings: dict, shown: list[str], by: tuple[str, ...]) -> str:
    """'addmul-fnn (small, mask.beta=0.0001)': the `by` values bare (the first one shown always, the
    others where they differ between groups), every other differing key by name."""
    # a key another kind of model or task does not have (an LSTM's model.size) is left out, not "(none)"
    bare = [_format(settings[k]) for k in by if k in settings and k in shown and settings[k] is not None]
    named = [f"{k}={_format(settings[k])}" for k in shown if k not in by and settings.get(k) is not None]
    head = " ".join(bare[:1])
    rest = bare[1:] + named
    return f"{head} ({', '.join(rest)})" if head and rest else head or ", ".join(rest)


def refusal(differing: dict[str, list], count: int | None, limit: int | None) -> str:
    """The message of a figure that will not average or cannot show every setting at once."""
    described = "; ".join(f"{k} ({len(v)} values: {', '.join(_format(x) for x in v[:4])}"
                          f"{', ...' if len(v) > 4 else ''})" for k, v in differing.items())
    key, values = next(iter(differing.items()))
    too_many = f": {count} settings, more than this figure shows ({limit})" if count else ", which it would average"
    return f"the trials differ in {described}{too_many}; select with --where, e.g. --where {key}={_format(values[0])}"


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(map(_format, value))
    return "(none)" if value is None else str(value)


def _sort_key(value):
    return (value is None, str(type(value)), value if isinstance(value, (int, float, str)) else str(value))


# -- --where KEY=VALUE ----------------------------------------------------------------------------------
def parse_where(assignments: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """['mask.beta=1e-4', 'mask.beta=1e-3', 'model.size=big'] -> {key: [values]} (a repeated key: any of)."""
    selected: dict[str, list[str]] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise SelectionError(f"--where takes KEY=VALUE (e.g. mask.beta=1e-4), got {assignment!r}")
        selected.setdefault(key.strip(), []).append(value.strip())
    return selected


def select(tables: dict[str, pa.Table], where: dict[str, list[str]]) -> dict[str, pa.Table]:
    """Only the rows of trials whose recorded config matches every key (any of its values).
    A key no table has, or values no trial has, is an error naming what there is."""
    for key, wanted in where.items():
        seen = [v for t in tables.values() if key in config_keys(t) for v in _distinct(t, key)]
        if not seen:
            raise SelectionError(f"--where {key}: no trial records a config key {key!r}; "
                                 f"recorded keys: {', '.join(_all_keys(tables)[:40])}")
        if not any(_matches(v, text) for v in seen for text in wanted):
            raise SelectionError(f"--where {key}={'|'.join(wanted)}: no trial has that value; recorded values: "
                                 f"{', '.join(_format(v) for v in sorted(dict.fromkeys(seen), key=_sort_key))}")
        tables = {name: _keep(table, key, wanted) for name, table in tables.items()}
    return {name: table for name, table in tables.items() if table.num_rows}


def _distinct(table: pa.Table, key: str) -> list:
    return [_hashable(v) for v in trial_column(table, key)]


def trial_column(table: pa.Table, key: str) -> list:
    first = table.take(pc.index_in(pc.unique(table["trial_id"]), value_set=table["trial_id"]))
    return first.column(key).to_pylist()


def _keep(table: pa.Table, key: str, wanted: list[str]) -> pa.Table:
    if key not in config_keys(table):
        return table.slice(0, 0)
    settings = trial_settings(table.select(["trial_id", key]))
    ids = [t for t, config in settings.items() if any(_matches(config[key], text) for text in wanted)]
    return table.filter(pc.is_in(table["trial_id"], pa.array(ids, table["trial_id"].type)))


def _all_keys(tables) -> list[str]:
    return sorted({k for t in tables.values() for k in config_keys(t)})


def _matches(value, text: str) -> bool:
    """A recorded value against the text of --where: numbers numerically (1e-4 == 0.0001), tuples
    as comma-separated lists, booleans as true/false, "" for an empty or missing value."""
    if value is None or value == "":
        return text == ""
    if isinstance(value, tuple):
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        return len(parts) == len(value) and all(_matches(v, p.strip()) for v, p in zip(value, parts))
    if isinstance(value, bool):
        return text.lower() == str(value).lower()
    if isinstance(value, (int, float)):
        try:
            return math.isclose(float(value), float(text), rel_tol=1e-9, abs_tol=0.0)
        except ValueError:
            return False
    return str(value) == text
