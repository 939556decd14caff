"""Recurrent backbones: vanilla RNN, LSTM, GRU, their bidirectional and stacked presets.

Depth is a hyper-parameter of every recurrent model; ``stacked-*`` are presets of it.
Padding is handled with packed sequences, so a padded step never reaches a real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.layers import InputLayer, check_range
from models.registry import WEIGHT_DECAYS, InputSpec, ModelSpec, register_model

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class RecurrentHparams:
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.0  # between stacked layers and on the output
    embed_dim: int = 64  # only used when the input is token ids

    def __post_init__(self) -> None:
        check_range("hidden_size", self.hidden_size, 1)
        check_range("num_layers", self.num_layers, 1)
        check_range("dropout", self.dropout, 0.0, 0.95)
        check_range("embed_dim", self.embed_dim, 1)


class RecurrentBackbone(nn.Module):
    def __init__(self, spec: InputSpec, hp: RecurrentHparams, cell: str, bidirectional: bool) -> None:
        super().__init__()
        self.inp = InputLayer(spec, hp.embed_dim)
        self.rnn = CELLS[cell](
            self.inp.out_dim,
            hp.hidden_size,
            num_layers=hp.num_layers,
            dropout=hp.dropout if hp.num_layers > 1 else 0.0,
            batch_first=True,
            bidirectional=bidirectional,
        )
        self.directions = 2 if bidirectional else 1
        self.step_dim = self.summary_dim = hp.hidden_size * self.directions
        self.out_dropout = nn.Dropout(hp.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.inp(x)  # (B, T, E)
        B, T = mask.shape
        if bool(mask.all()):
            steps, h_n = self.rnn(h)
        else:
            lengths = mask.sum(1).clamp(min=1).cpu()
            packed = pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
            steps, h_n = self.rnn(packed)
            steps, _ = pad_packed_sequence(steps, batch_first=True, total_length=T)  # (B, T, D*H)
        if isinstance(h_n, tuple):  # LSTM: (h_n, c_n)
            h_n = h_n[0]
        # h_n: (layers * directions, B, H); the last layer's final state of each direction
        # is the state after the last *real* step (packing stops each sequence there).
        last = h_n.view(-1, self.directions, B, h_n.size(-1))[-1]  # (D, B, H)
        summary = last.transpose(0, 1).reshape(B, -1)  # (B, D*H)
        return self.out_dropout(steps), self.out_dropout(summary)


def space(trial: Any) -> dict[str, Any]:
    return {
        "model.hidden_size": trial.suggest_categorical("model.hidden_size", [32, 64, 128, 256]),
        "model.num_layers": trial.suggest_int("model.num_layers", 1, 3),
        "model.dropout": trial.suggest_float("model.dropout", 0.0, 0.5),
        "train.lr": trial.suggest_float("train.lr", 1e-4, 1e-2, log=True),
        "train.weight_decay": trial.suggest_categorical("train.weight_decay", WEIGHT_DECAYS),
        "train.batch_size": trial.suggest_categorical("train.batch_size", [32, 64, 128]),
    }


def recurrent(cell: str, bidirectional: bool = False, **preset: Any) -> ModelSpec:
    """The one builder every recurrent preset calls."""
    return ModelSpec(
        hparams=RecurrentHparams,
        build=lambda spec, hp, causal: RecurrentBackbone(spec, hp, cell, bidirectional),
        preset=preset,
        bidirectional=bidirectional,
        search_space=space,
    )


@register_model
def rnn() -> ModelSpec:
    """Vanilla (Elman) RNN with tanh units."""
    return recurrent("rnn")


@register_model
def lstm() -> ModelSpec:
    """LSTM (Hochreiter & Schmidhuber, 1997)."""
    return recurrent("lstm")


@register_model
def gru() -> ModelSpec:
    """GRU (Cho et al., 2014)."""
    return recurrent("gru")


@register_model
def bilstm() -> ModelSpec:
    """Bidirectional LSTM; reads the future, so causal tasks refuse it."""
    return recurrent("lstm", bidirectional=True, hidden_size=64)


@register_model
def bigru() -> ModelSpec:
    """Bidirectional GRU; reads the future, so causal tasks refuse it."""
    return recurrent("gru", bidirectional=True, hidden_size=64)


@register_model
def stacked_lstm() -> ModelSpec:
    """LSTM, 2 layers with dropout 0.2 between them."""
    return recurrent("lstm", num_layers=2, dropout=0.2)


@register_model
def stacked_gru() -> ModelSpec:
    """GRU, 2 layers with dropout 0.2 between them."""
    return recurrent("gru", num_layers=2, dropout=0.2)
