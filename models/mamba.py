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

The recurrence s_t = a_t s_{t-1} + b_t is a scan with an associative operator. ``pscan``
runs it in parallel: a work-efficient (Blelloch) up-sweep and down-sweep over time padded
to a power of two, 2 log2(T) vectorised steps, in place under a custom autograd function
whose backward is the same scan run backwards in time (g_t = dL/ds_t + a_{t+1} g_{t+1};
dL/db_t = g_t, dL/da_t = g_t s_{t-1}). It only multiplies decays in (0, 1], never divides,
so it is stable at any length. ``sequential_scan`` is the step-by-step reference loop.

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

from models.layers import ResidualStack, check_range, sequential_scan
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


class _PScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        T = b.size(1)
        (A, a_), (X, s) = _buffer(a, T, False), _buffer(b, T, False)
        a_.copy_(a)
        s.copy_(b)
        _sweep(A, X, reverse=False)
        ctx.save_for_backward(a, s)
        return s

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, s = ctx.saved_tensors
        T = grad.size(1)
        # g_t = grad_t + a_{t+1} g_{t+1} (dL/ds_t through every later step): the scan, backwards
        (A, a_next), (X, g) = _buffer(a, T, True), _buffer(grad, T, True)
        a_next[:, :-1], a_next[:, -1] = a[:, 1:], 0
        g.copy_(grad)
        _sweep(A, X, reverse=True)
        grad_a = torch.empty_like(s)
        grad_a[:, 0] = 0  # s_{-1} = 0
        torch.mul(g[:, 1:], s[:, :-1], out=grad_a[:, 1:])  # g_t s_{t-1}
        return grad_a, g


def pscan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Parallel scan: s_t = a_t s_{t-1} + b_t, s_{-1} = 0, over dim 1. a, b (B, T, ...) -> s."""
    return _PScan.apply(a, b)


class MambaMixer(nn.Module):
    parallel = True  # pscan; False runs sequential_scan (the same result, step by step)

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
        delta, x_wide, B = delta.float(), x.float(), B.float()
        a = (delta.unsqueeze(-1) * -self.A_log.float().exp()).exp_()  # (B, T, E, N): decay per step, in place
        b = (delta * x_wide).unsqueeze(-1) * B.unsqueeze(2)  # (B, T, E, N)
        s = (pscan if self.parallel else sequential_scan)(a, b)  # (B, T, E, N)
        y = (torch.einsum("bten,btn->bte", s, C.float()) + self.D * x_wide).to(x.dtype)  # (B, T, E)
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
    """Mamba selective SSM (Gu & Dao, 2023), pure PyTorch parallel scan: 2 blocks, H=64, N=16."""
    return ModelSpec(
        hparams=MambaHparams,
        build=lambda spec, hp, causal: mamba_backbone(spec, hp),
        search_space=space,
    )
