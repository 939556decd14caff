"""The state-space families (models/s4d.py, models/mamba.py): each fast form against its
step-by-step recurrence, selectivity, and long sequences. The backbone contract itself
(shapes, padding, causality, gradients, hyper-parameters) is in test_models.py."""

from __future__ import annotations

import pytest
import torch

from models import InputSpec, get_model
from models.layers import sequential_scan
from models.mamba import MambaHparams, MambaMixer, scan_, selective_scan
from models.s4d import S4DLayer


def build(name: str, spec: InputSpec, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    model = get_model(name)
    return model.build(spec, model.make_hparams(**overrides), True)


def decays_and_inputs(T: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(T)
    # decays from ~1 (long memory) to ~0.007 (forgets at once), as exp(ΔA) spans
    a = torch.exp(-5 * torch.rand(2, T, 3, 4, generator=gen, dtype=dtype))
    b = torch.randn(2, T, 3, 4, generator=gen, dtype=dtype)
    return a, b


# --- Mamba's scan -----------------------------------------------------------------------


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("T", [1, 7, 300, 1000, 2048])
def test_both_scans_match_the_sequential_loop_forwards_and_backwards_in_time(T: int, parallel: bool) -> None:
    a, b = decays_and_inputs(T)
    torch.testing.assert_close(scan_(a, b.clone(), parallel), sequential_scan(a, b), atol=1e-5, rtol=1e-5)
    # backwards: x_t + a_{t+1} x_{t+1}, the forward scan of the time-reversed sequence (decays shifted by one)
    a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], 1)
    expected = sequential_scan(a_next.flip(1), b.flip(1)).flip(1)
    torch.testing.assert_close(scan_(a, b.clone(), parallel, reverse=True), expected, atol=1e-5, rtol=1e-5)


def selection_inputs(T: int, dtype: torch.dtype = torch.float32, sizes: tuple[int, int, int] = (2, 3, 4)
                     ) -> tuple[torch.Tensor, ...]:
    """Δ, A, u = Δx, B, C for selective_scan, with gradients: batch, E, N = sizes."""
    gen, (Bs, E, N) = torch.Generator().manual_seed(T), sizes
    delta = torch.nn.functional.softplus(torch.randn(Bs, T, E, generator=gen, dtype=dtype))
    A = -3 * torch.rand(E, N, generator=gen, dtype=dtype)
    u, B, C = (torch.randn(*shape, generator=gen, dtype=dtype) for shape in ((Bs, T, E), (Bs, T, N), (Bs, T, N)))
    return tuple(t.requires_grad_(True) for t in (delta, A, u, B, C))


def selective_scan_by_autograd(delta: torch.Tensor, A: torch.Tensor, u: torch.Tensor, B: torch.Tensor,
                               C: torch.Tensor) -> torch.Tensor:
    """The same quantity written plainly, differentiated by autograd through the reference loop."""
    s = sequential_scan(torch.exp(delta.unsqueeze(-1) * A), u.unsqueeze(-1) * B.unsqueeze(2))
    return torch.einsum("bten,btn->bte", s, C)


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("T", [1, 2, 9, 300])
def test_selective_scan_and_its_backward_match_autograd_through_the_loop(parallel: bool, T: int) -> None:
    inputs = selection_inputs(T)
    fast, slow = selective_scan(*inputs, parallel), selective_scan_by_autograd(*inputs)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    weights = torch.randn(fast.shape, generator=torch.Generator().manual_seed(1))
    grads_fast = torch.autograd.grad((fast * weights).sum(), inputs)
    grads_slow = torch.autograd.grad((slow * weights).sum(), inputs)
    for name, g_fast, g_slow in zip("ΔAuBC", grads_fast, grads_slow, strict=True):
        torch.testing.assert_close(g_fast, g_slow, atol=1e-4, rtol=1e-4, msg=f"dL/d{name}")


@pytest.mark.parametrize("parallel", [True, False])
def test_selective_scan_gradient_matches_finite_differences(parallel: bool) -> None:
    inputs = selection_inputs(6, torch.float64, sizes=(1, 2, 3))
    assert torch.autograd.gradcheck(lambda *t: selective_scan(*t, parallel), inputs)


def test_mamba_gives_the_same_outputs_with_either_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    backbone = build("mamba", InputSpec(n_features=3), hidden_size=16, readout="mean")
    x = torch.randn(2, 37, 3, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 37, dtype=torch.bool)
    mask[1, 20:] = False
    results = []
    for parallel in (True, False):
        monkeypatch.setattr(MambaMixer, "parallel", parallel)
        backbone.zero_grad()
        steps, summary = backbone(x, mask)
        (steps.square().mean() + summary.square().mean()).backward()
        results.append((steps, summary, [p.grad.clone() for p in backbone.parameters() if p.grad is not None]))
    (steps, summary, grads), (steps_seq, summary_seq, grads_seq) = results
    torch.testing.assert_close(steps, steps_seq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(summary, summary_seq, atol=1e-5, rtol=1e-5)
    assert len(grads) == len(grads_seq) > 0
    for g, g_seq in zip(grads, grads_seq, strict=True):
        torch.testing.assert_close(g, g_seq, atol=1e-4, rtol=1e-4)


def test_mamba_trains_under_bfloat16_autocast_with_its_scan_in_float32() -> None:
    backbone = build("mamba", InputSpec(n_features=3), hidden_size=16)
    x, mask = torch.randn(2, 23, 3, generator=torch.Generator().manual_seed(5)), torch.ones(2, 23, dtype=torch.bool)
    full, _ = backbone(x, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        steps, summary = backbone(x, mask)
    (steps.float().square().mean() + summary.float().square().mean()).backward()
    grads = [p.grad for p in backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)  # type: ignore[union-attr]
    torch.testing.assert_close(steps.float(), full, atol=0.1, rtol=0.05)  # bfloat16 outside the scan only


def test_mamba_scans_in_parallel_on_a_gpu_and_step_by_step_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import models.mamba as mamba_module

    chosen: list[bool] = []
    real = mamba_module.selective_scan
    monkeypatch.setattr(mamba_module, "selective_scan", lambda *a: chosen.append(a[-1]) or real(*a))
    backbone = build("mamba", InputSpec(n_features=3), hidden_size=8, num_layers=1)
    backbone(torch.randn(1, 5, 3), torch.ones(1, 5, dtype=torch.bool))
    assert chosen == [False]  # this tensor is on the CPU; the default (None) follows the device


def test_mamba_step_size_and_decay_depend_on_the_input() -> None:
    torch.manual_seed(0)
    hp = MambaHparams(hidden_size=16, d_conv=4)
    mixer = MambaMixer(16, hp).eval()
    u = torch.randn(1, 12, 16, generator=torch.Generator().manual_seed(3))
    changed, t = u.clone(), 5
    changed[:, t] = torch.randn(16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        delta, delta_changed = mixer.selection(u)[2], mixer.selection(changed)[2]  # (1, T, E)
    A = -mixer.A_log.exp()
    decay, decay_changed = torch.exp(delta[..., None] * A), torch.exp(delta_changed[..., None] * A)
    torch.testing.assert_close(delta_changed[:, :t], delta[:, :t], atol=1e-6, rtol=0)  # the past is untouched
    assert (delta_changed[:, t] - delta[:, t]).abs().max() > 1e-3  # Δ at t follows the input at t
    assert (decay_changed[:, t] - decay[:, t]).abs().max() > 1e-4  # and so does the state's decay
    # the changed step reaches Δ only through the causal convolution's window
    torch.testing.assert_close(delta_changed[:, t + hp.d_conv :], delta[:, t + hp.d_conv :], atol=1e-6, rtol=0)


# --- S4D's convolution ------------------------------------------------------------------


def s4d_recurrence(layer: S4DLayer, u: torch.Tensor) -> torch.Tensor:
    """The ZOH-discretised diagonal SSM, one step at a time, from the raw parameters.
    u (B, T, H) -> y (B, T, H)."""
    A = -layer.log_A_real.exp() + 1j * layer.A_imag  # (H, N/2)
    dA = torch.exp(A * layer.log_dt.exp()[:, None])
    dB = (dA - 1) / A
    C = torch.view_as_complex(layer.C)
    x = torch.zeros(u.size(0), *A.shape, dtype=A.dtype)  # (B, H, N/2)
    ys = []
    for t in range(u.size(1)):
        x = dA * x + dB * u[:, t, :, None]
        ys.append(2 * (C * x).sum(-1).real + layer.D * u[:, t])
    return torch.stack(ys, 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_s4d_convolution_matches_the_recurrence(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = S4DLayer(H=5, N=8, dt_min=1e-2, dt_max=0.5, dropout=0.0).to(dtype)
    u = torch.randn(2, 300, 5, generator=torch.Generator().manual_seed(5), dtype=dtype)
    with torch.no_grad():
        conv, loop = layer.ssm(u), s4d_recurrence(layer, u)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(conv, loop, atol=tol, rtol=tol)
    # ... and the kernel is the recurrence's impulse response (the D skip aside)
    impulse = torch.zeros(1, 300, 5, dtype=dtype)
    impulse[:, 0] = 1.0
    with torch.no_grad():
        response = s4d_recurrence(layer, impulse)[0]  # (T, H)
        response[0] -= layer.D
        torch.testing.assert_close(layer.kernel(300).T, response, atol=tol, rtol=tol)


def test_s4d_layer_is_linear_and_time_invariant() -> None:
    """S4D's SSM is one fixed kernel for every input (no selection): linear, and a delayed
    input gives the same output, delayed."""
    torch.manual_seed(0)
    layer = S4DLayer(H=4, N=8, dt_min=1e-3, dt_max=0.1, dropout=0.0)
    gen = torch.Generator().manual_seed(6)
    u1, u2 = torch.randn(1, 40, 4, generator=gen), torch.randn(1, 40, 4, generator=gen)
    delayed = torch.cat([torch.zeros(1, 7, 4), u1[:, :-7]], 1)  # u1, 7 steps later
    with torch.no_grad():
        y1 = layer.ssm(u1)
        torch.testing.assert_close(layer.ssm(3 * u1 + u2), 3 * y1 + layer.ssm(u2), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(layer.ssm(delayed)[:, 7:], y1[:, :-7], atol=1e-5, rtol=1e-5)
        assert layer.ssm(delayed)[:, :7].abs().max() < 1e-6  # nothing before the input starts


# --- long sequences ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["s4d", "mamba"])
def test_long_sequences_stay_finite_and_padding_stays_out(name: str) -> None:
    T, L = 2048, 1500
    backbone = build(name, InputSpec(n_features=2), hidden_size=8, d_state=4, num_layers=2, dropout=0.0)
    gen = torch.Generator().manual_seed(7)
    x = 100.0 * torch.randn(2, T, 2, generator=gen)  # padding: huge values, and NaN
    x[:, :L] = torch.randn(2, L, 2, generator=gen)
    x[0, -10:] = float("nan")
    x[1] = torch.randn(T, 2, generator=gen)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[0, L:] = False
    x.requires_grad_(True)
    steps, summary = backbone(x, mask)
    assert torch.isfinite(steps).all() and torch.isfinite(summary).all()
    (steps[:, -1].sum() + summary.sum()).backward()
    for pname, p in backbone.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert x.grad[1, 0].abs().sum() > 0  # the last step still hears the first, 2047 steps back
    assert x.grad[0, L:].abs().sum() == 0  # padding reaches nothing
    with torch.no_grad():
        alone, _ = backbone(x[:1, :L].detach(), mask[:1, :L])
    torch.testing.assert_close(steps[0, :L].detach(), alone[0], atol=1e-5, rtol=0)


# --- hyper-parameters -------------------------------------------------------------------


def test_s4d_state_size_must_be_even_and_dt_range_ordered() -> None:
    spec = get_model("s4d")
    with pytest.raises(ValueError, match="d_state"):
        spec.make_hparams(d_state=7)
    with pytest.raises(ValueError, match="dt_max"):
        spec.make_hparams(dt_min=0.1, dt_max=0.01)
    assert spec.make_hparams(d_state=8, dt_min=1e-4, dt_max=1e-2).d_state == 8
