"""How a sweep's runs are carried out: one interface, two engines.

``Executor.sweep(runs, on_result)`` trains and records every (configuration, tags) and
returns their results in the same order. ``bench.runner.Runner`` runs them one after another
in this process; ``bench.ray_executor.RayExecutor`` spreads them over the workers of a Ray
cluster (a local one on this machine's cores, or one it joins). ``bench run``, ``bench
reproduce`` and the tests open one with ``open_executor`` and do not know which one runs.

Both record into the same store and claim a configuration through it (``bench.tracking``),
so any mix of sweeps, local or on Ray, trains each configuration once.
"""

from __future__ import annotations

import importlib.util
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bench.runner import RunResult
    from bench.tracking import Tracker


def new_sweep_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class RunnerSettings:
    """What a runner is made of, in a form that travels to another process or machine."""

    tracking_uri: str
    results_dir: str  # absolute: artifacts of a database store go under it
    data_dir: str
    sweep_id: str
    accelerator: str = "auto"
    rerun: bool = False
    keep_model: bool | None = None  # None: the profile's default (bench.saved_model.KEEP_MODEL)
    model_required: bool = False  # a configuration recorded without its model is trained again
    system_metrics_s: float | None = None


@dataclass(frozen=True)
class RayOptions:
    """``--ray [ADDRESS]``, ``--cpus-per-run``, ``--gpus-per-run``."""

    address: str | None = None  # None: start a local Ray instance on this machine's cores
    cpus_per_run: float = 1.0
    gpus_per_run: float | None = None  # None: 1 on a cluster with GPUs, else 0


@dataclass(frozen=True)
class TuneSettings:
    """How ``bench tune``'s workers work their studies (see ``bench.tuning.Tuner``)."""

    storage_url: str
    study_seed: int = 0
    pruner: str = "median"
    default_trial: bool = True


class Executor(Protocol):
    sweep_id: str

    @property
    def runs_on(self) -> str:
        """What the runs ran on, in words (the summary line, the reproduce report)."""

    def sweep(self, runs: list[tuple[Any, dict[str, str]]],
              on_result: Callable[[RunResult], None] | None = None) -> list[RunResult]:
        """Train and record every (configuration, tags); their results in the same order."""

    def tune(self, plans: list[Any], n_trials: int, timeout_s: float | None, settings: TuneSettings) -> list[Any]:
        """Work every study (``bench.tuning.StudyPlan``) until it holds ``n_trials`` trials;
        a ``StudyOutcome`` per plan."""


class LocalExecutor:
    """Every run in this process, one after another (``bench.runner.Runner``)."""

    def __init__(self, runner: Any, listener: Any = None) -> None:
        self.runner, self.listener = runner, listener
        self.sweep_id = runner.sweep_id

    @property
    def runs_on(self) -> str:
        return self.runner.runs_on

    def sweep(self, runs: list[tuple[Any, dict[str, str]]],
              on_result: Callable[[RunResult], None] | None = None) -> list[RunResult]:
        return self.runner.sweep(runs, on_result)

    def tune(self, plans: list[Any], n_trials: int, timeout_s: float | None, settings: TuneSettings) -> list[Any]:
        from bench.tuning import Tuner

        tuner = Tuner(self.runner, self.runner.tracker, settings.storage_url, study_seed=settings.study_seed,
                      pruner=settings.pruner, default_trial=settings.default_trial, listener=self.listener)
        return [tuner.work(plan, n_trials, timeout_s) for plan in plans]


@contextmanager
def open_executor(settings: RunnerSettings, tracker: Tracker, listener: Any = None,
                  ray: RayOptions | None = None) -> Iterator[Executor]:
    """The local runner, or with ``ray`` a Ray executor (shut down on leaving). ``listener``:
    the live display (``bench.progress.SweepProgress`` or ``TuneProgress``)."""
    if ray is None:
        from bench.runner import Runner

        yield LocalExecutor(Runner.from_settings(settings, tracker, listener), listener)
        return
    if importlib.util.find_spec("ray") is None:  # (not imported here: a local instance sets Ray up first)
        from bench.errors import BenchError

        raise BenchError("--ray needs Ray, which is not installed: pip install 'seqbench[ray]'")
    from bench.ray_executor import RayExecutor

    executor = RayExecutor(settings, tracker, ray, listener)
    try:
        yield executor
    finally:
        executor.close()
