"""Task registry: one file per family; every module here registers itself on first use
of ``TASKS`` (see tasks/registry.py).

Importing this package loads no torch: ``tasks.data`` (files, checksums, downloads) is
used by the CLI before anything heavy is imported, so the registry is loaded lazily.
"""

from typing import Any

__all__ = ["TASKS", "DataShape", "OutputSpec", "Splits", "Task", "get_task", "register_task"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tasks import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")
