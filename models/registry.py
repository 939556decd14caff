"""Model registry: a model is a backbone registered by a tiny preset function.

A backbone turns a batch of sequences into hidden vectors and knows nothing of tasks:

    forward(x, mask) -> (steps, summary)
      x        (B, T) token ids, or (B, T, F) real-valued features
      mask     (B, T) bool, True on real steps; padding is always at the end
      steps    (B, T, step_dim)   one vector per step (per-step outputs)
      summary  (B, summary_dim)   one vector per sequence (sequence-level outputs)

Registering a preset (timm style): the function's name is the key ('_' becomes '-'),
its docstring's first line the description, and it returns a ``ModelSpec``:

    @register_model
    def stacked_lstm() -> ModelSpec:
        \"\"\"LSTM, 2 layers with dropout between them.\"\"\"
        return recurrent("lstm", num_layers=2, dropout=0.2)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from bench.registry import Registry


@dataclass(frozen=True)
class InputSpec:
    """What a backbone reads: token ids from a vocabulary, or real-valued features."""

    vocab_size: int | None = None
    n_features: int | None = None
    season: int | None = None  # the data's seasonal period in steps, if it has one
    seq_len: int | None = None  # the length of every sequence, where it is fixed (forecast windows)
    frame: tuple[int, int] | None = None  # each step's features are an image (height, width), row by row

    @property
    def kind(self) -> str:
        return "tokens" if self.vocab_size is not None else "features"

    def __post_init__(self) -> None:
        if (self.vocab_size is None) == (self.n_features is None):
            raise ValueError("InputSpec needs exactly one of vocab_size and n_features")
        if self.frame is not None:
            object.__setattr__(self, "frame", tuple(self.frame))  # (read back from JSON as a list)
            if self.n_features != self.frame[0] * self.frame[1]:
                raise ValueError(f"frame {self.frame} does not hold n_features={self.n_features} values")


@dataclass(frozen=True)
class OutputShape:
    """What a predictor (a model without a head, such as a baseline) must produce:
    (B, C) class scores, (B, T, C) per-step class scores, or (B, *shape) values."""

    kind: str  # "class_per_sequence" | "class_per_step" | "values" | "forecast"
    n_classes: int = 0
    shape: tuple[int, ...] = ()


@runtime_checkable
class Gated(Protocol):
    """A backbone whose gates can be looked at (``train.record_gates``)."""

    def gate_activations(self, x: Any, mask: Any) -> dict[str, Any]:
        """Each gate's activation in [0, 1] along the model's own trajectory, by
        ``layer<i>/<gate>``: (B, T, units) tensors (padded steps hold anything). Empty when
        this configuration has no gates (a vanilla RNN)."""
        ...


@runtime_checkable
class HeadMaker(Protocol):
    """A backbone that gives the head for some outputs itself (a convolutional readout of
    frames, say); None leaves the harness's linear head."""

    def make_head(self, output: OutputShape) -> Any: ...


class Incompatible(ValueError):
    """This model cannot serve this data (e.g. a seasonal baseline with a look-back shorter
    than the season): the pair is refused, not counted as a failed run."""


# A search space asks an Optuna trial for values and returns them by setting,
# {"model.hidden_size": 64, "train.lr": 3e-4}; its parameter names are those same keys.
SearchSpace = Callable[[Any], dict[str, Any]]
# Weight decay by decades, with 0 (no decay: every family's default) among the choices, so
# the default configuration lies inside every search space.
WEIGHT_DECAYS = [0.0, 1e-5, 1e-4, 1e-3, 1e-2]


def optimiser_space(trial: Any, lr_max: float = 1e-2, batch_sizes: tuple[int, ...] = (32, 64, 128)) -> dict[str, Any]:
    """The training part of a family's search space: learning rate (log scale from 1e-4),
    weight decay and batch size; a family's own dimensions come before it."""
    return {
        "train.lr": trial.suggest_float("train.lr", 1e-4, lr_max, log=True),
        "train.weight_decay": trial.suggest_categorical("train.weight_decay", WEIGHT_DECAYS),
        "train.batch_size": trial.suggest_categorical("train.batch_size", list(batch_sizes)),
    }


ALL_OUTPUTS = frozenset({"class_per_sequence", "class_per_step", "values", "forecast"})
ALL_INPUTS = frozenset({"tokens", "features"})  # "frames": features that are images (InputSpec.frame)


@dataclass(frozen=True)
class ModelSpec:
    """Everything the harness needs to know about a model before building it."""

    hparams: type  # a dataclass of the family's hyper-parameters
    # (input, hparams, causal) -> backbone nn.Module; a predictor also gets its OutputShape
    build: Callable[..., Any]
    preset: dict[str, Any] = field(default_factory=dict)  # values this preset changes
    bidirectional: bool = False  # reads the future: refused by causal tasks
    train_defaults: dict[str, Any] = field(default_factory=dict)  # e.g. a family's learning rate
    search_space: SearchSpace | None = None
    outputs: frozenset[str] = ALL_OUTPUTS  # task output kinds it can serve
    inputs: frozenset[str] = ALL_INPUTS  # "tokens", "features" and/or "frames"
    predictor: bool = False  # gives the task's output itself (no head); may define fit_data(loader)
    name: str = ""
    description: str = ""

    def make_hparams(self, **overrides: Any) -> Any:
        """The preset's hyper-parameters with ``overrides`` on top (caller wins)."""
        return self.hparams(**{**self.preset, **overrides})

    def default_hparams(self) -> dict[str, Any]:
        return dataclasses.asdict(self.make_hparams())

    def instantiate(self, inp: InputSpec, hp: Any, causal: bool, out: OutputShape) -> Any:
        return self.build(inp, hp, causal, out) if self.predictor else self.build(inp, hp, causal)


MODELS: Registry[ModelSpec] = Registry("model", package="models")


def register_model(fn: Callable[[], ModelSpec]) -> Callable[[], ModelSpec]:
    spec = fn()
    name = fn.__name__.replace("_", "-")
    description = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
    MODELS.add(name, dataclasses.replace(spec, name=name, description=description))
    return fn


def get_model(name: str) -> ModelSpec:
    return MODELS.get(name)
