"""One generic registry for models and tasks: unique names, wildcard selection and
errors that say what exists."""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from bench.errors import BenchError, UnknownNameError

T = TypeVar("T")


def unknown_message(kind: str, name: str, available: Iterable[str]) -> str:
    available = sorted(available)
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"Unknown {kind} '{name}'.{hint} Available: {', '.join(available)} ({len(available)} total)"


def select_names(kind: str, spec: str | Iterable[str], available: Iterable[str]) -> list[str]:
    """Expand a selection such as ``"lstm,gru"``, ``"all"`` or ``"stacked-*"``.

    Every unknown name is reported at once, in one line, with close matches.
    Order follows the request; duplicates are dropped.
    """
    available = list(available)
    parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec)]
    parts = [p for p in parts if p]
    if not parts:
        raise BenchError(f"No {kind} given. Available: {', '.join(sorted(available))}")
    chosen: list[str] = []
    problems: list[str] = []
    for part in parts:
        if part == "all":
            matches = available
        elif any(c in part for c in "*?["):
            matches = fnmatch.filter(available, part)
            if not matches:
                problems.append(f"'{part}' matches no {kind}")
        elif part in available:
            matches = [part]
        else:
            close = difflib.get_close_matches(part, available, n=3, cutoff=0.5)
            problems.append(f"'{part}'" + (f" (did you mean: {', '.join(close)}?)" if close else ""))
            matches = []
        chosen.extend(m for m in matches if m not in chosen)
    if problems:
        raise UnknownNameError(
            f"Unknown {kind}{'s' if len(problems) > 1 else ''}: {'; '.join(problems)}. "
            f"Available: {', '.join(sorted(available))} ({len(available)} total)"
        )
    return chosen


class Registry(Generic[T]):
    """Name -> item. Registering a name twice is an error, never a silent overwrite.

    With ``package``, every module of that package is imported on first use, so a new
    model or task file registers itself without being listed anywhere else.
    """

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._items: dict[str, T] = {}
        self._discovered = package is None

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    @property
    def items(self) -> dict[str, T]:
        self._discover()
        return self._items

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise BenchError(f"Duplicate {self.kind} name '{name}': it is already registered")
        self._items[name] = item
        return item

    def remove(self, name: str) -> None:
        del self._items[name]

    def get(self, name: str) -> T:
        try:
            return self.items[name]
        except KeyError:
            raise UnknownNameError(unknown_message(self.kind, name, self._items)) from None

    def names(self, pattern: str = "*") -> list[str]:
        return [n for n in self.items if fnmatch.fnmatch(n, pattern)]

    def select(self, spec: str | Iterable[str]) -> list[str]:
        return select_names(self.kind, spec, self.items)

    def __contains__(self, name: object) -> bool:
        return name in self.items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.items))

    def __len__(self) -> int:
        return len(self.items)
