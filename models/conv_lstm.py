"""Convolutional LSTM (Shi et al. 2015, "Convolutional LSTM Network: A Machine Learning
Approach for Precipitation Nowcasting") for sequences of image frames.

Its input, states and gates are images (channels x height x width), and the LSTM's matrix
products are convolutions, so a unit sees only its neighbourhood and the weights are shared
across the frame:

    [a_i, a_f, a_g, a_o] = W * x_t + U * h_{t-1} + b          (* : 2-D convolution, same size)
    i, f, o = sigmoid(a_i, a_f, a_o);  c_t = f c_{t-1} + i tanh(a_g);  h_t = o tanh(c_t)

(without the paper's peephole terms). W * x_t is computed for every frame at once before the
time loop. It reads tasks whose steps are frames (``InputSpec.frame``; features in row-major
order) and refuses others. Per step it gives the last layer's hidden map flattened (channels x
height x width); per sequence, ``model.readout`` of those. For forecasts of frames it has its
own head, a convolution of the sequence's last hidden map to the K future frames (one output
channel per frame); for any other output the harness's linear head reads the flat vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.layers import Readout, check_range
from models.recurrent import LSTMHparams
from models.registry import Incompatible, InputSpec, ModelSpec, OutputShape, optimiser_space, register_model

GATES = ("input", "forget", "output")


@dataclass
class ConvLSTMHparams(LSTMHparams):
    hidden_size: int = 16  # hidden channels per layer (each a whole frame of units)
    kernel_size: int = 5  # odd, so that a convolution keeps the frame's size

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("kernel_size", self.kernel_size, 1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={self.kernel_size} is invalid: it must be odd")


class ConvLSTMLayer(nn.Module):
    """(B, T, C_in, H, W) -> (B, T, C, H, W), and optionally its gates (B, T, 3, C, H, W)."""

    def __init__(self, c_in: int, channels: int, kernel: int, forget_bias: float | None) -> None:
        super().__init__()
        self.channels = channels
        self.input_conv = nn.Conv2d(c_in, 4 * channels, kernel, padding=kernel // 2)  # W, b
        self.state_conv = nn.Conv2d(channels, 4 * channels, kernel, padding=kernel // 2, bias=False)  # U
        if forget_bias is not None:
            with torch.no_grad():
                self.input_conv.bias[channels : 2 * channels] = forget_bias

    def forward(self, x: torch.Tensor, keep_gates: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, _, Hh, Ww = x.shape
        zx = self.input_conv(x.flatten(0, 1)).view(B, T, 4 * self.channels, Hh, Ww)  # every frame at once
        h = x.new_zeros(B, self.channels, Hh, Ww)  # (B, C, H, W)
        c = torch.zeros_like(h)
        outs, gates = [], []
        for t in range(T):
            a_i, a_f, a_g, a_o = (zx[:, t] + self.state_conv(h)).chunk(4, 1)  # 4 x (B, C, H, W)
            i, f, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.sigmoid(a_o)
            c = f * c + i * torch.tanh(a_g)
            h = o * torch.tanh(c)
            outs.append(h)
            if keep_gates:
                gates.append(torch.stack([i, f, o], 1))  # (B, 3, C, H, W)
        return torch.stack(outs, 1), torch.stack(gates, 1) if keep_gates else None


class FrameHead(nn.Module):
    """The last hidden map (a flat summary) -> K future frames: (B, K, H*W)."""

    def __init__(self, channels: int, frame: tuple[int, int], horizon: int, kernel: int) -> None:
        super().__init__()
        self.channels, self.frame = channels, frame
        self.conv = nn.Conv2d(channels, horizon, kernel, padding=kernel // 2)

    def forward(self, steps: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        maps = summary.view(-1, self.channels, *self.frame)  # (B, C, H, W)
        return self.conv(maps).flatten(2)  # (B, K, H*W)


class ConvLSTM(nn.Module):
    def __init__(self, spec: InputSpec, hp: ConvLSTMHparams) -> None:
        super().__init__()
        if spec.frame is None:
            raise Incompatible("conv-lstm reads image frames: this task's steps are not images")
        self.frame = spec.frame
        self.kernel = hp.kernel_size
        C = hp.hidden_size
        sizes = [1] + [C] * (hp.num_layers - 1)
        self.layers = nn.ModuleList(ConvLSTMLayer(n, C, hp.kernel_size, hp.forget_bias) for n in sizes)
        self.between = nn.Dropout(hp.dropout if hp.num_layers > 1 else 0.0)
        self.step_dim = self.summary_dim = C * self.frame[0] * self.frame[1]
        self.readout = Readout(hp.readout, self.step_dim)
        self.out_dropout = nn.Dropout(hp.dropout)
        self.channels = C

    def _run(self, x: torch.Tensor, keep_gates: bool) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        h = x.unflatten(-1, (1, *self.frame))  # (B, T, 1, H, W)
        gates = []
        for i, layer in enumerate(self.layers):
            if i:
                h = self.between(h)
            h, g = layer(h, keep_gates)  # (B, T, C, H, W)
            gates.append(g)
        return h, gates

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, _ = self._run(x, keep_gates=False)
        steps = maps.flatten(2) * mask.unsqueeze(-1).to(maps.dtype)  # (B, T, C*H*W)
        return self.out_dropout(steps), self.out_dropout(self.readout(steps, mask))

    def gate_activations(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Input, forget and output gates by ``layer<i>/<gate>``: (B, T, C*H*W) in [0, 1]."""
        _, gates = self._run(x, keep_gates=True)
        return {f"layer{i}/{name}": g[:, :, k].flatten(2)
                for i, g in enumerate(gates) if g is not None for k, name in enumerate(GATES)}

    def make_head(self, output: OutputShape) -> nn.Module | None:
        """Frames forecast: a convolution of the last hidden map; others: the linear head."""
        frame_size = self.frame[0] * self.frame[1]
        if output.kind == "forecast" and output.shape[-1] == frame_size:
            return FrameHead(self.channels, self.frame, output.shape[0], self.kernel)
        return None


def space(trial: Any) -> dict[str, Any]:
    return {
        "model.hidden_size": trial.suggest_categorical("model.hidden_size", [8, 16, 32]),
        "model.kernel_size": trial.suggest_categorical("model.kernel_size", [3, 5]),
        "model.num_layers": trial.suggest_int("model.num_layers", 1, 2),
        "model.dropout": trial.suggest_float("model.dropout", 0.0, 0.5),
        **optimiser_space(trial, batch_sizes=(16, 32, 64)),
    }


@register_model
def conv_lstm() -> ModelSpec:
    """Convolutional LSTM (Shi et al., 2015) for sequences of image frames."""
    return ModelSpec(
        hparams=ConvLSTMHparams,
        build=lambda spec, hp, causal: ConvLSTM(spec, hp),
        search_space=space,
        inputs=frozenset({"frames"}),
    )
