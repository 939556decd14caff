"""Multiplicative LSTM (Krause et al., 2016).

B. Krause, L. Lu, I. Murray and S. Renals, "Multiplicative LSTM for sequence modelling",
arXiv:1609.07959 (ICLR 2017 workshop). An intermediate state m_t, the element-wise product
of an input projection and a hidden projection, gives each input its own recurrent
transition; the gates and the candidate read x_t and m_t instead of h_{t-1}:

    m_t = (W_mx x_t) * (W_mh h_{t-1})                 (H)
    a_t = W_x x_t + W_m m_t + b                       (4H: a_i, a_f, a_g, a_o)
    i_t, f_t, o_t = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o)
    c_t = f_t * c_{t-1} + i_t * tanh(a_g)
    h_t = o_t * tanh(c_t)

a_g is the paper's candidate ĥ_t, and m_t has the hidden state's size H, as in the paper. Gate order (i, f, g, o) as in
``nn.LSTM``; every weight starts uniform(-1/sqrt(H), 1/sqrt(H)) as ``nn.LSTM``'s, and
``forget_bias`` sets b_f.

Speed: W_x x_t and W_mx x_t for all steps are one matmul (B, T, 5H) before the time loop,
which keeps the two recurrent matmuls (W_mh h_{t-1}, then W_m m_t) and the gate arithmetic.
The loop is ``models.peephole.run_cells`` in plain eager PyTorch (TorchScript and
``torch.compile`` did not pay on a CPU: see models/peephole.py). On a CPU (1 thread,
forward + backward, B=32, H=128, median of a few runs) a layer took about 0.13 s at T=128
and 0.6 s at T=512, against 0.07 s and 0.33 s for ``nn.LSTM``.

The model is causal by construction: padding sits after each sequence's end, so it never
reaches a real step; padded positions of the per-step output are zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.peephole import CellBackbone, reset_uniform, run_cells, search_space
from models.recurrent import LSTMHparams
from models.registry import ModelSpec, register_model


@dataclass
class MLSTMHparams(LSTMHparams):
    """The LSTM's hyper-parameters: m_t is as wide as h_t (``hidden_size``)."""


class MultiplicativeLayer(nn.Module):
    """One multiplicative LSTM layer: (B, T, input_size) -> (B, T, H)."""

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float | None = None) -> None:
        super().__init__()
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(5 * H, input_size))  # rows: W_x (i, f, g, o), then W_mx
        self.weight_mh = nn.Parameter(torch.empty(H, H))  # W_mh: h_{t-1} -> m_t
        self.weight_hm = nn.Parameter(torch.empty(4 * H, H))  # W_m: m_t -> (i, f, g, o)
        self.bias = nn.Parameter(torch.empty(4 * H))  # b
        reset_uniform(self, H, forget_bias)

    def forward(self, x: torch.Tensor, keep_gates: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        H = self.weight_mh.size(0)
        proj = F.linear(x, self.weight_ih)  # (B, T, 5H): every step in one matmul
        zx = proj[..., : 4 * H] + self.bias  # (B, T, 4H)
        mx = proj[..., 4 * H :]  # (B, T, H)
        return run_cells(zx, self.weight_hm, mx=mx, w_mh=self.weight_mh, keep_gates=keep_gates)


@register_model
def mlstm() -> ModelSpec:
    """Multiplicative LSTM (Krause et al., 2016): input-dependent recurrent transitions."""
    return ModelSpec(
        hparams=MLSTMHparams,
        build=lambda spec, hp, causal: CellBackbone(spec, hp, MultiplicativeLayer),
        search_space=search_space,
    )
