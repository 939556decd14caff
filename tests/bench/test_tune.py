"""Tuning end to end: studies that continue where they stopped, trials recorded in MLflow
under their study's run, failed and interrupted trials, ``bench run --tuned``, and several
workers on one PostgreSQL study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from bench.cli import main
from bench.tracking import Tracker, default_tracking_uri
from bench.tuning import Census, StudyPlan, Tuner, default_storage, derived_seed, flat_values, open_storage
from models import MODELS, get_model
from tests.conftest import REPO_ROOT, SMALL_TASK_PARAMS, new_database

COPY = "copy:" + ":".join(f"{k}={v}" for k, v in SMALL_TASK_PARAMS["copy"].items())
TUNE = ["tune", "--models", "lstm", "--tasks", COPY, "--profile", "tiny", "--set", "model.hidden_size=8"]
STUDY = "lstm@copy:" + ":".join(f"{k}={v}" for k, v in sorted(SMALL_TASK_PARAMS["copy"].items())) + "@tiny"


def load(results: Path, name: str = STUDY) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=default_storage(results))


def runs_by_kind(runs: list[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in runs:
        out.setdefault(r.data.tags.get("kind", ""), []).append(r)
    return out


@pytest.mark.slow
def test_tune_continues_its_study_and_run_tuned_uses_the_best(results_dir: Path, mlflow_runs: Any) -> None:
    assert main([*TUNE, "--trials", "3", "--results", str(results_dir)]) == 0
    first = {t.number: t.value for t in load(results_dir).trials}
    assert sorted(first) == [0, 1, 2]

    # The same command with a larger total continues the study: three more, the first three untouched.
    assert main([*TUNE, "--trials", "5", "--results", str(results_dir)]) == 0
    study = load(results_dir)
    trials = study.trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert {t.number: t.value for t in trials if t.number < 3} == first
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)

    # Trial 0 is the default configuration; training seeds come from (study seed, trial number).
    assert trials[0].user_attrs["default"] is True
    assert trials[0].params["train.lr"] == get_model("lstm").train_defaults.get("lr", 2e-3)
    assert trials[0].params["model.num_layers"] == 1
    assert [t.user_attrs["seed"] for t in trials] == [derived_seed(0, n) for n in range(5)]
    assert "model.hidden_size" not in trials[0].params  # fixed with --set: not searched

    # MLflow: one parent run for the study, one child run per trial, no test split scored.
    kinds = runs_by_kind(mlflow_runs(results_dir))
    (parent,) = kinds["study"]
    children = kinds["trial"]
    assert sorted(int(r.data.tags["trial"]) for r in children) == [0, 1, 2, 3, 4]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert not any(k.startswith("test/") for r in children for k in r.data.metrics)
    for r in children:  # its data inputs: the splits it saw, never the test split; and no model kept
        contexts = sorted(t.value for d in r.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context")
        assert contexts == ["train", "validation"]
        assert "seqbench.model" not in r.data.tags
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value)
    assert parent.data.tags["best_trial"] == str(best.number)
    assert parent.data.metrics["val/ce"] == pytest.approx(best.value)
    assert parent.info.status == "FINISHED"
    client = Tracker(default_tracking_uri(results_dir), results_dir).client
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"optimization_history.png", "best_trial.json", "trials.csv"} <= artifacts
    saved = json.loads(Path(client.download_artifacts(parent.info.run_id, "best_trial.json")).read_text())
    assert saved["trial"] == best.number

    # bench run --tuned trains with the best parameters and says where they came from.
    assert main(["run", "--models", "lstm", "--tasks", COPY, "--profile", "tiny", "--tuned", "--no-baselines",
                 "--set", "model.hidden_size=8", "--results", str(results_dir)]) == 0
    (tuned,) = runs_by_kind(mlflow_runs(results_dir))["run"]
    assert tuned.data.tags["tuned.study"] == STUDY
    assert tuned.data.tags["tuned.trial"] == str(best.number)
    for key, value in best.params.items():
        assert tuned.data.params[key] == str(value)
    assert tuned.data.params["model.hidden_size"] == "8"
    assert "test/ce" in tuned.data.metrics
    assert tuned.data.tags["seqbench.model"] == "model"  # a tuned run keeps its model, whatever the profile


def test_changed_settings_do_not_join_an_old_study(results_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TUNE, "--trials", "1", "--results", str(results_dir)]) == 0
    capsys.readouterr()
    code = main([*TUNE, "--trials", "2", "--set", "budget.max_steps=6", "--results", str(results_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert "was started with other settings: budget.max_steps (8 → 6)" in " ".join(err.split())
    assert len(load(results_dir).trials) == 1  # nothing was added to it


def test_run_tuned_without_a_study_is_a_clear_error(results_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--models", "lstm", "--tasks", COPY, "--profile", "tiny", "--tuned", "--results",
                 str(results_dir)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert f"No study {STUDY}" in err and "bench tune --models lstm" in err
    assert not (results_dir / "mlflow.db").exists()


def test_bad_tune_input_is_one_line(results_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, expected in [
        (["--trials", "0"], "Invalid --trials 0"),
        (["--timeout", "soon"], "Invalid duration 'soon'"),
        (["--space", "model.hidden_sise=8,16"], "model.hidden_sise"),
        (["--space", "train.lr=1e-2..1e-4"], "needs LOW < HIGH"),
        (["--storage", "nosuchdb://x"], "Cannot open the study storage"),
    ]:
        code = main([*TUNE, *argv, "--results", str(results_dir)])
        err = capsys.readouterr().err
        assert code == 2, argv
        assert expected in " ".join(err.split()), (argv, err)
        assert "Traceback" not in err


# -- failed and interrupted trials, in process ------------------------------------------------
class Flaky(torch.nn.Module):
    """An LSTM backbone that gives NaN for hidden_size 8, or is interrupted once for 12."""

    interrupted = False

    def __init__(self, inner: torch.nn.Module, hidden: int) -> None:
        super().__init__()
        self.inner, self.hidden = inner, hidden
        self.step_dim, self.summary_dim = inner.step_dim, inner.summary_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Any:
        if self.hidden == 12 and not Flaky.interrupted:
            Flaky.interrupted = True
            raise KeyboardInterrupt
        steps, summary = self.inner(x, mask)
        return (steps * float("nan"), summary * float("nan")) if self.hidden == 8 else (steps, summary)


def flaky_spec() -> Any:
    import dataclasses

    lstm = get_model("lstm")
    return dataclasses.replace(lstm, build=lambda spec, hp, causal: Flaky(lstm.build(spec, hp, causal),
                                                                         hp.hidden_size))


def plan_for(model: str, make_config: Any, name: str) -> StudyPlan:
    from bench.space import Dimension

    config = make_config(model, "copy", SMALL_TASK_PARAMS["copy"])
    dims = {"model.hidden_size": Dimension("model.hidden_size", (8, 12, 16))}
    return StudyPlan(name, config, dims, {}, higher_is_better=False, primary_metric="ce")


def enqueue(storage: Any, name: str, sizes: list[int], base: dict[str, Any]) -> None:
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    for size in sizes:
        study.enqueue_trial({"model.hidden_size": size, "model.num_layers": 1, "model.dropout": 0.0,
                             "train.lr": base["train.lr"], "train.weight_decay": 0.0, "train.batch_size": 32})


@pytest.mark.slow
def test_failed_and_interrupted_trials(results_dir: Path, data_dir: Path, register: Any, make_config: Any,
                                       mlflow_runs: Any) -> None:
    from bench.runner import Runner

    register(MODELS, "flaky-lstm", flaky_spec())
    Flaky.interrupted = False
    results_dir.mkdir()
    tracker = Tracker(default_tracking_uri(results_dir), results_dir)
    runner = Runner(tracker, data_dir, rerun=True)
    storage = default_storage(results_dir)
    plan = plan_for("flaky-lstm", make_config, "flaky")
    enqueue(open_storage(storage), "flaky", [8, 16, 12, 16], flat_values(plan.base))

    tuner = Tuner(runner, tracker, storage)
    with pytest.raises(KeyboardInterrupt):
        tuner.work(plan, n_trials=4)
    study = optuna.load_study(study_name="flaky", storage=storage)
    states = [(t.number, t.state, t.params.get("model.hidden_size")) for t in study.trials]
    # NaN: failed with its reason, and the study went on; Ctrl+C: the trial is queued again.
    assert states[:3] == [(0, TrialState.FAIL, 8), (1, TrialState.COMPLETE, 16), (2, TrialState.FAIL, 12)]
    assert "loss became nan" in study.trials[0].user_attrs["failure_reason"]
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == 2]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING and retry[0].params["model.hidden_size"] == 12
    assert len(Census.of(study.trials).counted) == 2  # the interrupted trial does not count

    # Run again: the remaining trials are completed, the interrupted one with its own seed.
    Tuner(runner, tracker, storage).work(plan, n_trials=4)
    study = optuna.load_study(study_name="flaky", storage=storage)
    census = Census.of(study.trials)
    assert len(census.counted) == 4
    assert sorted(t.params["model.hidden_size"] for t in census.counted) == [8, 12, 16, 16]
    (done_retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == 2]
    assert done_retry.state == TrialState.COMPLETE
    assert done_retry.user_attrs["seed"] == derived_seed(0, 2)

    runs = runs_by_kind(mlflow_runs(results_dir))
    failed = [r for r in runs["trial"] if r.info.status == "FAILED"]
    assert [r.data.tags["trial"] for r in failed] == ["0"]
    assert "loss became nan" in failed[0].data.tags["failure_reason"]
    assert any(r.info.status == "KILLED" and r.data.tags["trial"] == "2" for r in runs["trial"])
    assert len(runs["study"]) == 1


# -- real processes -------------------------------------------------------------------------------
def bench_process(args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})


def wait_for(predicate: Any, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError("timed out waiting")


def finished_trials(storage: str, name: str) -> int:
    if not Path(storage.removeprefix("sqlite:///")).is_file():
        return 0
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # the worker has not created the study yet
        return 0
    except SQLAlchemyError:  # ... or is creating its tables right now (a second creator collides)
        return 0
    return len(Census.of(study.get_trials(deepcopy=False)).counted)


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_killed_study_is_completed_by_running_it_again(how: signal.Signals, results_dir: Path, data_dir: Path
                                                       ) -> None:
    """Ctrl+C (SIGINT) re-queues the trial in flight at once; a worker killed without a word
    (SIGKILL) is found out by its missing heartbeat, and its trial re-queued then."""
    args = [*TUNE, "--trials", "6", "--set", "budget.max_steps=30", "--results", str(results_dir),
            "--data-dir", str(data_dir)]
    storage = default_storage(results_dir)
    worker = bench_process(args, SEQBENCH_HEARTBEAT_S="1")
    try:
        wait_for(lambda: finished_trials(storage, STUDY) >= 2)
        worker.send_signal(how)
        out, _ = worker.communicate(timeout=120)
    finally:
        worker.kill()
    if how == signal.SIGINT:
        assert worker.returncode == 130, out
    before = {t.number: t for t in load(results_dir).trials if t.state.is_finished()}
    assert 2 <= len(Census.of(list(before.values())).counted) < 6

    again = bench_process(args, SEQBENCH_HEARTBEAT_S="1")
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    study = load(results_dir)
    census = Census.of(study.trials)
    assert len(census.counted) == 6
    assert not census.running and not census.waiting
    for number, trial in before.items():  # nothing that had finished ran again
        if trial.state != TrialState.FAIL:
            assert study.trials[number].value == trial.value
    # A trial cut short (none, when the signal came between trials) was run again: failed
    # trials without a failure reason of their own are exactly the retried ones.
    cut_short = {t.number for t in study.trials if t.state == TrialState.FAIL
                 and "failure_reason" not in t.user_attrs and not t.user_attrs.get("surplus")}
    retried = {n for t in study.trials for n in t.system_attrs.get("retry_history", [])}
    assert cut_short == retried


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(postgres_url: str, tmp_path: Path, data_dir: Path) -> None:
    storage = new_database(postgres_url, "optuna_two_workers")
    tracking = new_database(postgres_url, "mlflow_two_workers")
    Tracker(tracking, tmp_path / "results").client.search_experiments()  # create MLflow's tables once
    args = [*TUNE, "--trials", "8", "--set", "budget.max_steps=30", "--storage", storage, "--tracking-uri",
            tracking, "--results", str(tmp_path / "results"), "--data-dir", str(data_dir)]
    workers = [bench_process(args) for _ in range(2)]
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    study = optuna.load_study(study_name=STUDY, storage=storage)
    census = Census.of(study.trials)
    assert len(census.counted) == 8
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in census.counted)
    assert not census.running and not census.waiting
    assert sum(bool(t.user_attrs.get("default")) for t in study.trials) == 1
    by_worker: dict[str, int] = {}
    for t in census.counted:
        by_worker[t.user_attrs["worker"]] = by_worker.get(t.user_attrs["worker"], 0) + 1
    assert len(by_worker) == 2 and sum(by_worker.values()) == 8  # both worked, and the counts add up

    client = Tracker(tracking, tmp_path / "results").client
    experiment = client.get_experiment_by_name("seqbench/copy")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    kinds = runs_by_kind(runs)
    (parent,) = kinds["study"]
    counted = {str(t.number) for t in census.counted}
    trial_runs = [r for r in kinds["trial"] if r.data.tags["trial"] in counted]
    assert sorted(r.data.tags["trial"] for r in trial_runs) == sorted(counted)  # each trial ran once
    assert {r.data.tags["worker"] for r in trial_runs} == set(by_worker)
    assert {r.data.tags["mlflow.parentRunId"] for r in kinds["trial"]} == {parent.info.run_id}
