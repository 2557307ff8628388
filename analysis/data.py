"""Read the Parquet tables of one or more results directories, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

# Columns every trial's rows carry; figures check the settings columns they group by themselves.
REQUIRED_COLUMNS = {
    "metrics": ["trial_id", "experiment", "seed", "sweep", "mask", "subtask", "accuracy"],
    "layers": ["trial_id", "experiment", "seed", "sweep", "mask", "layer", "total", "kept", "shared"],
    "operations": ["trial_id", "experiment", "seed", "sweep", "mask", "subtask", "operation", "fraction"],
    "histograms": ["trial_id", "experiment", "sweep", "mask", "bin_left", "bin_right", "count"],
    "output_removal": ["trial_id", "experiment", "seed", "sweep", "mask", "token", "removed_percent"],
}


class AnalysisInputError(ValueError):
    """The Parquet input cannot give what the analysis needs; the message says what is missing."""


def load_tables(results_dirs: list[Path], sweep: str | None = None) -> dict[str, pa.Table]:
    """table name -> rows of every trial under the directories (only `sweep`'s rows if given)."""
    tables = {}
    for name in _table_names(results_dirs):
        columns = REQUIRED_COLUMNS.get(name, ["trial_id", "experiment", "sweep"])
        folders = [folder for folder in (_table_folder(d, name) for d in results_dirs) if folder]
        if not folders:
            continue
        parts = []
        for filesystem, folder in folders:
            part = _read_table(folder, filesystem)
            missing = [c for c in columns if c not in part.column_names]
            if missing:
                raise AnalysisInputError(f"Parquet table {name!r} under {folder} lacks column(s) {missing}; "
                                         f"it has {part.column_names[:12]}")
            parts.append(part)
        tables[name] = pa.concat_tables(parts, promote_options="permissive")
    if not tables:
        raise AnalysisInputError(
            f"no Parquet tables under {', '.join(map(str, results_dirs))}: expected <dir>/parquet/<table>/ for tables "
            f"{', '.join(REQUIRED_COLUMNS)}; run `pipeline run` or `pipeline sweep` first")
    if sweep is not None:
        tables = _only_sweep(tables, sweep, results_dirs)
    return tables


def _read_table(folder: str, filesystem) -> pa.Table:
    """Every trial's file of one table, as one table. Column types are unified across trials, so an
    empty tuple setting in one trial (a list of nulls) reads beside a filled one (a list of ints)."""
    try:
        dataset = ds.dataset(folder, filesystem=filesystem, partitioning="hive")
    except (pa.ArrowInvalid, OSError):  # it reads one file's schema first: that one may be damaged
        _check_every_file(folder, filesystem)
        raise
    file_schemas = [_schema(fragment) for fragment in dataset.get_fragments()]
    in_files = {name for schema in file_schemas for name in schema.names}
    partition_columns = pa.schema([field for field in dataset.schema if field.name not in in_files])  # trial_id
    schema = pa.unify_schemas([*file_schemas, partition_columns], promote_options="permissive")
    return ds.dataset(folder, filesystem=filesystem, partitioning="hive", schema=schema).to_table()


def _schema(fragment) -> pa.Schema:
    """A Parquet file's schema, or an error naming the file when it is truncated or not Parquet."""
    try:
        return fragment.physical_schema
    except (pa.ArrowInvalid, OSError) as error:
        raise _damaged(fragment.path, error) from None


def _check_every_file(folder: str, filesystem) -> None:
    """Raise the error naming the first Parquet file under folder that does not read."""
    import pyarrow.parquet as pq

    for info in filesystem.get_file_info(pafs.FileSelector(folder, recursive=True)):
        if info.type == pafs.FileType.File and info.path.endswith(".parquet"):
            try:
                with filesystem.open_input_file(info.path) as source:
                    pq.read_metadata(source)
            except (pa.ArrowInvalid, OSError) as error:
                raise _damaged(info.path, error) from None


def _damaged(path: str, error: Exception) -> AnalysisInputError:
    return AnalysisInputError(f"damaged Parquet file {path} ({str(error).splitlines()[0][:200]}); `pipeline verify` "
                              "lists every damaged file, and running the trial's command again rewrites it")


def _table_names(results_dirs) -> list[str]:
    """Every table present under any of the directories (studies add tables of their own)."""
    names = set()
    for results_dir in results_dirs:
        found = _table_folder(results_dir, "")
        if found:
            filesystem, folder = found
            names |= {info.base_name for info in filesystem.get_file_info(pafs.FileSelector(folder))
                      if info.type == pafs.FileType.Directory}
    return sorted(names)


def _table_folder(results_dir, table: str):
    """(filesystem, path) of <results_dir>/parquet/<table> when it is a folder; results_dir may be a
    local path or a storage URI (s3://, gs://, file://...)."""
    location = str(results_dir)
    if "://" in location:
        filesystem, root = pafs.FileSystem.from_uri(location)
    else:
        filesystem, root = pafs.LocalFileSystem(), str(Path(location).resolve())
    folder = f"{root.rstrip('/')}/parquet/{table}".rstrip("/")
    return (filesystem, folder) if filesystem.get_file_info(folder).type == pafs.FileType.Directory else None


def trials_by_sweep(tables: dict[str, pa.Table]) -> dict[str, set[str]]:
    """sweep ("" for single runs of `pipeline run`) -> the experiments it has trials of."""
    found: dict[str, set[str]] = {}
    for table in tables.values():
        for sweep, experiment in zip(table.column("sweep").to_pylist(), table.column("experiment").to_pylist()):
            found.setdefault(sweep or "", set()).add(experiment)
    return found


def _only_sweep(tables: dict[str, pa.Table], sweep: str, results_dirs) -> dict[str, pa.Table]:
    present = sorted({s for t in tables.values() for s in t.column("sweep").to_pylist()})
    selected = {n: t.filter(pc.equal(t["sweep"], sweep)) for n, t in tables.items()}
    if not any(t.num_rows for t in selected.values()):
        raise AnalysisInputError(
            f"no results of sweep {sweep!r} under {', '.join(map(str, results_dirs))}; "
            f"it holds sweeps {[s or '(single runs)' for s in present]}")
    return selected
