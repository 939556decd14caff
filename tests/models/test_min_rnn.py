"""minGRU and minLSTM: the log-space parallel scan equals the step-by-step recurrence, the recurrence
is the paper's, gate introspection, and gradients through long sequences."""

from __future__ import annotations

import math

import pytest
import torch

from models import InputSpec, get_model
from models.min_rnn import CHUNK, MinRNNBackbone, log_scan, sequential_scan, set_parallel

NAMES = ["min-gru", "min-lstm"]
GATES = {"min-gru": ["update"], "min-lstm": ["forget", "input"]}
FEATURES = 3


def build(name: str, n_features: int = FEATURES, **overrides: object) -> MinRNNBackbone:
    torch.manual_seed(0)
    spec = get_model(name)
    return spec.build(InputSpec(n_features=n_features), spec.make_hparams(**overrides), True).eval()


def padded_batch(T: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Three sequences of lengths T, T // 2 + 1 and 1, with huge values in the padding."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, T, FEATURES, generator=gen, dtype=dtype)
    mask = torch.arange(T) < torch.tensor([T, T // 2 + 1, 1])[:, None]  # (3, T)
    x[~mask] = 100.0 * torch.randn(int((~mask).sum()), FEATURES, generator=gen, dtype=dtype)
    return x, mask


def both_forms(backbone: MinRNNBackbone, x: torch.Tensor, mask: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    outs = []
    for parallel in (True, False):
        set_parallel(backbone, parallel)
        assert all(layer.parallel is parallel for layer in backbone.layers)
        with torch.no_grad():
            outs.append(backbone(x, mask))
    return outs


@pytest.mark.parametrize("T", [1, 7, 300])
@pytest.mark.parametrize("name", NAMES)
def test_parallel_equals_sequential_float32(name: str, T: int) -> None:
    backbone = build(name, hidden_size=32, num_layers=2, readout="mean")
    x, mask = padded_batch(T)
    (steps_p, summary_p), (steps_s, summary_s) = both_forms(backbone, x, mask)
    assert torch.isfinite(steps_p).all() and (steps_p[~mask] == 0).all()
    torch.testing.assert_close(steps_p, steps_s, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(summary_p, summary_s, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_parallel_equals_sequential_float64(name: str) -> None:
    backbone = build(name, hidden_size=32, num_layers=2, readout="last").double()
    x, mask = padded_batch(300, torch.float64)
    (steps_p, summary_p), (steps_s, summary_s) = both_forms(backbone, x, mask)
    torch.testing.assert_close(steps_p, steps_s, atol=1e-11, rtol=1e-11)
    torch.testing.assert_close(summary_p, summary_s, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("chunk", [1, 5, CHUNK, 1000])
def test_log_scan_is_the_linear_recurrence(chunk: int) -> None:
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(2, 77, 4, generator=gen, dtype=torch.float64)  # in (0, 1), as every gate is
    b = torch.rand(2, 77, 4, generator=gen, dtype=torch.float64) + 0.1
    h = torch.zeros(2, 4, dtype=torch.float64)
    expected = []
    for t in range(77):
        h = a[:, t] * h + b[:, t]
        expected.append(h)
    torch.testing.assert_close(sequential_scan(a, b), torch.stack(expected, 1))
    torch.testing.assert_close(log_scan(a.log(), b.log(), chunk), torch.stack(expected, 1), atol=1e-12, rtol=1e-12)


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def g(v: float) -> float:
    return v + 0.5 if v >= 0 else sigmoid(v)


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_recurrence_is_the_papers(name: str, parallel: bool) -> None:
    """One layer, one feature, H = 2, hand-set weights, against a plain loop of the paper's formulas."""
    backbone = build(name, n_features=1, hidden_size=2, num_layers=1, readout="last").double()
    n_gates = len(GATES[name])
    w = [0.7, -1.3, 1.1, 0.4, -0.9, 2.0][: 2 * (n_gates + 1)]  # per unit: gates..., candidate
    bias = [0.2, -0.5, 0.3, 0.1, -0.2, 0.6][: 2 * (n_gates + 1)]
    with torch.no_grad():
        backbone.layers[0].proj.weight.copy_(torch.tensor(w, dtype=torch.float64)[:, None])
        backbone.layers[0].proj.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    set_parallel(backbone, parallel)
    xs = [0.5, -2.0, 1.5, 0.0, -0.3, 3.0, -1.0]  # candidates of both signs: both branches of g
    h, expected, expected_gates = [0.0, 0.0], [], {k: [] for k in GATES[name]}
    for x in xs:
        for j in range(2):
            pre = [w[k * 2 + j] * x + bias[k * 2 + j] for k in range(n_gates + 1)]
            if name == "min-gru":
                z = sigmoid(pre[0])
                h[j] = (1 - z) * h[j] + z * g(pre[1])
                gates = {"update": z}
            else:
                f, i = sigmoid(pre[0]), sigmoid(pre[1])
                f, i = f / (f + i), i / (f + i)
                h[j] = f * h[j] + i * g(pre[2])
                gates = {"forget": f, "input": i}
            for k, v in gates.items():
                expected_gates[k].append(v)
        expected.append(list(h))
    x = torch.tensor(xs, dtype=torch.float64)[None, :, None]  # (1, T, 1)
    mask = torch.ones(1, len(xs), dtype=torch.bool)
    with torch.no_grad():
        steps, summary = backbone(x, mask)
        acts = backbone.gate_activations(x, mask)
    torch.testing.assert_close(steps[0], torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(summary[0], torch.tensor(expected[-1], dtype=torch.float64))
    for k, values in expected_gates.items():
        want = torch.tensor(values, dtype=torch.float64).view(len(xs), 2)
        torch.testing.assert_close(acts[f"layer0/{k}"][0], want)


@pytest.mark.parametrize("name", NAMES)
def test_gate_activations_keys_shapes_and_range(name: str) -> None:
    backbone = build(name, hidden_size=16, num_layers=3)
    x, mask = padded_batch(20)
    with torch.no_grad():
        acts = backbone.gate_activations(x, mask)
    assert sorted(acts) == sorted(f"layer{i}/{k}" for i in range(3) for k in GATES[name])
    for key, act in acts.items():
        assert act.shape == (3, 20, 16), key
        real = act[mask]  # (real steps, H)
        assert ((real >= 0) & (real <= 1)).all(), key
        assert real.std() > 1e-3, f"{key} does not depend on the input"
    if name == "min-lstm":  # normalised: f' + i' = 1
        for i in range(3):
            total = acts[f"layer{i}/forget"] + acts[f"layer{i}/input"]
            torch.testing.assert_close(total, torch.ones_like(total))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_are_finite_through_a_long_scan(name: str) -> None:
    backbone = build(name, hidden_size=8, num_layers=2).train()
    gen = torch.Generator().manual_seed(3)
    x = 3.0 * torch.randn(2, 2048, FEATURES, generator=gen)  # saturates some gates
    mask = torch.ones(2, 2048, dtype=torch.bool)
    mask[1, 1500:] = False
    steps, summary = backbone(x, mask)
    (steps.sum() + summary.sum()).backward()
    for pname, p in backbone.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_mixed_precision_scans_in_float32(name: str) -> None:
    backbone = build(name, hidden_size=16)
    x, mask = padded_batch(50)
    with torch.no_grad():
        full, _ = backbone(x, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed, _ = backbone(x, mask)
    assert torch.isfinite(mixed).all()
    torch.testing.assert_close(mixed.float(), full, atol=0.1, rtol=0.05)
