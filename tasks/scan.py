"""SCAN (Lake & Baroni, 2018): commands ("jump twice") to actions ("I_JUMP I_JUMP"); paper Section 4
and Appendix C.6.1.

Splits: simple (IID), length, addprim_jump, addprim_turn_left. `sample(split)` draws from the split's
train file, `eval_batches(split)` reads its test file. The files are the upstream text files
(`IN: ... OUT: ...`) under <data_dir>/SCAN/; missing ones are downloaded from the upstream repository
and every file's md5 is checked, so a truncated or corrupt file is an error, never a partial dataset.

Encoding: source = command words + end token, right-padded; target_in = start token + actions,
target_out = actions + end token, right-padded. Token 0 is padding in both vocabularies.

What the task asks of a model (both `lstm-seq2seq` and `transformer` provide it):
  model(source [B, S], target_in [B, T], source_padding [B, S] bool, teacher_forcing=bool)
  -> logits [B, T, output vocabulary]; source_padding is True at padding (positional, so a masked
  model splits it with the batch); teacher_forcing=False reads only the start token and feeds back
  the model's own argmax;
  model.output_layer: the nn.Linear whose row i scores output token i (for Fig. 4b).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from models.common import atomic_path, file_hash
from models.common import suggest
from tasks.registry import DataError, register_task

log = logging.getLogger(__name__)

UPSTREAM_URL = "https://raw.githubusercontent.com/brendenlake/SCAN/master/"
SPLITS = ("simple", "length", "addprim_jump", "addprim_turn_left")
# (split, part) -> (path under SCAN/ and under the upstream URL, md5 of the upstream file)
FILES = {
    ("simple", "train"): ("simple_split/tasks_train_simple.txt", "dcc93c20625b2d3ffbef685396edc959"),
    ("simple", "test"): ("simple_split/tasks_test_simple.txt", "4986284a1ed140efe3238094767eabc7"),
    ("length", "train"): ("length_split/tasks_train_length.txt", "9bb7aee6f3ad462c3d51af01bcfe937b"),
    ("length", "test"): ("length_split/tasks_test_length.txt", "ac3bd14b5a1f1154ee25c797387e0c9a"),
    ("addprim_jump", "train"): ("add_prim_split/tasks_train_addprim_jump.txt", "29a58625e8b2e3b628dfb73b4890dee0"),
    ("addprim_jump", "test"): ("add_prim_split/tasks_test_addprim_jump.txt", "8350ed0a3aaaf425bed3cf8cd4b9eca7"),
    ("addprim_turn_left", "train"): ("add_prim_split/tasks_train_addprim_turn_left.txt",
                                     "9270b654ef282b9ae27dae9c433a5770"),
    ("addprim_turn_left", "test"): ("add_prim_split/tasks_test_addprim_turn_left.txt",
                                    "c8d54ac01e4b3fe9162e5c4588d2707c"),
}

PAD = 0
INPUT_TOKENS = ("<pad>", "<end>", "jump", "walk", "run", "look", "turn", "left", "right", "around", "opposite",
                "twice", "thrice", "and", "after")
OUTPUT_TOKENS = ("<pad>", "<start>", "<end>", "I_JUMP", "I_WALK", "I_RUN", "I_LOOK", "I_TURN_LEFT", "I_TURN_RIGHT")
INPUT_END = INPUT_TOKENS.index("<end>")
# words and actions the files may hold (the special tokens never appear in them)
INPUT_IDS = {token: i for i, token in enumerate(INPUT_TOKENS) if not token.startswith("<")}
OUTPUT_IDS = {token: i for i, token in enumerate(OUTPUT_TOKENS) if not token.startswith("<")}
START, END = OUTPUT_TOKENS.index("<start>"), OUTPUT_TOKENS.index("<end>")
VALIDATION_SEED = 2021  # the same evaluation subset for every trial when eval_size is below a test set's size
EVAL_CHUNK = 512


class ScanDataError(DataError):
    """A SCAN file is missing and cannot be downloaded, or its md5 is not the upstream one."""


class Batch(NamedTuple):
    """source [B, S]; target_in [B, T] (start + actions); target_out [B, T] (actions + end, PAD after);
    teacher_forcing: whether the decoder reads target_in (True) or its own predictions."""

    source: Tensor
    target_in: Tensor
    target_out: Tensor
    teacher_forcing: bool


class Examples(NamedTuple):
    """One file, encoded: sources [N, S_max], targets [N, T_max] (actions + end), their lengths [N]."""

    sources: Tensor
    targets: Tensor
    source_lengths: Tensor
    target_lengths: Tensor


# -- files -----------------------------------------------------------------------------------------
def file_md5(path: Path) -> str:
    return file_hash(path, "md5")


def ensure_files(data_dir: Path, base_url: str = UPSTREAM_URL) -> None:
    """Every SCAN file under data_dir/SCAN/ with its upstream md5; missing ones are downloaded."""
    for relative, expected in FILES.values():
        path = Path(data_dir) / "SCAN" / relative
        if not path.exists():
            download(base_url + relative, path, expected)
        actual = file_md5(path)
        if actual != expected:
            raise ScanDataError(f"SCAN file {path} has md5 {actual}, expected {expected}: it is truncated or corrupt; "
                                f"delete it to download it again from {base_url + relative}")


def download(url: str, path: Path, expected_md5: str) -> None:
    """Fetch `url` to `path`, written atomically and only if its md5 is `expected_md5`."""
    log.info("downloading %s to %s", url, path)
    # Fetched to a temporary file outside the data folder first: nothing is created there (not even
    # a folder) unless the download succeeds with the right md5.
    with tempfile.NamedTemporaryFile(prefix="scan-", suffix=".download") as fetched:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    fetched.write(block)
            fetched.flush()
        except (urllib.error.URLError, OSError) as error:
            raise ScanDataError(f"SCAN file {path} is missing and the download from {url} failed ({error}); "
                                "put the upstream files under <data dir>/SCAN/ (see --data-dir)") from None
        actual = file_md5(Path(fetched.name))
        if actual != expected_md5:
            raise ScanDataError(f"SCAN file {path.name} downloaded from {url} has md5 {actual}, expected "
                                f"{expected_md5} (truncated or corrupt download); nothing was written")
        with atomic_path(path) as tmp:
            shutil.copyfile(fetched.name, tmp)


def read_examples(path: Path) -> list[tuple[list[str], list[str]]]:
    """`IN: jump twice OUT: I_JUMP I_JUMP` lines -> [(command words, actions)]."""
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        command, separator, actions = line.removeprefix("IN:").partition(" OUT:")
        if not line.startswith("IN:") or not separator:
            raise ScanDataError(f"{path}:{number} is not 'IN: <command> OUT: <actions>': {line[:80]!r}")
        examples.append((command.split(), actions.split()))
    return examples


def encode(examples: list[tuple[list[str], list[str]]]) -> Examples:
    """Words and actions -> padded token ids (end tokens appended)."""
    sources = [_token_ids(INPUT_IDS, words) + [INPUT_END] for words, _ in examples]
    targets = [_token_ids(OUTPUT_IDS, actions) + [END] for _, actions in examples]
    return Examples(_padded(sources), _padded(targets), torch.tensor([len(s) for s in sources]),
                    torch.tensor([len(t) for t in targets]))


def _token_ids(vocabulary: dict[str, int], tokens: list[str]) -> list[int]:
    try:
        return [vocabulary[token] for token in tokens]
    except KeyError as error:
        token = error.args[0]
        raise ScanDataError(f"unknown SCAN token {token!r}{suggest(token, vocabulary)}; known: {', '.join(vocabulary)}")


def _padded(sequences: list[list[int]]) -> Tensor:
    longest = max(map(len, sequences))
    return torch.tensor([sequence + [PAD] * (longest - len(sequence)) for sequence in sequences], dtype=torch.long)


def make_batch(examples: Examples, indices: Tensor, teacher_forcing: bool, device) -> Batch:
    """The examples at `indices`, padded to the batch's longest source and target."""
    source = examples.sources[indices, : int(examples.source_lengths[indices].max())]
    target_out = examples.targets[indices, : int(examples.target_lengths[indices].max())]
    target_in = torch.cat([torch.full_like(target_out[:, :1], START), target_out[:, :-1]], 1)
    return Batch(source.to(device), target_in.to(device), target_out.to(device), teacher_forcing)


# -- the task ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ScanOptions:
    teacher_forcing: float = 0.5  # probability that a training batch is teacher forced (paper: LSTM 0.5, Transformer 1)


@register_task("scan")
class ScanTask:
    """Pretrain on simple; one mask per split's train set. The "simple" mask is trained on the
    pretraining distribution, so it is the control mask (the paper's "masks trained on the full
    problem", Fig. 4a) and is left out of the sharing comparisons."""

    version = 1
    Options = ScanOptions
    pretrain_split = "simple"
    mask_splits = {split: split for split in SPLITS}
    control_mask = "simple"
    eval_splits = SPLITS
    dims = {"input_vocab": len(INPUT_TOKENS), "output_vocab": len(OUTPUT_TOKENS)}

    def __init__(self, options: ScanOptions = ScanOptions(), data_dir: Path | None = None):
        if not 0.0 <= options.teacher_forcing <= 1.0:
            raise ValueError(f"task_options.teacher_forcing is a probability in [0, 1], got {options.teacher_forcing}")
        if data_dir is None:
            raise ValueError("the scan task needs a data folder (--data-dir) holding or receiving SCAN/")
        self.options = options
        self.data_dir = Path(data_dir)
        ensure_files(self.data_dir)

    @functools.cache
    def examples(self, split: str, part: str) -> Examples:
        if split not in SPLITS:
            raise ValueError(f"SCAN has no split {split!r}{suggest(split, SPLITS)}; choose one of {', '.join(SPLITS)}")
        return encode(read_examples(self.data_dir / "SCAN" / FILES[split, part][0]))

    def sample(self, split: str, batch_size: int, generator: torch.Generator, device="cpu") -> Batch:
        """Uniformly with replacement from the split's train file; the teacher-forcing coin comes
        from `generator` too, so a resumed run draws the same batches."""
        examples = self.examples(split, "train")
        indices = torch.randint(len(examples.sources), (batch_size,), generator=generator, device=generator.device)
        coin = torch.rand((), generator=generator, device=generator.device)
        return make_batch(examples, indices.cpu(), bool(coin < self.options.teacher_forcing), device)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """Mean cross-entropy over the real target tokens (the end token included, padding not)."""
        logits = model(batch.source, batch.target_in, batch.source == PAD, teacher_forcing=batch.teacher_forcing)
        return nn.functional.cross_entropy(logits.flatten(0, 1), batch.target_out.flatten(), ignore_index=PAD)

    def eval_batches(self, split: str, size: int, device="cpu") -> list[Batch]:
        """The split's test set (a fixed random subset of `size` when it has more), in batches of
        similar target length."""
        examples = self.examples(split, "test")
        count = len(examples.sources)
        chosen = torch.arange(count)
        if size < count:
            chosen = torch.randperm(count, generator=torch.Generator().manual_seed(VALIDATION_SEED))[:size]
        chosen = chosen[torch.argsort(examples.target_lengths[chosen], stable=True)]
        return [make_batch(examples, part, False, device) for part in chosen.split(EVAL_CHUNK)]

    @torch.no_grad()
    def correct(self, model: nn.Module, batch: Batch) -> Tensor:
        """[B] bool: greedy decoding without teacher forcing gets every action and the end token right."""
        predicted = model(batch.source, batch.target_in, batch.source == PAD, teacher_forcing=False).argmax(-1)
        return ((predicted == batch.target_out) | (batch.target_out == PAD)).all(1)

    def mask_rows(self, model: nn.Module, masks: dict) -> dict[str, list[dict]]:
        """Fig. 4b: per mask and output token, the share of the output layer's weights into that
        token (its row of output_layer.weight) that the mask removes."""
        name = output_layer_weight(model)
        rows = []
        for mask_name, mask in masks.items():
            if name not in mask.tensors:
                continue
            for token_id, token in enumerate(OUTPUT_TOKENS):
                if token_id in (PAD, START):  # never a target: their rows are untrained
                    continue
                keep = mask.tensors[name][token_id]
                removed = int((~keep).sum())
                rows.append({"mask": mask_name, "token": token, "weights": keep.numel(), "removed": removed,
                             "removed_percent": 100.0 * removed / keep.numel()})
        return {"output_removal": rows}


def output_layer_weight(model: nn.Module) -> str:
    """The parameter name of model.output_layer's weight (e.g. "output_layer.weight")."""
    layer = getattr(model, "output_layer", None)
    for module_name, module in model.named_modules():
        if layer is not None and module is layer:
            return f"{module_name}.weight" if module_name else "weight"
    raise ValueError(f"{type(model).__name__} has no `output_layer` module; the scan task needs one (an nn.Linear "
                     "whose row i scores output token i) to count the weights a mask removes per token")
