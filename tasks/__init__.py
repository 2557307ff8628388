"""Tasks behind one registry; importing this package registers every task and dataset maker."""

from tasks import addmul, cifar10, double_add, mathematics, mathematics_generate, permuted_mnist, scan, text  # noqa: F401,E501
from tasks.datasets import dataset_maker, dataset_names, register_dataset
from tasks.registry import Task, get_task, register_task, task_class, task_names, task_options

__all__ = ["Task", "dataset_maker", "dataset_names", "get_task", "register_dataset", "register_task", "task_class",
           "task_names", "task_options"]
