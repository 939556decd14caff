"""Gate introspection: the gates a backbone reports are the ones its recurrence used, and a
run with ``train.record_gates`` leaves their statistics and figure in the store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.gates import GateSummary, gate_figure, look_at_gates
from bench.module import SeqModule
from bench.tracking import Tracker, default_tracking_uri
from models import InputSpec, get_model
from models.registry import Gated
from tasks.synthetic import Copy


def build(name: str, **hp: object) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = get_model(name)
    return spec.build(InputSpec(n_features=3), spec.make_hparams(hidden_size=6, **hp), False).eval()


def cell_gates(cell: torch.nn.LSTMCell | torch.nn.GRUCell, x: torch.Tensor) -> list[torch.Tensor]:
    """Step by step with a cell: each step's sigmoid pre-activations, from PyTorch's own cell."""
    B, T, _ = x.shape
    H = cell.hidden_size
    h = torch.zeros(B, H)
    c = torch.zeros(B, H)
    out = []
    for t in range(T):
        pre = x[:, t] @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
        out.append(torch.sigmoid(pre))
        if isinstance(cell, torch.nn.LSTMCell):
            h, c = cell(x[:, t], (h, c))
        else:
            h = cell(x[:, t], h)
    return out


@pytest.mark.parametrize(("name", "cell_type", "gates"), [
    ("stacked-lstm", torch.nn.LSTMCell, {"input": 0, "forget": 1, "output": 3}),
    ("stacked-gru", torch.nn.GRUCell, {"reset": 0, "update": 1}),
])
def test_gates_are_those_of_the_recurrence_step_by_step(name: str, cell_type: type, gates: dict[str, int]) -> None:
    backbone = build(name)
    rnn = backbone.rnn
    x = torch.randn(2, 7, 3, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 7, dtype=torch.bool)
    with torch.no_grad():
        got = backbone.gate_activations(x, mask)
        h = x
        for layer in range(rnn.num_layers):
            cell = cell_type(h.size(-1), rnn.hidden_size)
            cell.load_state_dict({k: getattr(rnn, f"{k}_l{layer}") for k in ("weight_ih", "weight_hh",
                                                                              "bias_ih", "bias_hh")})
            pre = torch.stack(cell_gates(cell, h), dim=1)  # (B, T, kH)
            chunks = pre.chunk(4 if cell_type is torch.nn.LSTMCell else 3, -1)
            for gate, i in gates.items():
                torch.testing.assert_close(got[f"layer{layer}/{gate}"], chunks[i], atol=1e-6, rtol=0)
            h = _layer_output(rnn, layer, x)  # the next layer's input
    assert set(got) == {f"layer{i}/{g}" for i in range(rnn.num_layers) for g in gates}


def _layer_output(rnn: torch.nn.RNNBase, layer: int, x: torch.Tensor) -> torch.Tensor:
    """The output of ``rnn``'s first ``layer + 1`` layers."""
    partial = type(rnn)(x.size(-1), rnn.hidden_size, num_layers=layer + 1, batch_first=True)
    partial.load_state_dict({k: v for k, v in rnn.state_dict().items() if int(k.rsplit("_l", 1)[1]) <= layer})
    return partial(x)[0]


def test_a_vanilla_rnn_and_a_transformer_have_no_gates() -> None:
    x = torch.randn(1, 4, 3)
    mask = torch.ones(1, 4, dtype=torch.bool)
    assert build("rnn").gate_activations(x, mask) == {}
    transformer = get_model("transformer")
    assert not isinstance(transformer.build(InputSpec(n_features=3), transformer.make_hparams(), False), Gated)


@pytest.mark.parametrize("name", ["stacked-lstm", "bigru", "lstm-attn"])
def test_looking_at_the_gates_draws_nothing_from_the_random_stream(name: str) -> None:
    """A run that records its gates trains exactly as one that does not: its dropout masks
    come from the same random stream."""
    backbone = build(name)
    x = torch.randn(2, 5, 3)
    mask = torch.ones(2, 5, dtype=torch.bool)
    torch.manual_seed(1)
    expected = torch.rand(4)
    torch.manual_seed(1)
    with torch.no_grad():
        assert backbone.gate_activations(x, mask)
    assert torch.equal(torch.rand(4), expected)


def test_forget_bias_keeps_the_forget_gate_open_at_initialisation() -> None:
    x = torch.randn(4, 20, 3, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(4, 20, dtype=torch.bool)
    with torch.no_grad():
        default = build("lstm").gate_activations(x, mask)["layer0/forget"].mean()
        biased = build("lstm", forget_bias=3.0).gate_activations(x, mask)["layer0/forget"].mean()
    assert 0.35 < default < 0.65
    assert biased > 0.9


def test_a_model_with_no_gates_draws_no_figure() -> None:
    module = SeqModule(build("rnn"), Copy(Copy.make_params(delay=3, n_train=8, n_val=8, n_test=8)), {})
    summary = look_at_gates(module, [{"x": torch.randn(2, 4, 3), "mask": torch.ones(2, 4, dtype=torch.bool)}])
    assert summary.metrics() == {} and not summary.count
    assert gate_figure(summary, "rnn") is None


def test_summary_statistics_count_real_activations() -> None:
    summary = GateSummary()
    summary.add("layer0/forget", torch.tensor([0.01, 0.5, 0.99, 0.5]))
    summary.add("layer0/forget", torch.tensor([0.96]))
    metrics = summary.metrics()
    assert metrics["gates/layer0/forget/mean"] == pytest.approx((0.01 + 0.5 + 0.99 + 0.5 + 0.96) / 5)
    assert metrics["gates/layer0/forget/saturated"] == pytest.approx(3 / 5)


@pytest.mark.slow
def test_a_run_records_gate_curves_and_figure_in_the_store(results_dir: Path, data_dir: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--no-baselines", "--models", "lstm,transformer", "--tasks", "copy:delay=5:n_train=256",
                 "--profile", "tiny", "--set", "train.record_gates=true",
                 "--data-dir", str(data_dir), "--results", str(results_dir)])
    assert code == 0, capsys.readouterr().err
    tracker = Tracker(default_tracking_uri(results_dir), results_dir)
    runs = {r.data.tags["model"]: r for r in tracker.client.search_runs([tracker.experiment_id("copy")])}
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    lstm = runs["lstm"].info.run_id
    assert runs["lstm"].data.params["train.record_gates"] == "True"
    for gate in ("input", "forget", "output"):
        for stat in ("mean", "saturated"):
            history = tracker.client.get_metric_history(lstm, f"gates/layer0/{gate}/{stat}")
            curve = tracker.client.get_metric_history(lstm, "val_curve/ce")
            assert sorted(m.step for m in history) == sorted(m.step for m in curve)  # one per validation
            assert len(history) >= 2 and all(0.0 <= m.value <= 1.0 for m in history)
    names = [a.path for a in tracker.client.list_artifacts(lstm)]
    assert "gates.png" in names
    local = Path(tracker.client.download_artifacts(lstm, "gates.png", str(results_dir / "dl")))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A model without gates trains as asked and records none.
    transformer = runs["transformer"].info.run_id
    assert not [k for k in runs["transformer"].data.metrics if k.startswith("gates/")]
    assert "gates.png" not in [a.path for a in tracker.client.list_artifacts(transformer)]
