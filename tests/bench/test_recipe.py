"""The training recipe (bench.recipe): per-window normalisation of forecasting inputs,
AdamW parameter groups, the learning-rate schedule; how a run's recipe is resolved, and
what a run records of it (the learning rate per validation, the cache key)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import bench.runner
from bench.catalog import Request, load_catalog, parse_request, resolve
from bench.config import TaskRef, TrainConfig
from bench.errors import BenchError
from bench.module import CURVE, SeqModule
from bench.recipe import MIN_LR_RATIO, WindowNorm, lr_factor, optimizer_and_schedule, parameter_groups
from bench.runner import Runner
from bench.tracking import Tracker, default_tracking_uri
from models import InputSpec, OutputShape, get_model
from tasks import get_task

KINDS = ("standard", "revin", "robust")


def windows(batch: int = 4, length: int = 48, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """Random windows (B, L, C) with per-channel levels and spreads far from 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    level = torch.tensor([5.0, -20.0, 300.0])[:channels]
    spread = torch.tensor([0.5, 3.0, 40.0])[:channels]
    return level + spread * torch.randn(batch, length, channels, generator=g)


def norm(kind: str, channels: int = 3) -> WindowNorm:
    wn = WindowNorm(kind, channels)
    if kind == "revin":  # a learned affine that is far from the identity
        with torch.no_grad():
            wn.weight.copy_(torch.tensor([0.5, 2.0, -1.5])[:channels])
            wn.bias.copy_(torch.tensor([0.3, -1.0, 2.0])[:channels])
    return wn


# --- WindowNorm --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_window_norm_denormalise_inverts_normalise(kind: str) -> None:
    wn = norm(kind)
    x = windows()
    z, stats = wn.normalise(x)
    assert z.shape == x.shape
    assert not torch.allclose(z, x)  # it did something
    torch.testing.assert_close(wn.denormalise(z, stats), x, rtol=1e-5, atol=1e-4)
    # a forecast (another length) is mapped back with the same window's statistics
    h = torch.randn(4, 7, 3)
    centre, scale = stats
    assert centre.shape == scale.shape == (4, 1, 3)
    back = wn.denormalise(h, stats)
    assert back.shape == (4, 7, 3)
    if kind != "revin":
        torch.testing.assert_close(back, h * scale + centre)


@pytest.mark.parametrize("kind", ["standard", "robust"])
def test_window_norm_statistics_are_per_window_and_channel(kind: str) -> None:
    """A window shifted by a constant and scaled by a positive factor (per channel) is the same
    window once normalised, even beside other windows in its batch."""
    wn = WindowNorm(kind, 3)
    x = windows(batch=2, length=49)
    a = torch.tensor([3.0, 0.2, 25.0])  # (float32: an offset far beyond the spread would cost digits)
    b = torch.tensor([7.0, 30.0, -4.0])
    both = torch.cat([x, a * x + b])  # (4, L, C): windows 2 and 3 are affine images of 0 and 1
    z, (centre, scale) = wn.normalise(both)
    torch.testing.assert_close(z[2:], z[:2], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(centre[2:], a * centre[:2] + b, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(scale[2:], a * scale[:2], rtol=1e-3, atol=1e-4)
    # each window and channel comes out centred and of unit spread by its own statistics
    if kind == "standard":
        torch.testing.assert_close(z.mean(1), torch.zeros(4, 3), rtol=0, atol=1e-4)
        torch.testing.assert_close(z.std(1, unbiased=False), torch.ones(4, 3), rtol=0, atol=1e-3)
    else:
        torch.testing.assert_close(z.median(1).values, torch.zeros(4, 3), rtol=0, atol=1e-4)
        torch.testing.assert_close(z.abs().median(1).values, torch.ones(4, 3), rtol=0, atol=1e-3)


def test_robust_statistics_barely_move_with_a_spike_while_standard_ones_do() -> None:
    x = windows(batch=1, length=49, channels=1)  # level 5, spread 0.5
    spiked = x.clone()
    spiked[0, 20, 0] = 1e4
    robust, standard = WindowNorm("robust", 1), WindowNorm("standard", 1)
    (c0, s0), (c1, s1) = robust.statistics(x), robust.statistics(spiked)
    assert abs(float(c1 - c0)) < 0.2 * float(s0)
    assert 0.75 < float(s1 / s0) < 1.35
    (c0, s0), (c1, s1) = standard.statistics(x), standard.statistics(spiked)
    assert float(c1 - c0) > 100
    assert float(s1 / s0) > 100
    # so the rest of the window keeps its shape under the robust normaliser only
    rest = torch.arange(49) != 20
    z0, _ = robust.normalise(x)
    z1, _ = robust.normalise(spiked)
    assert float((z1 - z0)[0, rest].abs().max()) < 0.5


@pytest.mark.parametrize("kind", KINDS)
def test_flat_windows_give_finite_output(kind: str) -> None:
    wn = norm(kind, channels=2)
    flat = torch.full((2, 24, 2), 5.0)
    flat[1, :, 1] = -3.0
    z, stats = wn.normalise(flat)
    assert torch.isfinite(z).all() and all(torch.isfinite(s).all() for s in stats)
    torch.testing.assert_close(wn.denormalise(z, stats), flat, rtol=1e-5, atol=1e-4)
    forecast = wn.denormalise(torch.zeros(2, 6, 2), stats)
    assert torch.isfinite(forecast).all()
    # robust: most values equal (median absolute deviation 0) but not all: still finite
    mostly = torch.full((1, 24, 2), 2.0)
    mostly[0, :3, 0] = torch.tensor([9.0, -1.0, 4.0])
    z, stats = wn.normalise(mostly)
    assert torch.isfinite(z).all() and float(stats[1].min()) > 0
    torch.testing.assert_close(wn.denormalise(z, stats), mostly, rtol=1e-5, atol=1e-4)


def test_window_norm_rejects_none_and_unknown_kinds() -> None:
    for kind in ("none", "minmax"):
        with pytest.raises(ValueError, match="window_norm"):
            WindowNorm(kind, 1)


# --- SeqModule: forecasts are equivariant to the scale and level of the input -----------


def forecaster(task_name: str, window_norm: str, train_overrides: dict[str, Any] | None = None,
               data_dir: Path | None = None, **task_params: Any) -> tuple[SeqModule, Any]:
    task_cls = get_task(task_name)
    task = task_cls(task_cls.make_params(**task_params), data_dir)
    spec = get_model("lstm")
    horizon, channels = task.output.shape
    torch.manual_seed(0)
    net = spec.instantiate(InputSpec(n_features=channels, seq_len=task.params.lookback),
                           spec.make_hparams(hidden_size=8), False, OutputShape("forecast", shape=task.output.shape))
    train = {**dataclasses.asdict(TrainConfig()), "window_norm": window_norm, **(train_overrides or {})}
    module = SeqModule(net, task, train).eval()
    if module.window_norm is not None and window_norm == "revin":
        with torch.no_grad():
            module.window_norm.weight.copy_(torch.linspace(0.5, 2.0, channels))
            module.window_norm.bias.copy_(torch.linspace(-0.5, 0.5, channels))
    return module, task


def predict(module: SeqModule, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x, torch.ones(x.shape[:2], dtype=torch.bool))


@pytest.mark.parametrize("kind", KINDS)
def test_forecast_of_affine_input_is_affine_forecast_on_airline(kind: str, data_dir: Path) -> None:
    module, task = forecaster("airline", kind, data_dir=data_dir)
    x = task.setup().train.__getitems__(list(range(0, 80, 10)))["x"]  # 8 real windows, (8, 24, 1)
    a, b = 37.5, 280.0
    y = predict(module, x)
    assert y.shape == (8, 12, 1)
    torch.testing.assert_close(predict(module, a * x + b), a * y + b, rtol=1e-4, atol=5e-3)
    # without the normaliser the same network is not equivariant (so the check above means something)
    plain, _ = forecaster("airline", "none", data_dir=data_dir)
    assert not torch.allclose(predict(plain, a * x + b), a * predict(plain, x) + b, rtol=1e-2, atol=1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_forecast_equivariance_is_per_channel_on_ett(kind: str) -> None:
    """Seven channels, each with its own scale and level: each channel's forecast follows its own."""
    module, _ = forecaster("etth1", kind, lookback=32, horizon=8)
    x = torch.randn(3, 32, 7, generator=torch.Generator().manual_seed(1)).cumsum(1)
    a = torch.tensor([0.1, 1.0, 2.0, 5.0, 20.0, 0.5, 300.0])
    b = torch.tensor([-50.0, 0.0, 3.0, 100.0, -7.0, 1.0, 2000.0])
    y = predict(module, x)
    assert y.shape == (3, 8, 7)
    torch.testing.assert_close(predict(module, a * x + b), a * y + b, rtol=1e-4, atol=2e-2)


def test_window_norm_on_a_non_forecasting_task_is_refused_by_the_module() -> None:
    task_cls = get_task("copy")
    task = task_cls(task_cls.make_params(delay=5))
    spec = get_model("lstm")
    net = spec.instantiate(InputSpec(vocab_size=10), spec.make_hparams(hidden_size=8), False,
                           OutputShape(task.output.kind, task.output.n_classes, task.output.shape))
    with pytest.raises(ValueError, match="forecasting"):
        SeqModule(net, task, {"window_norm": "standard"})


# --- parameter groups --------------------------------------------------------------------


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 6, padding_idx=0)
        self.bag = nn.EmbeddingBag(20, 4, mode="mean")  # a weight matrix (bag-of-words logreg): decayed
        self.lstm = nn.LSTM(6, 5, num_layers=2, batch_first=True)
        self.ln = nn.LayerNorm(5)
        self.lin = nn.Linear(5, 3)
        self.norm = WindowNorm("revin", 3)
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)
        self.tied = self.lin  # the same module twice: its parameters still once


def group_of(groups: list[dict[str, Any]]) -> dict[int, list[float]]:
    where: dict[int, list[float]] = {}
    for g in groups:
        for p in g["params"]:
            where.setdefault(id(p), []).append(g["weight_decay"])
    return where


def test_parameter_groups_decay_weight_matrices_only() -> None:
    m = Mixed()
    where = group_of(parameter_groups(m, 0.05))
    expected = {
        "emb.weight": 0.0, "bag.weight": 0.05, "ln.weight": 0.0, "ln.bias": 0.0,
        "lin.weight": 0.05, "lin.bias": 0.0, "norm.weight": 0.0, "norm.bias": 0.0,
        **{f"lstm.{k}": (0.05 if k.startswith("weight") else 0.0) for k, _ in m.lstm.named_parameters()},
    }
    named = dict(m.named_parameters())
    assert set(expected) == {k for k, p in named.items() if p.requires_grad}
    for name, decay in expected.items():
        assert where.get(id(named[name])) == [decay], name  # in exactly one group, with this decay
    assert id(m.frozen.weight) not in where and id(m.frozen.bias) not in where
    assert len(where) == len(expected)


def test_parameter_groups_of_real_models() -> None:
    # a token Transformer: embeddings and LayerNorm gains undecayed, every Linear weight decayed
    spec = get_model("transformer")
    net = spec.instantiate(InputSpec(vocab_size=30), spec.make_hparams(), False,
                           OutputShape("class_per_sequence", n_classes=3))
    where = group_of(parameter_groups(net, 0.1))
    params = [p for p in net.parameters() if p.requires_grad]
    assert len(where) == len(params) and all(len(v) == 1 for v in where.values())
    kinds = {nn.Embedding: 0.0, nn.LayerNorm: 0.0}
    seen = set()
    for sub in net.modules():
        for name, p in sub.named_parameters(recurse=False):
            if type(sub) in kinds:
                assert where[id(p)] == [0.0], (type(sub).__name__, name)
                seen.add(type(sub))
            elif isinstance(sub, nn.Linear):
                assert where[id(p)] == ([0.1] if name == "weight" else [0.0]), name
    assert seen == {nn.Embedding, nn.LayerNorm}
    # the bag-of-words logistic regression: its weight matrix keeps the decay (its L2 penalty)
    spec = get_model("bow-logreg")
    bow = spec.instantiate(InputSpec(vocab_size=30), spec.make_hparams(), False,
                           OutputShape("class_per_sequence", n_classes=3))
    where = group_of(parameter_groups(bow, 0.1))
    assert where[id(bow.bag.weight)] == [0.1] and where[id(bow.bias)] == [0.0]


def test_optimizer_uses_the_groups_and_the_schedule() -> None:
    module, _ = forecaster("airline", "revin", {"weight_decay": 0.01, "lr": 0.1, "schedule": "cosine",
                                                "lr_warmup": 0.2})
    total = 20
    out = optimizer_and_schedule(module, module.train_cfg, total)
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.AdamW) and out["lr_scheduler"]["interval"] == "step"
    where = group_of(opt.param_groups)
    assert where[id(module.window_norm.weight)] == [0.0]
    assert where[id(module.head.proj.weight)] == [0.01] and where[id(module.head.proj.bias)] == [0.0]
    assert len(where) == len(list(module.parameters()))
    rates = []
    for _ in range(total + 1):
        rates.append(opt.param_groups[0]["lr"])
        assert all(g["lr"] == rates[-1] for g in opt.param_groups)
        opt.step()
        sched.step()
    assert rates == pytest.approx([0.1 * lr_factor(s, total, "cosine", 4) for s in range(total + 1)])
    assert rates[-1] == pytest.approx(0.1 * MIN_LR_RATIO)


# --- learning-rate schedule --------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_lr_factor_warm_up_then_schedule(schedule: str) -> None:
    total, warmup = 200, 20
    f = [lr_factor(s, total, schedule, warmup) for s in range(total + 1)]
    # warm-up: linear, from small to ~1 at its end
    rise = [f[s + 1] - f[s] for s in range(warmup)]
    assert 0 < f[0] <= 0.1
    assert all(r > 0 for r in rise) and max(rise) - min(rise) < 1e-9
    assert f[warmup - 1] >= 0.9 and f[warmup] == pytest.approx(1.0)
    after = f[warmup:]
    assert all(later <= earlier + 1e-12 for earlier, later in zip(after, after[1:], strict=False))
    if schedule == "constant":
        assert all(v == 1.0 for v in after)
        assert lr_factor(10 * total, total, schedule, warmup) == 1.0
    else:
        assert f[total] == pytest.approx(MIN_LR_RATIO)
        assert f[(warmup + total) // 2] == pytest.approx((1 + MIN_LR_RATIO) / 2)  # half-way: half-way down
        assert min(after) >= MIN_LR_RATIO - 1e-12
        assert lr_factor(2 * total, total, schedule, warmup) == pytest.approx(MIN_LR_RATIO)  # stays there
    if schedule == "cosine":  # slow at both ends, fast in the middle
        assert f[warmup] - f[warmup + 10] < f[105] - f[115]
    if schedule == "linear":
        drops = [after[i] - after[i + 1] for i in range(len(after) - 1)]
        assert max(drops) - min(drops) < 1e-9


def test_lr_factor_without_warm_up_starts_at_the_peak() -> None:
    assert lr_factor(0, 100, "cosine", 0) == 1.0
    assert lr_factor(100, 100, "linear", 0) == pytest.approx(MIN_LR_RATIO)


# --- resolution of the recipe ------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog() -> dict[str, Any]:
    return load_catalog()


def configs(catalog: dict[str, Any], models: str, tasks: str, settings: list[str] | None = None,
            baselines: bool = False) -> dict[tuple[str, str], Any]:
    request = parse_request(models, tasks, "0", "tiny", settings or [], catalog, baselines=baselines)
    return {(c.model, c.task.name): c for c in resolve(request)}


def test_neural_forecasters_get_the_tasks_recipe(catalog: dict[str, Any]) -> None:
    got = configs(catalog, "lstm,transformer", "airline,etth1")
    for (model, task), config in got.items():
        assert config.train["window_norm"] == "standard", (model, task)
        assert config.train["batch_size"] == {"airline": 16, "etth1": 32}[task], (model, task)
        assert config.train["schedule"] == "cosine"
        assert config.flat()["train.window_norm"] == "standard"
    assert len(got) == 4


def test_baselines_never_get_the_tasks_window_norm(catalog: dict[str, Any]) -> None:
    requested = configs(catalog, "lstm,linear,last-value", "airline,etth1")
    added = configs(catalog, "lstm", "airline,etth1", ["train.window_norm=robust"], baselines=True)
    for got in (requested, added):
        for task in ("airline", "etth1"):
            assert got[("linear", task)].train["window_norm"] == "none"
            assert got[("last-value", task)].train["window_norm"] == "none"
    assert requested[("linear", "airline")].train["lr"] == 5e-3  # the family's default still applies
    # --set wins for the model asked for, and only for it
    for task in ("airline", "etth1"):
        assert added[("lstm", task)].train["window_norm"] == "robust"


def test_set_window_norm_wins_over_the_task(catalog: dict[str, Any]) -> None:
    for kind in ("none", "revin", "robust"):
        (config,) = configs(catalog, "gru", "etth1:S-h96", [f"train.window_norm={kind}"]).values()
        assert config.train["window_norm"] == kind
        assert config.train["batch_size"] == 32  # the rest of the task's recipe stays


@pytest.mark.parametrize("task", ["copy:delay=5", "tweets", "sst2"])
def test_window_norm_on_a_non_forecasting_task_is_an_error(catalog: dict[str, Any], task: str) -> None:
    with pytest.raises(BenchError, match="window_norm"):
        configs(catalog, "lstm", task, ["train.window_norm=standard"])
    (config,) = configs(catalog, "lstm", task).values()
    assert config.train["window_norm"] == "none"


def test_unknown_window_norm_or_schedule_is_an_error(catalog: dict[str, Any]) -> None:
    with pytest.raises(BenchError, match="window_norm"):
        configs(catalog, "lstm", "airline", ["train.window_norm=zscore"])
    with pytest.raises(BenchError, match="schedule"):
        configs(catalog, "lstm", "airline", ["train.schedule=step"])


def test_config_hash_depends_on_window_norm_and_schedule(catalog: dict[str, Any]) -> None:
    seen_hash, seen_id = set(), set()
    for setting in ("train.window_norm=none", "train.window_norm=standard", "train.window_norm=revin",
                    "train.window_norm=robust", "train.schedule=linear", "train.lr_warmup=0.1"):
        (config,) = configs(catalog, "lstm", "airline", [setting]).values()
        seen_hash.add(config.config_hash)
        seen_id.add(config.config_id)
    assert len(seen_hash) == len(seen_id) == 6
    (default,) = configs(catalog, "lstm", "airline").values()
    (same,) = configs(catalog, "lstm", "airline", ["train.window_norm=standard"]).values()
    assert default.config_hash == same.config_hash


# --- end to end: what a run records ------------------------------------------------------


def airline_config(**train: Any) -> Any:
    request = Request(models=["lstm"], tasks=[TaskRef("airline")], seeds=[0], profile="tiny",
                      model_overrides={"hidden_size": 8}, train_overrides=dict(train),
                      budget_overrides={"max_steps": 12, "val_every_steps": 3, "patience": 100})
    (config,) = resolve(request)
    return config


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Any]:
    """One airline run (12 steps, a validation every 3), recorded in a fresh store."""
    results = tmp_path_factory.mktemp("recipe-results")
    tracker = Tracker(default_tracking_uri(results), results)
    config = airline_config()
    result = Runner(tracker, data_dir, sweep_id="recipe", accelerator="cpu").run(config)
    assert result.status == "finished", result.reason
    return {"results": results, "tracker": tracker, "config": config, "result": result, "data_dir": data_dir}


def store(results: Path) -> Any:
    """A new client on the store: what was written, not what a process remembers."""
    return Tracker(default_tracking_uri(results), results).client


@pytest.mark.slow
def test_learning_rate_is_recorded_per_validation_and_falls(recorded: dict[str, Any]) -> None:
    client = store(recorded["results"])
    run = client.get_run(recorded["result"].run_id)
    params = run.data.params
    assert params["train.window_norm"] == "standard" and params["train.schedule"] == "cosine"
    assert params["train.lr_warmup"] == "0.05" and params["train.batch_size"] == "16"
    lr = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/lr"))
    curve = sorted(m.step for m in client.get_metric_history(run.info.run_id, CURVE + "mase"))
    assert [s for s, _ in lr] == curve == [3, 6, 9, 12]
    rates = [v for _, v in lr]
    assert all(later < earlier for earlier, later in zip(rates, rates[1:], strict=False)), rates
    peak, total = float(params["train.lr"]), 12
    warmup = round(0.05 * total)
    assert rates == pytest.approx([peak * lr_factor(s, total, "cosine", warmup) for s, _ in lr], rel=1e-6)
    assert rates[-1] == pytest.approx(peak * MIN_LR_RATIO, rel=1e-6)


@pytest.mark.slow
def test_cache_key_covers_config_code_and_device(recorded: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    first = recorded["result"]
    config = recorded["config"]
    runner = Runner(recorded["tracker"], recorded["data_dir"], sweep_id="recipe-again", accelerator="cpu")
    again = runner.run(config)
    assert again.status == "cached" and again.run_id == first.run_id

    real_code = bench.runner.code_version(config.model, config.task.name)
    monkeypatch.setattr(bench.runner, "code_version", lambda model, task: "edited-code")
    edited = runner.run(config)
    assert edited.status == "finished", edited.reason
    assert edited.run_id != first.run_id
    assert runner.run(config).run_id == edited.run_id  # now recorded under the edited code
    monkeypatch.undo()

    runner.device_kind = "cuda: Imaginary GPU"
    other_device = runner.run(config)
    assert other_device.status == "finished", other_device.reason
    assert other_device.run_id not in (first.run_id, edited.run_id)

    runner.device_kind = "cpu"
    assert runner.run(config).run_id == first.run_id  # the original is still the one for cpu

    client = store(recorded["results"])
    tags = {r: client.get_run(r).data.tags for r in (first.run_id, edited.run_id, other_device.run_id)}
    assert tags[first.run_id]["code_version"] == real_code and tags[first.run_id]["device_kind"] == "cpu"
    assert tags[edited.run_id]["code_version"] == "edited-code" and tags[edited.run_id]["device_kind"] == "cpu"
    assert tags[other_device.run_id]["code_version"] == real_code
    assert tags[other_device.run_id]["device_kind"] == "cuda: Imaginary GPU"
    assert len({t["cache_key"] for t in tags.values()}) == 3
    assert {t["config_hash"] for t in tags.values()} == {config.config_hash}
    assert {t["config_id"] for t in tags.values()} == {config.config_id}


@pytest.mark.slow
def test_another_window_norm_is_another_run(recorded: dict[str, Any]) -> None:
    runner = Runner(recorded["tracker"], recorded["data_dir"], sweep_id="recipe-robust", accelerator="cpu")
    robust = runner.run(airline_config(window_norm="robust"))
    assert robust.status == "finished", robust.reason
    assert robust.run_id != recorded["result"].run_id
    assert store(recorded["results"]).get_run(robust.run_id).data.params["train.window_norm"] == "robust"


@pytest.mark.slow
def test_cached_result_is_what_the_store_holds(recorded: dict[str, Any]) -> None:
    first = recorded["result"]
    cached = Runner(recorded["tracker"], recorded["data_dir"], accelerator="cpu").run(recorded["config"])
    assert cached.status == "cached" and cached.run_id == first.run_id
    client = store(recorded["results"])
    stored = client.get_run(first.run_id).data.metrics
    assert cached.metrics == stored
    for key, value in first.metrics.items():  # what the first run computed is what is stored
        assert stored[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert cached.stop_reason == first.stop_reason == "max_steps"
    assert cached.references == pytest.approx(first.references, rel=1e-5)
    # val/<primary> is the best checkpoint's: the best of the validation curve
    curve = [(m.value, m.step) for m in client.get_metric_history(first.run_id, CURVE + "mase")]
    best, best_step = min(curve)
    assert len(curve) == 4
    assert [m.value for m in client.get_metric_history(first.run_id, "val/mase")] == [stored["val/mase"]]
    assert stored["val/mase"] == pytest.approx(best, rel=1e-6)
    assert stored["train/best_step"] == best_step
    assert math.isfinite(stored["test/mase"])


@pytest.mark.parametrize(("name", "kept"), [("s4d", {"log_A_real", "A_imag"}), ("mamba", {"A_log"}),
                                              ("slstm", {"bias"})])
def test_state_space_dynamics_are_never_decayed(name: str, kept: set[str]) -> None:
    """A weight decay would pull S4D's frequencies and Mamba's decay rates to zero, and the
    sLSTM's forget biases (a 2-D tensor) down: they sit in the group without decay."""
    spec = get_model(name)
    backbone = spec.build(InputSpec(n_features=2), spec.make_hparams(hidden_size=8, num_layers=1), False)
    groups = parameter_groups(backbone, weight_decay=0.1)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    matrices = {n.rsplit(".", 1)[-1]: p for n, p in backbone.named_parameters() if p.ndim >= 2}
    assert kept <= set(matrices)
    assert not any(id(matrices[n]) in decayed for n in kept)
    assert any(id(p) in decayed for n, p in matrices.items() if n not in kept)  # the other matrices are
