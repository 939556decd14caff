"""Every registered backbone, on token ids and on real features: shapes, gradients,
padding invariance, causality, and hyper-parameter checking."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch

from models import MODELS, InputSpec, get_model

# Backbones: every model with a head of the harness's (baselines are tested in test_baselines.py).
MODEL_NAMES = [n for n in MODELS if not get_model(n).predictor]
VOCAB, FEATURES, FRAME = 13, 3, (4, 4)


def kinds(name: str) -> list[str]:
    """The inputs a model reads: token ids, real features, or features that are image frames."""
    return [k for k in ("tokens", "features", "frames") if k in get_model(name).inputs]


# Models that never read later steps in their per-step outputs when built for a causal task.
CAUSAL_NAMES = [n for n in MODEL_NAMES if not get_model(n).bidirectional]
# Every way a backbone gets built: for a non-causal task, and for a causal one (never bidirectional).
BUILDS = [(n, False) for n in MODEL_NAMES] + [(n, True) for n in CAUSAL_NAMES]
BUILD_IDS = [f"{n}-{'causal' if c else 'noncausal'}" for n, c in BUILDS]
# ... and each with every input it reads
BUILD_KINDS = [(n, c, k) for n, c in BUILDS for k in kinds(n)]
BUILD_KIND_IDS = [f"{n}-{'causal' if c else 'noncausal'}-{k}" for n, c, k in BUILD_KINDS]
MODEL_KINDS = [(n, k) for n in MODEL_NAMES for k in kinds(n)]
MODEL_KIND_IDS = [f"{n}-{k}" for n, k in MODEL_KINDS]


def input_spec(kind: str) -> InputSpec:
    if kind == "tokens":
        return InputSpec(vocab_size=VOCAB)
    if kind == "frames":
        return InputSpec(n_features=FRAME[0] * FRAME[1], frame=FRAME)
    return InputSpec(n_features=FEATURES)


def random_inputs(kind: str, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "tokens":
        return torch.randint(1, VOCAB, (batch, length), generator=gen)  # real ids only (0 is padding)
    return torch.randn(batch, length, input_spec(kind).n_features, generator=gen)


def build(name: str, kind: str, causal: bool = False, **overrides: typing.Any) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = get_model(name)
    return spec.build(input_spec(kind), spec.make_hparams(**overrides), causal)


def test_every_expected_model_is_registered() -> None:
    expected = {"rnn", "lstm", "gru", "bilstm", "bigru", "stacked-lstm", "stacked-gru", "lstm-attn", "transformer"}
    assert expected <= set(MODEL_NAMES)
    assert get_model("bilstm").bidirectional and get_model("bigru").bidirectional
    assert not get_model("lstm").bidirectional


@pytest.mark.parametrize(("name", "causal", "kind"), BUILD_KINDS, ids=BUILD_KIND_IDS)
def test_forward_shapes_and_finite(name: str, kind: str, causal: bool) -> None:
    backbone = build(name, kind, causal).eval()
    B, T = 3, 7
    x = random_inputs(kind, B, T, torch.Generator().manual_seed(1))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 4:] = False  # one padded sequence
    if kind == "tokens":
        x[1, 4:] = 0
    with torch.no_grad():
        steps, summary = backbone(x, mask)
    assert isinstance(backbone.step_dim, int) and backbone.step_dim > 0
    assert isinstance(backbone.summary_dim, int) and backbone.summary_dim > 0
    assert steps.shape == (B, T, backbone.step_dim)
    assert summary.shape == (B, backbone.summary_dim)
    assert steps.dtype == summary.dtype == torch.float32
    assert torch.isfinite(steps).all() and torch.isfinite(summary).all()


@pytest.mark.parametrize(("name", "kind"), MODEL_KINDS, ids=MODEL_KIND_IDS)
def test_backward_reaches_every_parameter(name: str, kind: str) -> None:
    backbone = build(name, kind).train()
    gen = torch.Generator().manual_seed(2)
    B, T = 4, 6
    x = random_inputs(kind, B, T, gen)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 3:] = False
    if kind == "tokens":
        x[0, 3:] = 0
    steps, summary = backbone(x, mask)
    # Random projections of both outputs: every parameter feeds at least one of them.
    loss = (steps * torch.randn(steps.shape, generator=gen)).sum() + (
        summary * torch.randn(summary.shape, generator=gen)
    ).sum()
    loss.backward()
    params = list(backbone.named_parameters())
    assert params, "a backbone with no parameters cannot be trained"
    for pname, p in params:
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"
        # (an embedding's padding row stays zero; the rest of the table must move)
        assert p.grad.abs().sum() > 0, f"{name}: gradient of {pname} is all zero"


@pytest.mark.parametrize(("name", "kind"), MODEL_KINDS, ids=MODEL_KIND_IDS)
def test_a_training_step_under_bfloat16_autocast(name: str, kind: str) -> None:
    """train.precision=bf16-mixed on a CPU: the forward under autocast, the backward after it."""
    backbone = build(name, kind).train()
    gen = torch.Generator().manual_seed(3)
    x, mask = random_inputs(kind, 2, 5, gen), torch.ones(2, 5, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        steps, summary = backbone(x, mask)
    (steps.float().square().mean() + summary.float().square().mean()).backward()
    grads = [p.grad for p in backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(("name", "causal", "kind"), BUILD_KINDS, ids=BUILD_KIND_IDS)
def test_padding_does_not_change_outputs(name: str, kind: str, causal: bool) -> None:
    backbone = build(name, kind, causal).eval()
    gen = torch.Generator().manual_seed(3)
    L, T = 5, 9
    short = random_inputs(kind, 1, L, gen)
    long = random_inputs(kind, 1, T, gen)
    with torch.no_grad():
        alone_steps, alone_summary = backbone(short, torch.ones(1, L, dtype=torch.bool))

        # The same sequence padded to T, next to a longer one: padding is id 0 for tokens,
        # and arbitrary values for features (the mask alone says what is real).
        if kind == "tokens":
            padded = torch.zeros(2, T, dtype=torch.long)
        else:
            padded = 100.0 * torch.randn(2, T, input_spec(kind).n_features, generator=gen)
        padded[0, :L] = short[0]
        padded[1] = long[0]
        mask = torch.zeros(2, T, dtype=torch.bool)
        mask[0, :L] = True
        mask[1] = True
        steps, summary = backbone(padded, mask)

        # Order in the batch does not matter either.
        steps_swapped, summary_swapped = backbone(padded.flip(0), mask.flip(0))

    torch.testing.assert_close(steps[0, :L], alone_steps[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(summary[0], alone_summary[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(steps_swapped[1, :L], alone_steps[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(summary_swapped[1], alone_summary[0], atol=1e-5, rtol=0)


def _future_changed(name: str, kind: str, causal: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    backbone = build(name, kind, causal).eval()
    gen = torch.Generator().manual_seed(4)
    B, T, t = 2, 10, 4
    x = random_inputs(kind, B, T, gen)
    changed = x.clone()
    changed[:, t + 1 :] = random_inputs(kind, B, T - t - 1, gen)
    assert not torch.equal(changed, x)
    mask = torch.ones(B, T, dtype=torch.bool)
    with torch.no_grad():
        before, _ = backbone(x, mask)
        after, _ = backbone(changed, mask)
    return before, after, t


CAUSAL_CASES = [(n, True, k) for n in CAUSAL_NAMES for k in kinds(n)] + [
    ("lstm-attn", False, k) for k in kinds("lstm-attn")]  # its per-step path is always causal


@pytest.mark.parametrize(("name", "causal", "kind"), CAUSAL_CASES,
                         ids=[f"{n}-causal={c}-{k}" for n, c, k in CAUSAL_CASES])
def test_per_step_outputs_never_read_the_future(name: str, causal: bool, kind: str) -> None:
    before, after, t = _future_changed(name, kind, causal)
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], atol=1e-5, rtol=0)
    # ... while later steps do see the change (so the comparison above could fail).
    assert not torch.allclose(after[:, t + 1 :], before[:, t + 1 :], atol=1e-5)


NONCAUSAL_CASES = [n for n in MODEL_NAMES if get_model(n).bidirectional] + ["transformer"]


@pytest.mark.parametrize("name", NONCAUSAL_CASES, ids=NONCAUSAL_CASES)
def test_bidirectional_models_do_read_the_future(name: str) -> None:
    """The counterpart of the causality test: models that may read later steps actually do,
    which is why a causal task must refuse the bidirectional ones."""
    before, after, t = _future_changed(name, "features", causal=False)
    assert not torch.allclose(after[:, : t + 1], before[:, : t + 1], atol=1e-5)


def test_transformer_causal_summary_is_the_last_real_step() -> None:
    backbone = build("transformer", "features", causal=True).eval()
    x = random_inputs("features", 2, 6, torch.Generator().manual_seed(5))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    with torch.no_grad():
        steps, summary = backbone(x, mask)
    torch.testing.assert_close(summary[0], steps[0, 3])
    torch.testing.assert_close(summary[1], steps[1, 5])


# --- hyper-parameters -------------------------------------------------------------------


def _int_fields(name: str) -> list[str]:
    hints = typing.get_type_hints(get_model(name).hparams)
    return [f.name for f in dataclasses.fields(get_model(name).hparams) if hints[f.name] is int]


@pytest.mark.parametrize("name", MODEL_NAMES, ids=MODEL_NAMES)
def test_make_hparams_rejects_invalid_values(name: str) -> None:
    spec = get_model(name)
    size_fields = _int_fields(name)
    assert size_fields, f"{name} has no integer hyper-parameter"
    for key in size_fields:
        with pytest.raises(ValueError, match=key):
            spec.make_hparams(**{key: -4})
        with pytest.raises(ValueError, match=key):
            spec.make_hparams(**{key: 0})
    with pytest.raises(ValueError, match="dropout"):
        spec.make_hparams(dropout=2.0)
    with pytest.raises(ValueError, match="dropout"):
        spec.make_hparams(dropout=-0.1)
    with pytest.raises(TypeError):
        spec.make_hparams(no_such_setting=1)


@pytest.mark.parametrize("name", MODEL_NAMES, ids=MODEL_NAMES)
def test_make_hparams_override_wins_over_preset(name: str) -> None:
    spec = get_model(name)
    defaults = spec.make_hparams()
    assert dataclasses.asdict(defaults) == spec.default_hparams()
    for key, value in spec.preset.items():
        assert getattr(defaults, key) == value, f"{name}: preset {key}={value} not applied"
    assert spec.make_hparams(dropout=0.3).dropout == 0.3
    # other values keep the preset
    for key, value in spec.preset.items():
        if key != "dropout":
            assert getattr(spec.make_hparams(dropout=0.3), key) == value


def test_stacked_presets_and_overrides() -> None:
    spec = get_model("stacked-lstm")
    assert spec.make_hparams().num_layers == 2
    hp = spec.make_hparams(num_layers=3)
    assert hp.num_layers == 3
    assert hp.dropout == 0.2  # the rest of the preset stays
    backbone = spec.build(InputSpec(n_features=1), hp, False)
    assert backbone.rnn.num_layers == 3
    assert get_model("bilstm").make_hparams().hidden_size == 64
    assert get_model("bilstm").make_hparams(hidden_size=16).hidden_size == 16
    small = get_model("bilstm").build(InputSpec(n_features=1), get_model("bilstm").make_hparams(hidden_size=16), False)
    assert small.step_dim == small.summary_dim == 32  # two directions


def test_transformer_heads_must_divide_width() -> None:
    with pytest.raises(ValueError, match="divisible"):
        get_model("transformer").make_hparams(d_model=30, n_heads=4)


def test_input_spec_needs_exactly_one_kind() -> None:
    with pytest.raises(ValueError):
        InputSpec()
    with pytest.raises(ValueError):
        InputSpec(vocab_size=5, n_features=2)
