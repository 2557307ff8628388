"""Shared encoding of the arithmetic tasks: two-digit numbers as two 10-way one-hots, digit-wise
loss and scoring, and how examples are presented to a feed-forward or recurrent network."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor, nn

from models.common import suggest

IGNORE = -100  # target value of a digit that a subtask does not score (cross_entropy's ignore_index)
VALIDATION_SEED = 2021  # the same fixed validation sets for every trial
EVAL_CHUNK = 1024


class Batch(NamedTuple):
    """inputs [B, input_size] float; targets [B, D] digit classes (IGNORE where unscored);
    operands [B, n] the integers the example was made from."""

    inputs: Tensor
    targets: Tensor
    operands: Tensor


def one_hot_number(numbers: Tensor) -> Tensor:
    """[B] integers in 0..99 -> [B, 20]: tens digit one-hot, then ones digit one-hot."""
    return torch.cat([torch.nn.functional.one_hot(numbers // 10, 10), torch.nn.functional.one_hot(numbers % 10, 10)], 1)


def digits(numbers: Tensor) -> Tensor:
    """[B] integers in 0..99 -> [B, 2] (tens, ones)."""
    return torch.stack([numbers // 10, numbers % 10], 1)


def numbers_from_logits(logits: Tensor) -> Tensor:
    """[B, 2k*10] digit logits -> [B, k] predicted two-digit numbers."""
    predicted = logits.view(logits.shape[0], -1, 10).argmax(-1)
    return predicted[:, 0::2] * 10 + predicted[:, 1::2]


def digit_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over scored digits: logits [B, D*10], targets [B, D]."""
    return torch.nn.functional.cross_entropy(logits.reshape(-1, 10), targets.reshape(-1), ignore_index=IGNORE)


def correct(logits: Tensor, targets: Tensor) -> Tensor:
    """[B] bool: every scored digit right."""
    predicted = logits.view(logits.shape[0], -1, 10).argmax(-1)
    return ((predicted == targets) | (targets == IGNORE)).all(1)


def random_numbers(batch_size: int, count: int, generator: torch.Generator, device) -> Tensor:
    """[B, count] uniform integers in 0..99."""
    return torch.randint(0, 100, (batch_size, count), generator=generator, device=device)


# -- how examples reach the model --------------------------------------------------------------------
def _direct(model: nn.Module, inputs: Tensor) -> Tensor:
    """[B, in] -> [B, out]."""
    return model(inputs)


def _repeated(steps: int):
    def present(model: nn.Module, inputs: Tensor) -> Tensor:
        """The same input for `steps` steps, output read at the last: [B, in] -> [B, out]."""
        return model(inputs.unsqueeze(1).expand(-1, steps, -1))[:, -1]

    return present


def _pair_inputs(inputs: Tensor) -> tuple[Tensor, Tensor]:
    """[B, 80] -> ([B, 80] with pair 2 zeroed, [B, 80] with pair 1 zeroed)."""
    half = inputs.shape[1] // 2
    first, second = inputs.clone(), inputs.clone()
    first[:, half:] = 0
    second[:, :half] = 0
    return first, second


def _two_passes(model: nn.Module, inputs: Tensor) -> Tensor:
    """FNN double addition: one pass per pair, the other zeroed; [B, 80] -> [B, 40].

    Both passes go through one call as [B, 2, 80], so an example sees the same mask sample twice.
    """
    outputs = model(torch.stack(_pair_inputs(inputs), 1))  # [B, 2, 40]
    half = outputs.shape[-1] // 2
    return torch.cat([outputs[:, 0, :half], outputs[:, 1, half:]], 1)


def _sequential_pairs(model: nn.Module, inputs: Tensor) -> Tensor:
    """LSTM: pair 1 for steps 1-3 (read at 3), then pair 2 for steps 4-6 (read at 6)."""
    first, second = _pair_inputs(inputs)
    sequence = torch.cat([first.unsqueeze(1).expand(-1, 3, -1), second.unsqueeze(1).expand(-1, 3, -1)], 1)
    outputs = model(sequence)  # [B, 6, 40]
    half = outputs.shape[-1] // 2
    return torch.cat([outputs[:, 2, :half], outputs[:, 5, half:]], 1)


PRESENTATIONS = {
    "direct": _direct,
    "repeat3": _repeated(3),
    "repeat6": _repeated(6),
    "two_passes": _two_passes,
    "sequential_pairs": _sequential_pairs,
}


@dataclasses.dataclass(frozen=True)
class ArithmeticOptions:
    presentation: str = "direct"  # how examples reach the model: a key of PRESENTATIONS


class ArithmeticTask:
    """What addmul and double_add share: generated data, digit loss, fixed validation sets.

    A subclass sets version, input_size, output_size, subtasks and draw(split, B, generator, device).
    """

    Options = ArithmeticOptions
    subtasks: tuple[str, ...] = ()
    pretrain_split = "full"
    control_mask = "full"  # trained on the whole task: the check of α (Appendix C.2)

    def __init__(self, options: ArithmeticOptions = ArithmeticOptions(), data_dir=None):
        if options.presentation not in PRESENTATIONS:
            raise ValueError(f"unknown presentation {options.presentation!r}{suggest(options.presentation, PRESENTATIONS)}"
                             f"; choose one of {', '.join(PRESENTATIONS)}")
        self.present = PRESENTATIONS[options.presentation]
        self.dims = {"input_size": self.input_size, "output_size": self.output_size}
        self.mask_splits = {**{s: s for s in self.subtasks}, self.control_mask: "full"}
        self.eval_splits = ("full", *self.subtasks)

    def sample(self, split: str, batch_size: int, generator: torch.Generator, device="cpu") -> Batch:
        if split not in ("full", *self.subtasks):
            raise ValueError(f"{type(self).__name__} has no subtask {split!r}; choose one of full, "
                             f"{', '.join(self.subtasks)}")
        return self.draw(split, batch_size, generator, device)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return digit_loss(self.present(model, batch.inputs), batch.targets)

    def eval_batches(self, split: str, size: int, device="cpu") -> list[Batch]:
        generator = torch.Generator(device).manual_seed(VALIDATION_SEED + self.eval_splits.index(split))
        batch = self.sample(split, size, generator, device)
        return [Batch(*parts) for parts in zip(*(t.split(EVAL_CHUNK) for t in batch))]

    def correct(self, model: nn.Module, batch: Batch) -> Tensor:
        return correct(self.present(model, batch.inputs), batch.targets)
