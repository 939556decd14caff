"""Run configuration: one flat, hashable description of a (model, task, seed) run.

Everything a run depends on is resolved here, before anything is trained or written:
the model's hyper-parameters (preset + overrides), the task's parameters (variant +
overrides), training settings and the budget profile. Torch-free, so the CLI can check
input quickly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from bench.errors import BenchError
from bench.registry import unknown_message

WINDOW_NORMS = ("none", "standard", "revin", "robust")  # bench.recipe implements them
SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("32", "bf16-mixed", "16-mixed")
STRATEGIES = ("auto", "ddp")  # auto: one process; ddp: one per device (bench.distributed)
# A run in one process leaves these out of its configuration (its params and its hashes), as
# every run did before they existed: the same configuration keeps its id and leaderboard row.
ONE_PROCESS = {"devices": 1, "strategy": "auto"}
# Model settings added after runs were recorded, left out the same way at their neutral value:
# the family's own default (RunConfig.model_neutral), which is what its earlier runs did (a
# recurrent model reads its last state, lstm-attn its attention pooling; PyTorch's forget-gate bias).
MODEL_NEUTRAL = {"readout": "last", "forget_bias": None}
TRAIN_NEUTRAL = {**ONE_PROCESS, "record_gates": False}
BUDGET_NEUTRAL = {"min_steps": 0}  # early stopping from the first validation, as before the setting


@dataclass
class TrainConfig:
    """The training recipe. Defaults here, then the task's recipe (batch size, window
    normalisation), then the model family's defaults (its learning rate), then --set."""

    lr: float = 2e-3  # the peak learning rate
    weight_decay: float = 0.0  # AdamW; on weight matrices only, never on biases, norms or embeddings
    batch_size: int = 64
    eval_batch_size: int = 256  # evaluation only: bigger is faster and changes no metric
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    schedule: str = "cosine"  # after the warm-up: constant, or a cosine or linear decay to 10% at the step budget
    lr_warmup: float = 0.05  # fraction of the step budget over which the learning rate rises linearly
    window_norm: str = "none"  # forecasting: none, standard, revin (learnable affine) or robust (median/MAD)
    # Speed options; none changes what is computed beyond rounding. Batches are pinned in
    # host memory whenever the run is on a GPU.
    precision: str = "32"  # 32, bf16-mixed (CPU or GPU) or 16-mixed (GPU only)
    compile: bool = False  # torch.compile the model (README: on which models it pays)
    loader_workers: int = 0  # DataLoader worker processes; 0 builds batches in the training process
    # One run over several processes: GPUs, or CPU processes on a CPU. Each takes batch_size
    # samples a step (a step covers devices x batch_size); the split metrics are the same sums.
    devices: int = 1
    strategy: str = "auto"  # ddp whenever devices > 1
    # Gate statistics at every validation and a histogram figure (bench.gates); changes no result.
    record_gates: bool = False

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("lr must be > 0, weight_decay and grad_clip >= 0")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule='{self.schedule}' is invalid: choose from {', '.join(SCHEDULES)}")
        if not 0 <= self.lr_warmup < 1:
            raise ValueError(f"lr_warmup={self.lr_warmup} is invalid: it is a fraction of the steps, in [0, 1)")
        if self.window_norm not in WINDOW_NORMS:
            raise ValueError(f"window_norm='{self.window_norm}' is invalid: choose from {', '.join(WINDOW_NORMS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision='{self.precision}' is invalid: choose from {', '.join(PRECISIONS)}")
        if self.loader_workers < 0:
            raise ValueError(f"loader_workers={self.loader_workers} is invalid: it must be >= 0")
        if self.devices < 1:
            raise ValueError(f"train.devices={self.devices} is invalid: it must be >= 1")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"train.strategy='{self.strategy}' is invalid: choose from {', '.join(STRATEGIES)}")
        if self.strategy == "ddp" and self.devices == 1:
            raise ValueError("train.strategy=ddp needs train.devices >= 2 (one process per device)")
        if self.strategy != "ddp" and self.devices > 1:
            raise ValueError(f"train.devices={self.devices} needs train.strategy=ddp (auto runs one process)")


@dataclass(frozen=True)
class Budget:
    """Bounds of one run; whichever limit is reached first ends training."""

    max_steps: int  # optimizer steps
    max_epochs: int
    max_time_s: float  # training wall time (evaluation of the best checkpoint comes after)
    patience: int  # validations without improvement of the primary metric before stopping
    val_every_steps: int  # validate every this many optimizer steps, across epoch boundaries
    meter_warmup_steps: int  # first steps left out of the throughput measurement (not the learning rate's)
    # Early stopping watches the validations from this step on: no run ends by early stopping
    # before it. For tasks whose loss sits on a plateau before it falls (selective-copy).
    min_steps: int = 0

    def __post_init__(self) -> None:
        if min(self.max_steps, self.max_epochs, self.patience, self.val_every_steps) < 1:
            raise ValueError("max_steps, max_epochs, patience and val_every_steps must be >= 1")
        if self.max_time_s <= 0 or self.meter_warmup_steps < 0 or self.min_steps < 0:
            raise ValueError("max_time_s must be > 0, and meter_warmup_steps and min_steps >= 0")
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) exceeds max_steps ({self.max_steps})")


PROFILES: dict[str, Budget] = {
    # Step and epoch limits end every run; the time limit is only a guard against a run that
    # hangs or a machine far slower than planned. So a busy machine makes a sweep slower, not
    # its numbers different, and a run that does stop on time is marked as such.
    # Seconds per run: for tests and smoke checks; the numbers mean nothing.
    "tiny": Budget(max_steps=8, max_epochs=2, max_time_s=120, patience=2, val_every_steps=4, meter_warmup_steps=2),
    # A whole `--tasks all` sweep in minutes on a 2-core CPU: rough numbers.
    "quick": Budget(max_steps=200, max_epochs=1000, max_time_s=900, patience=4, val_every_steps=50,
                    meter_warmup_steps=10),
    # Enough for the small models to approach convergence on the forecasting and small text tasks.
    "standard": Budget(max_steps=2000, max_epochs=1000, max_time_s=3600, patience=6, val_every_steps=100,
                       meter_warmup_steps=20),
    # Each task's full protocol: long runs, stopped by early stopping.
    "full": Budget(max_steps=100_000, max_epochs=10_000, max_time_s=12 * 3600, patience=15, val_every_steps=500,
                   meter_warmup_steps=50),
}


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def fields_of(cls: type) -> dict[str, dict[str, Any]]:
    """{name: {"type": "int", "default": 64}} for a dataclass: what the catalog stores."""
    hints = field_types(cls)
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        out[f.name] = {"type": type_name(hints[f.name]), "default": default}
    return out


def coerce(text: str, type_str: str, key: str) -> Any:
    """Parse a CLI value as the field's declared type ("int", "float", "bool", "str", "int | None")."""
    options = [t.strip() for t in type_str.split("|")]
    if "None" in options and text.lower() in ("none", "null"):
        return None
    for t in options:
        try:
            if t == "int":
                return int(text)
            if t == "float":
                value = float(text)
                if not math.isfinite(value):
                    raise ValueError
                return value
            if t == "bool":
                if text.lower() in ("true", "1", "yes", "on"):
                    return True
                if text.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            if t == "str":
                return text
        except ValueError:
            continue
    raise BenchError(f"Invalid value for {key}: '{text}' is not {' or '.join(options)}")


def parse_assignments(items: list[str], where: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"Invalid {where} '{item}': expected key=value")
        out[key.strip()] = value.strip()
    return out


def typed_overrides(raw: dict[str, str], fields: dict[str, dict[str, Any]], owner: str) -> dict[str, Any]:
    """Check keys against ``fields`` and parse each value to its declared type."""
    out = {}
    for key, text in raw.items():
        if key not in fields:
            raise BenchError(unknown_message(f"parameter of {owner}", key, fields))
        out[key] = coerce(text, fields[key]["type"], f"{owner} {key}")
    return out


@dataclass(frozen=True)
class TaskRef:
    """A task as named on the CLI: ``copy``, ``copy:T200`` or ``copy:delay=200:n_train=5000``."""

    name: str
    variant: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        parts = [self.name] + ([self.variant] if self.variant else [])
        return ":".join(parts + [f"{k}={v}" for k, v in sorted(self.params.items())])


def configuration_id(flat: dict[str, Any]) -> str:
    """A hash of a flat configuration without its seed (MLflow params, as strings, give
    the same id as the values they were written from)."""
    blob = json.dumps({k: str(v) for k, v in flat.items() if k != "seed"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def family_neutral(spec: Any) -> dict[str, Any]:
    """A model family's (``models.ModelSpec``'s) defaults of the MODEL_NEUTRAL settings, where
    they differ from those: the values its runs leave out of their configuration."""
    defaults = spec.default_hparams()
    return {k: defaults[k] for k in MODEL_NEUTRAL if k in defaults and defaults[k] != MODEL_NEUTRAL[k]}


@dataclass(frozen=True)
class RunConfig:
    model: str
    task: TaskRef
    seed: int
    profile: str
    model_params: dict[str, Any]  # fully resolved
    task_params: dict[str, Any]  # fully resolved
    train: dict[str, Any]
    budget: dict[str, Any]
    task_version: int = 1
    # The family's defaults of the MODEL_NEUTRAL settings, where they differ from those
    model_neutral: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        """Everything as one flat mapping: MLflow params, and the input of the hash."""
        out: dict[str, Any] = {
            "model": self.model,
            "task": self.task.name,
            "task_variant": self.task.label,
            "task_version": self.task_version,
            "seed": self.seed,
            "profile": self.profile,
        }
        for prefix, values in (("model", self.model_params), ("task", self.task_params),
                               ("train", self.train), ("budget", self.budget)):
            neutral = {"train": TRAIN_NEUTRAL, "budget": BUDGET_NEUTRAL,
                       "model": {**MODEL_NEUTRAL, **self.model_neutral}}.get(prefix, {})
            out.update({f"{prefix}.{k}": v for k, v in values.items() if not (k in neutral and neutral[k] == v)})
        return out

    @property
    def config_hash(self) -> str:
        """Identifies the run's configuration, seed included."""
        blob = json.dumps(self.flat(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def config_id(self) -> str:
        """Identifies the configuration across seeds: one leaderboard row."""
        return configuration_id(self.flat())

    @property
    def label(self) -> str:
        return f"{self.model} × {self.task.label} · seed {self.seed}"
