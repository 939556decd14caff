"""``model.readout`` (last | mean | max | attention) on every family that has it, and the
LSTM's ``model.forget_bias``."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.catalog import load_catalog, parse_request, resolve
from bench.config import RunConfig, TaskRef
from models import MODELS, InputSpec, get_model
from models.layers import READOUTS, Readout

READOUT_FAMILIES = [n for n in MODELS if "readout" in {f.name for f in dataclasses.fields(get_model(n).hparams)}]
CASES = [(n, r) for n in READOUT_FAMILIES for r in READOUTS]


def features_spec(name: str) -> InputSpec:
    """Three real features a step, or a 2x2 frame for a model that reads frames."""
    return InputSpec(n_features=4, frame=(2, 2)) if "frames" in get_model(name).inputs else InputSpec(n_features=3)


def test_every_recurrent_family_has_a_readout() -> None:
    recurrent = {"rnn", "lstm", "gru", "bilstm", "bigru", "stacked-lstm", "stacked-gru", "lstm-attn"}
    assert recurrent <= set(READOUT_FAMILIES)


def test_readout_pools_only_real_steps() -> None:
    steps = torch.tensor([[[1.0], [3.0], [-50.0]], [[2.0], [-1.0], [4.0]]])  # (2, 3, 1)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert Readout("last", 1)(steps, mask).flatten().tolist() == [3.0, 4.0]
    torch.testing.assert_close(Readout("mean", 1)(steps, mask).flatten(), torch.tensor([2.0, 5.0 / 3.0]))
    assert Readout("max", 1)(steps, mask).flatten().tolist() == [3.0, 4.0]
    attention = Readout("attention", 1)
    pooled = attention(steps, mask)
    assert 1.0 <= pooled[0].item() <= 3.0  # a convex mix of the real steps only
    assert -1.0 <= pooled[1].item() <= 4.0
    empty = torch.zeros(1, 3, dtype=torch.bool)
    for kind in ("mean", "max", "attention"):  # an all-padding row pools to zeros, never NaN
        assert torch.equal(Readout(kind, 1)(steps[:1], empty), torch.zeros(1, 1)), kind


def test_an_unknown_readout_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="readout='first' is invalid: it must be one of last, mean, max, attention"):
        get_model("lstm").make_hparams(readout="first")


@pytest.mark.parametrize(("name", "readout"), CASES, ids=[f"{n}-{r}" for n, r in CASES])
def test_readout_ignores_padding_and_trains(name: str, readout: str) -> None:
    torch.manual_seed(0)
    spec = get_model(name)
    inp = features_spec(name)
    backbone = spec.build(inp, spec.make_hparams(readout=readout), False)
    gen = torch.Generator().manual_seed(1)
    short = torch.randn(1, 4, inp.n_features, generator=gen)
    padded = 100.0 * torch.randn(2, 9, inp.n_features, generator=gen)
    padded[0, :4] = short[0]
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 4:] = False
    backbone.eval()
    with torch.no_grad():
        _, alone = backbone(short, torch.ones(1, 4, dtype=torch.bool))
        _, summary = backbone(padded, mask)
    torch.testing.assert_close(summary[0], alone[0], atol=1e-5, rtol=0)
    backbone.train()
    _, summary = backbone(padded, mask)
    summary.pow(2).sum().backward()  # the summary alone trains the readout's own parameters
    readout_params = [p for n, p in backbone.named_parameters() if n.startswith(("readout", "pool"))]
    assert (readout == "attention") == bool(readout_params)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in readout_params)


def test_readouts_give_different_summaries() -> None:
    x = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 6, dtype=torch.bool)
    summaries = {}
    for readout in READOUTS:
        torch.manual_seed(0)  # the same recurrent weights under each readout
        spec = get_model("gru")
        with torch.no_grad():
            summaries[readout] = spec.build(InputSpec(n_features=3), spec.make_hparams(readout=readout), False).eval()(
                x, mask)[1]
    for a in READOUTS:
        for b in READOUTS:
            if a < b:
                assert not torch.allclose(summaries[a], summaries[b]), (a, b)


@pytest.mark.parametrize("name", ["lstm", "stacked-lstm", "bilstm", "lstm-attn"])
def test_forget_bias_sets_every_forget_gate(name: str) -> None:
    spec = get_model(name)
    backbone = spec.build(InputSpec(n_features=2), spec.make_hparams(forget_bias=1.5), False)
    lstms = [m for m in backbone.modules() if isinstance(m, torch.nn.LSTM)]
    assert lstms
    for lstm in lstms:
        H = lstm.hidden_size
        for layer in range(lstm.num_layers):
            total = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")  # (4H,)
            assert torch.allclose(total[H : 2 * H], torch.full((H,), 1.5))
            assert not torch.allclose(total[:H], torch.full((H,), 1.5))  # the other gates keep theirs
    with pytest.raises(ValueError, match="forget_bias"):
        spec.make_hparams(forget_bias=float("nan"))


def test_neutral_model_settings_keep_a_configurations_identity() -> None:
    """Runs recorded before readout and forget_bias existed read the last state with PyTorch's
    initialisation: at those values the new settings change neither params nor hashes."""
    def config(**model_params: object) -> RunConfig:
        return RunConfig(model="lstm", task=TaskRef("copy"), seed=0, profile="tiny",
                         model_params={"hidden_size": 8, **model_params}, task_params={}, train={}, budget={})

    before = config()
    assert config(readout="last", forget_bias=None).config_hash == before.config_hash
    assert config(readout="last", forget_bias=None).config_id == before.config_id
    assert "model.readout" not in config(readout="last").flat()
    assert config(readout="mean").config_id != before.config_id
    assert config(forget_bias=1.0).config_id != before.config_id
    assert config(readout="mean").flat()["model.readout"] == "mean"


def test_lstm_attn_keeps_its_identity_at_its_own_readout() -> None:
    """lstm-attn always pooled by attention: that is its neutral readout, and reading its last
    state instead is another configuration."""
    catalog = load_catalog()

    def config_id(*sets: str) -> str:
        (config,) = resolve(parse_request("lstm-attn", "copy", "0", "tiny", list(sets), catalog))
        return config.config_id

    default = config_id()
    assert config_id("model.readout=attention") == default
    assert config_id("model.readout=last") != default
    (config,) = resolve(parse_request("lstm-attn", "copy", "0", "tiny", ["model.readout=last"], catalog))
    assert config.flat()["model.readout"] == "last"
    assert "model.readout" not in resolve(parse_request("lstm-attn", "copy", "0", "tiny", [], catalog))[0].flat()
