import ast
from pathlib import Path

import pytest
import torch

import tasks
from tasks.registry import get_task, register_task
from tasks.addmul import operation_performed
from tasks.arithmetic import IGNORE, correct, numbers_from_logits


def _decode_number(one_hot_20):
    """Independent decoding of a [20] one-hot pair of digits."""
    tens = one_hot_20[:10].tolist().index(1.0)
    ones = one_hot_20[10:].tolist().index(1.0)
    return 10 * tens + ones


@pytest.mark.parametrize("name", ["addmul", "double_add"])
@pytest.mark.parametrize("subtask_index", [0, 1, 2])
def test_arithmetic_batches(name, subtask_index):
    task = get_task(name)
    subtask = ["full", *task.subtasks][subtask_index]
    a = task.sample(subtask, 16, torch.Generator().manual_seed(3))
    assert a.inputs.shape == (16, task.input_size) and a.inputs.dtype == torch.float32
    assert a.targets.shape == (16, task.output_size // 10)
    with pytest.raises(ValueError, match="no subtask"):
        task.sample("nonsense", 4, torch.Generator())


def test_addmul_encoding_by_hand():
    batch = get_task("addmul").sample("full", 64, torch.Generator().manual_seed(0))
    for x, y in zip(batch.inputs, batch.targets):
        a, b = _decode_number(x[:20]), _decode_number(x[20:40])
        operation = x[40:].tolist().index(1.0)
        expected = (a + b) % 100 if operation == 0 else (a * b) % 100
        assert y.tolist() == [expected // 10, expected % 10]
    add_only = get_task("addmul").sample("add", 32, torch.Generator())
    assert torch.all(add_only.inputs[:, 40] == 1)


def test_double_add_targets_and_subtask_scoring_by_hand():
    batch = get_task("double_add").sample("pair2", 32, torch.Generator().manual_seed(1))
    for x, y in zip(batch.inputs, batch.targets):
        c, d = _decode_number(x[40:60]), _decode_number(x[60:80])
        assert y.tolist() == [IGNORE, IGNORE, (c + d) % 100 // 10, (c + d) % 10]


def test_correct_needs_every_scored_digit():
    logits = torch.full((2, 40), -5.0)
    for row, digits in enumerate([[1, 2, 3, 4], [1, 2, 3, 5]]):
        for position, digit in enumerate(digits):
            logits[row, position * 10 + digit] = 5.0
    targets = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])
    assert correct(logits, targets).tolist() == [True, False]
    assert correct(logits, torch.tensor([[1, 2, IGNORE, IGNORE]] * 2)).tolist() == [True, True]
    assert numbers_from_logits(logits).tolist() == [[12, 34], [12, 35]]


def test_operation_performed_by_hand():
    operands = torch.tensor([[3, 4, 0], [3, 4, 1], [2, 2, 1], [3, 4, 0]])  # 3+4=7, 3*4=12, 2+2=2*2
    predicted = torch.tensor([12, 12, 4, 50])
    assert operation_performed(predicted, operands) == ["mul", "mul", "mul", "none"]


def test_registry_rejects_duplicates_and_suggests():
    with pytest.raises(ValueError, match="already registered"):
        register_task("addmul")(object)
    with pytest.raises(KeyError, match="did you mean 'addmul'"):
        get_task("admul")


def _imported_modules(node) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module == "models":  # from models import transformer
        return [f"models.{alias.name}" for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module:
        return [node.module]
    return []


@pytest.mark.parametrize("path", sorted(Path(tasks.__file__).parent.glob("*.py")), ids=lambda p: p.name)
def test_a_task_imports_no_model_file(path):
    """A task scores a model through its forward (greedy decoding included); of models/ it imports only
    the model-free shared layer, so that any registered family can be trained on it."""
    allowed = {"models.common", "models.registry"}
    for node in ast.walk(ast.parse(path.read_text())):
        for module in _imported_modules(node):
            if module.split(".")[0] == "models":
                assert module in allowed, f"{path.name} imports {module}"
