"""Recurrent backbones: vanilla RNN, LSTM, GRU, their bidirectional and stacked presets.

Depth is a hyper-parameter of every recurrent model; ``stacked-*`` are presets of it.

Padded batches run padded (no packed sequences: on a CPU, packing costs ~7x per step).
Padding sits after each sequence's end, so it can never reach a real step of a forward
direction; each sequence's summary is read at its own last real step. A backward
direction reads each sequence reversed *within its length*, so it too starts at the real
end. Padded positions of the per-step output are zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.layers import READOUTS, InputLayer, Readout, check_choice, check_range, last_valid
from models.registry import InputSpec, ModelSpec, optimiser_space, register_model

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
# Each cell's pre-activation chunks in PyTorch's order; None: not a sigmoid gate.
GATES: dict[str, tuple[str | None, ...]] = {
    "lstm": ("input", "forget", None, "output"),
    "gru": ("reset", "update", None),
}


@dataclass
class RecurrentHparams:
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.0  # between stacked layers and on the output
    embed_dim: int = 64  # only used when the input is token ids
    readout: str = "last"  # one vector per sequence: last | mean | max | attention (models.layers.Readout)

    def __post_init__(self) -> None:
        check_range("hidden_size", self.hidden_size, 1)
        check_range("num_layers", self.num_layers, 1)
        check_range("dropout", self.dropout, 0.0, 0.95)
        check_range("embed_dim", self.embed_dim, 1)
        check_choice("readout", self.readout, READOUTS)


@dataclass
class LSTMHparams(RecurrentHparams):
    # The forget gate's bias at initialisation (1.0: Gers et al. 2000, Jozefowicz et al. 2015),
    # so that memory is kept by default; None keeps PyTorch's uniform initialisation.
    forget_bias: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.forget_bias is not None:
            check_range("forget_bias", self.forget_bias, -10.0, 10.0)


def init_forget_bias(lstm: nn.LSTM, value: float) -> None:
    """Set every layer's forget-gate bias to ``value``: PyTorch's gates are ordered
    (input, forget, cell, output), and a gate's bias is b_ih + b_hh."""
    H = lstm.hidden_size
    with torch.no_grad():
        for name, bias in lstm.named_parameters():
            if name.startswith("bias_ih"):
                bias[H : 2 * H] = value
            elif name.startswith("bias_hh"):
                bias[H : 2 * H] = 0.0


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each sequence reversed within its own length; padding stays where it is.
    x (B, T, D), lengths (B,). Applying it twice gives x back."""
    T = x.size(1)
    t = torch.arange(T, device=x.device)  # (T,)
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, T)
    return x.gather(1, idx.unsqueeze(-1).expand_as(x))


class RecurrentBackbone(nn.Module):
    def __init__(self, spec: InputSpec, hp: RecurrentHparams, cell: str, bidirectional: bool) -> None:
        super().__init__()
        self.inp = InputLayer(spec, hp.embed_dim)
        self.directions = 2 if bidirectional else 1
        self.step_dim = self.summary_dim = hp.hidden_size * self.directions
        if bidirectional:
            # One (forward, backward) pair per layer: the backward cell's input is reversed
            # within each length, which one fused bidirectional cell cannot take.
            sizes = [self.inp.out_dim] + [2 * hp.hidden_size] * (hp.num_layers - 1)
            self.layers = nn.ModuleList(
                nn.ModuleList(CELLS[cell](n, hp.hidden_size, batch_first=True) for _ in range(2)) for n in sizes
            )
            self.between = nn.Dropout(hp.dropout if hp.num_layers > 1 else 0.0)
        else:
            self.rnn = CELLS[cell](
                self.inp.out_dim,
                hp.hidden_size,
                num_layers=hp.num_layers,
                dropout=hp.dropout if hp.num_layers > 1 else 0.0,
                batch_first=True,
            )
        if isinstance(hp, LSTMHparams) and hp.forget_bias is not None:
            for module in self.modules():
                if isinstance(module, nn.LSTM):
                    init_forget_bias(module, hp.forget_bias)
        self.readout = Readout(hp.readout, self.step_dim)
        self.out_dropout = nn.Dropout(hp.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.inp(x)  # (B, T, E)
        if self.directions == 1:
            steps, _ = self.rnn(h)  # (B, T, H)
            last = None
        else:
            lengths = mask.sum(1).clamp(min=1)  # (B,)
            for i, (fwd, bwd) in enumerate(self.layers):
                if i:
                    h = self.between(h)
                ahead, _ = fwd(h)  # (B, T, H)
                back, _ = bwd(reverse_within(h, lengths))  # (B, T, H), step t saw the real end .. t
                h = torch.cat([ahead, reverse_within(back, lengths)], dim=-1)  # (B, T, 2H)
            steps = h
            # forward state after the last real step; backward state after reading back to step 0
            last = torch.cat([last_valid(ahead, mask), h[:, 0, ahead.size(-1):]], dim=-1)  # (B, 2H)
        steps = steps * mask.unsqueeze(-1).to(steps.dtype)
        return self.out_dropout(steps), self.out_dropout(self.readout(steps, mask, last))

    def gate_activations(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """LSTM and GRU gates by ``layer<i>/<gate>`` (a bidirectional layer's two directions
        side by side: (B, T, 2H)); a vanilla RNN has none. See ``models.registry.Gated``."""
        h = self.inp(x)  # (B, T, E)
        out: dict[str, torch.Tensor] = {}
        if self.directions == 1:
            if isinstance(self.rnn, nn.RNN):
                return {}
            for i in range(self.rnn.num_layers):
                gates, h = layer_gates(self.rnn, i, h)
                out.update({f"layer{i}/{g}": a for g, a in gates.items()})
            return out
        if isinstance(self.layers[0][0], nn.RNN):
            return {}
        lengths = mask.sum(1).clamp(min=1)  # (B,)
        for i, (fwd, bwd) in enumerate(self.layers):
            ahead_gates, ahead = layer_gates(fwd, 0, h)
            back_gates, back = layer_gates(bwd, 0, reverse_within(h, lengths))
            h = torch.cat([ahead, reverse_within(back, lengths)], dim=-1)  # (B, T, 2H)
            for g, a in ahead_gates.items():
                out[f"layer{i}/{g}"] = torch.cat([a, reverse_within(back_gates[g], lengths)], dim=-1)
        return out


def layer_gates(rnn: nn.RNNBase, layer: int, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The sigmoid gates of one layer of an LSTM or GRU along its trajectory, and the
    layer's outputs. x (B, T, I) -> ({gate: (B, T, H)}, (B, T, H)).

    The layer runs alone (with its own weights) to give h_1..h_T; every gate at t is then
    sigma(W_i x_t + b_i + W_h h_{t-1} + b_h) for all steps at once, with h_0 = 0."""
    weights = {k: getattr(rnn, f"{k}_l{layer}") for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    # built on the meta device (its initialisation draws nothing from the run's random
    # stream, so looking at the gates changes no later dropout mask), then given the weights
    alone = type(rnn)(x.size(-1), rnn.hidden_size, batch_first=True, device="meta")
    alone.load_state_dict({f"{k}_l0": w for k, w in weights.items()}, assign=True)
    h, _ = alone(x)  # (B, T, H)
    before = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)  # h_{t-1}, (B, T, H)
    pre_x = x @ weights["weight_ih"].T + weights["bias_ih"]  # (B, T, kH)
    pre_h = before @ weights["weight_hh"].T + weights["bias_hh"]  # (B, T, kH)
    names = GATES["lstm" if isinstance(rnn, nn.LSTM) else "gru"]
    chunks = zip(names, pre_x.chunk(len(names), -1), pre_h.chunk(len(names), -1), strict=True)
    return {name: torch.sigmoid(a + b) for name, a, b in chunks if name}, h


def space(trial: Any) -> dict[str, Any]:
    return {
        "model.hidden_size": trial.suggest_categorical("model.hidden_size", [32, 64, 128, 256]),
        "model.num_layers": trial.suggest_int("model.num_layers", 1, 3),
        "model.dropout": trial.suggest_float("model.dropout", 0.0, 0.5),
        **optimiser_space(trial),
    }


def recurrent(cell: str, bidirectional: bool = False, **preset: Any) -> ModelSpec:
    """The one builder every recurrent preset calls."""
    return ModelSpec(
        hparams=LSTMHparams if cell == "lstm" else RecurrentHparams,
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
