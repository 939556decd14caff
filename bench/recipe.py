"""The training recipe every neural model gets: per-window normalisation for forecasting,
weight decay only where it belongs, and a learning-rate schedule over the step budget.

These are the practices a forecasting or sequence-modelling practitioner applies by
default (RevIN, Kim et al. ICLR 2022; NeuralForecast's temporal scalers; AdamW's usual
parameter groups; warm-up then cosine decay). Each is a recorded setting (``train.*``), so
it is part of a run's configuration and its hash, and each can be switched off.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from bench.config import WINDOW_NORMS

MIN_LR_RATIO = 0.1  # decaying schedules end at 10% of the peak rate (as nanoGPT does), not at zero
EPS = 1e-5


class WindowNorm(nn.Module):
    """Normalise each input window per channel, and map the forecast back.

    ``standard``: the window's mean and standard deviation (RevIN without its affine);
    ``revin``: the same plus a learnable per-channel affine (RevIN); ``robust``: the median
    and the median absolute deviation (NeuralForecast's robust scaler), which a spike in
    the window moves less. A flat window (zero spread) is only centred.
    """

    def __init__(self, kind: str, n_channels: int) -> None:
        super().__init__()
        if kind not in WINDOW_NORMS or kind == "none":
            raise ValueError(f"window_norm='{kind}' is invalid: choose from {', '.join(WINDOW_NORMS[1:])}")
        self.kind = kind
        if kind == "revin":
            self.weight = nn.Parameter(torch.ones(n_channels))
            self.bias = nn.Parameter(torch.zeros(n_channels))

    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre and scale of each window and channel: x (B, L, C) -> (B, 1, C) twice."""
        std = x.std(dim=1, keepdim=True, unbiased=False)
        if self.kind == "robust":
            centre = x.median(dim=1, keepdim=True).values
            scale = (x - centre).abs().median(dim=1, keepdim=True).values
            scale = torch.where(scale > 0, scale, std * 0.6744897501960817)  # MAD of a normal: 0.6745 sigma
        else:
            centre, scale = x.mean(dim=1, keepdim=True), std
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return centre.detach(), scale.detach() + EPS

    def normalise(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        centre, scale = self.statistics(x)
        z = (x - centre) / scale  # (B, L, C)
        if self.kind == "revin":
            z = z * self.weight + self.bias
        return z, (centre, scale)

    def denormalise(self, z: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        centre, scale = stats
        if self.kind == "revin":
            z = (z - self.bias) / (self.weight + EPS * EPS)
        return z * scale + centre  # (B, H, C)


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices only; never on biases, norms' gains, the
    window normaliser's affine, or embeddings (decay would pull rare words' vectors to zero
    for no reason but their rarity). An ``EmbeddingBag`` that *is* a model's weight matrix
    (bag-of-words logistic regression) keeps its decay: there it is the L2 penalty. A model
    marks other tensors to keep from decay with ``p._no_weight_decay = True`` (the convention
    of the Mamba and S4 reference code: a state-space model's A and step sizes)."""
    no_decay: set[int] = {id(p) for p in module.parameters() if getattr(p, "_no_weight_decay", False)}
    for sub in module.modules():
        if isinstance(sub, nn.Embedding):
            no_decay.update(id(p) for p in sub.parameters(recurse=False))
    decay, plain = [], []
    for p in module.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and id(p) not in no_decay else plain).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def lr_factor(step: int, total: int, schedule: str, warmup: int) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based): a linear
    warm-up over ``warmup`` steps, then constant, or a cosine or linear decay that reaches
    ``MIN_LR_RATIO`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * shape


def optimizer_and_schedule(module: nn.Module, train: dict[str, Any], total_steps: int) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: AdamW over ``parameter_groups`` and the
    schedule, stepped every optimizer step."""
    # Fused: one kernel for all parameters (on a CPU, ~6x faster than the per-tensor loop).
    # Not with mixed precision: Lightning refuses to clip a fused optimizer's gradients there.
    fused = train.get("precision", "32") == "32"
    optimizer = torch.optim.AdamW(parameter_groups(module, train["weight_decay"]), lr=train["lr"], fused=fused)
    warmup = round(train["lr_warmup"] * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, train["schedule"], warmup))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
