"""Double addition: a+b and c+d on separate inputs and outputs (paper Section 3.2)."""

from __future__ import annotations

import torch

from tasks.arithmetic import IGNORE, ArithmeticTask, Batch, digits, one_hot_number, random_numbers
from tasks.registry import register_task


@register_task("double_add")
class DoubleAddTask(ArithmeticTask):
    """Inputs [B, 80]: pair 1 (a, b: 40) then pair 2 (c, d: 40). Targets [B, 4]: digits of a+b, c+d.

    Subtasks "pair1", "pair2" score only their own output digits; "full" scores both.
    """

    version = 1
    input_size = 80
    output_size = 40
    subtasks = ("pair1", "pair2")

    def draw(self, split: str, batch_size: int, generator: torch.Generator, device="cpu") -> Batch:
        operands = random_numbers(batch_size, 4, generator, device)
        a, b, c, d = operands.unbind(1)
        inputs = torch.cat([one_hot_number(x) for x in (a, b, c, d)], 1).float()
        targets = torch.cat([digits((a + b) % 100), digits((c + d) % 100)], 1)
        if split == "pair1":
            targets[:, 2:] = IGNORE
        elif split == "pair2":
            targets[:, :2] = IGNORE
        return Batch(inputs, targets, operands)
