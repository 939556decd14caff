"""Task registry. Importing this package registers every task family below."""

from tasks import forecasting, synthetic, text  # noqa: F401  (registration side effects)
from tasks.registry import TASKS, OutputSpec, Splits, Task, get_task, register_task

__all__ = ["TASKS", "OutputSpec", "Splits", "Task", "get_task", "register_task"]
