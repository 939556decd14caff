"""Baselines that keep the leaderboard honest: what a sequence model has to beat.

They are predictors: each gives the task's output itself, with no head. Some have
nothing to learn (last value, seasonal naive), some are fitted by counting over the
training split (majority class, character n-gram: ``fit_data``), and two are trained
like any model (the linear forecaster, bag-of-words logistic regression).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models.layers import check_range, last_valid
from models.registry import WEIGHT_DECAYS, Incompatible, InputSpec, ModelSpec, OutputShape, register_model

FORECAST, FEATURES, TOKENS = frozenset({"forecast"}), frozenset({"features"}), frozenset({"tokens"})


@dataclass
class NoHparams:
    """Nothing to set."""


class LastValue(nn.Module):
    """Every future step equals the last observed value of its channel."""

    def __init__(self, out: OutputShape) -> None:
        super().__init__()
        self.horizon = out.shape[0]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return last_valid(x, mask).unsqueeze(1).expand(-1, self.horizon, -1)  # (B, H, C)


@dataclass
class SeasonalHparams:
    season: int = 0  # period in steps; 0 takes the data's own (12 for monthly series, 24 for hourly ETT)

    def __post_init__(self) -> None:
        check_range("season", self.season, 0)


class SeasonalNaive(nn.Module):
    """Each future step equals the latest observed value one or more seasons earlier."""

    def __init__(self, spec: InputSpec, hp: SeasonalHparams, out: OutputShape) -> None:
        super().__init__()
        m = hp.season or spec.season
        if not m:
            raise Incompatible("seasonal-naive needs a season: this data has none; set model.season")
        H = out.shape[0]
        lags = torch.tensor([m * (h // m + 1) for h in range(H)])  # whole seasons back from step h
        self.register_buffer("offsets", torch.arange(H) - lags)  # relative to the window's end
        if spec.seq_len is not None and spec.seq_len + int(self.offsets.min()) < 0:
            raise Incompatible(f"seasonal-naive with season {m} and horizon {H} needs a look-back of at least "
                             f"{-int(self.offsets.min())} steps; this task gives {spec.seq_len}")

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x[:, x.size(1) + self.offsets]  # (B, H, C)


@dataclass
class LinearHparams:
    normalize: bool = True  # subtract each window's last value first, add it back after (NLinear)


class WindowLinear(nn.Module):
    """One linear map from the look-back window to the horizon, shared by every channel
    (NLinear; Zeng et al. 2023, 'Are Transformers Effective for Time Series Forecasting?')."""

    def __init__(self, spec: InputSpec, hp: LinearHparams, out: OutputShape) -> None:
        super().__init__()
        if spec.seq_len is None:
            raise Incompatible("linear needs fixed-length windows")
        self.normalize = hp.normalize
        self.proj = nn.Linear(spec.seq_len, out.shape[0])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        last = x[:, -1:, :] if self.normalize else torch.zeros_like(x[:, -1:, :])  # (B, 1, C)
        y = self.proj((x - last).transpose(1, 2)).transpose(1, 2)  # (B, H, C)
        return y + last


class Majority(nn.Module):
    """The training split's class frequencies, whatever the input: argmax is the majority class."""

    def __init__(self, out: OutputShape) -> None:
        super().__init__()
        self.register_buffer("log_prior", torch.full((out.n_classes,), -math.log(out.n_classes)))

    def fit_data(self, loader: Any) -> None:
        counts = torch.zeros_like(self.log_prior)
        for batch in loader:
            counts += torch.bincount(batch["y"].flatten(), minlength=len(counts)).to(counts)
        self.log_prior = (counts / counts.sum()).clamp(min=1e-12).log()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.log_prior.expand(x.size(0), -1)  # (B, C)


class BagOfWords(nn.Module):
    """Multinomial logistic regression on term frequencies: the mean of a learned class-score
    vector per word (padding excluded), plus a bias. Weight decay is its L2 penalty."""

    def __init__(self, spec: InputSpec, out: OutputShape) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(spec.vocab_size, out.n_classes, mode="mean", padding_idx=0)
        nn.init.zeros_(self.bag.weight)
        self.bias = nn.Parameter(torch.zeros(out.n_classes))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bag(x) + self.bias  # (B, C)


@dataclass
class NgramHparams:
    order: int = 5  # n: the next character given up to n-1 previous ones
    add_k: float = 0.1  # smoothing: k added to every count

    def __post_init__(self) -> None:
        check_range("order", self.order, 1)
        check_range("add_k", self.add_k, 1e-9)


class CharNgram(nn.Module):
    """Add-k smoothed n-gram over token ids, backing off to the longest context seen in
    training. Reads only the current and earlier steps, like any causal model."""

    def __init__(self, hp: NgramHparams, out: OutputShape) -> None:
        super().__init__()
        self.order, self.k, self.V = hp.order, hp.add_k, out.n_classes
        self.log_probs: dict[tuple[int, ...], np.ndarray] = {}

    def fit_data(self, loader: Any) -> None:
        counts: dict[tuple[int, ...], np.ndarray] = defaultdict(lambda: np.zeros(self.V))
        for batch in loader:
            for xs, ys in zip(batch["x"].tolist(), batch["y"].tolist(), strict=True):
                for t, nxt in enumerate(ys):
                    context = xs[max(0, t - self.order + 2) : t + 1]
                    for start in range(len(context) + 1):
                        counts[tuple(context[start:])][nxt] += 1
        self._fit(counts)

    def _fit(self, counts: dict[tuple[int, ...], np.ndarray]) -> None:
        self.counts = counts
        self.log_probs = {c: np.log((n + self.k) / (n.sum() + self.k * self.V)) for c, n in counts.items()}

    def get_extra_state(self) -> dict[str, Any]:
        """The fitted counts (sparse), in the state dict: a kept model holds what it learnt."""
        contexts = list(getattr(self, "counts", {}))
        rows, cols = [], []
        for i, c in enumerate(contexts):
            seen = np.nonzero(self.counts[c])[0]
            rows += [i] * len(seen)
            cols += seen.tolist()
        values = [self.counts[contexts[r]][c] for r, c in zip(rows, cols, strict=True)]
        return {"contexts": contexts, "rows": torch.tensor(rows, dtype=torch.long),
                "cols": torch.tensor(cols, dtype=torch.long), "counts": torch.tensor(values, dtype=torch.float64)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        counts = {c: np.zeros(self.V) for c in state["contexts"]}
        for r, c, n in zip(state["rows"].tolist(), state["cols"].tolist(), state["counts"].tolist(), strict=True):
            counts[state["contexts"][r]][c] = n
        self._fit(counts)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        uniform = np.full(self.V, -math.log(self.V))
        out = np.empty((*x.shape, self.V))
        for b, xs in enumerate(x.tolist()):
            for t in range(len(xs)):
                context = tuple(xs[max(0, t - self.order + 2) : t + 1])
                while context not in self.log_probs and context:
                    context = context[1:]
                out[b, t] = self.log_probs.get(context, uniform)
        return torch.tensor(out, dtype=torch.float32, device=x.device)  # (B, T, V) log-probabilities


def linear_space(trial: Any) -> dict[str, Any]:
    return {
        "train.lr": trial.suggest_float("train.lr", 1e-4, 1e-1, log=True),
        "train.weight_decay": trial.suggest_categorical("train.weight_decay", WEIGHT_DECAYS),
    }


@register_model
def last_value() -> ModelSpec:
    """Forecast baseline: repeat the last observed value."""
    return ModelSpec(NoHparams, lambda spec, hp, causal, out: LastValue(out),
                     outputs=FORECAST, inputs=FEATURES, predictor=True)


@register_model
def seasonal_naive() -> ModelSpec:
    """Forecast baseline: repeat the value one season earlier."""
    return ModelSpec(SeasonalHparams, lambda spec, hp, causal, out: SeasonalNaive(spec, hp, out),
                     outputs=FORECAST, inputs=FEATURES, predictor=True)


@register_model
def linear() -> ModelSpec:
    """Forecast baseline: one linear map from look-back to horizon, shared by channels (NLinear)."""
    return ModelSpec(LinearHparams, lambda spec, hp, causal, out: WindowLinear(spec, hp, out),
                     outputs=FORECAST, inputs=FEATURES, predictor=True, search_space=linear_space,
                     train_defaults={"lr": 5e-3})


@register_model
def majority() -> ModelSpec:
    """Classification baseline: always the training split's most frequent class."""
    return ModelSpec(NoHparams, lambda spec, hp, causal, out: Majority(out),
                     outputs=frozenset({"class_per_sequence"}), predictor=True)


@register_model
def bow_logreg() -> ModelSpec:
    """Text baseline: logistic regression on bag-of-words term frequencies."""
    return ModelSpec(NoHparams, lambda spec, hp, causal, out: BagOfWords(spec, out),
                     outputs=frozenset({"class_per_sequence"}), inputs=TOKENS, predictor=True,
                     search_space=linear_space, train_defaults={"lr": 1e-2})


@register_model
def char_ngram() -> ModelSpec:
    """Language-model baseline: add-k smoothed n-gram (order 5) with back-off."""
    return ModelSpec(NgramHparams, lambda spec, hp, causal, out: CharNgram(hp, out),
                     outputs=frozenset({"class_per_step"}), inputs=TOKENS, predictor=True)
