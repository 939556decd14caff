"""LSTM with attention.

One vector per sequence: learned attention pooling over the encoder states
(Bahdanau-style scores, softmax over real steps only): its readout, ``attention`` by
default; ``model.readout`` can swap it for the others (last, mean, max).
One vector per step: at step t, dot-product attention over the states 1..t (never the
future, whatever the task), combined with the state at t (Luong-style).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import Readout, check_range
from models.recurrent import LSTMHparams, RecurrentBackbone
from models.recurrent import space as recurrent_space
from models.registry import InputSpec, ModelSpec, register_model


@dataclass
class AttentionLSTMHparams(LSTMHparams):
    attn_dim: int = 64  # size of the attention scoring space
    readout: str = "attention"  # the model's own attention pooling (below)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("attn_dim", self.attn_dim, 1)


class AttentionLSTM(nn.Module):
    def __init__(self, spec: InputSpec, hp: AttentionLSTMHparams) -> None:
        super().__init__()
        self.encoder = RecurrentBackbone(spec, dataclasses.replace(hp, readout="last"), "lstm", bidirectional=False)
        H = self.encoder.step_dim
        self.pool = hp.readout == "attention"
        if self.pool:
            self.pool_proj = nn.Linear(H, hp.attn_dim)
            self.pool_score = nn.Linear(hp.attn_dim, 1, bias=False)
        else:
            self.readout = Readout(hp.readout, H)
        self.query = nn.Linear(H, hp.attn_dim)
        self.key = nn.Linear(H, hp.attn_dim)
        self.combine = nn.Linear(2 * H, H)
        self.step_dim = self.summary_dim = H

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states, _ = self.encoder(x, mask)  # (B, T, H)
        T = mask.size(1)

        # One vector per sequence: attention pooling over real steps.
        if self.pool:
            scores = self.pool_score(torch.tanh(self.pool_proj(states))).squeeze(-1)  # (B, T)
            weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)  # (B, T)
            summary = torch.einsum("bt,bth->bh", weights, states)  # (B, H)
        else:
            summary = self.readout(states, mask)  # (B, H)

        # One vector per step: causal attention over past and present states.
        q, k = self.query(states), self.key(states)  # (B, T, A)
        causal = torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()  # (T, T)
        allowed = causal.unsqueeze(0) & mask.unsqueeze(1)  # (B, T_query, T_key)
        context = F.scaled_dot_product_attention(q, k, states, attn_mask=allowed)  # (B, T, H)
        steps = torch.tanh(self.combine(torch.cat([states, context], dim=-1)))  # (B, T, H)
        return steps, summary

    def gate_activations(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.encoder.gate_activations(x, mask)  # the encoder LSTM's (models.registry.Gated)


def space(trial: Any) -> dict[str, Any]:
    return {**recurrent_space(trial), "model.attn_dim": trial.suggest_categorical("model.attn_dim", [32, 64, 128])}


@register_model
def lstm_attn() -> ModelSpec:
    """LSTM encoder with attention pooling (per sequence) and causal attention (per step)."""
    return ModelSpec(
        hparams=AttentionLSTMHparams,
        build=lambda spec, hp, causal: AttentionLSTM(spec, hp),
        search_space=space,
    )
