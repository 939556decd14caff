"""``bench ui``: the MLflow UI on the run store, started in its own process group on
loopback, stopped with it (Ctrl+C, SIGTERM, SIGHUP), and the links that open it where a
benchmark user looks.

What MLflow 3.17's UI offers for that (read from its bundle, not guessed):
- an experiment opens on the GenAI overview unless the browser's "GenAI | Model training"
  switch is on Model training, or the URL says ``workflowType=machine_learning``; the
  ``mlflow.experimentKind`` tag (set on every seqbench experiment, ``bench.tracking``) is
  not consulted by this version, so every link here carries the parameter;
- no URL parameter chooses the runs table's columns, but a saved view does: the
  experiment tag ``mlflow.sharedViewState.<key>`` holds a view (filter, sort, columns),
  ``?viewStateShareKey=<key>`` opens it, and the UI's Views menu lists it;
- ``#/compare-runs?runs=[...]&experiments=[...]`` compares runs (parallel coordinates,
  scatter, box and contour plots of parameters against metrics).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from bench.errors import BenchError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120
VIEW_KEY = "seqbench-leaderboard"  # the saved view of each task's experiment
VIEW_TAG = "mlflow.sharedViewState." + VIEW_KEY
VIEW_NAME = "seqbench: leaderboard runs, best first"
LEADERBOARD_RUNS = "attributes.status = 'FINISHED' and tags.kind = 'run'"
TRAINING_VIEW = "workflowType=machine_learning"
MAX_COMPARED = 100  # runs in one compare link (the URL holds their ids)


def column(kind: str, name: str) -> str:
    """A runs-table column as the UI names it: ``metrics.`test/mase```."""
    return f"{kind}.`{name}`"


def leaderboard_view(primary: str, higher_is_better: bool, now_ms: int) -> str:
    """The saved view of a task's runs: finished leaderboard runs (no trials, no failures),
    best first by the primary test metric, with model, seed and the numbers beside it."""
    state = {
        "searchFilter": LEADERBOARD_RUNS,
        "orderByKey": column("metrics", f"test/{primary}"),
        "orderByAsc": not higher_is_better,
        "selectedColumns": [column("tags", "model"), column("tags", "seed"), column("metrics", f"test/{primary}"),
                            column("metrics", f"val/{primary}"), column("metrics", "perf/train_samples_per_s"),
                            column("metrics", "perf/peak_memory_mb"), column("metrics", "model/params"),
                            column("tags", "profile"), column("tags", "sweep_id")],
    }
    return json.dumps({"name": VIEW_NAME, "createdAt": now_ms, "updatedAt": now_ms, "state": json.dumps(state)})


def same_view(tag: str | None, view: str) -> bool:
    """Whether a saved view's tag holds ``view`` (its time stamps aside)."""
    try:
        old = json.loads(tag or "")
    except ValueError:
        return False
    new = json.loads(view)
    return isinstance(old, dict) and (old.get("name"), old.get("state")) == (new["name"], new["state"])


@dataclass
class TaskLinks:
    """Where to look at one task's runs in the UI."""

    task: str
    primary: str  # test/<metric>
    higher_is_better: bool
    finished: int  # finished leaderboard runs
    runs_url: str  # the saved view
    sweep: str  # the latest sweep with a finished run ("" if none)
    compared: int  # its finished runs, in the compare link
    compare_url: str


def runs_link(base: str, experiment_id: str, primary: str, higher_is_better: bool, saved_view: bool = True) -> str:
    """A task's runs table: its saved view, or (where the view could not be written) the same
    filter and sort as URL parameters, with MLflow's default columns."""
    if saved_view:
        query = f"viewStateShareKey={VIEW_KEY}"
    else:
        query = urllib.parse.urlencode({"searchFilter": LEADERBOARD_RUNS,
                                        "orderByKey": column("metrics", f"test/{primary}"),
                                        "orderByAsc": str(not higher_is_better).lower()}, quote_via=urllib.parse.quote)
    return f"{base}/#/experiments/{experiment_id}/runs?{query}&{TRAINING_VIEW}"


def compare_link(base: str, experiment_id: str, run_ids: list[str]) -> str:
    runs = urllib.parse.quote(json.dumps(run_ids, separators=(",", ":")), safe="")
    experiments = urllib.parse.quote(json.dumps([experiment_id]), safe="")
    return f"{base}/#/compare-runs?runs={runs}&experiments={experiments}&{TRAINING_VIEW}"


def prepare(tracker: Any, base: str) -> list[TaskLinks]:
    """Write (or refresh) each task experiment's saved view, and the links to print."""
    from bench.tracking import EXPERIMENT_PREFIX
    from tasks import TASKS

    out = []
    now_ms = int(time.time() * 1000)
    try:
        tracker.mark_training_experiments()
        writable = True
    except Exception as e:  # noqa: BLE001 - a store this user may read but not write
        log.warning("The run store cannot be written (%s): the links open the runs tables with MLflow's default "
                    "columns", (str(e).strip().splitlines() or [type(e).__name__])[0][:200])
        writable = False
    for exp in sorted(tracker.experiments(), key=lambda e: e.name):
        name = exp.name.removeprefix(EXPERIMENT_PREFIX)
        if name not in TASKS:  # bench scale's experiment, or a task this version no longer has
            continue
        task = TASKS.get(name)
        view = leaderboard_view(task.primary_metric, task.higher_is_better, now_ms)
        saved = same_view(exp.tags.get(VIEW_TAG), view)
        if writable and not saved:
            try:
                tracker.set_experiment_tag(exp.experiment_id, VIEW_TAG, view)
                saved = True
            except Exception as e:  # noqa: BLE001 - as above
                log.warning("The saved view of %s cannot be written (%s): its link opens the runs table with "
                            "MLflow's default columns", exp.name, (str(e).strip().splitlines() or [""])[0][:200])
                writable = False
        runs = tracker.client.search_runs([exp.experiment_id], filter_string=LEADERBOARD_RUNS, max_results=5000,
                                          order_by=["attributes.start_time DESC"])
        sweep = runs[0].data.tags.get("sweep_id", "") if runs else ""
        in_sweep = [r.info.run_id for r in runs if r.data.tags.get("sweep_id", "") == sweep][:MAX_COMPARED]
        out.append(TaskLinks(name, f"test/{task.primary_metric}", task.higher_is_better, len(runs),
                             runs_link(base, exp.experiment_id, task.primary_metric, task.higher_is_better, saved),
                             sweep, len(in_sweep),
                             compare_link(base, exp.experiment_id, in_sweep) if in_sweep else ""))
    return out


def print_links(links: list[TaskLinks], console: Console) -> None:
    if not links:
        console.print("No task has runs yet: bench run records them.")
        return

    def runs(n: int) -> str:
        return f"{n} run" + ("" if n == 1 else "s")

    width = max(len(t.task) for t in links)
    console.print("Each task's finished runs, best first (model, seed, primary metric, speed, memory):")
    for t in links:
        arrow = "↑" if t.higher_is_better else "↓"
        console.print(f"  {escape(t.task.ljust(width))}  {t.primary} {arrow}  {runs(t.finished)}  {t.runs_url}",
                      highlight=False, soft_wrap=True)
    console.print("Each task's latest sweep, compared (parallel coordinates, scatter plots of parameters against "
                  "metrics):")
    for t in links:
        if t.compare_url:
            console.print(f"  {escape(t.task.ljust(width))}  sweep {escape(t.sweep)}  {runs(t.compared)}  "
                          f"{t.compare_url}", highlight=False, soft_wrap=True)


def serve(tracker: Any, results: Path, host: str, port: int, console: Console) -> int:
    """Run the UI until it is stopped; 0 on a requested stop."""
    uri = tracker.uri
    if uri.startswith(("http:", "https:")):
        console.print(f"{uri} is a tracking server: open it in a browser.")
        print_links(prepare(tracker, uri.rstrip("/")), console)
        return 0
    url = f"http://{host}:{port}"
    links = prepare(tracker, f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}")
    # One web worker and no job runner: the defaults start 12 processes, too many for a laptop.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]

    def stop(signum: int, frame: Any) -> None:  # SIGTERM, SIGHUP: stop the server too, like Ctrl+C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    results.mkdir(parents=True, exist_ok=True)
    log = results / "mlflow-ui.log"
    with open(log, "w") as log_file:
        server = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        with console.status(f"Starting the MLflow UI on {url}…"):
            wait_until_up(server, url, log)
        console.print(f"MLflow UI: {url}  (runs from {uri}; Ctrl+C stops it)", highlight=False)
        print_links(links, console)
        sys.stdout.flush()
        server.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


def wait_until_up(server: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if server.poll() is not None:
            last = log.read_text().strip().splitlines() or [f"exit {server.returncode}"]
            raise BenchError(f"The MLflow UI did not start: {last[-1]} (log: {log})")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"The MLflow UI did not answer on {url} within {START_TIMEOUT_S // 60} minutes")
        time.sleep(0.5)
