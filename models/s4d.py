"""S4D: a stack of diagonal state-space layers (Gu, Gupta, Goel & Ré, 2022, "On the
Parameterization and Initialization of Diagonal State Space Models", NeurIPS).

Each of the H channels is a linear time-invariant SSM with N/2 complex diagonal modes
(each paired with its conjugate, so the output is real), discretised by zero-order hold:

    x_t = exp(Δ A) x_{t-1} + (exp(Δ A) - 1) / A · u_t        x_t in C^{N/2}
    y_t = 2 Re(C x_t) + D u_t

A = -exp(log_A_real) + i A_imag starts at S4D-Lin (A_n = -1/2 + iπn), Δ log-uniform in
[dt_min, dt_max], C complex normal, D normal; all are trained. Unrolled, the recurrence is
the causal convolution y = K * u + D u with the kernel

    K_l = 2 Re( C (exp(ΔA) - 1) / A · exp(ΔA)^l ),   l = 0 .. T-1   (a Vandermonde product)

applied by FFT with zero padding to 2T (O(T log T); step t reads steps <= t only). Padded
steps are zeroed at the input and before every convolution, so their values never reach a
real step, not even through the FFT's rounding. The model is always causal, whatever the task.

Block (pre-norm residual, the S4 repository's standalone S4D layer):
    h = h + Dropout(GLU(Linear(Dropout(GELU(SSM(LayerNorm(h)))))))
Shapes: x (B, T) ids or (B, T, F) features -> h (B, T, H) -> steps (B, T, H), summary (B, H).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.layers import ResidualStack, check_range
from models.recurrent import RecurrentHparams
from models.registry import InputSpec, ModelSpec, optimiser_space, register_model


@dataclass
class S4DHparams(RecurrentHparams):
    num_layers: int = 4
    dropout: float = 0.1  # after the activation and on each block's output
    d_state: int = 64  # N: state size per channel, N/2 complex-conjugate pairs
    dt_min: float = 1e-3  # Δ's initial range (log-uniform); longer sequences want smaller steps
    dt_max: float = 1e-1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("d_state", self.d_state, 2)
        if self.d_state % 2:
            raise ValueError(f"d_state={self.d_state} is invalid: it must be even (N/2 conjugate pairs)")
        check_range("dt_min", self.dt_min, 1e-6, 1.0)
        check_range("dt_max", self.dt_max, self.dt_min, 10.0)


class S4DLayer(nn.Module):
    """(B, T, H) -> (B, T, H): the diagonal SSM convolution, D skip, GELU and a GLU output."""

    def __init__(self, H: int, N: int, dt_min: float, dt_max: float, dropout: float) -> None:
        super().__init__()
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)  # (H,)
        self.log_A_real = nn.Parameter(torch.full((H, N // 2), math.log(0.5)))  # (H, N/2)
        self.A_imag = nn.Parameter(math.pi * torch.arange(N // 2, dtype=torch.float32).repeat(H, 1))  # (H, N/2)
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, N // 2, dtype=torch.cfloat)))  # (H, N/2, 2)
        self.D = nn.Parameter(torch.randn(H))  # (H,)
        for p in (self.log_dt, self.log_A_real, self.A_imag):  # as the reference: A and Δ are never decayed
            p._no_weight_decay = True  # read by bench.recipe.parameter_groups
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.out = nn.Sequential(nn.Linear(H, 2 * H), nn.GLU(dim=-1))

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ZOH discretisation: ΔA (H, N/2), whose exp is the state's decay per step, and
        C (exp(ΔA) - 1) / A (H, N/2), the input's weight folded into the output's."""
        A = torch.complex(-self.log_A_real.exp(), self.A_imag)  # (H, N/2)
        dtA = A * self.log_dt.exp().unsqueeze(-1)  # (H, N/2)
        return dtA, torch.view_as_complex(self.C) * (dtA.exp() - 1) / A

    def kernel(self, T: int) -> torch.Tensor:
        """K (H, T): the SSM's response to a unit impulse, steps 0 .. T-1."""
        dtA, CB = self.discrete()
        powers = torch.exp(dtA.unsqueeze(-1) * torch.arange(T, device=dtA.device))  # (H, N/2, T)
        return 2 * torch.einsum("hn,hnl->hl", CB, powers).real

    def ssm(self, u: torch.Tensor) -> torch.Tensor:
        """y = K * u + D u, causal, by FFT. u (B, T, H) -> (B, T, H)."""
        T = u.size(1)
        k_f = torch.fft.rfft(self.kernel(T), n=2 * T)  # (H, T+1)
        u_f = torch.fft.rfft(u.transpose(1, 2), n=2 * T)  # (B, H, T+1)
        y = torch.fft.irfft(u_f * k_f, n=2 * T)[..., :T].transpose(1, 2)  # (B, T, H)
        return y + u * self.D

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.act(self.ssm(u))))  # (B, T, H)


def s4d_backbone(spec: InputSpec, hp: S4DHparams) -> ResidualStack:
    layer = lambda: S4DLayer(hp.hidden_size, hp.d_state, hp.dt_min, hp.dt_max, hp.dropout)
    return ResidualStack(spec, hp, layer, lambda: nn.LayerNorm(hp.hidden_size))


def space(trial: Any) -> dict[str, Any]:
    return {
        "model.hidden_size": trial.suggest_categorical("model.hidden_size", [32, 64, 128, 256]),
        "model.num_layers": trial.suggest_int("model.num_layers", 1, 6),
        "model.d_state": trial.suggest_categorical("model.d_state", [16, 32, 64, 128]),
        "model.dropout": trial.suggest_float("model.dropout", 0.0, 0.3),
        **optimiser_space(trial),
    }


@register_model
def s4d() -> ModelSpec:
    """S4D diagonal state-space model (Gu et al., 2022): 4 pre-norm blocks, H=128, N=64, causal."""
    return ModelSpec(
        hparams=S4DHparams,
        build=lambda spec, hp, causal: s4d_backbone(spec, hp),
        # One learning rate for all: the paper trains A, Δ (and B, C) at 1e-3 and the rest
        # higher; the SSM parameters are the ones that bound it.
        train_defaults={"lr": 1e-3},
        search_space=space,
    )
