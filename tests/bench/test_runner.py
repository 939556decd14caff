"""Training runs end to end: what a sweep records in MLflow, skipping finished runs,
failures that are recorded while the sweep goes on, exact evaluation on whole splits, and
causal tasks. Runs use the tiny profile and small models."""

from __future__ import annotations

import copy
import dataclasses
import math
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import bench.catalog
import bench.runner
import bench.saved_model
from bench.catalog import load_catalog, parse_request, resolve
from bench.cli import main
from bench.module import SeqModule
from bench.runner import Runner
from bench.tracking import Tracker, default_tracking_uri
from models import MODELS, ModelSpec, get_model
from models.recurrent import RecurrentBackbone, RecurrentHparams
from tasks import TASKS
from tasks.synthetic import Adding, Copy

COPY = "copy:delay=5:n_train=128:n_val=64:n_test=64"
ADDING = "adding:length=10:n_train=128:n_val=64:n_test=64"
COPY_PARAMS = {"delay": 5, "n_train": 128, "n_val": 32, "n_test": 32}

PARAM_KEYS = ["model", "task", "seed", "profile", "task_version", "model.hidden_size",
              "model.num_layers", "task.delay", "train.lr", "train.batch_size", "budget.max_steps",
              "budget.patience"]
TAG_KEYS = ["model", "task", "task_variant", "seed", "profile", "sweep_id", "device", "version.torch",
            "version.lightning", "version.mlflow", "git_commit", "config_hash", "stop_reason"]


# --- temporary models ------------------------------------------------------------------


class _Wrapped(nn.Module):
    """An LSTM backbone whose outputs go through ``fn`` (to make NaNs or raise)."""

    def __init__(self, inp: Any, hp: RecurrentHparams, fn: Any) -> None:
        super().__init__()
        self.inner = RecurrentBackbone(inp, hp, "lstm", bidirectional=False)
        self.step_dim, self.summary_dim = self.inner.step_dim, self.inner.summary_dim
        self.fn = fn

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        steps, summary = self.inner(x, mask)
        return self.fn(steps), self.fn(summary)


def wrapped_spec(fn: Any, record: list[bool] | None = None) -> ModelSpec:
    def build(inp: Any, hp: Any, causal: bool) -> nn.Module:
        if record is not None:
            record.append(causal)
        return _Wrapped(inp, hp, fn)

    return ModelSpec(hparams=RecurrentHparams, build=build, preset={"hidden_size": 16})


def _raise(exc: BaseException) -> Any:
    def fn(t: torch.Tensor) -> torch.Tensor:
        raise exc

    return fn


def catalog_with(extra_models: dict[str, str]) -> dict[str, Any]:
    """The cached catalog plus temporary models (described like an existing one)."""
    catalog = copy.deepcopy(load_catalog())
    for name, like in extra_models.items():
        catalog["models"][name] = catalog["models"][like]
    return catalog


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    results = tmp_path_factory.mktemp("runner-results")
    return Tracker(default_tracking_uri(results), results)


@pytest.fixture
def runner(tracker: Tracker, data_dir: Path) -> Runner:
    return Runner(tracker, data_dir, sweep_id="test-sweep", accelerator="cpu", rerun=True)


def run_info(tracker: Tracker, run_id: str) -> Any:
    return tracker.client.get_run(run_id)


# --- a sweep through the CLI -----------------------------------------------------------


@pytest.mark.slow
def test_sweep_records_every_run_then_skips_them(results_dir: Path, capsys: pytest.CaptureFixture[str],
                                                 mlflow_runs: Any, data_dir: Path) -> None:
    argv = ["run", "--no-baselines",
            "--models", "lstm,gru", "--tasks", f"{COPY},{ADDING}", "--seeds", "0,1", "--profile", "tiny",
            "--set", "model.hidden_size=16", "--results", str(results_dir), "--accelerator", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "8 finished, 0 recorded earlier" in out

    runs = mlflow_runs(results_dir)
    assert len(runs) == 8
    keys = sorted((r.data.tags["model"], r.data.tags["task"], r.data.tags["seed"]) for r in runs)
    assert keys == sorted((m, t, s) for m in ("lstm", "gru") for t in ("copy", "adding") for s in ("0", "1"))
    primary = {"copy": "ce", "adding": "mse"}
    sweeps = set()
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert run.info.status == "FINISHED"
        for key in PARAM_KEYS:
            if key.startswith("task.") and tags["task"] != "copy":
                continue
            assert key in params, key
        assert params["model.hidden_size"] == "16"
        assert params["profile"] == "tiny" and params["budget.max_steps"] == "8"
        assert params["seed"] == tags["seed"]
        for key in TAG_KEYS:
            assert tags.get(key), key
        assert tags["version.torch"] == torch.__version__
        assert tags["profile"] == "tiny"
        p = primary[tags["task"]]
        for key in (f"val/{p}", f"test/{p}", "perf/train_samples_per_s", "perf/infer_batch_ms",
                    "perf/peak_memory_mb", "model/params", "time/total_s", "train/steps"):
            assert key in metrics, f"{key} missing from {tags['model']} × {tags['task']}"
            assert math.isfinite(metrics[key]), key
        assert metrics[f"test/{p}"] >= 0 and metrics["model/params"] > 0
        assert metrics["perf/train_samples_per_s"] > 0 and metrics["perf/infer_batch_ms"] > 0
        assert 1 <= metrics["train/steps"] <= 8
        assert f"reference.{p}" in tags
        sweeps.add(tags["sweep_id"])
    assert len(sweeps) == 1
    assert len({r.data.tags["config_hash"] for r in runs}) == 8
    # the experiment is named after the task
    exp_names = {tracker_name(results_dir, r.info.experiment_id) for r in runs}
    assert exp_names == {"seqbench/copy", "seqbench/adding"}

    # The same command again: everything was recorded, nothing runs.
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "0 finished, 8 recorded earlier" in out
    assert len(mlflow_runs(results_dir)) == 8

    # The runner says so too, with the recorded metrics.
    tracker = Tracker(default_tracking_uri(results_dir), results_dir)
    request = parse_request("lstm", COPY, "1", "tiny", ["model.hidden_size=16"], load_catalog())
    (config,) = resolve(request)
    result = Runner(tracker, data_dir, accelerator="cpu").run(config)
    assert result.status == "cached"
    recorded = {r.info.run_id: r for r in runs}
    assert result.run_id in recorded
    assert result.metrics["test/ce"] == recorded[result.run_id].data.metrics["test/ce"]
    assert len(mlflow_runs(results_dir)) == 8

    # --rerun runs them again.
    assert main([*argv, "--rerun"]) == 0
    assert "8 finished, 0 recorded earlier" in capsys.readouterr().out
    again = mlflow_runs(results_dir)
    assert len(again) == 16
    assert all(r.info.status == "FINISHED" for r in again)
    assert len({r.data.tags["sweep_id"] for r in again}) == 2


def tracker_name(results: Path, experiment_id: str) -> str:
    return Tracker(default_tracking_uri(results), results).client.get_experiment(experiment_id).name


# --- failures --------------------------------------------------------------------------


@pytest.mark.slow
def test_failed_runs_are_recorded_and_the_sweep_goes_on(runner: Runner, tracker: Tracker, register: Any,
                                                        make_config: Any) -> None:
    register(MODELS, "nan-model", wrapped_spec(lambda t: t * float("nan")))
    register(MODELS, "boom-model", wrapped_spec(_raise(RuntimeError("boom in forward"))))

    nan_result = runner.run(make_config("nan-model", "copy", COPY_PARAMS))
    assert nan_result.status == "failed"
    assert "NonFiniteLossError" in nan_result.reason and "nan" in nan_result.reason

    ok = runner.run(make_config("lstm", "copy", COPY_PARAMS, model_overrides={"hidden_size": 16}))
    assert ok.status == "finished", ok.reason

    boom = runner.run(make_config("boom-model", "copy", COPY_PARAMS))
    assert boom.status == "failed"
    assert boom.reason == "RuntimeError: boom in forward"

    for result, needle in ((nan_result, "NonFiniteLossError"), (boom, "boom in forward")):
        run = run_info(tracker, result.run_id)
        assert run.info.status == "FAILED"
        assert needle in run.data.tags["failure_reason"]
        assert run.data.tags["model"] == result.config.model
        assert run.data.params["model.hidden_size"] == "16"  # the configuration is recorded all the same
        artifacts = [a.path for a in tracker.client.list_artifacts(result.run_id)]
        assert "error.txt" in artifacts
    finished = run_info(tracker, ok.run_id)
    assert finished.info.status == "FINISHED"
    assert "failure_reason" not in finished.data.tags
    assert "test/ce" in finished.data.metrics


@pytest.mark.slow
def test_cli_exit_code_1_when_a_run_fails(register: Any, monkeypatch: pytest.MonkeyPatch, results_dir: Path,
                                          capsys: pytest.CaptureFixture[str], mlflow_runs: Any) -> None:
    register(MODELS, "nan-model", wrapped_spec(lambda t: t * float("nan")))
    monkeypatch.setattr(bench.catalog, "load_catalog", lambda use_cache=True: catalog_with({"nan-model": "lstm"}))
    code = main(["run", "--no-baselines",
                 "--models", "nan-model,lstm", "--tasks", "copy:delay=5:n_train=128:n_val=32:n_test=32",
                 "--profile", "tiny", "--set", "model.hidden_size=16", "--results", str(results_dir),
                 "--accelerator", "cpu"])
    captured = capsys.readouterr()
    assert code == 1
    assert "1 finished" in captured.out and "1 failed" in captured.out
    assert "NonFiniteLossError" in captured.out
    status = {r.data.tags["model"]: r.info.status for r in mlflow_runs(results_dir)}
    assert status == {"nan-model": "FAILED", "lstm": "FINISHED"}


@pytest.mark.slow
def test_interrupt_is_recorded_as_killed_and_propagates(runner: Runner, tracker: Tracker, register: Any,
                                                        make_config: Any) -> None:
    """Ctrl+C during training: the run is recorded as KILLED and KeyboardInterrupt reaches the
    caller (the CLI turns it into exit code 130). Lightning catches KeyboardInterrupt inside
    ``trainer.fit`` and calls ``sys.exit(1)`` instead, which the runner does not expect."""
    register(MODELS, "interrupt-model", wrapped_spec(_raise(KeyboardInterrupt())))
    config = make_config("interrupt-model", "copy", COPY_PARAMS)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(BaseException) as info:  # noqa: B017 - asserting on the exact type below
            runner.run(config)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning leaves Ctrl+C ignored
    assert info.type is KeyboardInterrupt, f"{info.type.__name__} escaped instead of KeyboardInterrupt"
    runs = tracker.client.search_runs([tracker.experiment_id("copy")],
                                      filter_string="tags.model = 'interrupt-model'")
    assert len(runs) == 1
    assert runs[0].info.status == "KILLED", f"run left {runs[0].info.status} after the interrupt"


@pytest.mark.slow
def test_cli_exit_code_130_on_interrupt(register: Any, monkeypatch: pytest.MonkeyPatch, results_dir: Path,
                                        capsys: pytest.CaptureFixture[str], mlflow_runs: Any) -> None:
    """The README promises exit code 130 and a line saying finished runs are recorded."""
    register(MODELS, "interrupt-model", wrapped_spec(_raise(KeyboardInterrupt())))
    monkeypatch.setattr(bench.catalog, "load_catalog",
                        lambda use_cache=True: catalog_with({"interrupt-model": "lstm"}))
    handler = signal.getsignal(signal.SIGINT)
    try:
        code: Any = main(["run", "--no-baselines",
                          "--models", "lstm,interrupt-model", "--tasks", "copy:delay=5:n_train=128:n_val=32",
                          "--profile", "tiny", "--set", "model.hidden_size=16", "--results", str(results_dir),
                          "--accelerator", "cpu"])
    except SystemExit as e:
        code = f"SystemExit({e.code})"
    finally:
        signal.signal(signal.SIGINT, handler)
    assert code == 130
    assert "interrupted" in capsys.readouterr().err
    status = {r.data.tags["model"]: r.info.status for r in mlflow_runs(results_dir)}
    assert status == {"lstm": "FINISHED", "interrupt-model": "KILLED"}


# --- evaluation is exact, on whole splits, with the best checkpoint --------------------


class CountingAdding(Adding):
    """The adding task, also reporting how many samples its metrics were computed on."""

    name = "adding-count"

    def finalize(self, s: dict[str, torch.Tensor]) -> dict[str, float]:
        return {**super().finalize(s), "count": float(s["n"])}


class FlatAdding(Adding):
    """The adding task with a validation metric that never improves: early stopping's case."""

    name = "adding-flat"

    def finalize(self, s: dict[str, torch.Tensor]) -> dict[str, float]:
        return {**super().finalize(s), "mse": 1.0}


def test_early_stopping_watches_from_min_steps_on(runner: Runner, register: Any, make_config: Any) -> None:
    """Validations every 2 steps, patience 1, a metric that never improves: training stops at the
    second validation watched. With min_steps=8 the first one watched is step 8's."""
    register(TASKS, "adding-flat", FlatAdding)
    stopped = {}
    for min_steps in (0, 8):
        config = make_config("lstm", "adding-flat", {"length": 10, "n_train": 256, "n_val": 32, "n_test": 32},
                             model_overrides={"hidden_size": 8},
                             budget_overrides={"val_every_steps": 2, "max_steps": 16, "max_epochs": 100, "patience": 1,
                                               "min_steps": min_steps})
        result = runner.run(config)
        assert result.status == "finished", result.reason
        stored = run_info(runner.tracker, result.run_id).data
        stopped[min_steps] = (stored.metrics["train/steps"], stored.tags["stop_reason"],
                              stored.params.get("budget.min_steps"))
    # at 0 (the default) the setting is left out of the params, as in runs recorded before it existed
    assert stopped == {0: (4, "early stopping", None), 8: (10, "early stopping", "8")}


@pytest.mark.slow
def test_evaluation_covers_whole_splits_with_the_best_checkpoint(runner: Runner, register: Any, make_config: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    register(TASKS, "adding-count", CountingAdding)
    modules: list[SeqModule] = []

    class RecordingModule(SeqModule):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            modules.append(self)

    monkeypatch.setattr(bench.saved_model, "SeqModule", RecordingModule)  # where modules are built
    n_val, n_test, eval_bs = 45, 70, 32  # neither a multiple of the evaluation batch size
    config = make_config(
        "lstm", "adding-count", {"length": 10, "n_train": 256, "n_val": n_val, "n_test": n_test},
        model_overrides={"hidden_size": 16},
        train_overrides={"batch_size": 32, "eval_batch_size": eval_bs, "lr": 0.05},
        budget_overrides={"val_every_steps": 2, "max_steps": 8, "patience": 100},
    )
    result = runner.run(config)
    assert result.status == "finished", result.reason
    assert result.metrics["test/count"] == n_test
    assert result.metrics["val/count"] == n_val

    (module,) = modules
    history = [(step, values["val_curve/mse"]) for step, values in module.history]
    assert len(history) == 4  # validated every 2 of 8 steps
    best_step, best_val = min(history, key=lambda h: h[1])
    assert result.metrics["train/best_step"] == best_step
    assert result.metrics["val/mse"] == pytest.approx(best_val, rel=1e-6)

    # The store holds the same: val/<metric>'s latest value is the best checkpoint's, and the
    # learning curve is every validation, under its own key.
    client = runner.tracker.client
    stored = client.get_run(result.run_id).data.metrics
    assert stored["val/mse"] == pytest.approx(best_val, rel=1e-6)
    assert stored["train/best_step"] == best_step
    assert [m.value for m in client.get_metric_history(result.run_id, "val/mse")] == [stored["val/mse"]]
    curve = sorted((m.step, m.value) for m in client.get_metric_history(result.run_id, "val_curve/mse"))
    assert curve == [(step, pytest.approx(v, rel=1e-6)) for step, v in history]
    for key in ("test/mse", "test/count", "val/count"):
        assert stored[key] == pytest.approx(result.metrics[key], rel=1e-9)

    # The module now holds the weights that scored test: recompute both splits from scratch.
    task, splits = runner.data(config)
    module.eval()

    def score(split: Any) -> dict[str, float]:
        stats: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for batch in DataLoader(split, batch_size=eval_bs, collate_fn=split.collate):
                for k, v in task.batch_stats(module(batch["x"], batch["mask"]), batch).items():
                    stats[k] = stats[k] + v if k in stats else v
        return task.finalize(stats)

    for split_name in ("val", "test"):
        expected = score(getattr(splits, split_name))
        assert expected["count"] == len(getattr(splits, split_name))
        for key, value in expected.items():
            assert result.metrics[f"{split_name}/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-7), key


# --- causal tasks ----------------------------------------------------------------------


class CausalCopy(Copy):
    name = "copy-causal"
    causal = True


@pytest.mark.slow
def test_causal_task_builds_causal_models(runner: Runner, register: Any, make_config: Any) -> None:
    seen: list[bool] = []
    register(TASKS, "copy-causal", CausalCopy)
    register(MODELS, "spy-model", wrapped_spec(lambda t: t, record=seen))
    assert runner.run(make_config("spy-model", "copy-causal", COPY_PARAMS)).status == "finished"
    assert runner.run(make_config("spy-model", "copy", COPY_PARAMS)).status == "finished"
    # each run builds its model twice (a fit check, then the real one), always with the task's causality
    assert seen == [True, True, False, False]


def test_causal_task_refuses_bidirectional_models(register: Any) -> None:
    register(TASKS, "copy-causal", CausalCopy)
    catalog = copy.deepcopy(load_catalog())
    catalog["tasks"]["copy-causal"] = {**catalog["tasks"]["copy"], "causal": True}
    request = parse_request("all", "copy-causal:delay=5,copy:delay=5", "0", "tiny", [], catalog)
    bidirectional = sorted(n for n in MODELS if get_model(n).bidirectional)
    causal_refusals = [(m, t) for m, t, reason in request.refused if "bidirectional" in reason]
    assert sorted(m for m, _ in causal_refusals) == bidirectional
    assert {t for _, t in causal_refusals} == {"copy-causal:delay=5"}
    # Other refusals are baselines that do not give a class per step; the same on both tasks.
    other = {(m, t.split(":")[0]) for m, t, reason in request.refused if "bidirectional" not in reason}
    serving = {n for n in MODELS if "class_per_step" in get_model(n).outputs and "tokens" in get_model(n).inputs}
    assert {m for m, _ in other} == set(MODELS) - serving
    pairs = request.pairs()
    assert ("lstm", request.tasks[0]) in pairs
    assert not any(m in bidirectional and t.name == "copy-causal" for m, t in pairs)
    assert {m for m, t in pairs if t.name == "copy"} == serving  # bidirectional models serve the non-causal task
    configs = resolve(request)
    assert {c.model for c in configs if c.task.name == "copy-causal"} == serving - set(bidirectional)


def test_runner_cache_of_task_data(runner: Runner, make_config: Any) -> None:
    """Runs that share a task, its parameters and a seed share the data; another seed does not."""
    a = runner.data(make_config("lstm", "copy", COPY_PARAMS, seed=0))
    b = runner.data(make_config("gru", "copy", COPY_PARAMS, seed=0))
    c = runner.data(make_config("lstm", "copy", COPY_PARAMS, seed=1))
    assert a is b and a is not c
    assert dataclasses.asdict(a[0].params) == {**dataclasses.asdict(Copy.Params()), **COPY_PARAMS}


@pytest.mark.slow
def test_forecast_and_confusion_figures_are_run_artifacts(results_dir: Path, data_dir: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--no-baselines",
                 "--models", "gru", "--tasks", "airline,etth1:S-h96,tweets", "--profile", "tiny",
                 "--set", "model.hidden_size=16", "--data-dir", str(data_dir), "--results", str(results_dir)])
    assert code == 0, capsys.readouterr().err
    tracker = Tracker(default_tracking_uri(results_dir), results_dir)
    expected = {"airline": "forecast_test.png", "etth1": "forecast_test.png", "tweets": "confusion_test.png"}
    for task, artifact in expected.items():
        (run,) = tracker.client.search_runs([tracker.experiment_id(task)])
        names = [a.path for a in tracker.client.list_artifacts(run.info.run_id)]
        assert names == [artifact]
        local = Path(tracker.client.download_artifacts(run.info.run_id, artifact, str(results_dir / task)))
        assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and local.stat().st_size > 10_000


@pytest.mark.slow
def test_every_leaderboard_gets_the_baselines_that_serve_its_task(results_dir: Path, data_dir: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--models", "gru", "--tasks", "airline,tweets", "--profile", "tiny",
                 "--set", "model.hidden_size=16", "--set", "train.lr=0.01",
                 "--data-dir", str(data_dir), "--results", str(results_dir)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "refused" not in captured.err  # baselines are added only where they serve
    tracker = Tracker(default_tracking_uri(results_dir), results_dir)
    models_of = {task: sorted(r.data.tags["model"] for r in tracker.client.search_runs([tracker.experiment_id(task)]))
                 for task in ("airline", "tweets")}
    assert models_of == {"airline": ["gru", "last-value", "linear", "seasonal-naive"],
                         "tweets": ["bow-logreg", "gru", "majority"]}
    (linear,) = tracker.client.search_runs([tracker.experiment_id("airline")], "tags.model = 'linear'")
    assert float(linear.data.params["train.lr"]) == 5e-3  # --set applies to the models asked for only
    for task in ("airline", "tweets"):
        assert "gru" in captured.out and task in captured.out


@pytest.mark.slow
def test_baseline_that_does_not_fit_the_data_is_refused_not_failed(results_dir: Path, data_dir: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # temperatures: a 30-day look-back cannot hold the 365-day season of seasonal-naive
    code = main(["run", "--models", "last-value,seasonal-naive", "--tasks", "temperatures", "--profile", "tiny",
                 "--no-baselines", "--data-dir", str(data_dir), "--results", str(results_dir)])
    out = capsys.readouterr().out
    assert code == 0
    assert "refused" in out and "look-back of at least 365" in out
    tracker = Tracker(default_tracking_uri(results_dir), results_dir)
    runs = tracker.client.search_runs([tracker.experiment_id("temperatures")])
    assert [(r.data.tags["model"], r.info.status) for r in runs] == [("last-value", "FINISHED")]
