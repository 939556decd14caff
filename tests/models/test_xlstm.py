"""sLSTM and xLSTM: the stabilised sLSTM is the paper's unstabilised recurrence, the mLSTM's parallel form
is its recurrent form (and the paper's equations), presets and hyper-parameters, gate introspection, and
gradients through long sequences."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from optuna.trial import FixedTrial

from models import InputSpec, get_model
from models.xlstm import (
    MLSTMBlock,
    SLSTMBlock,
    SLSTMCell,
    XLSTMBackbone,
    mlstm_parallel,
    mlstm_sequential,
    set_parallel,
)

FEATURES = 3


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small tensors: one thread is fastest, and never fights other processes for cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name: str, **overrides: object) -> XLSTMBackbone:
    torch.manual_seed(0)
    spec = get_model(name)
    return spec.build(InputSpec(n_features=FEATURES), spec.make_hparams(**overrides), True).eval()


def padded_batch(T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three sequences of lengths T, T // 2 + 1 and 1, with huge values in the padding."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, T, FEATURES, generator=gen)
    mask = torch.arange(T) < torch.tensor([T, T // 2 + 1, 1])[:, None]  # (3, T)
    x[~mask] = 100.0 * torch.randn(int((~mask).sum()), FEATURES, generator=gen)
    return x, mask


def test_presets_and_block_pattern() -> None:
    for name, kinds in [("slstm", [SLSTMBlock, SLSTMBlock]), ("xlstm", [MLSTMBlock, SLSTMBlock])]:
        hp = get_model(name).make_hparams()
        assert (hp.hidden_size, hp.num_layers, hp.num_heads) == (64, 2, 4)
        assert not hasattr(hp, "parallel")  # the mLSTM's form is not a hyper-parameter
        assert [type(b) for b in build(name).blocks] == kinds
    blocks = build("xlstm", num_layers=5, block_pattern="mms", hidden_size=8, num_heads=2).blocks
    assert [type(b) for b in blocks] == [MLSTMBlock, MLSTMBlock, SLSTMBlock, MLSTMBlock, MLSTMBlock]


def test_invalid_hyperparameters_are_refused() -> None:
    spec = get_model("xlstm")
    with pytest.raises(ValueError, match=r"hidden_size=30 .*num_heads=4"):
        spec.make_hparams(hidden_size=30)
    for pattern in ["", "mx", "S"]:
        with pytest.raises(ValueError, match="block_pattern"):
            spec.make_hparams(block_pattern=pattern)


def test_search_space_builds_valid_hyperparameters() -> None:
    spec = get_model("xlstm")
    values = spec.search_space(FixedTrial({
        "model.hidden_size": 32, "model.num_layers": 3, "model.dropout": 0.1, "model.num_heads": 2,
        "train.lr": 1e-3, "train.weight_decay": 0.0, "train.batch_size": 32,
    }))
    hp = spec.make_hparams(**{k.removeprefix("model."): v for k, v in values.items() if k.startswith("model.")})
    assert (hp.hidden_size, hp.num_layers, hp.num_heads, hp.block_pattern) == (32, 3, 2, "ms")


def unstabilised_slstm(cell: SLSTMCell, x: torch.Tensor) -> torch.Tensor:
    """The paper's sLSTM in float64, step by step, with exp(i~) and σ(f~) as they are. x (T, H) -> h (T, H)."""
    H, NH = x.size(1), cell.heads
    d = H // NH
    W, b = cell.weight_ih.double(), cell.bias.double()
    R = torch.zeros(4 * H, H, dtype=torch.float64)  # the block-diagonal recurrent matrix, rows (z, i, f, o)
    for head in range(NH):
        for g in range(4):
            rows, cols = slice(g * H + head * d, g * H + (head + 1) * d), slice(head * d, (head + 1) * d)
            R[rows, cols] = cell.weight_hh[head, :, g * d : (g + 1) * d].double().T
    h, c, n, out = [torch.zeros(H, dtype=torch.float64) for _ in range(3)] + [[]]
    for t in range(x.size(0)):
        z, i, f, o = (W @ x[t].double() + R @ h).chunk(4)
        z, i, f, o = torch.tanh(z + b[0]), torch.exp(i), torch.sigmoid(f + b[1]), torch.sigmoid(o + b[2])
        c = f * c + i * z
        n = f * n + i
        h = o * c / n
        out.append(h)
    return torch.stack(out)


def test_slstm_is_the_papers_unstabilised_recurrence() -> None:
    torch.manual_seed(0)
    cell = SLSTMCell(hidden=6, heads=2)
    with torch.no_grad():
        cell.bias.normal_()
        cell.weight_hh.mul_(3.0)
    x = torch.randn(2, 9, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got64, gates = cell.double()(x.double(), keep_gates=True)
        for b in range(2):
            torch.testing.assert_close(got64[b], unstabilised_slstm(cell, x[b]), atol=1e-12, rtol=1e-12)
        # Large input-gate pre-activations: exp(i~) overflows float32, the stabilised float32 cell does not.
        cell.float().weight_ih.mul_(40.0)
        big = 4.0 * x
        assert (big @ cell.weight_ih.T).abs().max() > 100.0
        got32, _ = cell(big)
        assert torch.isfinite(got32).all()
        expected = torch.stack([unstabilised_slstm(cell, big[b]) for b in range(2)])
        torch.testing.assert_close(got32.double(), expected, atol=1e-5, rtol=1e-5)
    for name in ("input", "forget", "output"):
        assert gates[name].shape == (2, 9, 6) and ((gates[name] >= 0) & (gates[name] <= 1)).all()


def unstabilised_mlstm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor,
                       f_pre: torch.Tensor) -> torch.Tensor:
    """The paper's mLSTM (eqs. 19-27) in float64 for one head: q, k, v (T, d), gates (T,) -> h~ (T, d)."""
    d = q.size(1)
    C, n, out = torch.zeros(d, d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64), []
    for t in range(q.size(0)):
        i, f = torch.exp(i_pre[t]), torch.sigmoid(f_pre[t])
        C = f * C + i * torch.outer(v[t], k[t])
        n = f * n + i * k[t]
        out.append(C @ q[t] / torch.clamp((n @ q[t]).abs(), min=1.0))
    return torch.stack(out)


@pytest.mark.parametrize("T", [1, 7, 64])
def test_mlstm_forms_are_the_papers_recurrence(T: int) -> None:
    gen = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(2, 2, T, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    i_pre = 8.0 * torch.randn(2, 2, T, generator=gen, dtype=torch.float64)  # exp(i~) up to e^30 or so
    f_pre = 3.0 * torch.randn(2, 2, T, generator=gen, dtype=torch.float64)
    parallel = mlstm_parallel(q, k, v, i_pre, f_pre)
    sequential = mlstm_sequential(q, k, v, i_pre, f_pre)
    torch.testing.assert_close(parallel, sequential, atol=1e-10, rtol=1e-10)
    for b in range(2):
        for h in range(2):
            expected = unstabilised_mlstm(q[b, h], k[b, h], v[b, h], i_pre[b, h], f_pre[b, h])
            torch.testing.assert_close(parallel[b, h], expected, atol=1e-10, rtol=1e-10)
    got32 = mlstm_parallel(q.float(), k.float(), v.float(), i_pre.float(), f_pre.float())
    torch.testing.assert_close(got32.double(), sequential, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("T", [1, 7, 64])
def test_mlstm_parallel_equals_sequential_in_the_backbone(T: int) -> None:
    backbone = build("xlstm", hidden_size=16, num_heads=2, num_layers=3, readout="mean")
    x, mask = padded_batch(T)
    outs = []
    for parallel in (True, False):
        set_parallel(backbone, parallel)
        assert all(b.parallel is parallel for b in backbone.blocks if isinstance(b, MLSTMBlock))
        with torch.no_grad():
            outs.append(backbone(x, mask))
    (steps_p, summary_p), (steps_s, summary_s) = outs
    assert torch.isfinite(steps_p).all() and (steps_p[~mask] == 0).all()
    torch.testing.assert_close(steps_p, steps_s, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(summary_p, summary_s, atol=1e-5, rtol=1e-5)


def test_gate_activations_keys_shapes_and_range() -> None:
    backbone = build("xlstm", hidden_size=16, num_heads=2, num_layers=3)  # blocks m, s, m
    x, mask = padded_batch(20)
    with torch.no_grad():
        acts = backbone.gate_activations(x, mask)
    assert sorted(acts) == sorted(f"layer{i}/{g}" for i in range(3) for g in ("input", "forget", "output"))
    for i, units in [(0, 2), (1, 16), (2, 2)]:  # mLSTM input and forget gates: one per head
        assert acts[f"layer{i}/input"].shape == acts[f"layer{i}/forget"].shape == (3, 20, units)
        assert acts[f"layer{i}/output"].shape == (3, 20, 32 if units == 2 else 16)
        # stabilised: one of i', f' is exactly 1 at every step (the larger exponent sets m_t)
        both = torch.maximum(acts[f"layer{i}/input"], acts[f"layer{i}/forget"])
        torch.testing.assert_close(both, torch.ones_like(both))
    for key, act in acts.items():
        real = act[mask]  # (real steps, units)
        assert ((real >= 0) & (real <= 1)).all(), key
        assert real.std() > 1e-3, f"{key} does not depend on the input"


@pytest.mark.parametrize("name", ["slstm", "xlstm"])
def test_gradients_are_finite_through_a_long_sequence(name: str) -> None:
    backbone = build(name, hidden_size=8, num_heads=2).train()
    gen = torch.Generator().manual_seed(4)
    x = 3.0 * torch.randn(2, 1024, FEATURES, generator=gen)
    mask = torch.ones(2, 1024, dtype=torch.bool)
    mask[1, 700:] = False
    steps, summary = backbone(x, mask)
    assert torch.isfinite(steps).all() and torch.isfinite(summary).all()
    (steps.sum() + summary.sum()).backward()
    for pname, p in backbone.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_mixed_precision_runs_the_cells_in_float32() -> None:
    backbone = build("xlstm", hidden_size=16, num_heads=2, num_layers=2)
    x, mask = padded_batch(50)
    with torch.no_grad():
        full, _ = backbone(x, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed, _ = backbone(x, mask)
    assert torch.isfinite(mixed).all()
    torch.testing.assert_close(mixed.float(), full, atol=0.1, rtol=0.05)
