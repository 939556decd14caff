"""Minimal RNNs: minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201).

Their gates read only the current input, never h_{t-1}, so each layer is a linear recurrence

    minGRU   z_t = σ(W_z x_t),  h~_t = g(W_h x_t),  h_t = (1 - z_t) h_{t-1} + z_t h~_t
    minLSTM  f_t = σ(W_f x_t),  i_t = σ(W_i x_t),  f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t),
             h~_t = g(W_h x_t),  h_t = f'_t h_{t-1} + i'_t h~_t

with h_0 = 0 and g(v) = v + 0.5 for v >= 0, σ(v) otherwise (the paper's log-space version: g > 0 keeps
every h_t positive, so it has a logarithm). That is h_t = a_t h_{t-1} + b_t, computed in two forms:

    parallel    (default, for training) the paper's log-space Heinsen scan:
                log h_t = a*_t + logcumsumexp_{k<=t}(log b_k - a*_k),  a*_t = Σ_{j<=t} log a_j,
                run within chunks of CHUNK steps and carried across chunks by the same recurrence,
                because float32 rounding of a*_t grows with |a*_t| ~ 0.7 t (for h of order 3:
                unchunked ~3e-5 off at T=300 and ~3e-4 at T=2048; in chunks of 32, < 1e-5 at both)
    sequential  a step-by-step loop h = a_t h + b_t, from a_t and b_t computed in linear space

Both give the same outputs; ``set_parallel(module, False)`` (or ``layer.parallel = False``) switches.
Layers: the first reads the input (B, T, F or embed_dim) and gives (B, T, H); each next one is a
pre-norm residual block h <- h + minRNN(LayerNorm(dropout(h))) (the paper's stacked models wrap each
minRNN in residual connections and normalisation; their MLP blocks are left out here).

Shapes: x (B, T) token ids or (B, T, F) features, mask (B, T) -> steps (B, T, H), summary (B, H)
(``model.readout`` of the steps). Padded input steps are zeroed first; padded output steps are zero.
Being causal, a step never reads a later one, padding included.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import InputLayer, Readout, sequential_scan
from models.recurrent import RecurrentHparams
from models.registry import InputSpec, ModelSpec, optimiser_space, register_model

CHUNK = 32  # steps per chunk of the log-space scan


def g(v: torch.Tensor) -> torch.Tensor:
    """The paper's positive activation for candidate states: v + 0.5 (v >= 0), σ(v) (v < 0)."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def log_g(v: torch.Tensor) -> torch.Tensor:
    """log g(v), without ever taking the log of a value <= 0."""
    return torch.where(v >= 0, (F.relu(v) + 0.5).log(), -F.softplus(-v))


def log_scan(log_a: torch.Tensor, log_b: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t with h_0 = 0, from log a and log b (B, T, H) -> h (B, T, H)."""
    B, T, H = log_a.shape
    chunk = max(1, min(chunk, T))
    n = -(-T // chunk)
    pad = (0, 0, 0, n * chunk - T)  # finite padding after the end: it only reaches steps cut off below
    la = F.pad(log_a, pad).view(B, n, chunk, H)  # (B, n, C, H)
    lb = F.pad(log_b, pad).view(B, n, chunk, H)  # (B, n, C, H)
    a_star = la.cumsum(2)  # (B, n, C, H) log of the decay since the chunk's start
    local = (a_star + torch.logcumsumexp(lb - a_star, 2)).exp()  # (B, n, C, H) from a zero state
    decay = a_star.exp()  # (B, n, C, H)
    carry = local.new_zeros(B, 1, H)  # (B, 1, H) the state before the chunk
    out = []
    for c in range(n):
        h = local[:, c] + decay[:, c] * carry  # (B, C, H)
        carry = h[:, -1:]
        out.append(h)
    return torch.cat(out, 1)[:, :T]  # (B, T, H)


class MinRNNLayer(nn.Module):
    """One minimal-RNN layer, (B, T, n_in) -> (B, T, H); subclasses define the gates."""

    gate_names: tuple[str, ...] = ()
    parallel: bool = True  # log-space scan (True) or step-by-step loop (False): same outputs

    def __init__(self, n_in: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(n_in, (len(self.gate_names) + 1) * hidden)  # the gates' and h~'s

    def pre(self, u: torch.Tensor) -> list[torch.Tensor]:
        p = self.proj(u)  # (B, T, (gates + 1) H)
        if p.dtype in (torch.float16, torch.bfloat16):  # the scan needs at least float32
            p = p.float()
        return list(p.chunk(len(self.gate_names) + 1, dim=-1))  # each (B, T, H)

    def gates(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def coefficients(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """a_t and b_t of h_t = a_t h_{t-1} + b_t, in linear space, each (B, T, H)."""
        raise NotImplementedError

    def log_coefficients(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if self.parallel:
            return log_scan(*self.log_coefficients(u))  # (B, T, H)
        return sequential_scan(*self.coefficients(u))  # (B, T, H)


class MinGRULayer(MinRNNLayer):
    gate_names = ("update",)

    def gates(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        k, _ = self.pre(u)
        return {"update": torch.sigmoid(k)}  # (B, T, H) z_t

    def coefficients(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.pre(u)
        return torch.sigmoid(-k), torch.sigmoid(k) * g(v)  # 1 - z_t, z_t h~_t

    def log_coefficients(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.pre(u)
        return -F.softplus(k), -F.softplus(-k) + log_g(v)  # log(1 - z_t), log(z_t h~_t)


class MinLSTMLayer(MinRNNLayer):
    gate_names = ("forget", "input")

    def gates(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        kf, ki, _ = self.pre(u)
        f, i = torch.sigmoid(kf), torch.sigmoid(ki)  # (B, T, H) each
        return {"forget": f / (f + i), "input": i / (f + i)}

    def coefficients(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gates, v = self.gates(u), self.pre(u)[-1]
        return gates["forget"], gates["input"] * g(v)  # f'_t, i'_t h~_t

    def log_coefficients(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kf, ki, v = self.pre(u)
        diff = F.softplus(-kf) - F.softplus(-ki)  # (B, T, H) log i_t - log f_t
        return -F.softplus(diff), -F.softplus(-diff) + log_g(v)  # log f'_t, log(i'_t h~_t)


LAYERS: dict[str, type[MinRNNLayer]] = {"gru": MinGRULayer, "lstm": MinLSTMLayer}


def set_parallel(module: nn.Module, parallel: bool) -> nn.Module:
    """Switch every minimal-RNN layer in ``module`` to the parallel or the sequential form."""
    for m in module.modules():
        if isinstance(m, MinRNNLayer):
            m.parallel = parallel
    return module


class MinRNNBackbone(nn.Module):
    def __init__(self, spec: InputSpec, hp: RecurrentHparams, cell: str) -> None:
        super().__init__()
        self.inp = InputLayer(spec, hp.embed_dim)
        H = hp.hidden_size
        sizes = [self.inp.out_dim] + [H] * (hp.num_layers - 1)
        self.layers = nn.ModuleList(LAYERS[cell](n, H) for n in sizes)
        self.norms = nn.ModuleList(nn.LayerNorm(H) for _ in range(hp.num_layers - 1))
        self.between = nn.Dropout(hp.dropout)
        self.readout = Readout(hp.readout, H)
        self.out_dropout = nn.Dropout(hp.dropout)
        self.step_dim = self.summary_dim = H

    def layer_inputs(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """What each layer reads, each (B, T, n_in), and the last layer's stream (B, T, H)."""
        h = self.inp(x).masked_fill(~mask.unsqueeze(-1), 0.0)  # (B, T, E): padding never reaches the scan
        inputs = [h]
        h = self.layers[0](h)  # (B, T, H)
        for norm, layer in zip(self.norms, self.layers[1:], strict=True):
            inputs.append(norm(self.between(h)))  # (B, T, H)
            h = h + layer(inputs[-1])  # (B, T, H)
        return inputs, h

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, steps = self.layer_inputs(x, mask)  # (B, T, H)
        steps = steps * mask.unsqueeze(-1).to(steps.dtype)
        return self.out_dropout(steps), self.out_dropout(self.readout(steps, mask))

    def gate_activations(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"layer{i}/{gate}": (B, T, H) activation in [0, 1]}; padded steps hold anything."""
        inputs, _ = self.layer_inputs(x, mask)
        return {
            f"layer{i}/{name}": act
            for i, (layer, u) in enumerate(zip(self.layers, inputs, strict=True))
            for name, act in layer.gates(u).items()
        }


def space(trial: Any) -> dict[str, Any]:
    return {
        "model.hidden_size": trial.suggest_categorical("model.hidden_size", [32, 64, 128, 256]),
        "model.num_layers": trial.suggest_int("model.num_layers", 1, 4),
        "model.dropout": trial.suggest_float("model.dropout", 0.0, 0.5),
        **optimiser_space(trial),
    }


def min_rnn(cell: str, **preset: Any) -> ModelSpec:
    return ModelSpec(
        hparams=RecurrentHparams,
        build=lambda spec, hp, causal: MinRNNBackbone(spec, hp, cell),
        preset=preset,
        search_space=space,
    )


@register_model
def min_gru() -> ModelSpec:
    """minGRU (Feng et al., 2024): gates from the input only, log-space parallel scan; 2 layers."""
    return min_rnn("gru", num_layers=2)


@register_model
def min_lstm() -> ModelSpec:
    """minLSTM (Feng et al., 2024): normalised forget/input gates, log-space parallel scan; 2 layers."""
    return min_rnn("lstm", num_layers=2)
