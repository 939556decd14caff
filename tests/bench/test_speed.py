"""Speed options and the time a run spends outside training, read back from the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.config import TrainConfig
from bench.runner import Runner
from bench.tracking import Tracker, default_tracking_uri
from tasks.batching import BucketBatchSampler

COPY = {"delay": 5, "n_train": 128, "n_val": 32, "n_test": 32}


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    results = tmp_path_factory.mktemp("speed-results")
    return Tracker(default_tracking_uri(results), results)


@pytest.fixture
def runner(tracker: Tracker, data_dir: Path) -> Runner:
    return Runner(tracker, data_dir, sweep_id="speed", accelerator="cpu", rerun=True)


def stored(tracker: Tracker, run_id: str) -> Any:
    return tracker.client.get_run(run_id).data


def test_speed_options_are_checked() -> None:
    for bad in ({"precision": "8"}, {"precision": "bf16"}, {"loader_workers": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad)


def test_bf16_mixed_runs_on_cpu_and_is_recorded(runner: Runner, tracker: Tracker, make_config: Any) -> None:
    # (a GRU: oneDNN's LSTM has no bf16 kernel on CPUs without AVX512-BF16)
    result = runner.run(make_config("gru", "copy", COPY, model_overrides={"hidden_size": 16},
                                    train_overrides={"precision": "bf16-mixed"}))
    assert result.status == "finished", result.reason
    data = stored(tracker, result.run_id)
    assert data.params["train.precision"] == "bf16-mixed"
    assert data.params["train.compile"] == "False" and data.params["train.loader_workers"] == "0"
    assert 0.0 <= data.metrics["test/symbol_accuracy"] <= 1.0


def test_16_mixed_without_a_gpu_fails_with_its_reason(runner: Runner, tracker: Tracker, make_config: Any) -> None:
    result = runner.run(make_config("lstm", "copy", COPY, model_overrides={"hidden_size": 16},
                                    train_overrides={"precision": "16-mixed"}))
    assert result.status == "failed"
    run = tracker.client.get_run(result.run_id)
    assert run.info.status == "FAILED"
    assert "16-mixed needs a GPU" in run.data.tags["failure_reason"]


def test_loader_workers_change_no_number(runner: Runner, tracker: Tracker, make_config: Any) -> None:
    """Worker processes build the same batches in the same order: the same run, the same metrics."""
    results = [runner.run(make_config("gru", "copy", COPY, model_overrides={"hidden_size": 16},
                                      train_overrides={"loader_workers": w})) for w in (0, 1)]
    assert [r.status for r in results] == ["finished", "finished"]
    in_process, workers = (stored(tracker, r.run_id) for r in results)
    assert workers.params["train.loader_workers"] == "1"
    for key in ("val/ce", "test/ce", "test/symbol_accuracy"):
        assert workers.metrics[key] == pytest.approx(in_process.metrics[key], abs=1e-6), key


def test_a_run_records_where_its_time_went(runner: Runner, tracker: Tracker, make_config: Any) -> None:
    result = runner.run(make_config("lstm", "copy", COPY, model_overrides={"hidden_size": 16},
                                    budget_overrides={"max_steps": 12, "val_every_steps": 4}))
    metrics = stored(tracker, result.run_id).metrics
    parts = ("time/validation_s", "time/checkpoint_s", "time/eval_s", "time/record_s")
    for key in parts:
        assert metrics[key] >= 0, key
    assert metrics["time/validation_s"] > 0  # three validations ran during training
    assert metrics["time/validation_s"] + metrics["time/checkpoint_s"] <= metrics["time/train_s"]
    assert sum(metrics[k] for k in parts) <= metrics["time/total_s"]


def test_text_batches_are_grouped_by_length(runner: Runner, make_config: Any) -> None:
    config = make_config("lstm", "tweets")
    task, splits = runner.data(config)
    loaders = runner.loaders(config, splits)
    assert isinstance(loaders.train.batch_sampler, BucketBatchSampler)
    padded = real = 0
    for batch in loaders.train:
        padded += batch["mask"].numel()
        real += int(batch["mask"].sum())
    assert real == int(splits.train.lengths.sum())  # every training sample once per epoch
    assert padded < 1.05 * real  # little padding
    longest = 0
    for batch in loaders.test:  # evaluation goes by length: each batch starts where the last ended
        lengths = batch["mask"].sum(1)
        assert int(lengths.min()) >= longest
        longest = int(lengths.max())


@pytest.mark.slow
def test_a_compiled_model_trains_and_is_scored_from_its_checkpoint(runner: Runner, tracker: Tracker,
                                                                    make_config: Any) -> None:
    runner.keep_model = True
    result = runner.run(make_config("lstm", "copy", COPY, model_overrides={"hidden_size": 16},
                                    train_overrides={"compile": True}))
    assert result.status == "finished", result.reason
    data = stored(tracker, result.run_id)
    assert data.params["train.compile"] == "True"
    assert 0.0 <= data.metrics["test/symbol_accuracy"] <= 1.0
    # Its kept model loads into the plain (uncompiled) module and scores the same.
    from bench.saved_model import load

    loaded = load(result.run_id, tracker, runner.data_dir)
    scored = loaded.evaluate("test")
    assert scored["symbol_accuracy"] == pytest.approx(data.metrics["test/symbol_accuracy"], abs=1e-6)
    assert scored["ce"] == pytest.approx(data.metrics["test/ce"], rel=1e-5)


def test_validation_metrics_are_those_of_the_checkpoint_scored(runner: Runner, tracker: Tracker,
                                                               make_config: Any) -> None:
    """The best checkpoint is not validated twice: its metrics are those of the validation
    that chose it, the best point of the stored learning curve."""
    result = runner.run(make_config("lstm", "copy", COPY, model_overrides={"hidden_size": 16},
                                    budget_overrides={"max_steps": 12, "max_epochs": 100, "patience": 10,
                                                      "val_every_steps": 3}))
    data = stored(tracker, result.run_id)
    curve = {m.step: m.value for m in tracker.client.get_metric_history(result.run_id, "val_curve/ce")}
    assert len(curve) >= 3
    best_step = min(curve, key=lambda s: (curve[s], s))  # the first best, as the checkpoint keeps it
    assert data.metrics["val/ce"] == pytest.approx(curve[best_step], rel=1e-9)
    assert data.metrics["train/best_step"] == best_step or curve[data.metrics["train/best_step"]] == curve[best_step]
