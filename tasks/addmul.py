"""Addition / multiplication modulo 100 with shared inputs and outputs (paper Section 3.1)."""

from __future__ import annotations

import torch

from tasks.arithmetic import Batch, digits, one_hot_number, random_numbers
from tasks.registry import register_task

ADD, MUL = 0, 1


@register_task("addmul")
class AddMulTask:
    """Inputs [B, 42]: a (20), b (20), operation one-hot (2). Targets [B, 2]: digits of the result.

    Subtasks: "full" (operation drawn uniformly), "add", "mul".
    """

    version = 1
    input_size = 42
    output_size = 20
    subtasks = ("add", "mul")

    def sample(self, batch_size: int, subtask: str, generator: torch.Generator, device="cpu") -> Batch:
        operands = random_numbers(batch_size, 2, generator, device)
        a, b = operands[:, 0], operands[:, 1]
        if subtask == "full":
            operation = torch.randint(0, 2, (batch_size,), generator=generator, device=device)
        elif subtask in self.subtasks:
            operation = torch.full((batch_size,), ADD if subtask == "add" else MUL, device=device)
        else:
            raise ValueError(f"addmul has no subtask {subtask!r}; choose one of full, {', '.join(self.subtasks)}")
        result = torch.where(operation == ADD, (a + b) % 100, (a * b) % 100)
        inputs = torch.cat([one_hot_number(a), one_hot_number(b), torch.nn.functional.one_hot(operation, 2)], 1)
        return Batch(inputs.float(), digits(result), torch.stack([a, b, operation], 1))


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
