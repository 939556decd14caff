"""Task registry: a task owns its data, its loss and its metrics, and nothing about models.

A task is a ``Task`` subclass registered with ``@register_task``. It declares:
  - ``Params``: a dataclass of its parameters (a copy delay, a horizon, ...), set from the
    CLI as ``copy:delay=200``; named ``variants`` are presets of them;
  - its output (a class per sequence, a class per step, or an array of values) and
    whether it is causal (outputs at step t may not see inputs after t);
  - its loss, and metrics as additive statistics summed over every batch of a split,
    so each metric is exact over the whole split whatever the batch size;
  - a primary metric with its direction, and reference values (e.g. a memoryless
    baseline) to read the numbers against.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset

from bench.registry import Registry
from tasks.data import DataFile, resolve_data_dir
from tasks.published import Published

Batch = dict[str, torch.Tensor]  # always has "x" (B, T[, F]), "mask" (B, T) bool and "y"

# The forecasting tasks' recipe: every neural forecaster sees each input window normalised
# per channel and predicts in that space (bench.recipe.WindowNorm), so a series that drifts
# past its training range stays in range for the model. Baselines keep their own behaviour.
WINDOW_NORM = "standard"


@dataclass(frozen=True)
class OutputSpec:
    kind: str  # one of KINDS
    n_classes: int = 0  # for the two classification kinds
    shape: tuple[int, ...] = ()  # for "values" and "forecast", per sequence, e.g. (horizon, channels)

    # "forecast": the next shape[0] steps of the input's shape[1] channels (so a baseline
    # such as last-value can predict them); "values": any other real-valued output.
    KINDS: ClassVar[tuple[str, ...]] = ("class_per_sequence", "class_per_step", "values", "forecast")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"output kind '{self.kind}' is not one of {', '.join(self.KINDS)}")


class TensorSplit(Dataset):
    """A split held as equal-length tensors, fetched a whole batch at a time."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        n = {len(t) for t in tensors.values()}
        if len(n) != 1:
            raise ValueError(f"tensors of different lengths: {n}")
        if "mask" not in tensors:
            x = tensors["x"]
            tensors["mask"] = torch.ones(x.shape[:2], dtype=torch.bool)
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["x"])

    def __getitem__(self, i: int) -> Batch:
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, idx: list[int]) -> Batch:  # DataLoader's batched fetch
        index = torch.as_tensor(idx)
        return {k: v[index] for k, v in self.tensors.items()}

    def content(self) -> dict[str, list[torch.Tensor]]:
        """The tensors that make the split (see ``content_digest``)."""
        return {k: [v] for k, v in sorted(self.tensors.items())}

    @staticmethod
    def collate(batch: Batch) -> Batch:
        return batch


class PaddedSplit(Dataset):
    """Variable-length token sequences, padded (id 0, at the end) per batch with a mask."""

    def __init__(self, sequences: list[torch.Tensor], y: torch.Tensor) -> None:
        if len(sequences) != len(y):
            raise ValueError("sequences and labels differ in length")
        self.sequences, self.y = sequences, y
        self.lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)  # batched by length

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> Batch:
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]) -> Batch:
        seqs = [self.sequences[i] for i in idx]
        T = max(len(s) for s in seqs)
        x = torch.zeros(len(seqs), T, dtype=torch.long)
        mask = torch.zeros(len(seqs), T, dtype=torch.bool)
        for row, s in enumerate(seqs):
            x[row, : len(s)] = s
            mask[row, : len(s)] = True
        return {"x": x, "mask": mask, "y": self.y[torch.as_tensor(idx)]}

    def content(self) -> dict[str, list[torch.Tensor]]:
        return {"y": [self.y], "x": self.sequences}

    @staticmethod
    def collate(batch: Batch) -> Batch:
        return batch


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    vocab_size: int | None = None  # token-id input ...
    n_features: int | None = None  # ... or real-valued features
    season: int | None = None  # seasonal period in steps, where the data has one
    seq_len: int | None = None  # the length of every input sequence, where it is fixed
    frame: tuple[int, int] | None = None  # each step's features are an image (height, width), row by row

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


SPLITS = ("train", "val", "test")
CONTEXTS = {"train": "train", "val": "validation", "test": "test"}  # as MLflow's dataset inputs name them


def content_digest(split: Dataset) -> str:
    """A hash of exactly what a split holds (the dtype, shape and bytes of every tensor its
    ``content()`` gives): two runs with the same digest saw the same samples in the same order."""
    h = hashlib.sha256()
    if hasattr(split, "content"):
        parts = split.content()
    else:  # another kind of split: every sample, fetched one by one
        samples = [split[i] for i in range(len(split))]
        parts = {k: [torch.as_tensor(s[k]) for s in samples] for k in sorted(samples[0])} if samples else {}
    for key, tensors in parts.items():
        h.update(key.encode())
        for t in tensors:
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class DataRecord:
    """One split of a run's data as a dataset input of the run: where it came from and a
    digest of what it holds (``bench.tracking`` turns it into MLflow's dataset entity)."""

    name: str  # the task and its variant, e.g. "copy:T200"
    context: str  # "train", "validation" or "test"
    digest: str  # content_digest of the split
    source_type: str  # "http" (a public file) or "code" (generated)
    source: dict[str, Any]  # {"url": ...} or {"generator": ..., "params": ..., "seed": ...}
    profile: dict[str, Any]  # rows, and the source files with their checksums


@dataclass(frozen=True)
class DataShape:
    """What a task knows of its data from its parameters alone, before generating or reading
    any of it: enough to build a model on torch's meta device and to refuse a request that
    this machine cannot hold (``bench.sizes``). The first four are as ``Splits`` will give them."""

    vocab_size: int | None = None  # token ids below this (at most this, where the vocabulary is capped) ...
    n_features: int | None = None  # ... or real-valued features per step
    season: int | None = None
    seq_len: int | None = None  # the length of every input sequence, where it is fixed
    frame: tuple[int, int] | None = None
    max_len: int | None = None  # the longest input sequence, where it is known before loading
    n_train: int | None = None  # training samples, where known: no training batch is larger
    generated_bytes: int = 0  # memory the generated splits hold; 0 for data read from files


class Task(ABC):
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[int] = 1  # bump when data, splits or metrics change
    Params: ClassVar[type]
    variants: ClassVar[dict[str, dict[str, Any]]] = {}
    primary_metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    causal: ClassVar[bool] = False
    input_kind: ClassVar[str] = "features"  # "tokens" (ids from a vocabulary) or "features" (real values)
    frames: ClassVar[bool] = False  # each step's features are an image (Splits.frame): models reading frames serve it
    seeded_data: ClassVar[bool] = False  # True when the training data is drawn from the run's seed
    # Figures papers report for this task (their setting named where it is not this task's
    # defaults): recorded with every run and printed beside its results.
    published: ClassVar[tuple[Published, ...]] = ()

    def __init__(self, params: Any, data_dir: Path | None = None, seed: int = 0) -> None:
        self.params = params
        self.data_dir = resolve_data_dir(data_dir)
        self.seed = seed

    @classmethod
    def make_params(cls, **overrides: Any) -> Any:
        return cls.Params(**overrides)

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return dataclasses.asdict(cls.Params())

    @classmethod
    def data_shape(cls, params: Any) -> DataShape | None:
        """The data's dimensions and footprint from ``params`` alone, or None where they are not
        known before loading (the run itself then finds out)."""
        return None

    @classmethod
    def recipe(cls, params: Any, budget: dict[str, Any]) -> dict[str, Any]:
        """Training settings that suit this task's data, by setting: ``{"train.batch_size": 16,
        "budget.val_every_steps": 50}``. They apply over the defaults and the budget profile
        (``budget``, as resolved); a model family's own defaults and ``--set`` apply over them."""
        return {}

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """Task parameters worth tuning together with a model (a forecasting look-back), asked
        of an Optuna trial the way a model's search space is: ``{"task.lookback": 96}``."""
        return {}

    def files(self) -> list[DataFile]:
        """Dataset files this task reads from the data directory (none for synthetic tasks)."""
        return []

    def split_files(self, split: str) -> list[DataFile]:
        """The files a split is made from ("train", "val", "test"); by default all of them."""
        return self.files()

    def data_seed(self, split: str) -> int | None:
        """The seed that draws a generated split: the run's, where the data depends on it."""
        return self.seed if self.seeded_data else None

    def data_records(self, label: str, splits: Splits) -> list[DataRecord]:
        """What each split is made of, for the run's dataset inputs: its source files with their
        checksums, or the generator with its parameters and seed; and a digest of its content."""
        records = []
        for split in SPLITS:
            data = getattr(splits, split)
            files = self.split_files(split)
            profile: dict[str, Any] = {"num_rows": len(data)}
            if files:
                profile["files"] = {f.path: ":".join(f.checksum) for f in files}
                urls = sorted({f.url for f in files})
                source_type, source = "http", {"url": urls[0]} if len(urls) == 1 else {"urls": urls}
            else:
                source_type = "code"
                source = {"generator": f"{type(self).__module__}.{type(self).__qualname__}", "version": self.version,
                          "params": dataclasses.asdict(self.params), "seed": self.data_seed(split)}
            records.append(DataRecord(label, CONTEXTS[split], content_digest(data), source_type,
                                      json.loads(json.dumps(source, default=str)), profile))
        return records

    @property
    @abstractmethod
    def output(self) -> OutputSpec: ...

    @abstractmethod
    def setup(self) -> Splits:
        """Load or generate the data; the same params and seed give the same splits."""

    @abstractmethod
    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor: ...

    @abstractmethod
    def batch_stats(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        """Additive statistics of one batch (sums and counts); summed over a split."""

    @abstractmethod
    def finalize(self, stats: dict[str, torch.Tensor]) -> dict[str, float]:
        """Metrics of a whole split from its summed statistics."""

    def references(self) -> dict[str, float]:
        """Reference values of metrics (baselines) to print beside the results."""
        return {}

    def figures(self, predict: Callable[[Batch], torch.Tensor], splits: Splits,
                test_stats: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Figures worth looking at, by artifact file name, from the evaluated model:
        ``predict(batch)`` gives its output for a batch of any split."""
        return {}

    def tokens(self, batch: Batch) -> torch.Tensor:
        """Time steps processed in a batch (for tokens/s): the real, unpadded ones, as a
        count on the batch's device (summed there, so the meter never waits for it)."""
        return batch["mask"].sum()


def confusion_metrics(confusion: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 of a split from its summed confusion matrix (rows: truth)."""
    cm = confusion.double()
    tp = cm.diag()
    precision = tp / cm.sum(0).clamp(min=1)
    recall = tp / cm.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {"accuracy": float(tp.sum() / cm.sum()), "macro_f1": float(f1.mean())}


TASKS: Registry[type[Task]] = Registry("task", package="tasks")


def register_task(cls: type[Task]) -> type[Task]:
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    TASKS.add(cls.name, cls)
    return cls


def get_task(name: str) -> type[Task]:
    return TASKS.get(name)
