"""Tasks behind one registry; importing this package registers every task."""

from tasks import addmul, double_add, scan  # noqa: F401  (registration)
from tasks.registry import Task, get_task, register_task, task_class, task_names, task_options

__all__ = ["Task", "get_task", "register_task", "task_class", "task_names", "task_options"]
