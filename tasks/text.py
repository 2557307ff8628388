"""Text from local files: classification (a text and a label column) or next-token prediction (text only).

Files (paths relative to the data folder, or absolute): CSV (header row), JSON lines (.jsonl, one
object per line), Parquet, plain text (.txt: one example per line, next-token prediction only), or a
folder written by `datasets`' `save_to_disk` (its Arrow files are read with pyarrow; a DatasetDict's
splits are read one after the other).

Subtasks come from the data: `subtask_labels` keeps a subset of the labels per subtask
("animals=cat|dog;vehicles=car|bus"), `subtask_files` gives each subtask a file of its own
("a=a.csv;b=b.csv"). The split "all" holds every example: the network is (pre)trained on it and the
control mask trains on it; one mask trains per subtask, and every mask is evaluated on every split,
so the per-layer sharing table says which weights subtask A uses, which B uses, and how many both.

Each file's examples are divided once, by a fixed shuffle (`split_seed`), into a training part and
an evaluation part (`eval_fraction`); a label subset keeps that division, so no subtask evaluates on
an example the network was trained on.

Tokenizer: a folder holding one (written by `save_pretrained`, often the model's own folder), read
with transformers' AutoTokenizer. Batches are (input_ids [B, T], attention_mask [B, T], labels),
padded to the longest example of the batch; labels are [B] class ids, or [B, T] next tokens with
-100 where nothing is predicted (padding, the last token). Accuracy is the share of examples whose
class is right; for next-token prediction, the share of predicted tokens that are right (each
position with a target counts as one example, so `correct` returns one entry per such token).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from models.common import suggest

from tasks.registry import register_task

IGNORE = -100  # cross_entropy's ignore_index: a position without a next-token target
ALL = "all"
EVAL_CHUNK = 256
TABLE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet", ".txt")


class Batch(NamedTuple):
    """input_ids [B, T]; attention_mask [B, T] (1 at tokens); labels [B] classes or [B, T] next tokens."""

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor


@dataclasses.dataclass(frozen=True)
class TextOptions:
    data: str = ""  # the examples: CSV, JSON lines, Parquet, .txt or a datasets folder ("" with subtask_files)
    text_column: str = "text"
    label_column: str = "label"  # "" = next-token prediction on the text
    subtask_labels: str = ""  # "A=neg|pos;B=sport|news": each subtask keeps these labels
    subtask_files: str = ""  # "A=a.csv;B=b.csv": each subtask's examples from its own file
    tokenizer: str = ""  # folder holding the tokenizer (save_pretrained), e.g. the model's folder
    max_length: int = 64  # tokens per example; longer ones are cut
    eval_fraction: float = 0.2  # share of each file's examples held out for evaluation
    split_seed: int = 0  # the fixed shuffle that divides training and evaluation examples


@register_task("text")
class TextTask:
    """See the module docstring. Splits: "all" and one per subtask."""

    version = 1
    Options = TextOptions
    pretrain_split = ALL
    control_mask = ALL

    def __init__(self, options: TextOptions = TextOptions(), data_dir=None):
        self.options = options
        self.data_dir = Path(data_dir) if data_dir is not None else Path(".")
        if not 0 < options.eval_fraction < 1:
            raise ValueError(f"task_options.eval_fraction must be strictly between 0 and 1, got {options.eval_fraction}")
        self.classify = bool(options.label_column)
        self.tokenizer = load_tokenizer(self._path(options.tokenizer, "tokenizer"))
        rows = self._split_rows()  # split -> (training rows, evaluation rows)
        self.labels = sorted({row[1] for train, held in rows.values() for row in train + held}) if self.classify else []
        self._train = {split: self._encode(train) for split, (train, _) in rows.items()}
        self._eval = {split: self._encode(held) for split, (_, held) in rows.items()}
        subtasks = [s for s in rows if s != ALL]
        self.mask_splits = {**{s: s for s in subtasks}, ALL: ALL}
        self.eval_splits = (ALL, *subtasks)
        self.dims = {"vocab_size": len(self.tokenizer), "num_labels": len(self.labels),
                     "pad_token_id": self.tokenizer.pad_token_id, "max_length": options.max_length}

    # -- reading ---------------------------------------------------------------------------------------
    def _path(self, value: str, option: str) -> Path:
        if not value:
            raise ValueError(f"task_options.{option} is empty; give a path (relative to the data folder "
                             f"{self.data_dir} or absolute)")
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.data_dir / path

    def _split_rows(self) -> dict[str, tuple[list, list]]:
        options = self.options
        files = parse_pairs(options.subtask_files, "subtask_files")
        wanted = parse_pairs(options.subtask_labels, "subtask_labels")
        if files and wanted:
            raise ValueError("set task_options.subtask_labels or task_options.subtask_files, not both")
        if wanted and not self.classify:
            raise ValueError("task_options.subtask_labels needs a label column (task_options.label_column)")
        if not options.data and not files:
            raise ValueError("no examples: set task_options.data to a file (CSV, .jsonl, .parquet, .txt or a "
                             "datasets folder) or task_options.subtask_files")
        splits = {subtask: self._divided(self._read(self._path(path, "subtask_files"))) for subtask, path in files.items()}
        if options.data:
            everything = self._divided(self._read(self._path(options.data, "data")))
        else:
            everything = tuple(sum((part[i] for part in splits.values()), []) for i in (0, 1))
        known = {row[1] for part in everything for row in part}
        for subtask, labels in wanted.items():
            keep = set(labels.split("|"))
            unknown = sorted(keep - known)
            if unknown:
                raise ValueError(f"task_options.subtask_labels: subtask {subtask!r} names labels {unknown} that the "
                                 f"data does not have; its labels are {sorted(known)}")
            splits[subtask] = tuple([row for row in part if row[1] in keep] for part in everything)
        return {ALL: everything, **splits}

    def _read(self, path: Path) -> list[tuple[str, str | None]]:
        """-> [(text, label or None)] in file order."""
        records, columns = read_records(path)
        if path.suffix == ".txt":
            if self.classify:
                raise ValueError(f"{path} is plain text (no columns), but task_options.label_column="
                                 f"{self.options.label_column!r}; set label_column= (empty) for next-token prediction")
            return [(text, None) for text in records]
        needed = [self.options.text_column] + ([self.options.label_column] if self.classify else [])
        for column in needed:
            if column not in columns:
                option = "text_column" if column == self.options.text_column else "label_column"
                raise ValueError(f"{path} has no column {column!r}{suggest(column, columns)}; its columns are "
                                 f"{', '.join(map(str, columns))}: set task_options.{option} to one of them")
        return [(str(r[self.options.text_column]), str(r[self.options.label_column]) if self.classify else None)
                for r in records]

    def _divided(self, rows: list) -> tuple[list, list]:
        """(training rows, evaluation rows) by the fixed shuffle; both must be non-empty."""
        order = list(range(len(rows)))
        random.Random(self.options.split_seed).shuffle(order)
        held = max(1, round(len(rows) * self.options.eval_fraction))
        if len(rows) < 2:
            raise ValueError(f"a data file holds {len(rows)} example(s); it needs at least 2 (training and evaluation)")
        return [rows[i] for i in sorted(order[held:])], [rows[i] for i in sorted(order[:held])]

    def _encode(self, rows: list) -> tuple[list[list[int]], Tensor | None]:
        """-> (token ids per example, [N] class ids or None)."""
        encoded = self.tokenizer([text for text, _ in rows], truncation=True, max_length=self.options.max_length)
        ids = [list(x) for x in encoded["input_ids"]]
        labels = torch.tensor([self.labels.index(label) for _, label in rows]) if self.classify else None
        return ids, labels

    # -- the Task protocol -------------------------------------------------------------------------------
    def sample(self, split: str, batch_size: int, generator: torch.Generator, device="cpu") -> Batch:
        ids, labels = self._train[self._check(split)]
        chosen = torch.randint(0, len(ids), (batch_size,), generator=generator, device=generator.device).tolist()
        return self._batch([ids[i] for i in chosen], labels[chosen] if labels is not None else None, device)

    def eval_batches(self, split: str, size: int, device="cpu") -> list[Batch]:
        ids, labels = self._eval[self._check(split)]
        count = min(size, len(ids))
        return [self._batch(ids[start:start + EVAL_CHUNK][:count - start],
                            labels[start:min(start + EVAL_CHUNK, count)] if labels is not None else None, device)
                for start in range(0, count, EVAL_CHUNK)]

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        logits = model(batch.input_ids, batch.attention_mask)
        return nn.functional.cross_entropy(logits.flatten(0, -2), batch.labels.flatten(), ignore_index=IGNORE)

    def correct(self, model: nn.Module, batch: Batch) -> Tensor:
        predicted = model(batch.input_ids, batch.attention_mask).argmax(-1)
        if self.classify:
            return predicted == batch.labels  # [B]
        return (predicted == batch.labels)[batch.labels != IGNORE]  # [tokens with a target]

    def _check(self, split: str) -> str:
        if split not in self._train:
            raise ValueError(f"the text task has no split {split!r}{suggest(split, self._train)}; "
                             f"its splits are {', '.join(self._train)}")
        return split

    def _batch(self, ids: list[list[int]], labels: Tensor | None, device) -> Batch:
        """Right-padded to the longest example."""
        length = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([x + [pad] * (length - len(x)) for x in ids])
        attention = torch.tensor([[1] * len(x) + [0] * (length - len(x)) for x in ids])
        if labels is None:  # next token at each position where there is one
            labels = torch.full_like(input_ids, IGNORE)
            labels[:, :-1] = torch.where(attention[:, 1:].bool(), input_ids[:, 1:], IGNORE)
        return Batch(input_ids.to(device), attention.to(device), labels.to(device))


# -- files ---------------------------------------------------------------------------------------------
def parse_pairs(text: str, option: str) -> dict[str, str]:
    """"a=x;b=y" -> {"a": "x", "b": "y"}; subtask names are unique and not "all"."""
    pairs = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, separator, value = (s.strip() for s in part.partition("="))
        if not separator or not name or not value:
            raise ValueError(f"task_options.{option} expects name=value entries separated by ';', got {part!r}")
        if name == ALL or name in pairs:
            raise ValueError(f"task_options.{option}: subtask name {name!r} is reserved or repeated")
        pairs[name] = value
    return pairs


def read_records(path: Path) -> tuple[list, list[str]]:
    """-> (records, column names): dicts for tables, strings for .txt. Errors name the file."""
    if not path.exists():
        raise FileNotFoundError(f"no data at {path}")
    if path.is_dir():
        return _read_saved_dataset(path)
    if path.suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{path}: unknown data format; use one of {', '.join(TABLE_SUFFIXES)} or a datasets folder")
    if path.suffix == ".txt":
        return [line for line in path.read_text().splitlines() if line.strip()], []
    if path.suffix == ".csv":
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            return list(reader), list(reader.fieldnames or [])
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return table.to_pylist(), table.column_names
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    columns = list(dict.fromkeys(key for record in records for key in record))
    return records, columns


def _read_saved_dataset(folder: Path) -> tuple[list, list[str]]:
    """A `datasets` save_to_disk folder: a Dataset (state.json + Arrow stream files) or a DatasetDict
    (dataset_dict.json + one such folder per split, read in its order)."""
    import pyarrow as pa

    if (folder / "dataset_dict.json").exists():
        splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        parts = [_read_saved_dataset(folder / split) for split in splits]
        return [r for records, _ in parts for r in records], parts[0][1] if parts else []
    if not (folder / "state.json").exists():
        raise ValueError(f"{folder} is a folder but not one written by datasets' save_to_disk (no state.json or "
                         "dataset_dict.json)")
    files = [entry["filename"] for entry in json.loads((folder / "state.json").read_text())["_data_files"]]
    tables = [pa.ipc.open_stream(pa.memory_map(str(folder / name))).read_all() for name in files]
    table = pa.concat_tables(tables)
    return table.to_pylist(), table.column_names


def load_tokenizer(folder: Path):
    """The tokenizer saved in `folder`, with a padding token (its end token where it has no padding token)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ImportError("the text task needs the transformers library: pip install -e \".[hf]\"") from None
    if not folder.is_dir():
        raise FileNotFoundError(f"no tokenizer folder at {folder}; give task_options.tokenizer a folder written by "
                                "save_pretrained (the model's folder holds one)")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"the tokenizer in {folder} has neither a padding nor an end token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
