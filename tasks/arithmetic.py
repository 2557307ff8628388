"""Shared encoding of the arithmetic tasks: two-digit numbers as two 10-way one-hots."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

IGNORE = -100  # target value of a digit that a subtask does not score (cross_entropy's ignore_index)


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
