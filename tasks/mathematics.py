"""Mathematics Dataset (Saxton et al. 2019), one module at a time, re-split by difficulty (paper
Section 4, Appendix C.6.2).

Data: the v1.0 layout `<regime>/<module>.txt`, question and answer lines alternating; only
train-easy, train-medium and train-hard are read (the official interpolate/extrapolate sets have no
difficulty and are ignored). Re-split as the paper does: every question is kept once, at its first
appearance in the order easy, medium, hard (so no example appears twice anywhere); then each
difficulty's examples are shuffled with a fixed seed, the first `validation_size` become its
validation split and the rest its training split.

Splits: "train-easy", "train-medium", "train-hard", "train-all" (the three together: the IID set),
"valid-easy", "valid-medium", "valid-hard". Characters are tokens (printable ASCII plus padding,
start and end), one vocabulary for questions and answers, so the embedding can be tied.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from models.common import suggest
from tasks.registry import DataError, register_task

log = logging.getLogger(__name__)

MODULES = ("arithmetic__add_or_sub", "algebra__linear_1d", "calculus__differentiate", "comparison__sort",
           "polynomials__collect")
DIFFICULTIES = ("easy", "medium", "hard")
PAD, START, END = 0, 1, 2
CHARACTERS = "".join(chr(c) for c in range(32, 127))  # the 95 printable ASCII characters
VOCABULARY_SIZE = 3 + len(CHARACTERS)
EVAL_CHUNK = 500


class Batch(NamedTuple):
    """source [B, S] question tokens; target_input [B, T] START + answer; target_output [B, T]
    answer + END (PAD after); source_padding [B, S] bool, True at padding."""

    source: Tensor
    target_input: Tensor
    target_output: Tensor
    source_padding: Tensor


@dataclasses.dataclass(frozen=True)
class MathematicsOptions:
    module: str = "algebra__linear_1d"
    validation_size: int = 10_000  # per difficulty (the paper's 10k); small for the 1,000-example sample
    split_seed: int = 0  # the re-split's shuffle: the same validation sets for every trial seed
    subfolder: str = "mathematics_dataset-v1.0"  # under the data folder; "" or absent: the data folder itself


# -- reading and re-splitting -------------------------------------------------------------------------
def data_folder(data_dir: Path, subfolder: str) -> Path:
    """The folder holding train-easy/ etc.: <data_dir>/<subfolder>, else <data_dir> itself."""
    for candidate in (data_dir / subfolder, data_dir):
        if (candidate / "train-easy").is_dir():
            return candidate
    raise FileNotFoundError(
        f"no Mathematics Dataset under {data_dir}: expected {data_dir / subfolder}/train-easy/<module>.txt (or "
        f"train-easy/ directly in {data_dir}). Make it with `pipeline data mathematics --out {data_dir / subfolder}`, "
        "unpack mathematics_dataset-v1.0.tar.gz there, or point --data-dir at the folder holding train-easy/")


def read_examples(path: Path) -> list[tuple[str, str]]:
    """A v1.0 file (question line, answer line, ...) -> [(question, answer)]. A damaged file (not
    UTF-8 text, an odd number of lines, empty) is a DataError naming it."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}): the file is damaged; "
                        "make or unpack the dataset again") from None
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 2 or not lines:
        raise DataError(f"{path} has an odd number of lines ({len(lines)}); v1.0 files alternate question and answer "
                        "(the file is damaged or truncated: make or unpack the dataset again)")
    return list(zip(lines[0::2], lines[1::2]))


def resplit(examples: dict[str, list[tuple[str, str]]], validation_size: int, seed: int
            ) -> dict[str, list[tuple[str, str]]]:
    """{difficulty: [(q, a)]} -> {"train-<d>", "valid-<d>": [(q, a)]}: each question once, at its first
    appearance (easy, then medium, then hard); `validation_size` shuffled examples per difficulty."""
    seen: set[str] = set()
    splits = {}
    for difficulty in DIFFICULTIES:
        unique = []
        for question, answer in examples[difficulty]:
            if question not in seen:
                seen.add(question)
                unique.append((question, answer))
        if len(unique) <= validation_size:
            raise ValueError(f"train-{difficulty} has {len(unique)} distinct new questions, not more than "
                             f"task_options.validation_size={validation_size}; use a smaller validation size "
                             "(e.g. 100 for the 1,000-example sample)")
        random.Random(f"{seed}:{difficulty}").shuffle(unique)
        splits[f"valid-{difficulty}"] = unique[:validation_size]
        splits[f"train-{difficulty}"] = unique[validation_size:]
    return splits


def encode(texts: list[str], end: bool) -> tuple[Tensor, Tensor]:
    """Strings -> ([N, L] uint8 tokens padded with PAD, END appended if `end`; [N] lengths)."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    codes = np.frombuffer("".join(texts).encode("utf-8"), dtype=np.uint8)
    if len(codes) != lengths.sum() or (codes.size and (codes.min() < 32 or codes.max() > 126)):
        bad = next(t for t in texts if any(not 32 <= ord(c) <= 126 for c in t))
        raise ValueError(f"{bad!r} has a character outside printable ASCII, which the vocabulary lacks")
    tokens = np.full((len(texts), int(lengths.max()) + end), PAD, dtype=np.uint8)
    rows = np.repeat(np.arange(len(texts)), lengths)
    columns = np.arange(len(codes)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    tokens[rows, columns] = codes - 32 + 3
    if end:
        tokens[np.arange(len(texts)), lengths] = END
    return torch.from_numpy(tokens), torch.from_numpy(lengths + end)


def decode(tokens: Tensor) -> str:
    """[L] tokens -> text up to the first END (PAD and START dropped)."""
    out = []
    for token in tokens.tolist():
        if token == END:
            break
        if token >= 3:
            out.append(CHARACTERS[token - 3])
    return "".join(out)


class EncodedSplit(NamedTuple):
    questions: Tensor  # [N, Lq] uint8
    question_lengths: Tensor  # [N]
    answers: Tensor  # [N, La] uint8, END included
    answer_lengths: Tensor  # [N]


def encode_split(examples: list[tuple[str, str]]) -> EncodedSplit:
    questions, question_lengths = encode([q for q, _ in examples], end=False)
    answers, answer_lengths = encode([a for _, a in examples], end=True)
    return EncodedSplit(questions, question_lengths, answers, answer_lengths)


@functools.lru_cache(maxsize=4)
def load_splits(folder: Path, module: str, validation_size: int, seed: int) -> dict[str, EncodedSplit]:
    """Every split of `module`, read, re-split and encoded once per process."""
    examples = {d: read_examples(folder / f"train-{d}" / f"{module}.txt") for d in DIFFICULTIES}
    splits = resplit(examples, validation_size, seed)
    splits["train-all"] = [e for d in DIFFICULTIES for e in splits[f"train-{d}"]]
    log.info("%s: %s", module, ", ".join(f"{name} {len(rows)}" for name, rows in splits.items()))
    return {name: encode_split(rows) for name, rows in splits.items()}


def make_batch(split: EncodedSplit, indices: Tensor, device) -> Batch:
    """Examples `indices` (CPU) of `split`, trimmed to the longest of them, on `device`."""
    question_length = int(split.question_lengths[indices].max())
    answer_length = int(split.answer_lengths[indices].max())
    source = split.questions[indices, :question_length].long()
    answers = split.answers[indices, :answer_length].long()
    target_input = torch.cat([torch.full_like(answers[:, :1], START), answers[:, :-1]], 1)
    target_input[target_input == END] = PAD  # END only ever appears as a target
    batch = Batch(source, target_input, answers, source == PAD)
    return Batch(*(t.to(device) for t in batch))


# -- the task -----------------------------------------------------------------------------------------
@register_task("mathematics")
class MathematicsTask:
    """One module of the Mathematics Dataset as a character-level sequence-to-sequence task."""

    version = 1
    Options = MathematicsOptions
    dims = {"input_vocab": VOCABULARY_SIZE, "output_vocab": VOCABULARY_SIZE}
    pretrain_split = "train-all"
    mask_splits = {"iid": "train-all", "easy": "train-easy"}  # mask name -> split it trains on
    control_mask = "iid"
    eval_splits = ("valid-easy", "valid-medium", "valid-hard")

    def __init__(self, options: MathematicsOptions = MathematicsOptions(), data_dir: Path | None = None):
        if options.module not in MODULES:
            raise ValueError(f"task_options.module={options.module!r}{suggest(options.module, MODULES)} is not one of "
                             f"the paper's modules: {', '.join(MODULES)}")
        if options.validation_size < 1:
            raise ValueError(f"task_options.validation_size must be >= 1, got {options.validation_size}")
        self.options = options
        self.folder = data_folder(Path(data_dir or "."), options.subfolder)
        missing = [d for d in DIFFICULTIES if not (self.folder / f"train-{d}" / f"{options.module}.txt").is_file()]
        if missing:
            raise FileNotFoundError(f"{self.folder} lacks train-{{{','.join(missing)}}}/{options.module}.txt")
        for difficulty in DIFFICULTIES:  # a damaged file fails here, before any work, not at the first batch
            read_examples(self.folder / f"train-{difficulty}" / f"{options.module}.txt")

    def splits(self) -> dict[str, EncodedSplit]:
        return load_splits(self.folder.resolve(), self.options.module, self.options.validation_size,
                           self.options.split_seed)

    def sample(self, split: str, batch_size: int, generator: torch.Generator, device="cpu") -> Batch:
        data = self._split(split)
        indices = torch.randint(len(data.questions), (batch_size,), generator=generator, device=generator.device)
        return make_batch(data, indices.cpu(), device)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """Teacher forced: mean cross-entropy over answer characters and END."""
        logits = model(batch.source, batch.target_input, batch.source_padding)  # [B, T, V]
        return nn.functional.cross_entropy(logits.flatten(0, 1), batch.target_output.flatten(), ignore_index=PAD)

    def eval_batches(self, split: str, size: int, device="cpu") -> list[Batch]:
        """The first `size` examples of a validation split (already shuffled), in chunks."""
        data = self._split(split)
        indices = torch.arange(min(size, len(data.questions)))
        return [make_batch(data, chunk, device) for chunk in indices.split(EVAL_CHUNK)]

    def correct(self, model: nn.Module, batch: Batch) -> Tensor:
        """[B] bool: greedy decoding gives the whole answer and then END."""
        steps = batch.target_output.shape[1]
        predicted = greedy_decode(model, batch.source, START, steps, batch.source_padding)  # [B, T]
        scored = batch.target_output != PAD
        return ((predicted == batch.target_output) | ~scored).all(1)

    def _split(self, split: str) -> EncodedSplit:
        splits = self.splits()
        if split not in splits:
            raise ValueError(f"the mathematics task has no split {split!r}{suggest(split, splits)}; "
                             f"choose one of {', '.join(splits)}")
        return splits[split]


@torch.no_grad()
def greedy_decode(model: nn.Module, source: Tensor, start_token: int, steps: int, *inputs: Tensor) -> Tensor:
    """Decode without teacher forcing: [B, S] source -> [B, steps] predicted tokens.

    Through the model's forward alone, as `loss` calls it: model(source, target_prefix, *inputs) ->
    [B, T, vocab] logits, whose output at t depends on the prefix up to t only (a causal decoder); the
    model is re-run on the growing prefix. `inputs` are passed on unchanged (the source padding mask).
    """
    prefix = torch.full((source.shape[0], 1), start_token, dtype=torch.long, device=source.device)
    for _ in range(steps):
        next_token = model(source, prefix, *inputs)[:, -1].argmax(-1, keepdim=True)
        prefix = torch.cat([prefix, next_token], 1)
    return prefix[:, 1:]
