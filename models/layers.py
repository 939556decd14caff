"""Small building blocks shared by model families."""

from __future__ import annotations

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


def last_valid(steps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The vector at each sequence's last real step. steps (B, T, D), mask (B, T) -> (B, D)."""
    idx = (mask.sum(1) - 1).clamp(min=0)  # (B,)
    return steps[torch.arange(steps.size(0), device=steps.device), idx]


def masked_mean(steps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real steps only. steps (B, T, D), mask (B, T) -> (B, D)."""
    m = mask.unsqueeze(-1).to(steps.dtype)
    return (steps * m).sum(1) / m.sum(1).clamp(min=1.0)


def check_range(name: str, value: float, lo: float, hi: float | None = None) -> None:
    """Raise a one-line ValueError naming the hyper-parameter when it is out of range."""
    if not (value >= lo and (hi is None or value <= hi)):  # also refuses NaN
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}={value!r} is invalid: it must be {bound}")
