"""Tasks behind one registry; importing this package registers every task."""

from tasks import addmul, double_add  # noqa: F401  (registration)
from tasks.registry import get_task, register_task, task_names

__all__ = ["get_task", "register_task", "task_names"]
