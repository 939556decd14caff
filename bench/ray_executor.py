"""Sweeps on Ray: every (model, task, seed) run is a Ray task, scheduled by Ray onto whatever
CPUs and GPUs the cluster has (``--cpus-per-run``, ``--gpus-per-run``).

- Warm workers. Ray keeps a worker process per slot and gives it task after task; the
  process keeps its ``Runner`` (torch, Lightning and MLflow imported once, the task data
  cached) for every run of the sweep that lands on it.
- Exactly once. A run whose worker or node dies is started again by Ray elsewhere (up to
  ``RETRIES`` times); a run that fails on its own (NaN, an exception) comes back as a failed
  result and is not retried. Workers claim each configuration through the store, as local
  sweeps do (``bench.tracking``): two sweeps on the same pairs never both train one; one that
  finds a pair claimed waits for the claimant and takes its result (or trains it if the
  claimant failed or died). The run left RUNNING by a dead worker is marked FAILED
  ("abandoned"): by its process id on the same machine, by its Ray node's death otherwise.
- The driver shows the live progress of every run under way (relayed through a Ray queue)
  and, on Ctrl+C or SIGTERM, cancels what is queued, stops what runs at its next batch
  (recorded KILLED), and exits as a local sweep does.

Results go to the one store every worker reaches: ``--tracking-uri`` (an MLflow server, or
a database URI), or the local SQLite store when the cluster is this machine.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from bench.errors import BenchError
from bench.executor import RayOptions, RunnerSettings, TuneSettings
from bench.runner import Listener, Runner, RunResult, failure_reason
from bench.signals import requests
from bench.tracking import OWNER_TAG, Tracker, owner_alive, sqlite_path

log = logging.getLogger(__name__)

RETRIES = 3  # a run whose worker or node died is started again this many times, on any node
NODE_TAG = "seqbench.ray_node"  # the Ray node a run was trained on
TASK_TAG = "seqbench.ray_task"  # the Ray task that trained it (the same id in each of its attempts)
POLL_S = 0.2  # the driver's beat: results, progress, a stop request
BUSY_POLL_S = 5.0  # how often a run held by another sweep is looked at
CANCEL_GRACE_S = 60.0  # after a stop request, how long cancelled runs get to record themselves KILLED
CONNECT_TIMEOUT_S = 10.0  # a cluster address that does not answer in this long is an error


class Rows(Protocol):
    """The driver's live display (``bench.progress.SweepProgress``): a row per run under way."""

    def row(self, key: Any = None, label: str = "") -> Listener: ...
    def drop(self, key: Any = None) -> None: ...
    def in_flight(self, count: int, queued: int) -> None: ...


# -- on the workers ---------------------------------------------------------------------------

_runner: tuple[RunnerSettings, Runner] | None = None  # this worker process's runner, kept between runs


class Relay:
    """A run's progress, forwarded to the driver's display (best effort: a run never waits for
    it, nor fails because of it)."""

    def __init__(self, queue: Any, key: int) -> None:
        self.queue, self.key = queue, key

    def _send(self, event: str, *args: Any) -> None:
        try:
            self.queue.actor.put_nowait.remote((self.key, event, args))
        except Exception:  # noqa: BLE001 - the display is gone or full; the run goes on
            pass

    def on_start(self, config: Any, max_steps: int) -> None:
        self._send("on_start", config, max_steps)

    def on_step(self, step: int, loss: float) -> None:
        self._send("on_step", step, loss)

    def on_validation(self, step: int, metrics: dict[str, float]) -> None:
        self._send("on_validation", step, metrics)

    def on_evaluate(self) -> None:
        self._send("on_evaluate")

    def on_wait(self, result: RunResult) -> None:
        pass

    # bench.tuning.Tuner's listener
    def study(self, name: str, counted: int) -> None:
        self._send("study", name, counted)

    def trial_done(self, plan: Any, trial: Any, census: Any, best: Any) -> None:
        self._send("trial_done", plan, trial, census, best)


SWEEP_EVENTS = ("study", "trial_done")  # events for the display as a whole; the others are a run's row


def warm_runner(settings: RunnerSettings, threads: int, graceful: bool = False) -> Runner:
    """This worker process's runner, made on its first run and kept for the next ones (with its
    data). ray.cancel reaches a running task as SIGINT: the run under way stops at its next
    batch and is recorded KILLED (``graceful``, for tuning: no new trial starts either)."""
    import torch

    global _runner
    requests.install(graceful=graceful, sigterm=False)
    if _runner is None or _runner[0] != settings:
        torch.set_num_threads(threads)
        _runner = (settings, Runner.from_settings(settings))
    return _runner[1]


def run_on_worker(settings: RunnerSettings, threads: int, config: Any, tags: dict[str, str], queue: Any,
                  key: int) -> RunResult:
    """One run, on a Ray worker. Ray starts a task again only once its attempt died: a run an
    earlier attempt of this task left RUNNING is marked abandoned at once, wherever it ran (its
    heartbeat may look fresh for minutes yet), so that it does not hold the claim."""
    import ray

    runner = warm_runner(settings, threads)
    runner.listener = Relay(queue, key) if queue is not None else None
    context = ray.get_runtime_context()
    task_id = context.get_task_id()
    for earlier in runner.tracker.search(config.task.name, f"tags.`{TASK_TAG}` = '{task_id}' and "
                                                          "attributes.status = 'RUNNING'"):
        runner.tracker.mark_abandoned(earlier)
    runner.extra_tags = {NODE_TAG: context.get_node_id(), TASK_TAG: task_id}
    return runner.run(config, tags=tags)


def tune_on_worker(settings: RunnerSettings, threads: int, tuning: TuneSettings, plans: list[Any], n_trials: int,
                   timeout_s: float | None, queue: Any, key: int) -> list[Any]:
    """One tuning worker, on a Ray worker: every study in turn, trial after trial, beside the
    other workers on the same studies (their shared storage hands out the trials)."""
    import ray

    from bench.tuning import Tuner

    runner = warm_runner(settings, threads, graceful=True)
    context = ray.get_runtime_context()
    runner.extra_tags = {NODE_TAG: context.get_node_id(), TASK_TAG: context.get_task_id()}
    relay = Relay(queue, key) if queue is not None else None
    runner.listener = relay
    tuner = Tuner(runner, runner.tracker, tuning.storage_url, study_seed=tuning.study_seed, pruner=tuning.pruner,
                  default_trial=tuning.default_trial, listener=relay)
    return [tuner.work(plan, n_trials, timeout_s) for plan in plans]


# -- on the driver ----------------------------------------------------------------------------

def reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A cluster address (HOST:PORT, its head's GCS) must answer: Ray itself would wait for it
    for minutes."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", ray://...: Ray resolves those itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise BenchError(f"Cannot reach the Ray cluster at {address} ({e.strerror or e}): start it with "
                         "`ray start --head` there, or leave out the address to run on this machine") from None


def stop_if_requested() -> None:
    """A Ctrl+C or SIGTERM that reached the driver stops the sweep (its runs are cancelled)."""
    if requests.pending is not None:
        requests.deliver()
        raise KeyboardInterrupt


class RayExecutor:
    def __init__(self, settings: RunnerSettings, tracker: Tracker, options: RayOptions,
                 listener: Rows | None = None) -> None:
        if options.address is None:
            # A local instance needs no network: Ray then binds every service to loopback.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        else:
            reachable(options.address)
        import ray

        self.settings, self.tracker, self.options, self.listener = settings, tracker, options, listener
        self.sweep_id = settings.sweep_id
        self.owned = not ray.is_initialized()  # shut down on close what this executor started
        if self.owned:
            try:
                # A task that Ray's memory monitor kills is retried without end by default; here
                # like one whose node died (a cluster's own settings are its operator's).
                local = {"_system_config": {"task_oom_retries": RETRIES}} if options.address is None else {}
                ray.init(address=options.address or "local", include_dashboard=False, log_to_driver=False,
                         configure_logging=False, logging_level=logging.WARNING, **local)
            except (ConnectionError, RuntimeError, ValueError) as e:
                text = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise BenchError(f"Cannot reach the Ray cluster at {options.address}: {text}; start it with "
                                 "`ray start --head`, or leave out the address to run on this machine") from None
        resources = ray.cluster_resources()
        self.cpus, self.gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        self.gpus_per_run = options.gpus_per_run if options.gpus_per_run is not None else float(self.gpus >= 1)
        if options.cpus_per_run > self.cpus or self.gpus_per_run > self.gpus:
            raise BenchError(f"Each run asks for {options.cpus_per_run:g} CPUs and {self.gpus_per_run:g} GPUs "
                             f"(--cpus-per-run, --gpus-per-run), more than the Ray cluster has "
                             f"({self.cpus:g} CPUs, {self.gpus:g} GPUs)")
        self.nodes = sum(1 for n in ray.nodes() if n["Alive"])
        if sqlite_path(tracker.uri) is not None and self.nodes > 1:
            log.warning("The run store %s is a file on this machine: workers on other machines cannot reach it. "
                        "Give every worker one store with --tracking-uri (an MLflow server, or PostgreSQL).",
                        tracker.uri)
        self._remote = ray.remote(run_on_worker).options(**self._resources())
        self.queue = self._relay_queue() if listener is not None else None
        self.task_ids: set[str] = set()  # of every task this executor submitted

    def _resources(self) -> dict[str, Any]:
        """Each run's Ray options. A process keeps the GPU that it first initialised CUDA on,
        while Ray may give its next task another: a run on a GPU takes a fresh worker (it pays
        the imports, about 15 s here); runs on CPUs keep their worker warm."""
        options = {"num_cpus": self.options.cpus_per_run, "num_gpus": self.gpus_per_run,
                   "max_retries": RETRIES, "retry_exceptions": False}
        return {**options, "max_calls": 1} if self.gpus_per_run else options

    @property
    def runs_on(self) -> str:
        gpus = f", {self.gpus_per_run:g} GPU" if self.gpus_per_run else ""
        return (f"Ray, {self.nodes} node{'s' * (self.nodes != 1)} ({self.cpus:g} CPUs, {self.gpus:g} GPUs), "
                f"{self.options.cpus_per_run:g} CPU{gpus} per run")

    def _relay_queue(self) -> Any:
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})  # beside the driver

    def close(self) -> None:
        import ray

        if self.owned and ray.is_initialized():
            ray.shutdown()

    def sweep(self, runs: list[tuple[Any, dict[str, str]]],
              on_result: Callable[[RunResult], None] | None = None) -> list[RunResult]:
        """Submit every run at once (Ray queues them by resources); take the results as they
        come. A run that another process holds is looked at again every ``BUSY_POLL_S``."""
        import ray

        results: list[RunResult | None] = [None] * len(runs)
        pending: dict[Any, int] = {self._submit(runs, i): i for i in range(len(runs))}
        busy: dict[int, RunResult] = {}
        resubmitted = Counter[int]()
        started: set[int] = set()
        last_look = time.monotonic()

        def settle(i: int, result: RunResult) -> None:
            results[i] = result
            if self.listener is not None:
                self.listener.drop(i)
            if on_result is not None:
                on_result(result)

        try:
            with requests.polled():  # a stop request is acted upon below, between two looks
                while pending or busy:
                    stop_if_requested()
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S) if pending else ([], [])
                    if not pending:
                        time.sleep(POLL_S)
                    started |= self._show_progress(lambda i: runs[i][0].label, set(pending.values()))
                    if self.listener is not None:
                        running = len(started & set(pending.values()))
                        self.listener.in_flight(running, len(pending) - running)
                    for ref in ready:
                        i = pending.pop(ref)
                        result = self._result(ref, runs[i][0])
                        if result.status == "busy":
                            busy[i] = result
                            if self.listener is not None:
                                self.listener.row(i, runs[i][0].label).on_wait(result)
                        else:
                            settle(i, result)
                    if busy and time.monotonic() - last_look > BUSY_POLL_S:
                        last_look = time.monotonic()
                        for i, result in list(busy.items()):
                            verdict = self._look_again(result)
                            if verdict is None:
                                continue
                            del busy[i]
                            if verdict.status != "busy":
                                settle(i, verdict)
                            elif resubmitted[i] < RETRIES:  # the holder ended without a result: train it
                                resubmitted[i] += 1
                                pending[self._submit(runs, i)] = i
                            else:
                                settle(i, RunResult(runs[i][0], "failed", reason=f"its run ended without a result "
                                                    f"{RETRIES + 1} times (held by other sweeps)"))
        except BaseException as e:  # Ctrl+C, SIGTERM, or the driver's own failure: no run is left behind
            self._cancel(list(pending), e, {config.task.name for config, _ in runs})
            raise
        finally:
            self._reap({config.task.name for config, _ in runs})
        return [r for r in results if r is not None]

    def tune(self, plans: list[Any], n_trials: int, timeout_s: float | None, settings: TuneSettings) -> list[Any]:
        """As many tuning workers as the cluster has slots (each ``--cpus-per-run`` and
        ``--gpus-per-run``), each working every study; per study, the outcome of the worker that
        finished it last, with the trials that every worker ran."""
        import ray

        slots = int(self.cpus // self.options.cpus_per_run)
        if self.gpus_per_run:
            slots = min(slots, int(self.gpus // self.gpus_per_run))
        threads = max(1, int(self.options.cpus_per_run))
        remote = ray.remote(tune_on_worker).options(**self._resources())
        pending = {remote.remote(self.settings, threads, settings, plans, n_trials, timeout_s, self.queue, w): w
                   for w in range(max(1, slots))}
        self.task_ids |= {ref.task_id().hex() for ref in pending}
        per_worker: list[list[Any]] = []
        try:
            with requests.polled():
                while pending:
                    stop_if_requested()
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                    self._show_progress(lambda w: f"tuning worker {w}", set(pending.values()))
                    for ref in ready:
                        w = pending.pop(ref)
                        try:
                            per_worker.append(ray.get(ref))
                        except ray.exceptions.RayTaskError as e:
                            if isinstance(e.cause, BenchError):  # e.g. a study that cannot be opened
                                raise e.cause from None
                            raise
                        except ray.exceptions.RayError as e:  # its worker died more than RETRIES times
                            log.warning("tuning worker %d was lost: %s", w, str(e).splitlines()[0][:300])
        except BaseException as e:  # Ctrl+C, SIGTERM, a study that cannot be opened: no trial is left behind
            self._cancel(list(pending), e, {plan.base.task.name for plan in plans})
            raise
        finally:
            self._reap({plan.base.task.name for plan in plans})
        if not per_worker:
            raise BenchError("Every tuning worker was lost (their Ray nodes died); the studies keep the trials "
                             "they finished: run the same command again to continue them")
        outcomes = []
        for j in range(len(plans)):
            done = [w[j] for w in per_worker]
            last = max(done, key=lambda o: (o.n_trials, o.wall_s))
            last.ran_here = sum(o.ran_here for o in done)
            outcomes.append(last)
        return outcomes

    def _submit(self, runs: list[tuple[Any, dict[str, str]]], i: int) -> Any:
        config, tags = runs[i]
        threads = max(1, int(self.options.cpus_per_run))
        ref = self._remote.remote(self.settings, threads, config, tags, self.queue, i)
        self.task_ids.add(ref.task_id().hex())  # (its runs carry it: TASK_TAG)
        return ref

    def _result(self, ref: Any, config: Any) -> RunResult:
        """A run's result; a run whose worker kept dying, or that raised past the runner (the
        store failed under it), is a failed result: the sweep goes on."""
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # an exception the runner itself let through
            cause = e.cause if isinstance(e.cause, BaseException) else e
            return RunResult(config, "failed", reason=failure_reason(cause))
        except ray.exceptions.RayError as e:  # the worker or its node died, more than RETRIES times
            text = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            return RunResult(config, "failed", reason=f"its Ray worker was lost {RETRIES + 1} times: {text}")

    def _show_progress(self, label: Callable[[int], str], waiting: set[int]) -> set[int]:
        """Pass the workers' progress events on to the display; the keys they came from."""
        if self.queue is None or self.listener is None:
            return set()
        try:
            events = self.queue.get_nowait_batch(self.queue.qsize())
        except Exception:  # noqa: BLE001 - the display's queue was lost with its node; runs go on
            self.queue = None
            return set()
        seen = set()
        for key, event, args in events:
            if key not in waiting:  # (an event of a run already settled is late: dropped)
                continue
            seen.add(key)
            target = self.listener if event in SWEEP_EVENTS else self.listener.row(key, label(key))
            getattr(target, event)(*args)
        return seen

    def _look_again(self, held: RunResult) -> RunResult | None:
        """The run that holds a configuration, looked at again: its result once it finished
        (cached here), a result marked "busy" if it ended without one (then it is trained
        here), None while it is alive."""
        run = self.tracker.client.get_run(held.run_id)
        if run.info.status == "RUNNING" and run.info.lifecycle_stage != "deleted":
            if not (self.tracker.abandoned(run) or self._node_gone(run)):
                return None
            self.tracker.mark_abandoned(run)
        if run.info.status == "FINISHED" and run.info.lifecycle_stage != "deleted":
            Runner.fill_cached(held, run)
            return held
        return RunResult(held.config, "busy")

    def _node_gone(self, run: Any) -> bool:
        """Whether a run's process died with its Ray node: a node that this cluster lists as
        dead (a run of another cluster, whose nodes this one does not know, is judged by its
        heartbeat; a run on this machine, by its process)."""
        import ray

        if owner_alive(run.data.tags.get(OWNER_TAG, "")) is not None:
            return False  # Tracker.abandoned has seen the process itself
        node = run.data.tags.get(NODE_TAG)
        return node is not None and node in {n["NodeID"] for n in ray.nodes() if not n["Alive"]}

    def _reap(self, task_names: set[str]) -> None:
        """Runs left RUNNING by a dead worker or node: marked FAILED. Every task of this sweep is
        over by now (it returned, failed for good, or was cancelled and killed): a run one of
        them left RUNNING lost its worker, whatever its heartbeat says."""
        for task in task_names:
            try:
                for run in self.tracker.search(task, "attributes.status = 'RUNNING'"):
                    if run.data.tags.get(TASK_TAG) in self.task_ids:
                        self.tracker.mark_abandoned(run)
                self.tracker.reap(task, gone=self._node_gone)
            except Exception as e:  # noqa: BLE001 - the next sweep on these tasks looks again
                log.warning("abandoned runs of %s not looked for: %s", task, e)

    def _cancel(self, refs: list[Any], error: BaseException, task_names: set[str]) -> None:
        """Cancel the runs not yet back: queued ones never start; running ones get SIGINT and
        end KILLED at their next batch, with the reason that stopped the driver (Ctrl+C, SIGTERM,
        or its own ``error``). Those that do not end in ``CANCEL_GRACE_S`` (or on a second
        stop request) are killed with their worker, and reaped as abandoned."""
        import ray

        reason = requests.reason() if isinstance(error, KeyboardInterrupt) else \
            f"the sweep stopped: {failure_reason(error)}"
        for ref in refs:
            ray.cancel(ref)
        left, deadline = refs, time.monotonic() + CANCEL_GRACE_S
        try:
            while left and time.monotonic() < deadline and requests.pending is None:
                _, left = ray.wait(left, num_returns=len(left), timeout=POLL_S)
        except KeyboardInterrupt:
            pass
        for ref in left:
            ray.cancel(ref, force=True)
        for task in task_names if reason else ():  # the workers heard SIGINT, whatever stopped the driver
            self.tracker.retell_killed(task, TASK_TAG, self.task_ids, reason)
