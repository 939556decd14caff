"""Small building blocks shared by model families."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from models.registry import InputSpec


class InputLayer(nn.Module):
    """Token ids -> embeddings, or real features -> themselves (or a projection).

    Padding id 0 gets a zero, untrained embedding; it is masked out downstream anyway.
    """

    def __init__(self, spec: InputSpec, dim: int, project_features: bool = False) -> None:
        super().__init__()
        if spec.vocab_size is not None:
            self.layer: nn.Module = nn.Embedding(spec.vocab_size, dim, padding_idx=0)
            self.out_dim = dim
        elif project_features:
            self.layer = nn.Linear(spec.n_features, dim)
            self.out_dim = dim
        else:
            self.layer = nn.Identity()
            self.out_dim = spec.n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)  # (B, T, out_dim)


class ResidualStack(nn.Module):
    """The state-space models' backbone: the input projected to width H, then pre-norm
    residual blocks h <- h + Dropout(block(norm(h))), a final norm, and the readout.

    Padded steps are zeroed at the input (padded features never enter, whatever they hold,
    NaN included) and before every block, so no convolution or scan carries them.
    """

    def __init__(self, spec: InputSpec, hp: Any, block: Callable[[], nn.Module], norm: Callable[[], nn.Module]) -> None:
        super().__init__()
        H = hp.hidden_size
        self.inp = InputLayer(spec, hp.embed_dim)
        self.proj = nn.Linear(self.inp.out_dim, H)
        self.norms = nn.ModuleList(norm() for _ in range(hp.num_layers))
        self.blocks = nn.ModuleList(block() for _ in range(hp.num_layers))
        self.drop = nn.Dropout(hp.dropout)
        self.norm_f = norm()
        self.step_dim = self.summary_dim = H
        self.readout = Readout(hp.readout, H)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.is_floating_point():
            x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        h = self.proj(self.inp(x))  # (B, T, H)
        m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        h = h * m
        for norm, block in zip(self.norms, self.blocks, strict=True):
            h = h + self.drop(block(norm(h) * m))
        steps = self.norm_f(h) * m  # (B, T, H)
        return steps, self.readout(steps, mask)


def last_valid(steps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The vector at each sequence's last real step. steps (B, T, D), mask (B, T) -> (B, D)."""
    idx = (mask.sum(1) - 1).clamp(min=0)  # (B,)
    return steps[torch.arange(steps.size(0), device=steps.device), idx]


def masked_mean(steps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real steps only. steps (B, T, D), mask (B, T) -> (B, D)."""
    m = mask.unsqueeze(-1).to(steps.dtype)
    return (steps * m).sum(1) / m.sum(1).clamp(min=1.0)


READOUTS = ("last", "mean", "max", "attention")
SCORE_WIDTH = 128  # the attention readout's scoring layer, at most (a conv-LSTM's steps are whole frames)


class Readout(nn.Module):
    """One vector per sequence from a layer's per-step outputs: ``model.readout``.

    last       the state after each sequence's last real step (the "last output")
    mean, max  pooled over the real steps of the whole output sequence ("return sequences")
    attention  a learned score per step, softmax over the real steps, weighted sum

    Padded steps never count, whatever their values.
    """

    def __init__(self, kind: str, dim: int) -> None:
        super().__init__()
        check_choice("readout", kind, READOUTS)
        self.kind = kind
        if kind == "attention":
            width = min(dim, SCORE_WIDTH)
            self.score = nn.Sequential(nn.Linear(dim, width), nn.Tanh(), nn.Linear(width, 1, bias=False))

    def forward(self, steps: torch.Tensor, mask: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
        """steps (B, T, D), mask (B, T); ``last`` (B, D) overrides the last-step vector
        (a bidirectional layer's, whose backward half ends at step 0) -> (B, D)."""
        if self.kind == "last":
            return last if last is not None else last_valid(steps, mask)
        if self.kind == "mean":
            return masked_mean(steps, mask)
        real = mask.unsqueeze(-1)  # (B, T, 1)
        if self.kind == "max":
            pooled = steps.masked_fill(~real, float("-inf")).amax(1)  # (B, D)
            return torch.where(real.any(1), pooled, torch.zeros_like(pooled))  # an empty sequence gives 0
        scores = self.score(steps).squeeze(-1).masked_fill(~mask, float("-inf"))  # (B, T)
        weights = torch.nan_to_num(scores.softmax(-1))  # an empty sequence: all-NaN row -> 0
        return torch.einsum("bt,btd->bd", weights, steps)  # (B, D)


def sequential_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The linear recurrence h_t = a_t h_{t-1} + b_t from h_0 = 0, one step at a time: the
    reference that parallel scans are tested against. a, b (B, T, ...) -> h (B, T, ...)."""
    h, out = torch.zeros_like(b[:, 0]), []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1), strict=True):  # (unbind: one backward, not T)
        h = a_t * h + b_t
        out.append(h)
    return torch.stack(out, 1)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a one-line ValueError naming the hyper-parameter and its valid choices."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is invalid: it must be one of {', '.join(choices)}")


def check_range(name: str, value: float, lo: float, hi: float | None = None) -> None:
    """Raise a one-line ValueError naming the hyper-parameter when it is out of range."""
    if not (value >= lo and (hi is None or value <= hi)):  # also refuses NaN
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}={value!r} is invalid: it must be {bound}")
