"""MLflow tracking: one experiment per task, one run per (model, task variant, seed);
``bench scale`` adds the experiment ``seqbench/scale``, one run per measured point.

Metric keys follow one scheme so runs of different models compare in the UI:
``val/<metric>``, ``test/<metric>``, ``train/loss``, ``perf/<meter>``, ``model/params``.
The default store is embedded (SQLite under ``results/``): nothing to start, and
``mlflow ui --backend-store-uri sqlite:///results/mlflow.db`` opens it.

Any number of processes may share a store. A run of the harness is alive while its
heartbeat tag moves (``Heartbeat``: every ``HEARTBEAT_S`` seconds, from a thread); a RUNNING
run whose owner process is gone (same host) or whose heartbeat is older than
``STALE_AFTER_S`` was abandoned (kill -9, power loss) and is marked FAILED with the reason
"abandoned: no heartbeat". The RUNNING run of a configuration is also its claim: a second
process that wants the same configuration waits for it instead of training it again
(``claim``).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Against a server, MLflow's client prints two links to stdout whenever a run ends (and reads
# the run back to make them): not in the middle of a sweep's progress.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from bench.errors import BenchError  # noqa: E402
from bench.store import default_tracking_uri, file_lock, sqlite_path  # noqa: E402,F401 - re-exported

logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO lines about creating tables
log = logging.getLogger(__name__)

EXPERIMENT_PREFIX = "seqbench/"
# The MLflow UI opens an experiment on the view its kind names; with no kind it guesses, and
# may land on the GenAI overview. Every seqbench experiment trains models.
KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
OWNER_TAG = "seqbench.owner"  # host/pid/start time of the process that runs it
HEARTBEAT_TAG = "seqbench.heartbeat"  # seconds since the epoch, refreshed while it runs
HEARTBEAT_S = float(os.environ.get("SEQBENCH_RUN_HEARTBEAT_S") or 15)
STALE_AFTER_S = float(os.environ.get("SEQBENCH_STALE_AFTER_S") or 8 * HEARTBEAT_S)
ABANDONED = "abandoned: no heartbeat"
OPEN_ATTEMPTS = 4  # a store that does not answer is tried this many times, then named in an error
PROBE_TIMEOUT_S = 5.0  # an MLflow server's /health that does not answer in this long did not answer
DATASET_ATTEMPTS = 4
DUPLICATE_KEY = re.compile(r"UniqueViolation|duplicate key|UNIQUE constraint failed|IntegrityError", re.I)


def _start_ticks(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot): with the pid, names one process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def this_machine() -> str:
    """This boot of this kernel and this pid namespace: containers that share a host name
    (--uts host) or machines with the same name do not share process ids."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot}:{namespace}"


def this_process() -> str:
    return f"{platform.node()}/{os.getpid()}/{_start_ticks(os.getpid())}/{this_machine()}"


def owner_alive(owner: str) -> bool | None:
    """Whether the process named by an owner tag still runs: None when it is on another
    machine or in another pid namespace (then only its heartbeat tells)."""
    host, pid, ticks, machine = (owner.split("/") + ["", "", "", ""])[:4]
    if host != platform.node() or not machine or machine != this_machine() or not pid.isdigit() or not ticks:
        return None
    return _start_ticks(int(pid)) == ticks


def last_sign_of_life(tags: dict[str, str], start_time_ms: int | None) -> float:
    """When a run last showed life (seconds since the epoch): its heartbeat, or for a run
    recorded before heartbeats, its start."""
    try:
        return float(tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):
        return (start_time_ms or 0) / 1000


@dataclass
class Holder:
    """A live RUNNING run of a configuration, in this process or another."""

    run_id: str
    owner: str


@dataclass
class Claim:
    """What the store holds of one configuration (one cache key)."""

    finished: Any | None  # its latest FINISHED leaderboard run
    holder: Holder | None  # the live run that claimed it first (other than the asker's own)


class Tracker:
    def __init__(self, tracking_uri: str, results_dir: Path) -> None:
        self.uri = tracking_uri
        # A server stores artifacts itself; with a database URI (SQLite, PostgreSQL, ...) the
        # client writes them, under results/.
        self.local_artifacts = not tracking_uri.startswith(("http:", "https:", "databricks"))
        self.artifact_root = (results_dir / "mlartifacts").resolve()
        self._client: MlflowClient | None = None
        self._experiments: dict[str, str] = {}

    @property
    def client(self) -> MlflowClient:
        """The MLflow client. Making it opens the store, and MLflow creates or migrates a new
        SQLite store's schema then: under a lock, so that processes starting together on a new
        store take turns."""
        if self._client is None:
            path = sqlite_path(self.uri)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)  # as MLflow would (the CLI checked it first)
                with file_lock(path):
                    self._client = MlflowClient(tracking_uri=self.uri)
                    self._client.search_experiments(max_results=1)
            else:
                self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def connect(self) -> Tracker:
        """Open the store now, so that one that cannot be used is named in one line before any
        run starts. A new SQLite store is created under a lock (its migrations must not run
        twice at once); other stores that do not answer are retried a bounded number of times."""
        path = sqlite_path(self.uri)
        for attempt in range(1, OPEN_ATTEMPTS + 1):
            try:
                self._probe_server()
                self.client.search_experiments(max_results=1)
                return self
            except BenchError:
                raise
            except Exception as e:  # noqa: BLE001 - named in one line below
                text = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                busy = path is not None and "locked" in text
                if busy and attempt == OPEN_ATTEMPTS:
                    raise BenchError(f"The run store {self.uri} stayed locked by another process: {text}; "
                                     "try again when it is done") from None
                if (path is not None and not busy) or attempt == OPEN_ATTEMPTS:
                    hint = ("move it aside to start a new store, or name another with --results"
                            if path is not None else "check that it runs and is reachable, or name another "
                            "with --tracking-uri")
                    raise BenchError(f"The run store {self.uri} cannot be used: {text}; {hint}") from None
                log.warning("The run store %s did not answer (%s); trying again (%d of %d)", self.uri, text,
                            attempt, OPEN_ATTEMPTS)
                time.sleep(2 * attempt)
        return self

    def _probe_server(self) -> None:
        """An MLflow server must answer its health check at once: MLflow's client would retry a
        server that does not (7 times, with backoff, for each request) for many minutes."""
        if not self.uri.startswith(("http:", "https:")):
            return
        try:
            with urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            return  # it answers (behind a proxy or an authentication MLflow's client knows how to pass)
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            if isinstance(reason, ConnectionError | TimeoutError | socket.gaierror):
                raise ConnectionError(str(reason)) from None
            # anything else (a certificate MLflow's own settings trust, ...): MLflow's client decides

    def experiments(self) -> list[Any]:
        """Every seqbench experiment in the store."""
        return self.client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'", max_results=1000)

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        self.client.set_experiment_tag(experiment_id, key, value)

    def mark_training_experiments(self) -> int:
        """Give every seqbench experiment that lacks it the model-training kind (stores written
        before experiments were created with it); how many were changed."""
        changed = 0
        for exp in self.experiments():
            if exp.tags.get(KIND_TAG) != TRAINING_KIND:
                self.set_experiment_tag(exp.experiment_id, KIND_TAG, TRAINING_KIND)
                changed += 1
        return changed

    def experiment_id(self, task: str) -> str:
        name = EXPERIMENT_PREFIX + task
        if name not in self._experiments:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                location = (self.artifact_root / task).as_uri() if self.local_artifacts else None
                try:
                    exp_id = self.client.create_experiment(name, artifact_location=location,
                                                           tags={KIND_TAG: TRAINING_KIND})
                except MlflowException:  # another worker created it a moment ago
                    exp = self.client.get_experiment_by_name(name)
                    if exp is None:
                        raise
                    exp_id = exp.experiment_id
            else:
                exp_id = exp.experiment_id
            self._experiments[name] = exp_id
        return self._experiments[name]

    def search(self, task: str, filter_string: str) -> list[Any]:
        return self.client.search_runs([self.experiment_id(task)], filter_string=filter_string, max_results=1000)

    def delete(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    def set_status(self, run_id: str, status: str) -> None:
        """Mark a run RUNNING again (a study continued), or ended."""
        if status == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.client.set_terminated(run_id, status=status)

    def start(self, task: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        """A RUNNING run, with its owner and a first heartbeat (keep it alive with ``Heartbeat``)."""
        tags = {**tags, OWNER_TAG: this_process(), HEARTBEAT_TAG: f"{time.time():.0f}"}
        run = self.client.create_run(self.experiment_id(task), run_name=run_name, tags=tags)
        run_id = run.info.run_id
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[i : i + 100])
        return run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def log_history(self, run_id: str, history: list[tuple[int, dict[str, float]]]) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for step, values in history for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_datasets(self, run_id: str, records: list[Any]) -> None:
        """A run's data as MLflow dataset inputs (``tasks.registry.DataRecord``), one per split,
        with its context: the UI's Dataset column and filter show them."""
        inputs = [DatasetInput(Dataset(r.name, r.digest, r.source_type, json.dumps(r.source, sort_keys=True),
                                       profile=json.dumps(r.profile, sort_keys=True)),
                               tags=[InputTag("mlflow.data.context", r.context)]) for r in records]
        for attempt in range(1, DATASET_ATTEMPTS + 1):
            try:
                self.client.log_inputs(run_id, datasets=inputs)
                return
            except MlflowException as e:
                # Runs that start together on one dataset: MLflow's SQL store looks for it, then
                # inserts it, and the later insert of the two fails on the key. It exists now.
                if attempt == DATASET_ATTEMPTS or not DUPLICATE_KEY.search(str(e)):
                    raise
                time.sleep(0.2 * attempt)

    def log_figure(self, run_id: str, figure: Any, name: str) -> None:
        self.client.log_figure(run_id, figure, name)

    def log_dict(self, run_id: str, data: dict[str, Any], name: str) -> None:
        self.client.log_dict(run_id, data, name)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_artifact(self, run_id: str, path: Path) -> None:
        """A file written elsewhere (a plot, a table), under its own name."""
        self.client.log_artifact(run_id, str(path))

    def log_artifacts(self, run_id: str, path: Path) -> None:
        """A directory written elsewhere (a saved model), under its own name."""
        self.client.log_artifacts(run_id, str(path), path.name)

    def get_run(self, run_id: str) -> Any:
        try:
            return self.client.get_run(run_id)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise BenchError(f"No run {run_id} in {self.uri}") from None
            raise

    def download(self, run_id: str, artifact: str, where: Path) -> Path:
        """A run's artifact (file or directory), copied under ``where``."""
        return Path(self.client.download_artifacts(run_id, artifact, str(where)))

    def end(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    # -- liveness and claims ---------------------------------------------------------------
    def abandoned(self, run: Any, now: float | None = None) -> bool:
        """Whether a RUNNING run was left behind by a process that is gone."""
        alive = owner_alive(run.data.tags.get(OWNER_TAG, ""))
        if alive is not None:
            return not alive
        return (now or time.time()) - last_sign_of_life(run.data.tags, run.info.start_time) > STALE_AFTER_S

    def mark_abandoned(self, run: Any) -> None:
        self.set_tags(run.info.run_id, {"failure_reason": ABANDONED})
        self.end(run.info.run_id, "FAILED")
        log.warning("run %s (%s) was abandoned by %s: marked FAILED", run.info.run_id,
                    run.data.tags.get("mlflow.runName", ""), run.data.tags.get(OWNER_TAG, "an older version"))

    def reap(self, task: str, gone: Callable[[Any], bool] | None = None) -> int:
        """Mark this task's abandoned runs FAILED ("abandoned: no heartbeat"); how many were.
        ``gone``: what else tells that a run's process died (its Ray node did)."""
        found = 0
        for run in self.search(task, "attributes.status = 'RUNNING'"):
            if run.data.tags.get("kind", "run") in ("run", "trial") and (
                    self.abandoned(run) or (gone is not None and gone(run))):
                self.mark_abandoned(run)
                found += 1
        return found

    def claim(self, task: str, cache_key: str, mine: str = "") -> Claim:
        """One look at a configuration: its finished run, and the live run that claims it, if
        any (abandoned ones are marked on the way); with ``mine``, only a claim made before
        run ``mine`` counts."""
        runs = [r for r in self.search(task, f"tags.cache_key = '{cache_key}'")
                if r.data.tags.get("kind", "run") == "run"]
        finished = [r for r in runs if r.info.status == "FINISHED"]
        running = []
        for run in runs:
            if run.info.status == "RUNNING":
                if self.abandoned(run):
                    self.mark_abandoned(run)
                else:
                    running.append(run)
        running.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
        first = running[0] if running and running[0].info.run_id != mine else None
        return Claim(max(finished, key=lambda r: r.info.start_time or 0) if finished else None,
                     Holder(first.info.run_id, first.data.tags.get(OWNER_TAG, "another process")) if first else None)

    @contextmanager
    def claim_lock(self) -> Iterator[None]:
        """Around looking at a configuration and starting its run: on a SQLite store, processes
        on this machine take turns, so that exactly one of them claims it. (An MLflow server or a
        shared database gives no such lock: the claimant checks again once its run exists, and
        the later claim gives way; see ``Runner.run``.)"""
        path = sqlite_path(self.uri)
        if path is None:
            yield
            return
        with file_lock(path.with_name(path.name + ".claims")):
            yield

    @property
    def exclusive_claims(self) -> bool:
        return sqlite_path(self.uri) is not None

    def give_way(self, run_id: str, holder: str) -> None:
        """A claim made a moment after another one: ended, and deleted (nothing ran)."""
        self.set_tags(run_id, {"failure_reason": f"gave way to run {holder}, which claimed it first"})
        self.end(run_id, "KILLED")
        self.delete(run_id)

    def retell_killed(self, task: str, tag: str, values: set[str], reason: str) -> None:
        """The KILLED runs of ``task`` whose ``tag`` is one of ``values`` get ``reason`` as their
        failure reason (a Ray worker hears every stop as SIGINT, whatever stopped the sweep)."""
        for run in self.search(task, "attributes.status = 'KILLED'"):
            if run.data.tags.get(tag) in values:
                self.set_tags(run.info.run_id, {"failure_reason": reason})

    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status


class Heartbeat:
    """Refresh a run's heartbeat tag from a thread while the run lives (a with-block)."""

    def __init__(self, tracker: Tracker, run_id: str, every_s: float = HEARTBEAT_S) -> None:
        self.tracker, self.run_id, self.every_s = tracker, run_id, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id[:8]}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.tracker.client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
            except Exception as e:  # noqa: BLE001 - a store busy for a moment; the next beat tries again
                log.warning("heartbeat of run %s not written: %s", self.run_id, e)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class SystemMetrics:
    """MLflow's own system-metrics monitor (CPU and GPU utilisation, memory, disk, network)
    on a run, sampled every ``every_s`` seconds while a with-block runs; nothing when
    ``every_s`` is None. Its metrics are ``system/...``, one step per sample."""

    def __init__(self, tracker: Tracker, run_id: str, every_s: float | None) -> None:
        self.monitor = None
        if every_s is not None:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self.monitor = SystemMetricsMonitor(run_id, sampling_interval=every_s, samples_before_logging=1,
                                                tracking_uri=tracker.uri)

    def __enter__(self) -> SystemMetrics:
        if self.monitor is not None:
            self.monitor.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.monitor is not None:
            self.monitor.finish()
