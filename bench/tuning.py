"""Tuning: one Optuna study per (model, task variant, profile), over the same
``Runner.run`` that ``bench run`` uses.

- A study's name is ``model@task[:variant]@profile`` (plus an optional suffix), in a storage
  that outlives the process (SQLite under ``results/`` by default, PostgreSQL for many
  machines), so the same command run again continues the study: ``--trials N`` is the number
  of trials the study should hold, not a number to add.
- Every trial is a run in MLflow, a child of one parent run per study that holds the best
  value and parameters and, at the end, the study's plots.
- A trial's training seed comes from (study seed, trial number), and so do the sampler's
  random draws for it: one worker replays a study exactly, and many workers never draw
  alike.
- Trials are chosen on the validation split only; the test split is scored by the runs of
  ``bench run --tuned``.
- No trial is lost: Ctrl+C (or SIGTERM) re-queues the interrupted trial's parameters, and a
  worker that died without a word is noticed by its missing heartbeat, its trial re-queued.
  A retried trial keeps the seed of the trial it replaces.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import ArgumentError

import models
import tasks
from bench.config import RunConfig, TrainConfig
from bench.errors import BenchError
from bench.runner import Runner, RunResult, StoppingCallback
from bench.signals import requests
from bench.space import Dimension, sample
from bench.tracking import Tracker

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
logging.getLogger("optuna").setLevel(logging.ERROR)

STORAGE_ENV = "SEQBENCH_STORAGE"
HEARTBEAT_ENV = "SEQBENCH_HEARTBEAT_S"  # seconds between a worker's heartbeats (default 15)
PRUNERS = ("median", "halving", "none")
GROUPS = ("model", "train", "task")


def default_storage(results: Path) -> str:
    return f"sqlite:///{(results / 'optuna.db').resolve()}"


def redact(url: str) -> str:
    """A storage URL fit to print and record: no password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - whatever it is, it is not printed as given
        return url.split("://", 1)[0] + "://…"


def study_name(model: str, task_label: str, profile: str, suffix: str = "") -> str:
    return "@".join([model, task_label, profile] + ([suffix] if suffix else []))


def derived_seed(*parts: int) -> int:
    """A seed in [0, 2**32) drawn from the integers given (NumPy's SeedSequence)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def open_storage(url: str) -> RDBStorage:
    """The study storage, with heartbeats so that a dead worker's trial is retried."""
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine["connect_args"] = {"timeout": 60}
    elif url.startswith("postgresql"):
        engine["connect_args"] = {"connect_timeout": 10}
    interval = int(os.environ.get(HEARTBEAT_ENV) or 15)
    for attempt in range(3):
        try:
            return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=interval, grace_period=4 * interval,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
        except (ImportError, ValueError, ArgumentError) as e:  # a missing driver or a malformed URL
            problem: Exception = e
            break
        except Exception as e:  # noqa: BLE001 - e.g. workers creating the tables of a new database at once
            problem = e
            time.sleep(1 + attempt)
    text = str(problem).strip().splitlines()[0] if str(problem).strip() else type(problem).__name__
    raise BenchError(f"Cannot open the study storage {redact(url)}: {text}") from None


def flat_values(config: RunConfig) -> dict[str, Any]:
    return {f"{g}.{k}": v for g, values in zip(GROUPS, (config.model_params, config.train, config.task_params),
                                                strict=True) for k, v in values.items()}


def apply(base: RunConfig, values: dict[str, Any], seed: int | None = None) -> RunConfig:
    """``base`` with the settings in ``values`` (``model.x``, ``train.y``, ``task.z``); raises
    ValueError for a combination the model, the task or training refuses."""
    groups = {"model": dict(base.model_params), "train": dict(base.train), "task": dict(base.task_params)}
    for key, value in values.items():
        group, _, name = key.partition(".")
        groups[group][name] = value
    models.get_model(base.model).make_hparams(**groups["model"])
    tasks.get_task(base.task.name).make_params(**groups["task"])
    TrainConfig(**groups["train"])
    return dataclasses.replace(base, seed=base.seed if seed is None else seed, model_params=groups["model"],
                               train=groups["train"], task_params=groups["task"])


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """TPE whose random draws for trial n come from (study seed, n).

    A TPE sampler keeps no state of its own beyond its random generator (the history is read
    from the storage), so each trial gets a fresh one seeded from its number. One seeded
    sampler shared by several workers would make them all propose the same first
    configurations. ``constant_liar`` keeps workers from proposing what another is running.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._samplers: dict[int, optuna.samplers.TPESampler] = {}

    def _for(self, trial: FrozenTrial) -> optuna.samplers.TPESampler:
        if trial.number not in self._samplers:
            self._samplers[trial.number] = optuna.samplers.TPESampler(
                seed=derived_seed(self.seed, trial.number, 1), constant_liar=True)
        return self._samplers[trial.number]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, space: dict[str, Any]) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, name: str, dist: Any) -> Any:
        return self._for(trial).sample_independent(study, trial, name, dist)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._samplers.pop(trial.number, None)


def make_pruner(name: str, val_every_steps: int) -> optuna.pruners.BasePruner:
    """Pruners compare trials at the same optimizer step (validations come every
    ``val_every_steps``); no trial is pruned at its first validation."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=val_every_steps + 1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=val_every_steps + 1, reduction_factor=3)
    return optuna.pruners.NopPruner()


class PruningCallback(StoppingCallback):
    """Reports the monitored validation metric to the trial at every validation during
    training, stepped by optimizer step, and stops training when the pruner says so.

    optuna-integration's ``PyTorchLightningPruningCallback`` reports by epoch: with
    validation every N steps, every validation inside one epoch after the first is ignored
    (Optuna keeps one value per step). It also raises inside ``fit``; stopping the trainer
    instead lets the run be evaluated and recorded like any other.
    """

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor
        self.stop_reason = ""

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        step = trainer.global_step
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            self.stop_reason = f"pruned at step {step}"
            trainer.should_stop = True


class TrialFailed(Exception):
    """A trial's run failed (its reason is recorded); the study goes on."""


class Surplus(Exception):
    """Workers racing for the last trials took one more than the study needs."""


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


@dataclass
class Census:
    counted: list[FrozenTrial]  # finished trials that count towards --trials
    running: list[FrozenTrial]
    waiting: list[FrozenTrial]

    @classmethod
    def of(cls, trials: list[FrozenTrial]) -> Census:
        retried = retried_numbers(trials)
        counted = [t for t in trials if t.state.is_finished() and t.number not in retried
                   and not t.user_attrs.get("surplus")]
        return cls(counted, [t for t in trials if t.state == TrialState.RUNNING],
                   [t for t in trials if t.state == TrialState.WAITING])

    def n(self, state: TrialState) -> int:
        return sum(t.state == state for t in self.counted)


@dataclass
class StudyPlan:
    """One study to work: its name and the configuration that trials change."""

    name: str
    base: RunConfig
    dims: dict[str, Dimension]
    fixed: dict[str, Any]  # settings given with --set: not searched
    higher_is_better: bool
    primary_metric: str

    @property
    def settings(self) -> dict[str, Any]:
        """What must stay the same for the trials of one study to compare."""
        config = {k: v for k, v in self.base.flat().items() if k != "seed"}
        return {"config": config, "space": {k: d.describe() for k, d in sorted(self.dims.items())}}


@dataclass
class StudyOutcome:
    name: str
    n_trials: int = 0
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    ran_here: int = 0
    best_value: float = math.nan
    best_trial: int | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    default_value: float = math.nan
    wall_s: float = 0.0
    parent_run_id: str = ""
    note: str = ""


class Tuner:
    """Works studies, trial by trial, with a ``Runner``; any number of Tuners in any number
    of processes may work the same studies at once."""

    def __init__(self, runner: Runner, tracker: Tracker, storage_url: str, study_seed: int = 0,
                 pruner: str = "median", default_trial: bool = True,
                 listener: Any = None) -> None:
        self.runner, self.tracker = runner, tracker
        self.storage_url = storage_url
        self.storage = open_storage(storage_url)
        self.study_seed, self.pruner, self.default_trial = study_seed, pruner, default_trial
        self.listener = listener  # study(name, counted) and trial_done(plan, trial, census, best), e.g. TuneProgress
        self.worker = f"{platform.node()}:{os.getpid()}"
        self.current: int | None = None  # the trial this worker is running
        # No new trial starts once this is set, or once Ctrl+C or SIGTERM came (bench.signals,
        # installed graceful by bench tune: a trial that trains stops at its next batch).
        self.stop_requested = False

    # -- the study and its parent run -------------------------------------------------
    def open(self, plan: StudyPlan) -> optuna.Study:
        direction = "maximize" if plan.higher_is_better else "minimize"
        sampler = TrialSeededSampler(self.study_seed)
        pruner = make_pruner(self.pruner, plan.base.budget["val_every_steps"])
        created = True
        try:
            try:  # the database's unique study name makes exactly one worker the creator
                study = optuna.create_study(storage=self.storage, study_name=plan.name, direction=direction,
                                            sampler=sampler, pruner=pruner)
            except optuna.exceptions.DuplicatedStudyError:
                created = False
                study = optuna.load_study(study_name=plan.name, storage=self.storage, sampler=sampler, pruner=pruner)
        except Exception as e:  # noqa: BLE001 - a storage problem; one line
            raise BenchError(f"Cannot open study {plan.name} in {redact(self.storage_url)}: {e}") from None
        if study.direction.name.lower() != direction:
            raise BenchError(f"Study {plan.name} {study.direction.name.lower()}s, but this task's metric is to "
                             f"{direction}; start another study with --study-suffix")
        attrs = study.user_attrs
        if created or "settings" not in attrs:
            study.set_user_attr("settings", plan.settings)
            study.set_user_attr("study_seed", self.study_seed)
        else:
            self._check_same(plan, attrs)
            if attrs.get("study_seed", self.study_seed) != self.study_seed:
                raise BenchError(f"Study {plan.name} was started with --study-seed {attrs['study_seed']}; "
                                 f"continue it with that seed, or name another study with --study-suffix")
        if created and self.default_trial:
            self._enqueue_default(study, plan)
        return study

    @staticmethod
    def _check_same(plan: StudyPlan, attrs: dict[str, Any]) -> None:
        old, new = attrs["settings"], json.loads(json.dumps(plan.settings, default=str))
        changed = [k for k in sorted(set(old["config"]) | set(new["config"]))
                   if old["config"].get(k) != new["config"].get(k)]
        changed += [f"space {k}" for k in sorted(set(old["space"]) | set(new["space"]))
                    if old["space"].get(k) != new["space"].get(k)]
        if changed:
            shown = ", ".join(f"{k} ({old['config'].get(k)} → {new['config'].get(k)})" if not k.startswith("space ")
                              else k for k in changed[:3])
            raise BenchError(f"Study {plan.name} was started with other settings: {shown}"
                             f"{' …' if len(changed) > 3 else ''}. Its trials would not compare: keep the "
                             "settings, or start another study with --study-suffix NAME")

    def _enqueue_default(self, study: optuna.Study, plan: StudyPlan) -> None:
        """Trial 0 is the default configuration, so the study shows what tuning adds to it."""
        base = flat_values(plan.base)
        probe = _DefaultProbe(base)
        sample(probe, self.spaces(plan), plan.dims, plan.fixed)
        if probe.outside:
            study.set_user_attr("default_note", "the default configuration lies outside the search space ("
                                + ", ".join(f"{k}={base[k]!r}" for k in probe.outside) + ")")
            return
        if probe.params:
            study.enqueue_trial(probe.params, user_attrs={"default": True}, skip_if_exists=True)

    def parent_run(self, study: optuna.Study, plan: StudyPlan) -> str:
        """The study's MLflow run: found by its study and storage tags, or created. Workers
        that create one at the same moment keep the oldest and delete their own."""
        task = plan.base.task.name
        where = redact(self.storage_url).replace("'", "")
        flt = f"tags.kind = 'study' and tags.study = '{plan.name}' and tags.study_storage = '{where}'"
        found = self.tracker.search(task, flt)
        if not found:
            tags = {**self.runner.env_tags, "kind": "study", "study": plan.name, "study_storage": where,
                    "model": plan.base.model, "task": task, "task_variant": plan.base.task.label,
                    "profile": plan.base.profile, "study_seed": str(self.study_seed), "pruner": self.pruner,
                    "sampler": "TPE (seeded per trial)", "direction": study.direction.name.lower(),
                    "primary_metric": plan.primary_metric}
            mine = self.tracker.start(task, plan.name, {k: v for k, v in plan.base.flat().items() if k != "seed"},
                                      tags)
            self.tracker.log_dict(mine, plan.settings["space"], "search_space_overrides.json")
            found = self.tracker.search(task, flt)
            oldest = min(found, key=lambda r: (r.info.start_time, r.info.run_id))
            if oldest.info.run_id != mine:
                self.tracker.delete(mine)
            return oldest.info.run_id
        run = min(found, key=lambda r: (r.info.start_time, r.info.run_id))
        self.tracker.set_status(run.info.run_id, "RUNNING")
        return run.info.run_id

    def spaces(self, plan: StudyPlan) -> list[Any]:
        return [models.get_model(plan.base.model).search_space, tasks.get_task(plan.base.task.name).search_space]

    # -- working a study ---------------------------------------------------------------
    def work(self, plan: StudyPlan, n_trials: int, timeout_s: float | None = None) -> StudyOutcome:
        """Run trials until the study holds ``n_trials`` finished ones (or ``timeout_s`` has
        passed: no new trial starts after it)."""
        self._stop_if_requested()  # before the study is opened or marked RUNNING
        study = self.open(plan)
        outcome = StudyOutcome(plan.name)
        outcome.parent_run_id = parent = self.parent_run(study, plan)
        if self.listener is not None:
            self.listener.study(plan.name, len(Census.of(study.get_trials(deepcopy=False)).counted))
        t0 = time.perf_counter()
        try:
            while timeout_s is None or time.perf_counter() - t0 < timeout_s:
                self._stop_if_requested()
                optuna.storages.fail_stale_trials(study)  # trials of workers that died: retried
                census = Census.of(study.get_trials(deepcopy=False))
                if not census.waiting and len(census.counted) + len(census.running) >= n_trials:
                    if len(census.counted) >= n_trials:
                        break
                    time.sleep(2)  # the last trials run elsewhere; if their worker dies, they come back
                    continue
                self.current = None
                study.optimize(lambda trial: self.objective(trial, plan, parent, n_trials), n_trials=1,
                               catch=(TrialFailed, Surplus))
                if self.current is not None:
                    outcome.ran_here += 1
                    self._after_trial(study, plan, parent)
        except KeyboardInterrupt:
            self._requeue_interrupted(study)
            self._summarise(study, plan, parent, outcome, time.perf_counter() - t0, "KILLED")
            raise
        self._summarise(study, plan, parent, outcome, time.perf_counter() - t0, "FINISHED")
        return outcome

    def _stop_if_requested(self) -> None:
        if self.stop_requested or requests.pending is not None:
            requests.deliver()
            raise KeyboardInterrupt

    def objective(self, trial: optuna.Trial, plan: StudyPlan, parent: str, n_trials: int) -> float:
        trials = trial.study.get_trials(deepcopy=False)
        retried = retried_numbers(trials)
        # Trials before this one that count or will (finished, running or queued; not replaced by a retry).
        ahead = [t for t in trials if t.number < trial.number and t.number not in retried
                 and not t.user_attrs.get("surplus")]
        if len(ahead) >= n_trials:
            trial.set_user_attr("surplus", True)
            raise Surplus(f"the study already has {n_trials} trials")
        self.current = trial.number
        me = next(t for t in trials if t.number == trial.number)
        origin = me.system_attrs.get("failed_trial", trial.number)  # a retry keeps its original's seed
        seed = derived_seed(self.study_seed, origin)
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("worker", self.worker)
        values = sample(trial, self.spaces(plan), plan.dims, plan.fixed)
        try:
            config = apply(plan.base, values, seed=seed)
        except (ValueError, TypeError) as e:
            trial.set_user_attr("failure_reason", f"invalid combination: {e}")
            raise TrialFailed(f"invalid combination: {e}") from None
        pruning = PruningCallback(trial, f"val/{plan.primary_metric}")
        tags = {"kind": "trial", "mlflow.parentRunId": parent, "study": plan.name, "trial": str(trial.number),
                "worker": self.worker}
        if origin != trial.number:
            tags["retry_of"] = str(origin)
        result: RunResult = self.runner.run(config, callbacks=(pruning,), tags=tags,
                                            run_name=f"{plan.base.model}-trial{trial.number}", evaluate_test=False)
        trial.set_user_attr("mlflow_run_id", result.run_id)
        if result.status != "finished":  # failed, or refused (this model cannot take these settings)
            trial.set_user_attr("failure_reason", result.reason)
            if result.run_id:
                self.tracker.set_tags(result.run_id, {"trial_state": "FAIL"})
            raise TrialFailed(result.reason)
        value = result.metrics.get(f"val/{plan.primary_metric}", math.nan)
        if pruning.stop_reason:
            trial.set_user_attr("stop_reason", pruning.stop_reason)
            self.tracker.set_tags(result.run_id, {"trial_state": "PRUNED"})
            raise optuna.TrialPruned(pruning.stop_reason)
        if not math.isfinite(value):
            trial.set_user_attr("failure_reason", f"val/{plan.primary_metric} is {value}")
            self.tracker.set_tags(result.run_id, {"trial_state": "FAIL"})
            raise TrialFailed(f"val/{plan.primary_metric} is {value}")
        self.tracker.set_tags(result.run_id, {"trial_state": "COMPLETE"})
        return value

    def _requeue_interrupted(self, study: optuna.Study) -> None:
        """The trial Ctrl+C cut short is queued again, with its parameters (and seed)."""
        number = self.current
        if number is None:
            return
        frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
        if frozen is not None and frozen.state == TrialState.FAIL:
            RetryHeartbeatStaleTrialCallback()(study, frozen)

    def _after_trial(self, study: optuna.Study, plan: StudyPlan, parent: str) -> None:
        trials = study.get_trials(deepcopy=False)
        census = Census.of(trials)
        frozen = next(t for t in trials if t.number == self.current)
        best = best_trial(census.counted, plan.higher_is_better)
        metrics = {"study/trials": len(census.counted), "study/complete": census.n(TrialState.COMPLETE),
                   "study/pruned": census.n(TrialState.PRUNED), "study/failed": census.n(TrialState.FAIL)}
        if best is not None:
            metrics[f"val/{plan.primary_metric}"] = best.value
        self.tracker.log_metrics(parent, metrics, step=len(census.counted))
        if best is not None:
            self.tracker.set_tags(parent, {"best_trial": str(best.number),
                                           "best_run_id": best.user_attrs.get("mlflow_run_id", ""),
                                           **{f"best.{k}": str(v) for k, v in best.params.items()}})
        if self.listener is not None:
            self.listener.trial_done(plan, frozen, census, best)

    def _summarise(self, study: optuna.Study, plan: StudyPlan, parent: str, outcome: StudyOutcome,
                   wall_s: float, status: str) -> None:
        census = Census.of(study.get_trials(deepcopy=False))
        outcome.n_trials = len(census.counted)
        outcome.complete = census.n(TrialState.COMPLETE)
        outcome.pruned = census.n(TrialState.PRUNED)
        outcome.failed = census.n(TrialState.FAIL)
        outcome.wall_s = wall_s
        outcome.note = study.user_attrs.get("default_note", "")
        best = best_trial(census.counted, plan.higher_is_better)
        if best is not None:
            outcome.best_value, outcome.best_trial, outcome.best_params = best.value, best.number, dict(best.params)
            self.tracker.log_dict(parent, {"trial": best.number, "value": best.value, "params": best.params,
                                           "seed": best.user_attrs.get("seed"),
                                           "mlflow_run_id": best.user_attrs.get("mlflow_run_id")},
                                  "best_trial.json")
        default = next((t for t in census.counted if t.user_attrs.get("default")), None)
        if default is not None and default.state == TrialState.COMPLETE:
            outcome.default_value = default.value
            self.tracker.set_tags(parent, {"default_trial": str(default.number),
                                           "default_value": f"{default.value:.6g}"})
        self.tracker.log_metrics(parent, {"time/study_worker_s": wall_s})
        self.tracker.log_text(parent, trials_table(study), "trials.csv")
        import matplotlib.pyplot as plt

        for name, figure in study_figures(study).items():
            self.tracker.log_figure(parent, figure, name)
            plt.close(figure)
        self.tracker.set_status(parent, status)


class _DefaultProbe:
    """Stands in for a trial to read which values the default configuration gives the searched
    keys, and whether each lies inside its dimension."""

    def __init__(self, base: dict[str, Any]) -> None:
        self.base = base
        self.params: dict[str, Any] = {}
        self.outside: list[str] = []

    def _take(self, name: str, inside: bool) -> Any:
        self.params[name] = self.base[name]
        if not inside:
            self.outside.append(name)
        return self.base[name]

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._take(name, self.base[name] in list(choices))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        return self._take(name, low <= self.base[name] <= high)

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        return self._take(name, low <= self.base[name] <= high)


def best_trial(counted: list[FrozenTrial], higher_is_better: bool) -> FrozenTrial | None:
    complete = [t for t in counted if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        return None
    # The earliest of equal values, as Optuna's own best_trial.
    return max(complete, key=lambda t: (t.value if higher_is_better else -t.value, -t.number))


def trials_table(study: optuna.Study) -> str:
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    return frame.to_csv(index=False)


def study_figures(study: optuna.Study) -> dict[str, Any]:
    """Optimisation history, parameter importances and intermediate values (the pruning), as
    matplotlib figures; a plot the study cannot give yet (too few trials) is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as oplt

    figures: dict[str, Any] = {}
    makers = {"optimization_history.png": oplt.plot_optimization_history,
              "param_importances.png": oplt.plot_param_importances,
              "intermediate_values.png": oplt.plot_intermediate_values}
    for name, make in makers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = make(study)
            figure = axes.figure if hasattr(axes, "figure") else axes
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figures[name] = figure
        except Exception:  # noqa: BLE001 - e.g. importances need two completed trials
            plt.close("all")
    return figures


@dataclass
class Tuned:
    """The best trial of a study, as ``bench run --tuned`` applies it."""

    study: str
    trial: int
    value: float
    params: dict[str, Any]
    note: str = ""

    def tags(self, storage_url: str) -> dict[str, str]:
        return {"tuned.study": self.study, "tuned.trial": str(self.trial), "tuned.val_value": f"{self.value:.6g}",
                "tuned.storage": redact(storage_url), "tuned.params": json.dumps(self.params, sort_keys=True)}


def find_tuned(storage_url: str, model: str, task_label: str, profile: str, suffix: str = "",
               higher_is_better: bool = True) -> Tuned:
    """The best trial of the study for (model, task variant, profile); when there is none for
    this profile but exactly one for another, that one (and a note saying so)."""
    storage = open_storage(storage_url)
    wanted = study_name(model, task_label, profile, suffix)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    note = ""
    if wanted not in names:
        prefix = f"{model}@{task_label}@"
        others = [n for n in names if n.startswith(prefix) and n.count("@") == wanted.count("@")
                  and (not suffix or n.endswith("@" + suffix))]
        if len(others) != 1:
            hint = f"bench tune --models {model} --tasks {task_label} --profile {profile}"
            found = f" (studies for it: {', '.join(others)}; pick one with --profile or --study-suffix)" if others \
                else f"; create it with `{hint}`"
            raise BenchError(f"No study {wanted} in {redact(storage_url)}{found}")
        note = f"{model} × {task_label}: using study {others[0]} (tuned with another profile than {profile})"
        wanted = others[0]
    study = optuna.load_study(study_name=wanted, storage=storage)
    best = best_trial(Census.of(study.get_trials(deepcopy=False)).counted, higher_is_better)
    if best is None:
        raise BenchError(f"Study {wanted} has no completed trial yet: run `bench tune` for it first")
    return Tuned(wanted, best.number, float(best.value), dict(best.params), note)
