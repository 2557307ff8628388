"""Addition / multiplication modulo 100 with shared inputs and outputs (paper Section 3.1)."""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from tasks.arithmetic import ArithmeticTask, Batch, digits, numbers_from_logits, one_hot_number, random_numbers
from tasks.registry import register_task

ADD, MUL = 0, 1


@register_task("addmul")
class AddMulTask(ArithmeticTask):
    """Inputs [B, 42]: a (20), b (20), operation one-hot (2). Targets [B, 2]: digits of the result.

    Subtasks: "full" (operation drawn uniformly), "add", "mul".
    """

    version = 1
    input_size = 42
    output_size = 20
    subtasks = ("add", "mul")

    def draw(self, split: str, batch_size: int, generator: torch.Generator, device="cpu") -> Batch:
        operands = random_numbers(batch_size, 2, generator, device)
        a, b = operands[:, 0], operands[:, 1]
        if split == "full":
            operation = torch.randint(0, 2, (batch_size,), generator=generator, device=device)
        else:
            operation = torch.full((batch_size,), ADD if split == "add" else MUL, device=device)
        result = torch.where(operation == ADD, (a + b) % 100, (a * b) % 100)
        inputs = torch.cat([one_hot_number(a), one_hot_number(b), torch.nn.functional.one_hot(operation, 2)], 1)
        return Batch(inputs.float(), digits(result), torch.stack([a, b, operation], 1))

    @torch.no_grad()
    def condition_rows(self, condition: str, inverted: bool, model: nn.Module,
                       batches: dict[str, list[Batch]]) -> dict[str, list[dict]]:
        """Fig. 12: share of predictions equal to the sum, the product, or neither, per subtask."""
        if inverted:
            return {}
        rows = []
        for subtask in self.subtasks:
            logits = torch.cat([self.present(model, b.inputs) for b in batches[subtask]])
            operands = torch.cat([b.operands for b in batches[subtask]])
            labels = Counter(operation_performed(numbers_from_logits(logits)[:, 0], operands))
            total = sum(labels.values())
            rows += [{"mask": condition, "subtask": subtask, "operation": op, "fraction": labels.get(op, 0) / total}
                     for op in ("add", "mul", "none")]
        return {"operations": rows}


def operation_performed(predicted: torch.Tensor, operands: torch.Tensor) -> list[str]:
    """For Fig. 12: per example "add", "mul" or "none" — which result the prediction equals.

    predicted [B] numbers; operands [B, 3] (a, b, operation). When a+b ≡ a·b the requested one wins.
    """
    a, b, operation = operands.unbind(1)
    is_sum, is_product = predicted == (a + b) % 100, predicted == (a * b) % 100
    labels = []
    for s, p, op in zip(is_sum.tolist(), is_product.tolist(), operation.tolist()):
        if s and p:
            labels.append("add" if op == ADD else "mul")
        else:
            labels.append("add" if s else "mul" if p else "none")
    return labels
