"""xLSTM: sLSTM and mLSTM blocks (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory", arXiv:2405.04517).

Both cells have an exponential input gate and a sigmoid forget gate (the paper allows sigmoid or exp for f;
sigmoid here, log f = logsigmoid(f~)), a normaliser state n and a stabiliser m, with exponents kept <= 0:

    sLSTM  (scalar memory, eqs. 8-17; recurrent weights R block-diagonal over heads)
        z = tanh(W_z x + R_z h + b_z),  o = σ(W_o x + R_o h + b_o),  i~ = W_i x + R_i h,  f~ = W_f x + R_f h + b_f
        m_t = max(log f_t + m_{t-1}, i~_t),  i' = exp(i~_t - m_t),  f' = exp(log f_t + m_{t-1} - m_t)
        c_t = f' c_{t-1} + i' z_t,  n_t = f' n_{t-1} + i',  h_t = o_t c_t / n_t
    mLSTM  (matrix memory, eqs. 19-27; per head of width d: scalar gates from (q, k, v), no recurrence in h)
        C_t = f' C_{t-1} + i' v_t k_t^T,  n_t = f' n_{t-1} + i' k_t  (k scaled by 1/sqrt(d))
        h~_t = C_t q_t / max(|n_t^T q_t|, exp(-m_t))

c_0 = n_0 = C_0 = 0 and m_1 = i~_1, so m_t is the largest log-weight of any input so far; the stabilised states
are the paper's unstabilised ones times exp(-m_t), so h is exactly o c / n and C q / max(|n^T q|, 1). Both i' and
f' lie in [0, 1]: ``gate_activations`` reports them as "input" and "forget" (f' is the effective decay of the
stabilised state; at t = 1, where it multiplies nothing, f'_1 = f_1, taking m_0 = m_1), and o as "output". The
sLSTM input gate has no bias: a constant added to every i~ of a unit scales its c and n alike (never trained).

The mLSTM has two forms with the same outputs: parallel (default, for training), attention-like with the
causal log-decay matrix log D_ts = Σ_{s<j<=t} log f_j + i~_s stabilised by its row maximum (= m_t), which
costs O(T²) memory per head; and sequential, the recurrence one step at a time (``set_parallel(m, False)``).
Speed (CPU, 1 thread, forward + backward, B=16, T=256, H=64, one block): sLSTM ~85 ms (its R applied as one
dense block-diagonal matmul a step: ~1.7x faster than one per head), mLSTM ~190 ms (sequential ~420 ms), against
~14 ms for nn.LSTM(64, 64). Both cells compute in float32 at least, under mixed precision too.

Blocks (paper Fig. 9/10, simplified; pre-norm residual, as in the paper's xLSTM stacks):
    sLSTM block  x += GroupNorm_heads(sLSTM(LN(x)));  x += W_down(GELU(a) * b), (a, b) = W_up LN(x) (factor 4/3)
    mLSTM block  (u, z) = W_up LN(x) (factor 2);  c = SiLU(causal depthwise conv_4(u));  q, k = W c;  v = W u
                 x += W_down((GroupNorm_heads(mLSTM(q, k, v)) + s ⊙ c) ⊙ SiLU(z))
Left out: the sLSTM block's convolution feeding i and f, and the headwise (block-diagonal) q/k/v projections
(dense here). The mLSTM block's output gate is the SiLU(z) branch (as in the reference code); its [0, 1] part
σ(z), SiLU(z) = z σ(z), is reported as "output", per inner unit (2H). mLSTM gates are per head: (B, T, heads).
Forget biases start in [3, 6] (long memory). Dropout: on each residual branch and on the outputs.

``block_pattern`` gives block i's kind, cyclically: "s" (preset ``slstm``), "ms" (``xlstm``, xLSTM[1:1]).
Width: hidden_size throughout (token embeddings and projected features too; ``embed_dim`` is unused). Padded
input steps are zeroed first, padded output steps are zero; every block is causal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import InputLayer, Readout, check_range
from models.min_rnn import space as min_rnn_space
from models.recurrent import RecurrentHparams
from models.registry import InputSpec, ModelSpec, register_model

BLOCKS = "ms"  # block_pattern letters: m = mLSTM block, s = sLSTM block
CONV_KERNEL = 4  # the mLSTM block's causal convolution


def wide(t: torch.Tensor) -> torch.Tensor:
    """float16 and bfloat16 as float32: exponential gates and log-decays need at least float32."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


@dataclass
class XLSTMHparams(RecurrentHparams):
    hidden_size: int = 64
    num_layers: int = 2  # blocks
    num_heads: int = 4  # sLSTM: heads of the block-diagonal recurrence; mLSTM: memory heads
    block_pattern: str = "s"  # block i is block_pattern[i % len(block_pattern)]

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("num_heads", self.num_heads, 1)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}")
        if not self.block_pattern or set(self.block_pattern) - set(BLOCKS):
            raise ValueError(f"block_pattern={self.block_pattern!r} is invalid: it must be a string of 'm' and 's'")


class HeadNorm(nn.Module):
    """Layer norm within each head's units (the paper's group norm), with a learned scale per unit."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads, self.weight = heads, nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.unflatten(-1, (self.heads, -1))  # (..., heads, d)
        return F.layer_norm(y, y.shape[-1:]).flatten(-2) * self.weight  # (..., width)


class SLSTMCell(nn.Module):
    """The stabilised sLSTM recurrence: (B, T, H) -> (B, T, H), and with ``keep_gates`` i', f', o."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        H, d = hidden, hidden // heads
        self.heads = heads
        self.weight_ih = nn.Parameter(torch.empty(4 * H, H))  # W, rows (z, i, f, o), each (head, unit)
        self.weight_hh = nn.Parameter(torch.empty(heads, d, 4 * d))  # R, per head: its h -> its (z, i, f, o)
        self.bias = nn.Parameter(torch.zeros(3, H))  # b_z, b_f, b_o (none for i: see the module's docstring)
        self.bias._no_weight_decay = True  # biases (a 2-D tensor here); read by bench.recipe.parameter_groups
        nn.init.uniform_(self.weight_ih, -(H**-0.5), H**-0.5)
        nn.init.uniform_(self.weight_hh, -(d**-0.5), d**-0.5)
        with torch.no_grad():
            self.bias[1] = torch.linspace(3.0, 6.0, H)  # forget gates mostly open at the start

    def forward(self, x: torch.Tensor, keep_gates: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(x.device.type, enabled=False):  # under mixed precision too: float32 at least
            return self._forward(wide(x), keep_gates)

    def _forward(self, x: torch.Tensor, keep_gates: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        B, T, H = x.shape
        NH, d = self.heads, H // self.heads
        bias = torch.cat([self.bias[0], torch.zeros_like(self.bias[0]), self.bias[1], self.bias[2]])  # (4H,)
        zx = F.linear(x, self.weight_ih.to(x.dtype), bias.to(x.dtype))  # (B, T, 4H): every step in one matmul
        # R as one dense (H, 4H) matrix, zero off the heads' blocks: one small matmul a step beats one per head
        R = torch.block_diag(*self.weight_hh.to(x.dtype).unbind(0))  # (H, 4H), columns (head, gate, unit)
        R = R.view(H, NH, 4, d).transpose(1, 2).reshape(H, 4 * H)  # columns (gate, head, unit), as zx
        h = c = n = x.new_zeros(B, H)  # (B, H)
        m: torch.Tensor | None = None
        outs, gates = [], []
        for zt in zx.unbind(1):  # (B, 4H)
            z, i, f, o = torch.addmm(zt, h, R).chunk(4, 1)  # 4 x (B, H)
            log_f = F.logsigmoid(f)
            if m is None:  # first step: m_1 = i~_1, and f' multiplies c_0 = n_0 = 0
                m, i_, f_ = i, torch.ones_like(i), torch.exp(log_f)
            else:
                log_fm = log_f + m
                m = torch.maximum(log_fm, i)
                i_, f_ = torch.exp(i - m), torch.exp(log_fm - m)
            o = torch.sigmoid(o)
            c = torch.addcmul(f_ * c, i_, torch.tanh(z))  # f' c + i' z
            n = torch.addcmul(i_, f_, n)  # f' n + i'
            h = o * c / n  # (B, H)
            outs.append(h)
            if keep_gates:
                gates.append(torch.stack([i_, f_, o]))  # (3, B, H)
        out = torch.stack(outs, 1)  # (B, T, H)
        if not keep_gates:
            return out, {}
        g = torch.stack(gates, 2)  # (3, B, T, H)
        return out, {"input": g[0], "forget": g[1], "output": g[2]}


def mlstm_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor,
                   f_pre: torch.Tensor) -> torch.Tensor:
    """The mLSTM for all steps at once. q, k, v (B, NH, T, d), k scaled; i_pre, f_pre (B, NH, T) -> (B, NH, T, d)."""
    T = q.size(2)
    cum = F.logsigmoid(f_pre).cumsum(-1)  # (B, NH, T)
    a = i_pre - cum  # (B, NH, T): log D_ts = cum_t + a_s for s <= t
    top = torch.cummax(a, -1).values  # (B, NH, T): m_t = max_{s<=t} log D_ts = cum_t + top_t
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()  # (T, T)
    log_w = (a[..., None, :] - top[..., :, None]).masked_fill(~causal, float("-inf"))  # (B, NH, T, T): log D - m
    s = (q @ k.transpose(-1, -2)) * torch.exp(log_w)  # (B, NH, T, T), exponents <= 0
    den = torch.maximum(s.sum(-1, keepdim=True).abs(), torch.exp(-(cum + top))[..., None])  # (B, NH, T, 1)
    return (s @ v) / den.clamp_min(torch.finfo(den.dtype).tiny)


def mlstm_sequential(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor,
                     f_pre: torch.Tensor) -> torch.Tensor:
    """The same mLSTM one step at a time, with the state (C, n, m); arguments as ``mlstm_parallel``."""
    B, NH, T, d = q.shape
    log_f = F.logsigmoid(f_pre)  # (B, NH, T)
    C, n = q.new_zeros(B, NH, d, d), q.new_zeros(B, NH, d)  # C[value unit, key unit]
    m: torch.Tensor | None = None
    outs = []
    for t in range(T):
        i, lf = i_pre[..., t, None], log_f[..., t, None]  # (B, NH, 1)
        if m is None:
            m, i_, f_ = i, torch.ones_like(i), torch.exp(lf)
        else:
            m_new = torch.maximum(lf + m, i)
            i_, f_ = torch.exp(i - m_new), torch.exp(lf + m - m_new)
            m = m_new
        qt, kt, vt = q[:, :, t], k[:, :, t], v[:, :, t]  # (B, NH, d)
        C = f_[..., None] * C + i_[..., None] * (vt[..., :, None] * kt[..., None, :])  # (B, NH, d, d)
        n = f_ * n + i_ * kt  # (B, NH, d)
        den = torch.maximum((n * qt).sum(-1, keepdim=True).abs(), torch.exp(-m))  # (B, NH, 1)
        outs.append((C @ qt[..., None]).squeeze(-1) / den.clamp_min(torch.finfo(den.dtype).tiny))
    return torch.stack(outs, 2)  # (B, NH, T, d)


class SLSTMBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        inner = max(1, round(4 * hidden / 3))
        self.norm, self.cell, self.head_norm = nn.LayerNorm(hidden), SLSTMCell(hidden, heads), HeadNorm(hidden, heads)
        self.mlp_norm, self.up, self.down = nn.LayerNorm(hidden), nn.Linear(hidden, 2 * inner), nn.Linear(inner, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep_gates: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h, gates = self.cell(self.norm(x), keep_gates)  # (B, T, H)
        x = x + self.drop(self.head_norm(h))
        a, b = self.up(self.mlp_norm(x)).chunk(2, -1)  # (B, T, inner) each
        return x + self.drop(self.down(F.gelu(a) * b)), gates


class MLSTMBlock(nn.Module):
    parallel: bool = True  # parallel (True) or sequential (False) mLSTM: same outputs

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        D = 2 * hidden
        self.heads = heads
        self.norm, self.up = nn.LayerNorm(hidden), nn.Linear(hidden, 2 * D)  # -> mLSTM branch u, gate branch z
        self.conv = nn.Conv1d(D, D, CONV_KERNEL, groups=D, padding=CONV_KERNEL - 1)  # causal once cut to T
        self.qk, self.v = nn.Linear(D, 2 * D), nn.Linear(D, D)
        self.gates = nn.Linear(3 * D, 2 * heads)  # i~ and f~ per head, from (q, k, v)
        with torch.no_grad():
            self.gates.bias[:heads].normal_(0.0, 0.1)
            self.gates.bias[heads:] = torch.linspace(3.0, 6.0, heads)  # forget gates mostly open
        self.head_norm, self.skip = HeadNorm(D, heads), nn.Parameter(torch.ones(D))
        self.down, self.drop = nn.Linear(D, hidden), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep_gates: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        B, T, _ = x.shape
        u, z = self.up(self.norm(x)).chunk(2, -1)  # (B, T, D) each
        c = F.silu(self.conv(u.transpose(1, 2))[..., :T].transpose(1, 2))  # (B, T, D)
        q, k = self.qk(c).chunk(2, -1)  # (B, T, D) each
        v = self.v(u)  # (B, T, D)
        i_pre, f_pre = map(wide, self.gates(torch.cat([q, k, v], -1)).chunk(2, -1))  # (B, T, NH) each
        split = lambda a: wide(a).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, T, D) -> (B, NH, T, d)
        cell = mlstm_parallel if self.parallel else mlstm_sequential
        scale = 1.0 / math.sqrt(q.size(-1) // self.heads)
        with torch.autocast(x.device.type, enabled=False):  # under mixed precision too: float32 at least
            h = cell(split(q), split(k) * scale, split(v), i_pre.transpose(1, 2), f_pre.transpose(1, 2))
        h = self.head_norm(h.transpose(1, 2).flatten(2))  # (B, T, D)
        y = x + self.drop(self.down((h + self.skip * c) * F.silu(z)))
        if not keep_gates:
            return y, {}
        log_f = F.logsigmoid(f_pre)  # (B, T, NH)
        cum = log_f.cumsum(1)
        m = cum + torch.cummax(i_pre - cum, 1).values  # (B, T, NH): the stabiliser m_t
        m_before = torch.cat([m[:, :1], m[:, :-1]], 1)  # (B, T, NH): m_{t-1}, with m_0 = m_1
        f_ = torch.exp(log_f + m_before - m)
        return y, {"input": torch.exp(i_pre - m), "forget": f_, "output": torch.sigmoid(z)}


def set_parallel(module: nn.Module, parallel: bool) -> nn.Module:
    """Switch every mLSTM block in ``module`` to the parallel or the sequential form."""
    for block in module.modules():
        if isinstance(block, MLSTMBlock):
            block.parallel = parallel
    return module


class XLSTMBackbone(nn.Module):
    def __init__(self, spec: InputSpec, hp: XLSTMHparams) -> None:
        super().__init__()
        H = hp.hidden_size
        self.inp = InputLayer(spec, H, project_features=True)
        kinds = [MLSTMBlock if hp.block_pattern[i % len(hp.block_pattern)] == "m" else SLSTMBlock
                 for i in range(hp.num_layers)]
        self.blocks = nn.ModuleList(kind(H, hp.num_heads, hp.dropout) for kind in kinds)
        self.post_norm, self.readout = nn.LayerNorm(H), Readout(hp.readout, H)
        self.out_dropout = nn.Dropout(hp.dropout)
        self.step_dim = self.summary_dim = H

    def _run(self, x: torch.Tensor, mask: torch.Tensor, keep_gates: bool) -> tuple[torch.Tensor, list[dict]]:
        h = self.inp(x).masked_fill(~mask.unsqueeze(-1), 0.0)  # (B, T, H): padding never reaches a block
        gates = []
        for block in self.blocks:
            h, g = block(h, keep_gates)  # (B, T, H)
            gates.append(g)
        return self.post_norm(h), gates

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        steps, _ = self._run(x, mask, keep_gates=False)  # (B, T, H)
        steps = steps * mask.unsqueeze(-1).to(steps.dtype)
        return self.out_dropout(steps), self.out_dropout(self.readout(steps, mask))

    def gate_activations(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"layer{i}/{gate}": activation in [0, 1]}: sLSTM (B, T, H); mLSTM input and forget (B, T, heads),
        output (B, T, 2H). Padded steps hold anything."""
        _, gates = self._run(x, mask, keep_gates=True)
        return {f"layer{i}/{name}": a for i, g in enumerate(gates) for name, a in g.items()}


def space(trial: Any) -> dict[str, Any]:
    """The minimal RNNs' space (width, depth, dropout, optimiser), and the number of heads."""
    return {**min_rnn_space(trial), "model.num_heads": trial.suggest_categorical("model.num_heads", [1, 2, 4])}


def xlstm_spec(**preset: Any) -> ModelSpec:
    build = lambda spec, hp, causal: XLSTMBackbone(spec, hp)  # causal or not: every block is causal
    return ModelSpec(hparams=XLSTMHparams, build=build, preset=preset, search_space=space)


@register_model
def slstm() -> ModelSpec:
    """sLSTM (Beck et al., 2024): exponential gating, head-wise recurrence, normaliser state; 2 blocks."""
    return xlstm_spec(block_pattern="s")


@register_model
def xlstm() -> ModelSpec:
    """xLSTM[1:1] (Beck et al., 2024): mLSTM (matrix memory, parallel) and sLSTM blocks alternating; 2 blocks."""
    return xlstm_spec(block_pattern="ms")
