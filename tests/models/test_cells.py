"""The hand-written LSTM cells: the peephole LSTM (models/peephole.py) and the multiplicative
LSTM (models/mlstm.py) against nn.LSTM and against their papers' equations step by step,
and their gate introspection."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from optuna.trial import FixedTrial
from torch import nn

from models import MODELS, InputSpec, get_model
from models.mlstm import MultiplicativeLayer
from models.peephole import PeepholeLayer

FAMILIES = ["peephole-lstm", "mlstm"]
FEATURES, HIDDEN = 3, 8


def build(name: str, **overrides: object) -> nn.Module:
    torch.manual_seed(0)
    spec = get_model(name)
    return spec.build(InputSpec(n_features=FEATURES), spec.make_hparams(hidden_size=HIDDEN, **overrides), False)


def test_both_families_are_registered_and_causal() -> None:
    for name in FAMILIES:
        assert name in MODELS
        assert not get_model(name).bidirectional


def copy_lstm(backbone: nn.Module, lstm: nn.LSTM) -> None:
    """nn.LSTM's weights into a peephole backbone, with zero peepholes."""
    with torch.no_grad():
        for k, layer in enumerate(backbone.layers):
            layer.weight_ih.copy_(getattr(lstm, f"weight_ih_l{k}"))
            layer.weight_hh.copy_(getattr(lstm, f"weight_hh_l{k}"))
            layer.bias.copy_(getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}"))
            layer.peephole.zero_()


@pytest.mark.parametrize("num_layers", [1, 2])
def test_zero_peepholes_make_an_lstm(num_layers: int) -> None:
    backbone = build("peephole-lstm", num_layers=num_layers).eval()
    torch.manual_seed(1)
    lstm = nn.LSTM(FEATURES, HIDDEN, num_layers=num_layers, batch_first=True)
    copy_lstm(backbone, lstm)
    for T in (1, 5, 12):
        x = torch.randn(4, T, FEATURES)
        steps, summary = backbone(x, torch.ones(4, T, dtype=torch.bool))
        expected, _ = lstm(x)  # (B, T, H)
        torch.testing.assert_close(steps, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(summary, expected[:, -1], atol=1e-5, rtol=0)
    # ... and so are the gradients (one bias here is nn.LSTM's two).
    steps.pow(2).sum().backward()
    expected.pow(2).sum().backward()
    for k, layer in enumerate(backbone.layers):
        torch.testing.assert_close(layer.weight_hh.grad, getattr(lstm, f"weight_hh_l{k}").grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.bias.grad, getattr(lstm, f"bias_ih_l{k}").grad, atol=1e-5, rtol=1e-4)


def test_nonzero_peepholes_change_the_outputs() -> None:
    backbone = build("peephole-lstm").eval()
    lstm = nn.LSTM(FEATURES, HIDDEN, batch_first=True)
    copy_lstm(backbone, lstm)
    x = torch.randn(2, 6, FEATURES)
    with torch.no_grad():
        backbone.layers[0].peephole.normal_()
        steps, _ = backbone(x, torch.ones(2, 6, dtype=torch.bool))
        assert not torch.allclose(steps, lstm(x)[0], atol=1e-3)


def reference_peephole(layer: PeepholeLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gers & Schmidhuber's equations, one gate and one step at a time. x (B, T, I)."""
    W_i, W_f, W_g, W_o = layer.weight_ih.double().chunk(4)
    U_i, U_f, U_g, U_o = layer.weight_hh.double().chunk(4)
    b_i, b_f, b_g, b_o = layer.bias.double().chunk(4)
    p_i, p_f, p_o = layer.peephole.double()
    h = c = torch.zeros(x.size(0), layer.weight_hh.size(1), dtype=torch.double)
    hs, gates = [], []
    for x_t in x.double().unbind(1):
        i = torch.sigmoid(x_t @ W_i.T + h @ U_i.T + b_i + p_i * c)
        f = torch.sigmoid(x_t @ W_f.T + h @ U_f.T + b_f + p_f * c)
        c = f * c + i * torch.tanh(x_t @ W_g.T + h @ U_g.T + b_g)
        o = torch.sigmoid(x_t @ W_o.T + h @ U_o.T + b_o + p_o * c)
        h = o * torch.tanh(c)
        hs.append(h)
        gates.append(torch.stack([i, f, o], 1))
    return torch.stack(hs, 1).float(), torch.stack(gates, 1).float()


def reference_mlstm(layer: MultiplicativeLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Krause et al.'s equations, one gate and one step at a time. x (B, T, I)."""
    W_ix, W_fx, W_hx, W_ox, W_mx = layer.weight_ih.double().chunk(5)
    W_im, W_fm, W_hm, W_om = layer.weight_hm.double().chunk(4)
    b_i, b_f, b_h, b_o = layer.bias.double().chunk(4)
    W_mh = layer.weight_mh.double()
    h = c = torch.zeros(x.size(0), W_mh.size(0), dtype=torch.double)
    hs, gates = [], []
    for x_t in x.double().unbind(1):
        m = (x_t @ W_mx.T) * (h @ W_mh.T)
        h_hat = x_t @ W_hx.T + m @ W_hm.T + b_h
        i = torch.sigmoid(x_t @ W_ix.T + m @ W_im.T + b_i)
        o = torch.sigmoid(x_t @ W_ox.T + m @ W_om.T + b_o)
        f = torch.sigmoid(x_t @ W_fx.T + m @ W_fm.T + b_f)
        c = f * c + i * torch.tanh(h_hat)
        h = torch.tanh(c) * o
        hs.append(h)
        gates.append(torch.stack([i, f, o], 1))
    return torch.stack(hs, 1).float(), torch.stack(gates, 1).float()


@pytest.mark.parametrize(("name", "reference"), [("peephole-lstm", reference_peephole), ("mlstm", reference_mlstm)])
def test_layers_follow_their_papers_equations(
    name: str, reference: Callable[..., tuple[torch.Tensor, torch.Tensor]]
) -> None:
    backbone = build(name, num_layers=2).eval()
    with torch.no_grad():
        for p in backbone.parameters():
            p.normal_(0.0, 0.5)  # larger than at initialisation: every term matters
        x = torch.randn(3, 7, FEATURES)
        h0, gates0 = reference(backbone.layers[0], x)
        h1, gates1 = reference(backbone.layers[1], h0)
        steps, summary = backbone(x, torch.ones(3, 7, dtype=torch.bool))
        got = backbone.gate_activations(x, torch.ones(3, 7, dtype=torch.bool))
    torch.testing.assert_close(steps, h1, atol=1e-5, rtol=0)
    torch.testing.assert_close(summary, h1[:, -1], atol=1e-5, rtol=0)
    for layer, gates in enumerate([gates0, gates1]):  # the gates along the same trajectory
        for k, gate in enumerate(["input", "forget", "output"]):
            torch.testing.assert_close(got[f"layer{layer}/{gate}"], gates[:, :, k], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_gate_activations_keys_shapes_and_range(name: str) -> None:
    backbone = build(name, num_layers=2).eval()
    x = torch.randn(2, 9, FEATURES)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 5:] = False
    with torch.no_grad():
        gates = backbone.gate_activations(x, mask)
    assert set(gates) == {f"layer{i}/{g}" for i in range(2) for g in ("input", "forget", "output")}
    for gate in gates.values():
        assert gate.shape == (2, 9, HIDDEN)
        assert ((gate >= 0) & (gate <= 1)).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_forget_bias_keeps_memory_at_initialisation(name: str) -> None:
    x = torch.randn(4, 12, FEATURES, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(4, 12, dtype=torch.bool)
    means = {}
    for bias in (None, 3.0):
        backbone = build(name, num_layers=2, forget_bias=bias).eval()
        if bias is not None:
            assert all(
                torch.equal(layer.bias[HIDDEN : 2 * HIDDEN], torch.full((HIDDEN,), bias)) for layer in backbone.layers
            )
        with torch.no_grad():
            gates = backbone.gate_activations(x, mask)
        means[bias] = [gates[f"layer{i}/forget"].mean().item() for i in range(2)]
    assert all(m > 0.9 for m in means[3.0])
    assert all(0.3 < m < 0.7 for m in means[None])  # PyTorch's initialisation: about 1/2
    with pytest.raises(ValueError, match="forget_bias"):
        get_model(name).make_hparams(forget_bias=20.0)


@pytest.mark.parametrize("name", FAMILIES)
def test_search_space_builds_valid_hyperparameters(name: str) -> None:
    spec = get_model(name)
    values = spec.search_space(
        FixedTrial(
            {
                "model.hidden_size": 32,
                "model.readout": "mean",
                "model.num_layers": 2,
                "model.dropout": 0.1,
                "model.forget_bias": 1.0,
                "train.lr": 1e-3,
                "train.weight_decay": 0.0,
                "train.batch_size": 32,
            }
        )
    )
    assert values["model.forget_bias"] == 1.0
    hp = spec.make_hparams(**{k.removeprefix("model."): v for k, v in values.items() if k.startswith("model.")})
    assert (hp.hidden_size, hp.forget_bias) == (32, 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", FAMILIES)
def test_cuda_matches_cpu(name: str) -> None:
    backbone = build(name, num_layers=2).eval()
    x = torch.randn(3, 11, FEATURES)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 6:] = False
    with torch.no_grad():
        expected = backbone(x, mask)
        got = backbone.cuda()(x.cuda(), mask.cuda())
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a.cpu(), b, atol=1e-5, rtol=1e-4)
