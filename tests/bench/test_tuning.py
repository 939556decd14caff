"""Tuning without training a benchmark model: seeds, study names, storage URLs, applying a
trial's values to a run configuration, the per-trial seeded sampler, counting trials,
pruners, the pruning callback in a real (tiny) Lightning training, and --timeout."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial
from torch.utils.data import DataLoader, TensorDataset

from bench.cli import parse_duration
from bench.errors import BenchError
from bench.tuning import (
    Census,
    PruningCallback,
    TrialSeededSampler,
    apply,
    best_trial,
    derived_seed,
    make_pruner,
    redact,
    study_name,
)

# --- seeds, names, URLs -----------------------------------------------------------------


def test_derived_seed_is_deterministic_and_in_range() -> None:
    seeds = [derived_seed(0, n) for n in range(50)] + [derived_seed(123456789, n, 1) for n in range(50)]
    assert all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)
    assert seeds == [derived_seed(0, n) for n in range(50)] + [derived_seed(123456789, n, 1) for n in range(50)]
    assert len(set(seeds[:50])) == 50  # one per trial number
    assert derived_seed(0, 1) != derived_seed(1, 0)  # the order of the parts matters
    assert derived_seed(7, 3) != derived_seed(7, 3, 1)  # the sampler's seed is not the training seed
    assert derived_seed(7, 3) != derived_seed(8, 3)  # another study seed, other trials


def test_study_name() -> None:
    assert study_name("lstm", "airline", "quick") == "lstm@airline@quick"
    assert study_name("transformer", "copy:T200", "tiny", "wide") == "transformer@copy:T200@tiny@wide"
    assert study_name("lstm", "copy", "tiny", "") == "lstm@copy@tiny"


def test_redact_hides_the_password() -> None:
    url = "postgresql://alice:s3cret@db.example.org:5432/optuna"
    shown = redact(url)
    assert "s3cret" not in shown
    assert shown == "postgresql://alice:***@db.example.org:5432/optuna"
    assert "s3cret" not in redact("postgresql+psycopg2://alice:s3cret@db/optuna")
    assert redact("sqlite:////tmp/results/optuna.db") == "sqlite:////tmp/results/optuna.db"
    bad = redact("postgresql://alice:s3cret@db:notaport/optuna")  # unparseable: nothing of it shown
    assert "s3cret" not in bad and bad.startswith("postgresql://")


# --- apply ------------------------------------------------------------------------------


def test_apply_sets_model_train_and_task_values(make_config: Callable[..., Any]) -> None:
    base = make_config("lstm", "copy", {"delay": 5, "n_train": 64, "n_val": 32, "n_test": 32}, seed=3)
    before = dataclasses.replace(base, model_params=dict(base.model_params), train=dict(base.train),
                                 task_params=dict(base.task_params))
    config = apply(base, {"model.hidden_size": 16, "train.lr": 0.05, "train.batch_size": 8, "task.delay": 7},
                   seed=11)
    assert config.model_params == {**base.model_params, "hidden_size": 16}
    assert config.train == {**base.train, "lr": 0.05, "batch_size": 8}
    assert config.task_params == {**base.task_params, "delay": 7}
    assert config.seed == 11
    assert (config.model, config.task, config.profile, config.budget) == (base.model, base.task, base.profile,
                                                                          base.budget)
    assert base == before  # the base is left as it was
    assert apply(base, {}).seed == 3  # without a seed, the base's
    assert apply(base, {}) == base


def test_apply_refuses_an_invalid_combination(make_config: Callable[..., Any]) -> None:
    base = make_config("transformer", "copy", {"delay": 5})
    assert base.model_params["n_heads"] == 4
    with pytest.raises(ValueError, match="d_model=50 must be divisible by n_heads=4"):
        apply(base, {"model.d_model": 50})
    assert apply(base, {"model.d_model": 50, "model.n_heads": 5}).model_params["d_model"] == 50
    with pytest.raises(ValueError, match="lr must be > 0"):
        apply(base, {"train.lr": 0.0})
    with pytest.raises(ValueError):
        apply(base, {"task.delay": 0})


# --- the sampler ------------------------------------------------------------------------


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5.0, 5.0)
    n = trial.suggest_int("n", 1, 8)
    act = trial.suggest_categorical("act", ["relu", "tanh", "gelu"])
    return (x - 1.0) ** 2 + abs(n - 3) + (0.5 if act == "tanh" else 0.0)


def ask_and_tell(seed: int, n_trials: int = 14) -> list[dict[str, Any]]:
    """Past TPE's 10 random start-up trials, so both kinds of draw are compared."""
    study = optuna.create_study(sampler=TrialSeededSampler(seed))
    params = []
    for _ in range(n_trials):
        trial = study.ask()
        study.tell(trial, objective(trial))
        params.append(dict(trial.params))
    return params


def test_trial_seeded_sampler_replays_a_study() -> None:
    first, again = ask_and_tell(7), ask_and_tell(7)
    assert first == again
    assert len({p["x"] for p in first}) == len(first)  # each trial draws its own values
    other = ask_and_tell(8)
    assert [p["x"] for p in other] != [p["x"] for p in first]
    assert sum(a != b for a, b in zip(first, other, strict=True)) >= len(first) // 2


def test_trial_seeded_sampler_keeps_no_sampler_per_finished_trial() -> None:
    sampler = TrialSeededSampler(7)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=5)
    assert sampler._samplers == {}


# --- counting trials --------------------------------------------------------------------


def add(study: optuna.Study, state: TrialState, value: float | None = None, **kw: Any) -> None:
    study.add_trial(create_trial(state=state, value=value, **kw))


def test_census_counts_retried_failures_out() -> None:
    study = optuna.create_study()
    add(study, TrialState.COMPLETE, 1.0)  # 0
    add(study, TrialState.FAIL)  # 1: its worker died; retried as 3, which failed too and was retried as 4
    add(study, TrialState.PRUNED, 2.0)  # 2
    add(study, TrialState.FAIL, system_attrs={"failed_trial": 1, "retry_history": [1]})  # 3
    add(study, TrialState.COMPLETE, 0.5, system_attrs={"failed_trial": 1, "retry_history": [1, 3]})  # 4
    add(study, TrialState.FAIL)  # 5: failed for good (not retried)
    add(study, TrialState.COMPLETE, 0.1, user_attrs={"surplus": True})  # 6: one more than needed
    add(study, TrialState.WAITING)  # 7: queued
    census = Census.of(study.get_trials(deepcopy=False))
    assert [t.number for t in census.counted] == [0, 2, 4, 5]
    assert [t.number for t in census.waiting] == [7]
    assert census.running == []
    assert (census.n(TrialState.COMPLETE), census.n(TrialState.PRUNED), census.n(TrialState.FAIL)) == (2, 1, 1)


def test_census_sees_running_trials() -> None:
    study = optuna.create_study()
    add(study, TrialState.COMPLETE, 1.0)
    running = study.ask()
    census = Census.of(study.get_trials(deepcopy=False))
    assert [t.number for t in census.running] == [running.number]
    assert [t.number for t in census.counted] == [0]


def test_best_trial_respects_the_direction() -> None:
    study = optuna.create_study()
    for value in (0.3, 0.9, 0.1, 0.5):
        add(study, TrialState.COMPLETE, value)
    add(study, TrialState.PRUNED, 5.0)  # pruned and failed trials are never best
    add(study, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    assert best_trial(trials, higher_is_better=True).number == 1
    assert best_trial(trials, higher_is_better=False).number == 2
    assert best_trial([t for t in trials if t.state != TrialState.COMPLETE], True) is None
    assert best_trial([], False) is None


def test_best_trial_prefers_the_earliest_of_equals_when_maximising() -> None:
    study = optuna.create_study()
    for value in (0.2, 0.8, 0.8):
        add(study, TrialState.COMPLETE, value)
    assert best_trial(study.get_trials(deepcopy=False), higher_is_better=True).number == 1


# --- pruners ----------------------------------------------------------------------------


def test_make_pruner_classes() -> None:
    assert isinstance(make_pruner("median", 50), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("halving", 50), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("none", 50), optuna.pruners.NopPruner)


def test_median_pruner_spares_the_first_validation() -> None:
    study = optuna.create_study(direction="minimize", pruner=make_pruner("median", 10))
    for i in range(6):  # enough finished trials for the median pruner to start
        trial = study.ask()
        for step in (10, 20, 30):
            trial.report(0.01 * i, step)
        study.tell(trial, 0.01 * i)
    worse = study.ask()
    worse.report(100.0, 10)
    assert not worse.should_prune()  # first validation: never pruned
    worse.report(100.0, 20)
    assert worse.should_prune()


# --- the pruning callback in a real training ---------------------------------------------


class Tiny(L.LightningModule):
    """Logs the global step as the validation metric "v", so each reported value names its step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.validated: list[tuple[int, int]] = []  # (epoch, step) of each validation

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("v", float(self.global_step))

    def on_validation_epoch_end(self) -> None:
        self.validated.append((self.current_epoch, self.global_step))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: Any) -> bool:
        return True


def train(trial: optuna.Trial, root: Path, monitor: str = "v",
          sanity_steps: int = 0) -> tuple[L.Trainer, PruningCallback, Tiny]:
    """At most 40 steps in one epoch of 100 batches, validating every 10 steps."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(200, 2), torch.randn(200, 1))
    callback = PruningCallback(trial, monitor)
    trainer = L.Trainer(max_steps=40, val_check_interval=10, check_val_every_n_epoch=None, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        num_sanity_val_steps=sanity_steps, accelerator="cpu", devices=1, default_root_dir=root,
                        callbacks=[callback])
    module = Tiny()
    val = TensorDataset(torch.randn(4, 2), torch.randn(4, 1))
    trainer.fit(module, DataLoader(data, batch_size=2), DataLoader(val, batch_size=2))
    return trainer, callback, module


def intermediate(study: optuna.Study) -> dict[int, float]:
    (frozen,) = study.get_trials(deepcopy=False)
    return frozen.intermediate_values


def test_pruning_callback_stops_at_the_first_validation(tmp_path: Path) -> None:
    study = optuna.create_study(pruner=AlwaysPrune())
    trainer, callback, module = train(study.ask(), tmp_path)
    assert trainer.global_step == 10
    assert module.validated == [(0, 10)]
    assert callback.stop_reason == "pruned at step 10"
    assert intermediate(study) == {10: 10.0}


def test_pruning_callback_reports_every_validation_by_step(tmp_path: Path) -> None:
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    trainer, callback, module = train(study.ask(), tmp_path, sanity_steps=1)
    assert trainer.global_step == 40
    assert module.validated == [(0, 0), (0, 10), (0, 20), (0, 30), (0, 40)]  # a sanity check, then 4 in epoch 0
    assert callback.stop_reason == ""
    # several validations inside one epoch, each kept under its own step; the sanity check is not reported
    assert intermediate(study) == {10: 10.0, 20: 20.0, 30: 30.0, 40: 40.0}


def test_pruning_callback_ignores_a_metric_not_logged(tmp_path: Path) -> None:
    study = optuna.create_study(pruner=AlwaysPrune())
    trainer, callback, _ = train(study.ask(), tmp_path, monitor="val/missing")
    assert trainer.global_step == 40 and callback.stop_reason == ""
    assert intermediate(study) == {}


# --- --timeout --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200),
                                               ("1h30m", 5400), ("1h30m15s", 5415), ("1.5h", 5400),
                                               (" 45m ", 2700), ("0.5", 0.5)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert math.isclose(parse_duration(text), seconds)


def test_parse_duration_none_is_no_limit() -> None:
    assert parse_duration(None) is None


@pytest.mark.parametrize("text", ["abc", "0", "", "0m", "0h0m0s", "m", "30x", "-5", "1d"])
def test_parse_duration_refuses_bad_text(text: str) -> None:
    with pytest.raises(BenchError, match=f"Invalid duration '{text}'"):
        parse_duration(text)


def test_best_trial_prefers_the_earliest_of_equals_when_minimising() -> None:
    study = optuna.create_study()
    for value in (0.8, 0.2, 0.2):
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=value))
    assert best_trial(study.get_trials(deepcopy=False), higher_is_better=False).number == 1


def test_halving_pruner_spares_the_first_validation() -> None:
    study = optuna.create_study(direction="minimize", pruner=make_pruner("halving", 10))
    for i in range(6):
        trial = study.ask()
        for step in (10, 20, 30):
            trial.report(0.01 * i, step)
            trial.should_prune()
        study.tell(trial, 0.01 * i)
    worse = study.ask()
    worse.report(100.0, 10)
    assert not worse.should_prune()
    worse.report(100.0, 20)
    assert worse.should_prune()  # but it is judged at the second
