"""Mamba: a stack of selective state-space blocks (Gu & Dao, 2023, "Mamba: Linear-Time
Sequence Modeling with Selective State Spaces"), in plain PyTorch (no fused kernels).

Block (pre-norm residual): h = h + Dropout(Mixer(RMSNorm(h))), with the mixer, E = expand·H:

    x, z = in_proj(u)                                   (B, T, E) each
    x = SiLU(depthwise conv1d(x))                       kernel d_conv, left padding d_conv - 1
    Δ, B, C = softplus(dt_proj(·)), ·, · = x_proj(x)    (B, T, E), (B, T, N), (B, T, N)
    s_t = exp(Δ_t A) s_{t-1} + Δ_t B_t x_t              s_t (B, E, N), A = -exp(A_log) (E, N)
    y_t = C_t s_t + D x_t                               (B, T, E)
    out = out_proj(y · SiLU(z))                         (B, T, H)

Δ, B and C depend on the input (the "selection"): a step can be let in (large Δ) or let
through without touching the state (Δ near 0). A starts at S4D-Real (A_n = -n), D at 1, Δ's
bias at softplus⁻¹ of a log-uniform draw in [1e-3, 1e-1].

The recurrence s_t = a_t s_{t-1} + b_t is a scan with an associative operator. The mixer's
whole state-space part (decays, scan, read-out by C) is one autograd function,
``selective_scan``, with its backward written out: autograd would otherwise save several
(B, T, E, N) products per block. Both its scans (forwards for s, backwards in time for the
gradient, g_t = dL/ds_t + a_{t+1} g_{t+1}) are ``scan_``, either step by step or as a parallel
sweep: a work-efficient (Blelloch) up-sweep and down-sweep over time padded to a power of two,
2 log2(T) vectorised passes, in place. The sweep only multiplies decays in (0, 1], never
divides, so it is stable at any length. By default the sweep runs on a GPU and the loop on a
CPU, where it is the faster (T cheap steps against passes over strided views; measured).
``models.layers.sequential_scan`` is the reference loop that both are tested against.

Every operation is causal (the model is, whatever the task); padded steps are zeroed at
the input and before each mixer. Shapes: x (B, T) ids or (B, T, F) -> steps (B, T, H), summary (B, H).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import ResidualStack, check_range
from models.recurrent import RecurrentHparams
from models.registry import InputSpec, ModelSpec, optimiser_space, register_model


@dataclass
class MambaHparams(RecurrentHparams):
    hidden_size: int = 64
    num_layers: int = 2
    d_state: int = 16  # N: state size per inner channel
    d_conv: int = 4  # width of the causal depthwise convolution
    expand: int = 2  # inner width E = expand * hidden_size

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("d_state", self.d_state, 1)
        check_range("d_conv", self.d_conv, 1)
        check_range("expand", self.expand, 1)


def _buffer(x: torch.Tensor, T: int, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """An empty (B, L, ...) buffer like x, L the power of two >= T, zero-padded after the
    last step in scan order (at the front when the scan runs backwards); and its T steps."""
    L = 1 << (T - 1).bit_length()
    buf = x.new_empty((x.size(0), L, *x.shape[2:]))
    (buf[:, : L - T] if reverse else buf[:, T:]).zero_()
    return buf, buf[:, L - T :] if reverse else buf[:, :T]


def _sweep(A: torch.Tensor, X: torch.Tensor, reverse: bool) -> None:
    """In place over dim 1 (a power of two long): X_t becomes s_t = A_t s_{t-1} + X_t, s_{-1} = 0;
    backwards in time (s_t = A_t s_{t+1} + X_t) with ``reverse``, by mirrored strides."""
    L, first, last = X.size(1), int(reverse), 1 - int(reverse)  # a pair's earlier, later element
    s = 1
    while s < L:  # up-sweep: the element ending each block of 2s steps reduces its block
        Av, Xv = (t[:, (0 if reverse else s - 1) :: s].unflatten(1, (-1, 2)) for t in (A, X))
        Xv[:, :, last].addcmul_(Av[:, :, last], Xv[:, :, first])
        Av[:, :, last].mul_(Av[:, :, first])
        s *= 2
    s = L // 4
    while s >= 1:  # down-sweep: each block's middle element takes the full prefix before it
        Av, Xv = (t[:, (0 if reverse else s - 1) :: s].unflatten(1, (-1, 2)) for t in (A, X))
        if reverse:
            Xv[:, :-1, 1].addcmul_(Av[:, :-1, 1], Xv[:, 1:, 0])
        else:
            Xv[:, 1:, 0].addcmul_(Av[:, 1:, 0], Xv[:, :-1, 1])
        s //= 2


def scan_(a: torch.Tensor, x: torch.Tensor, parallel: bool, reverse: bool = False) -> torch.Tensor:
    """x_t <- a_t x_{t-1} + x_t over dim 1, x_{-1} = 0, in place in x (a is left as it was);
    backwards in time with ``reverse``: x_t <- a_{t+1} x_{t+1} + x_t, x_T = 0."""
    T = x.size(1)
    if not parallel:  # T small steps: on a CPU faster than the sweep's 2 log2(T) passes over strided views
        for t in range(T - 2, -1, -1) if reverse else range(1, T):
            x[:, t].addcmul_(a[:, t + 1] if reverse else a[:, t], x[:, t + 1] if reverse else x[:, t - 1])
        return x
    (A, a_), (X, x_) = _buffer(a, T, reverse), _buffer(x, T, reverse)
    if reverse:
        a_[:, :-1], a_[:, -1] = a[:, 1:], 0
    else:
        a_.copy_(a)
    x_.copy_(x)
    _sweep(A, X, reverse)
    return x.copy_(x_)


class _SelectiveScan(torch.autograd.Function):
    """y_t = C_t s_t with s_t = exp(Δ_t A) s_{t-1} + u_t B_t (u = Δ x), the mixer's whole state-space
    part as one function: its backward is written out, so autograd keeps none of the
    (B, T, E, N) products it would otherwise save, and only the states s are kept (the decays
    are recomputed). With g_t = dL/ds_t = C_t dy_t + a_{t+1} g_{t+1} (the scan run backwards):
    dC_t = s_t dy_t, du_t = g_t B_t, dB_t = u_t g_t, and through a_t = exp(Δ_t A), with
    h_t = g_t s_{t-1} a_t: dΔ_t = A h_t, dA = Σ_t Δ_t h_t."""

    @staticmethod
    def forward(ctx: Any, delta: torch.Tensor, A: torch.Tensor, u: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, parallel: bool) -> torch.Tensor:
        with torch.autocast(delta.device.type, enabled=False):  # float32 throughout, under mixed precision too
            a = (delta.unsqueeze(-1) * A).exp_()  # (B, T, E, N)
            s = scan_(a, u.unsqueeze(-1) * B.unsqueeze(2), parallel)  # (B, T, E, N)
            ctx.parallel = parallel
            ctx.save_for_backward(delta, A, u, B, C, s)
            return torch.einsum("bten,btn->bte", s, C)  # (B, T, E)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        delta, A, u, B, C, s = ctx.saved_tensors
        dy = dy.to(s.dtype)
        a = (delta.unsqueeze(-1) * A).exp_()
        g = scan_(a, dy.unsqueeze(-1) * C.unsqueeze(2), ctx.parallel, reverse=True)  # (B, T, E, N)
        dC = (dy.unsqueeze(2) @ s).squeeze(2)  # (B, T, N)
        du = (g @ B.unsqueeze(-1)).squeeze(-1)  # (B, T, E)
        dB = (u.unsqueeze(2) @ g).squeeze(2)  # (B, T, N)
        h = g  # g is not needed again: h_t = g_t s_{t-1} a_t, in place
        h[:, 0].zero_()  # s_{-1} = 0
        h[:, 1:].mul_(s[:, :-1])
        h.mul_(a)
        d_delta = (h * A).sum(-1)  # (B, T, E); on a CPU faster than einsum's batched products
        E, N = A.shape
        dA = (delta.reshape(-1, E).t().unsqueeze(1) @ h.reshape(-1, E, N).transpose(0, 1)).squeeze(1)  # (E, N)
        return d_delta, dA, du, dB, dC, None


def selective_scan(delta: torch.Tensor, A: torch.Tensor, u: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   parallel: bool) -> torch.Tensor:
    """y (B, T, E) from Δ, u (B, T, E), A (E, N), B, C (B, T, N): see _SelectiveScan. ``parallel``
    runs both scans as the parallel sweep, else step by step; the results are the same."""
    return _SelectiveScan.apply(delta, A, u, B, C, parallel)


class MambaMixer(nn.Module):
    # True: both scans as the parallel sweep; False: step by step (the same result); None: parallel
    # on a GPU, where it pays, step by step elsewhere (on a CPU the loop is the faster, measured)
    parallel: bool | None = None

    def __init__(self, H: int, hp: MambaHparams) -> None:
        super().__init__()
        E, N, R = hp.expand * H, hp.d_state, math.ceil(H / 16)  # R: Δ's low rank
        self.sizes = (R, N, N)
        self.in_proj = nn.Linear(H, 2 * E, bias=False)
        self.conv = nn.Conv1d(E, E, hp.d_conv, groups=E)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E)
        nn.init.uniform_(self.dt_proj.weight, -(R**-0.5), R**-0.5)
        dt = torch.exp(torch.rand(E) * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(bias) = dt
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))  # (E, N)
        self.D = nn.Parameter(torch.ones(E))
        self.A_log._no_weight_decay = True  # as the reference; read by bench.recipe.parameter_groups
        self.out_proj = nn.Linear(E, H, bias=False)
        with torch.no_grad():  # GPT-2-style: each residual branch scaled by 1/sqrt(depth)
            self.out_proj.weight /= math.sqrt(hp.num_layers)

    def selection(self, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """u (B, T, H) -> x, z, Δ (B, T, E) and B, C (B, T, N): everything that depends on the input."""
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (B, T, E) each
        x = self.conv(F.pad(x.transpose(1, 2), (self.conv.kernel_size[0] - 1, 0)))  # (B, E, T), causal
        x = F.silu(x.transpose(1, 2))  # (B, T, E)
        dt, B, C = self.x_proj(x).split(self.sizes, dim=-1)
        return x, z, F.softplus(self.dt_proj(dt)), B, C

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x, z, delta, B, C = self.selection(u)
        # the scan accumulates over every step: at least float32, under mixed precision too
        delta, x_wide = delta.float(), x.float()
        parallel = x.is_cuda if self.parallel is None else self.parallel
        y = selective_scan(delta, -self.A_log.float().exp(), delta * x_wide, B.float(), C.float(), parallel)
        y = (y + self.D * x_wide).to(x.dtype)  # (B, T, E)
        return self.out_proj(y * F.silu(z))  # (B, T, H)


def mamba_backbone(spec: InputSpec, hp: MambaHparams) -> ResidualStack:
    return ResidualStack(spec, hp, lambda: MambaMixer(hp.hidden_size, hp), lambda: nn.RMSNorm(hp.hidden_size, eps=1e-5))


def space(trial: Any) -> dict[str, Any]:
    return {
        "model.hidden_size": trial.suggest_categorical("model.hidden_size", [32, 64, 128]),
        "model.num_layers": trial.suggest_int("model.num_layers", 1, 4),
        "model.d_state": trial.suggest_categorical("model.d_state", [8, 16, 32]),
        "model.dropout": trial.suggest_float("model.dropout", 0.0, 0.3),
        **optimiser_space(trial),
    }


@register_model
def mamba() -> ModelSpec:
    """Mamba selective SSM (Gu & Dao, 2023), pure PyTorch: 2 blocks, H=64, N=16; parallel scan on GPU, loop on CPU."""
    return ModelSpec(
        hparams=MambaHparams,
        build=lambda spec, hp, causal: mamba_backbone(spec, hp),
        search_space=space,
    )
