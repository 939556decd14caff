"""Peephole LSTM (Gers & Schmidhuber, 2000), and the cell loop and layer stack it shares
with the multiplicative LSTM (models/mlstm.py).

F. A. Gers and J. Schmidhuber, "Recurrent nets that time and count", IJCNN 2000: the input
and forget gates look at the previous cell state, the output gate at the new one, through
diagonal ("peephole") weights p_i, p_f, p_o. Gate order (i, f, g, o) as in ``nn.LSTM``:

    a_t = W x_t + U h_{t-1} + b                      (4H: a_i, a_f, a_g, a_o)
    i_t = sigmoid(a_i + p_i * c_{t-1})
    f_t = sigmoid(a_f + p_f * c_{t-1})
    c_t = f_t * c_{t-1} + i_t * tanh(a_g)
    o_t = sigmoid(a_o + p_o * c_t)
    h_t = o_t * tanh(c_t)

With p = 0 this is exactly ``nn.LSTM`` (b = b_ih + b_hh): one bias per gate, since PyTorch's
second one is redundant. Every weight, peepholes included, starts as ``nn.LSTM``'s do:
uniform(-1/sqrt(H), 1/sqrt(H)); ``forget_bias`` then sets b_f.

Speed: W x_t for all steps is one matmul (B, T, 4H) before the time loop, which keeps only
the recurrent matmul and the element-wise gate arithmetic. The loop runs in plain eager
PyTorch. On a CPU (1 thread, forward + backward, B=32, H=128, median of a few runs) a layer
took about 0.11 s at T=128 and 0.47 s at T=512, against 0.07 s and 0.33 s for ``nn.LSTM``.
``torch.jit.script`` of the loop did not pay (0.12 s and 0.55 s), nor ``torch.compile`` of
one step (0.13 s against eager's 0.14 s in the same run, after 45 s of compiling; compiling
the whole loop would unroll it, once per sequence length).

The model is causal by construction: padding sits after each sequence's end, so it never
reaches a real step; padded positions of the per-step output are zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import InputLayer, Readout
from models.recurrent import LSTMHparams
from models.recurrent import space as recurrent_space
from models.registry import InputSpec, ModelSpec, register_model

GATES = ("input", "forget", "output")  # what gate_activations reports, per layer


@dataclass
class PeepholeLSTMHparams(LSTMHparams):
    """The LSTM's hyper-parameters: the peepholes add weights, not settings."""


def run_cells(
    zx: torch.Tensor,
    w_rec: torch.Tensor,
    peephole: torch.Tensor | None = None,
    mx: torch.Tensor | None = None,
    w_mh: torch.Tensor | None = None,
    keep_gates: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LSTM recurrence over all steps, from h_0 = c_0 = 0.

    zx (B, T, 4H): each step's input part of the gates' pre-activations, bias included.
    w_rec (4H, R): the recurrent weights, applied to r_t = h_{t-1} (R = H), or, with ``mx``
    (B, T, R) and ``w_mh`` (R, H), to the multiplicative state r_t = mx_t * (W_mh h_{t-1}).
    peephole (3, H): rows p_i, p_f, p_o. Returns h (B, T, H), and with ``keep_gates`` the
    gates (B, T, 3, H) in the order of ``GATES``.
    """
    B, T, _ = zx.shape
    H = zx.size(-1) // 4
    h = zx.new_zeros(B, H)  # (B, H)
    c = zx.new_zeros(B, H)  # (B, H)
    w_rec_t = w_rec.t()  # (R, 4H)
    w_mh_t = w_mh.t() if w_mh is not None else None  # (H, R)
    mxs = mx.unbind(1) if mx is not None else None  # T x (B, R)
    outs: list[torch.Tensor] = []
    gates: list[torch.Tensor] = []
    for t, z in enumerate(zx.unbind(1)):  # z (B, 4H)
        r = h if mxs is None or w_mh_t is None else mxs[t] * (h @ w_mh_t)  # (B, R)
        a_i, a_f, a_g, a_o = (z + r @ w_rec_t).chunk(4, 1)  # 4 x (B, H)
        if peephole is not None:
            a_i = a_i + peephole[0] * c
            a_f = a_f + peephole[1] * c
        i, f = torch.sigmoid(a_i), torch.sigmoid(a_f)
        c = f * c + i * torch.tanh(a_g)  # (B, H)
        if peephole is not None:
            a_o = a_o + peephole[2] * c
        o = torch.sigmoid(a_o)
        h = o * torch.tanh(c)  # (B, H)
        outs.append(h)
        if keep_gates:
            gates.append(torch.stack([i, f, o], 1))  # (B, 3, H)
    return torch.stack(outs, 1), torch.stack(gates, 1) if keep_gates else None


def reset_uniform(layer: nn.Module, hidden_size: int, forget_bias: float | None) -> None:
    """``nn.LSTM``'s initialisation, uniform(-1/sqrt(H), 1/sqrt(H)) for every parameter; then
    the forget gate's bias (chunk 1 of ``layer.bias``, (4H,)) set to ``forget_bias``."""
    bound = hidden_size**-0.5
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(-bound, bound)
        if forget_bias is not None:
            layer.bias[hidden_size : 2 * hidden_size] = forget_bias


class PeepholeLayer(nn.Module):
    """One peephole LSTM layer: (B, T, input_size) -> (B, T, H)."""

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float | None = None) -> None:
        super().__init__()
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * H, input_size))  # W, rows (i, f, g, o)
        self.weight_hh = nn.Parameter(torch.empty(4 * H, H))  # U
        self.bias = nn.Parameter(torch.empty(4 * H))  # b
        self.peephole = nn.Parameter(torch.empty(3, H))  # rows p_i, p_f, p_o
        reset_uniform(self, H, forget_bias)

    def forward(self, x: torch.Tensor, keep_gates: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        zx = F.linear(x, self.weight_ih, self.bias)  # (B, T, 4H): every step in one matmul
        return run_cells(zx, self.weight_hh, peephole=self.peephole, keep_gates=keep_gates)


# (input_size, hidden_size, forget_bias) -> a layer whose forward(x, keep_gates) is PeepholeLayer's
LayerFactory = Callable[[int, int, float | None], nn.Module]


class CellBackbone(nn.Module):
    """Stacked hand-written LSTM-like layers, with dropout between layers and on the output
    (as ``RecurrentBackbone``), and the summary read by ``Readout(hp.readout)``."""

    def __init__(self, spec: InputSpec, hp: LSTMHparams, make_layer: LayerFactory) -> None:
        super().__init__()
        self.inp = InputLayer(spec, hp.embed_dim)
        self.step_dim = self.summary_dim = hp.hidden_size
        sizes = [self.inp.out_dim] + [hp.hidden_size] * (hp.num_layers - 1)
        self.layers = nn.ModuleList(make_layer(n, hp.hidden_size, hp.forget_bias) for n in sizes)
        self.between = nn.Dropout(hp.dropout if hp.num_layers > 1 else 0.0)
        self.readout = Readout(hp.readout, self.step_dim)
        self.out_dropout = nn.Dropout(hp.dropout)

    def _run(self, x: torch.Tensor, keep_gates: bool) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        h = self.inp(x)  # (B, T, E)
        gates = []
        for i, layer in enumerate(self.layers):
            if i:
                h = self.between(h)
            h, g = layer(h, keep_gates)  # (B, T, H), (B, T, 3, H) or None
            gates.append(g)
        return h, gates

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        steps, _ = self._run(x, keep_gates=False)  # (B, T, H)
        steps = steps * mask.unsqueeze(-1).to(steps.dtype)
        return self.out_dropout(steps), self.out_dropout(self.readout(steps, mask))

    def gate_activations(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Input, forget and output gates along the model's own trajectory, by
        ``layer<i>/<gate>``: (B, T, H) in [0, 1]; padded steps hold anything."""
        _, gates = self._run(x, keep_gates=True)
        return {
            f"layer{i}/{name}": g[:, :, k] for i, g in enumerate(gates) if g is not None for k, name in enumerate(GATES)
        }


def search_space(trial: Any) -> dict[str, Any]:
    """The recurrent models' space, and the forget gate's initial bias (None: PyTorch's)."""
    return {
        **recurrent_space(trial),
        "model.forget_bias": trial.suggest_categorical("model.forget_bias", [None, 1.0, 2.0]),
    }


@register_model
def peephole_lstm() -> ModelSpec:
    """Peephole LSTM (Gers & Schmidhuber, 2000): gates see the cell state."""
    return ModelSpec(
        hparams=PeepholeLSTMHparams,
        build=lambda spec, hp, causal: CellBackbone(spec, hp, PeepholeLayer),
        search_space=search_space,
    )
