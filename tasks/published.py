"""Figures that papers publish for a task, printed beside a leaderboard's own results.

A task lists them as ``Task.published``; every run records them as tags (``published.<model>.<metric>``
with its source beside it), so a report made from the store alone prints them. Torch-free: the
reports read them back without loading a task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

TAG = "published"
_SOURCE = ".source"


@dataclass(frozen=True)
class Published:
    model: str  # as the paper names it: "Transformer", "S4"
    metric: str  # the task's metric it is a value of, on the task's scale: 0.364 for 36.4 %
    value: float
    source: str  # "Tay et al. 2021 (LRA)"
    setting: str = ""  # the paper's setting where it differs from this task's defaults

    def __post_init__(self) -> None:
        for name, text in (("model", self.model), ("metric", self.metric)):
            if not text or "." in text:
                raise ValueError(f"published {name} '{text}' must be non-empty and hold no '.'")

    @property
    def where(self) -> str:
        return self.source + (f"; {self.setting}" if self.setting else "")


def to_tags(figures: Iterable[Published]) -> dict[str, str]:
    """A run's tags for the figures: ``published.S4.accuracy = 0.596`` and its ``.source``."""
    out = {}
    for f in figures:
        key = f"{TAG}.{f.model}.{f.metric}"
        out[key] = f"{f.value:.6g}"
        out[key + _SOURCE] = f.where
    return out


def from_tags(tags: Mapping[str, str]) -> list[Published]:
    """The figures a run's tags hold (``to_tags`` read back), in the order of their keys."""
    out = []
    for key in sorted(tags):
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != TAG:
            continue
        try:
            value = float(tags[key])
        except ValueError:
            continue
        out.append(Published(parts[1], parts[2], value, tags.get(key + _SOURCE, "")))
    return out


def describe(figures: Iterable[Published], lead: str = "published") -> str:
    """One line: ``published: Transformer accuracy 0.364 (Tay et al. 2021 (LRA); lengths 500-2000), ...``,
    or "" where there are none."""
    items = [f"{f.model} {f.metric} {f.value:.4g}" + (f" ({f.where})" if f.where else "") for f in figures]
    return f"{lead}: " + ", ".join(items) if items else ""
