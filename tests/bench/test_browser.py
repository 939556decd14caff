"""What a person sees: the HTML report opened offline in a real browser, the MLflow UI that
``bench ui`` starts, and runs, reports and tuning recorded through an MLflow tracking server.

The browser is the system's Chromium (Debian's ``chromium`` package, which scripts/test installs),
driven by Playwright; no browser is ever downloaded. Screenshots are kept in
$SEQBENCH_TEST_ARTIFACTS (.ci/run sets it), else in the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pytest
from mlflow.tracking import MlflowClient
from playwright.sync_api import Browser, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from bench.cli import main
from tests.conftest import REPO_ROOT, SMALL_TASK_PARAMS, read_runs

COPY = "copy:" + ":".join(f"{k}={v}" for k, v in SMALL_TASK_PARAMS["copy"].items())
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
UI_LINE = re.compile(r"MLflow UI: (http://\S+)")


# -- helpers ----------------------------------------------------------------------------------
@contextmanager
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium; "
                    "scripts/test does). These tests drive the system browser and never download one.")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def artifact_dir(tmp_path: Path) -> Path:
    path = Path(os.environ.get("SEQBENCH_TEST_ARTIFACTS") or tmp_path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    path = artifact_dir(tmp_path) / name
    page.screenshot(path=str(path), full_page=True)
    assert path.is_file() and path.stat().st_size > 0, f"no screenshot at {path}"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the browser's closed connections do not count
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.load(reply)


def wait_healthy(server: subprocess.Popen, url: str, log: Path, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.poll() is not None:
            pytest.fail(f"the MLflow server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"the MLflow server did not answer on {url}/health within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (started by this test), if any of it is left."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def mlflow_server(where: Path) -> Iterator[str]:
    """A real tracking server (SQLite backend, proxied artifacts) on a free loopback port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = where / "server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{where / 'server.db'}",
           "--artifacts-destination", str(where / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, cwd=where, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        wait_healthy(server, url, log)
        yield url
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        kill_group(server.pid)
        server.wait()


class Output:
    """A subprocess's output, read line by line in a thread (so waiting for a line can time out)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def start_bench_ui(results: Path, port: int) -> tuple[subprocess.Popen, Output]:
    # SIGINT back to its default in the child, as at a terminal: a test runner started in the
    # background may have it ignored, and an ignored signal stays ignored across exec.
    ui = subprocess.Popen([sys.executable, "-m", "bench", "ui", "--results", str(results), "--port", str(port)],
                          cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ), start_new_session=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return ui, Output(ui)


def wait_for_ui_url(ui: subprocess.Popen, output: Output, timeout: float = 120) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        match = UI_LINE.search(output.text)
        if match:
            return match.group(1)
        if ui.poll() is not None:
            output.thread.join(timeout=5)
            pytest.fail(f"bench ui exited with {ui.returncode} before printing its URL:\n{output.text}")
        time.sleep(0.2)
    pytest.fail(f"bench ui printed no 'MLflow UI: http://…' line within {timeout:.0f} s:\n{output.text}")


def server_processes(ui: subprocess.Popen) -> list[psutil.Process]:
    """The processes ``bench ui`` started (the MLflow UI and its workers)."""
    try:
        return psutil.Process(ui.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def is_live(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_bench_ui(ui: subprocess.Popen, how: signal.Signals, output: Output, port: int,
                  server: list[psutil.Process]) -> None:
    """Signal ``bench ui``; it must exit, taking its MLflow server with it, and free the port."""
    assert server, "bench ui started no server process"
    ui.send_signal(how)
    try:
        ui.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bench ui did not exit after {how.name}:\n{output.text}")
    output.thread.join(timeout=5)
    _, alive = psutil.wait_procs(server, timeout=15)
    alive = [p for p in alive if is_live(p)]  # an exited process its new parent has not reaped yet is gone
    assert not alive, (f"bench ui exited on {how.name} (status {ui.returncode}) but left its MLflow server "
                       "running: " + ", ".join(f"{p.pid} {' '.join(p.cmdline()[:5])}" for p in alive))
    assert port_is_free(port), f"port {port} is still in use after bench ui stopped"
    if how == signal.SIGINT:  # Ctrl+C is the documented way to stop it: a clean exit
        assert ui.returncode == 0, f"bench ui exited with {ui.returncode} after {how.name}:\n{output.text}"


def cleanup_bench_ui(ui: subprocess.Popen, server: list[psutil.Process]) -> None:
    server = server + [p for p in server_processes(ui) if p not in server]
    if ui.poll() is None:
        kill_group(ui.pid)
        ui.wait()
    for p in server:  # each one by its own process (psutil notices a reused pid)
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def wait_for_text(page: Any, needles: list[str], timeout_ms: int = 60_000) -> str:
    """The page's text once every needle is in it (or the timeout passed: the caller's assert says what is missing)."""
    try:
        page.wait_for_function("needles => needles.every(n => document.body.innerText.includes(n))", arg=needles,
                               timeout=timeout_ms)
    except PlaywrightTimeout:
        pass
    return page.inner_text("body")


def models_by_variant(results: Path) -> dict[str, set[str]]:
    """The models with a finished leaderboard run on each task variant, from the MLflow store."""
    out: dict[str, set[str]] = defaultdict(set)
    for r in read_runs(results):
        tags = r.data.tags
        if tags.get("kind", "run") == "run" and r.info.status == "FINISHED":
            out[tags.get("task_variant", tags.get("task"))].add(tags["model"])
    return dict(out)


# -- a small sweep, once for the module ---------------------------------------------------------------
@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    results = tmp_path_factory.mktemp("browser") / "results"
    assert main(["run", "--models", "lstm,gru", "--tasks", f"{COPY},airline", "--profile", "tiny", "--seeds", "0,1",
                 "--results", str(results), "--data-dir", str(data_dir)]) == 0
    assert main(["report", "--results", str(results)]) == 0
    return results


@pytest.mark.slow
def test_html_report_renders_offline_in_chromium(sweep: Path, tmp_path: Path) -> None:
    report = sweep / "reports" / "report.html"
    assert report.is_file()
    expected = models_by_variant(sweep)
    assert len(expected) == 2, expected
    for variant, models in expected.items():
        assert {"lstm", "gru"} < models, f"{variant}: no baselines beside lstm and gru: {models}"

    console_errors: list[str] = []
    failed: list[str] = []
    network: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: console_errors.append(str(e)))
        page.on("requestfailed", lambda r: failed.append(f"{r.url[:120]}: {r.failure}"))
        page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else network.append(r.url))
        page.goto(report.as_uri(), wait_until="load")
        sections = page.evaluate("""() => Array.from(document.querySelectorAll('section.task')).map(s => ({
            id: s.id,
            tables: s.querySelectorAll('table').length,
            models: Array.from(s.querySelectorAll('table tr')).filter(tr => tr.querySelector('td'))
                         .map(tr => tr.querySelector('td.l').textContent.trim()),
            plots: s.querySelectorAll('img.plot').length,
            figures: Array.from(s.querySelectorAll('img.figure')).map(i => i.alt),
        }))""")
        images = page.evaluate("""() => Array.from(document.images).map(i => ({
            cls: i.className, alt: i.alt, complete: i.complete, width: i.naturalWidth}))""")
        shot = screenshot(page, tmp_path, "report.png")

    assert not console_errors, console_errors
    assert not failed, failed
    assert not network, f"the report fetched from the network: {network}"

    assert sorted(s["id"] for s in sections) == sorted(f"task-{v}" for v in expected)
    for s in sections:
        models = expected[s["id"].removeprefix("task-")]
        assert s["tables"] == 1, s["id"]
        assert sorted(s["models"]) == sorted(models), (s["id"], s["models"], models)  # each model once
        assert s["plots"] >= 1, f"{s['id']}: no plots"
    (airline,) = [s for s in sections if s["id"] == "task-airline"]
    assert any("forecast" in alt for alt in airline["figures"]), airline["figures"]

    assert images and {i["cls"] for i in images} == {"plot", "figure"}
    broken = [i["alt"] for i in images if not (i["complete"] and i["width"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    print(f"screenshot: {shot}")


def printed_links(output: Output, timeout: float = 30) -> dict[str, dict[str, str]]:
    """The per-task links bench ui printed: {task: {"runs": url, "compare": url}}."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and "compare-runs" not in output.text:
        time.sleep(0.2)
    time.sleep(0.5)  # the rest of the block
    links: dict[str, dict[str, str]] = defaultdict(dict)
    for line in output.text.splitlines():
        match = re.match(r"\s+(\S+)\s.*\s(http://\S+)$", line)
        if match:
            task, url = match.groups()
            links[task]["compare" if "/compare-runs" in url else "runs"] = url
    return dict(links)


def close_assistant(page: Any) -> None:
    """Close MLflow's assistant side panel, if it is open, so the screenshot shows the table."""
    try:
        page.locator("button[aria-label='Close']").last.click(timeout=3000)
    except PlaywrightTimeout:
        pass


def column_values(page: Any, header: str) -> list[str]:
    """The cells of one column of MLflow's runs table (ag-grid), top to bottom."""
    return page.evaluate("""header => {
        const cols = Array.from(document.querySelectorAll('.ag-header-cell'))
            .filter(h => h.innerText.trim() === header).map(h => h.getAttribute('col-id'));
        if (!cols.length) return null;
        const rows = Array.from(document.querySelectorAll(
                '.ag-center-cols-container .ag-row, .ag-pinned-left-cols-container .ag-row'))
            .filter(r => r.querySelector(`[col-id="${cols[0]}"]`));
        rows.sort((a, b) => Number(a.getAttribute('row-index')) - Number(b.getAttribute('row-index')));
        return rows.map(r => r.querySelector(`[col-id="${cols[0]}"]`).innerText.trim());
    }""", header)


@pytest.mark.slow
def test_bench_ui_opens_each_task_where_a_user_looks(sweep: Path, tmp_path: Path, data_dir: Path) -> None:
    """bench ui says which store it shows and prints, per task, a link to its finished runs best
    first (model, seed and the primary metric in view) and one comparing its latest sweep; both
    open on what they say, and every experiment lists its own runs with their datasets."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(sweep, results)
    # A later sweep on airline, and a failed run: the compare link takes the later sweep's
    # runs alone; the runs view lists finished leaderboard runs only.
    assert main(["run", "--models", "lstm", "--tasks", "airline", "--profile", "tiny", "--seeds", "0,1",
                 "--no-baselines", "--set", "model.hidden_size=8", "--sweep", "later", "--results", str(results),
                 "--data-dir", str(data_dir)]) == 0
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiments = {t: client.get_experiment_by_name(f"seqbench/{t}") for t in ("copy", "airline")}
    failed = client.create_run(experiments["airline"].experiment_id, run_name="broken-s0",
                               tags={"kind": "run", "model": "broken"})
    client.set_terminated(failed.info.run_id, "FAILED")

    port = free_port()
    ui, output = start_bench_ui(results, port)
    server: list[psutil.Process] = []
    try:
        url = wait_for_ui_url(ui, output)
        server = server_processes(ui)
        assert url == f"http://127.0.0.1:{port}"
        assert str(results / "mlflow.db") in " ".join(output.text.split())
        links = printed_links(output)
        assert set(links) == {"copy", "airline"}, output.text
        for task, exp in experiments.items():
            # Read back from the store: the experiment is a model-training one, with the saved view.
            exp = client.get_experiment(exp.experiment_id)
            assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
            assert "mlflow.sharedViewState.seqbench-leaderboard" in exp.tags
            assert links[task]["runs"].startswith(f"{url}/#/experiments/{exp.experiment_id}/runs?")

        with chromium() as browser:
            for task, metric in [("airline", "test/mase"), ("copy", "test/ce")]:
                runs = [r for r in client.search_runs([experiments[task].experiment_id], max_results=1000)
                        if r.info.status == "FINISHED" and r.data.tags.get("kind") == "run"]
                best_first = sorted(runs, key=lambda r: r.data.metrics[metric])  # both are lower-is-better
                context = browser.new_context(viewport={"width": 1700, "height": 1000})  # a first visit
                page = context.new_page()
                page.goto(links[task]["runs"], wait_until="load")
                names = [r.info.run_name for r in best_first]
                text = wait_for_text(page, [*names, metric, "Sort: " + metric])
                assert "/runs" in page.url and "Token Usage" not in text and "Latency" not in text, \
                    f"{task}: not the runs table:\n{text[:2000]}"
                missing = [n for n in names if n not in text]
                assert not missing, f"{task}: finished runs not listed: {missing}"
                assert "broken-s0" not in text, "a failed run is in the leaderboard view"
                # Each row: the run's model, seed and primary metric as the store holds them, best first.
                rows = list(zip(*(column_values(page, h) or [] for h in ("Run Name", "model", "seed", metric)),
                                strict=True))
                assert len(rows) == len(names), f"{task}: table rows {rows}"
                shown = sorted((name.splitlines()[-1], model, seed, f"{float(value):.6g}")  # name after its colour
                               for name, model, seed, value in rows)
                stored = sorted((r.info.run_name, r.data.tags["model"], r.data.tags["seed"],
                                 f"{r.data.metrics[metric]:.6g}") for r in runs)
                assert shown == stored, f"{task}: the table does not show the runs as the store holds them"
                values = [float(row[3]) for row in rows]
                assert values == sorted(values), f"{task}: not best first by {metric}: {values}"
                if task == "airline":
                    close_assistant(page)
                    print(f"screenshot: {screenshot(page, tmp_path, 'ui-runs.png')}")
                context.close()

            # Every run of an experiment (failed ones too) in its runs tab, none of another's.
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.goto(f"{url}/#/experiments", wait_until="load")
            text = wait_for_text(page, ["seqbench/copy", "seqbench/airline"])
            assert "seqbench/copy" in text and "seqbench/airline" in text, f"experiment list:\n{text[:3000]}"
            runs = read_runs(results)
            copy_id = experiments["copy"].experiment_id
            names = sorted(r.info.run_name for r in runs if r.info.experiment_id == copy_id)
            others = {r.info.run_name for r in runs if r.info.experiment_id != copy_id} - set(names)
            assert len(names) >= 6 and others, (names, others)
            page.goto(f"{url}/#/experiments/{copy_id}/runs?workflowType=machine_learning", wait_until="load")
            text = wait_for_text(page, names)
            missing = [n for n in names if n not in text]
            assert not missing, f"runs not listed in the MLflow UI: {missing}\n{text[:3000]}"
            shown = [n for n in others if n in text]
            assert not shown, f"runs of other experiments listed under seqbench/copy: {shown}"
            assert "Train" in text and "Test" in text, "no dataset inputs in the Dataset column"
            print(f"screenshot: {screenshot(page, tmp_path, 'ui.png')}")
            page.close()

            # The compare link: the latest sweep's runs of airline, and no others.
            later = [r for r in client.search_runs([experiments["airline"].experiment_id],
                                                   filter_string="tags.sweep_id = 'later'")]
            assert len(later) == 2
            context = browser.new_context(viewport={"width": 1700, "height": 1000})
            page = context.new_page()
            page.goto(links["airline"]["compare"], wait_until="load")
            text = wait_for_text(page, ["Comparing 2 Runs", "Parallel Coordinates Plot",
                                        *(r.info.run_id for r in later)])
            assert "Comparing 2 Runs" in text and "Parallel Coordinates Plot" in text, text[:2000]
            assert all(r.info.run_id in text for r in later)
            close_assistant(page)
            print(f"screenshot: {screenshot(page, tmp_path, 'ui-compare.png')}")
            context.close()

        stop_bench_ui(ui, signal.SIGINT, output, port, server)
    finally:
        cleanup_bench_ui(ui, server)


@pytest.mark.slow
def test_bench_ui_stops_its_server_on_sigterm(sweep: Path) -> None:
    """A scheduler or `kill` stops bench ui with SIGTERM: the MLflow server must go with it."""
    port = free_port()
    ui, output = start_bench_ui(sweep, port)
    server: list[psutil.Process] = []
    try:
        wait_for_ui_url(ui, output)
        server = server_processes(ui)
        stop_bench_ui(ui, signal.SIGTERM, output, port, server)
    finally:
        cleanup_bench_ui(ui, server)


@pytest.mark.slow
def test_runs_and_report_through_a_tracking_server(tmp_path: Path, data_dir: Path) -> None:
    results = tmp_path / "results"
    where = tmp_path / "server"
    where.mkdir()
    with mlflow_server(where) as url:
        common = ["--tracking-uri", url, "--results", str(results), "--data-dir", str(data_dir)]
        assert main(["run", "--models", "lstm", "--tasks", f"{COPY},airline", "--profile", "tiny", "--no-baselines",
                     *common]) == 0
        assert main(["report", "--tracking-uri", url, "--results", str(results), "--format", "md,csv"]) == 0

        client = MlflowClient(url)
        runs = {}
        for task, metric in [("copy", "test/ce"), ("airline", "test/mase")]:
            experiment = client.get_experiment_by_name(f"seqbench/{task}")
            assert experiment is not None, f"no experiment seqbench/{task} on the server"
            (run,) = client.search_runs([experiment.experiment_id])
            assert run.info.status == "FINISHED" and run.data.tags["model"] == "lstm"
            assert metric in run.data.metrics, sorted(run.data.metrics)
            runs[task] = run

        # The leaderboard read through the server holds the runs' numbers.
        reports = results / "reports"
        assert (reports / "leaderboard.md").is_file() and not (reports / "report.html").exists()
        board = pd.read_csv(reports / "leaderboard.csv")
        for task, metric in [("copy", "ce"), ("airline", "mase")]:
            run = runs[task]
            (row,) = board[(board["task"] == run.data.tags["task_variant"]) & (board["model"] == "lstm")].itertuples()
            assert row.n == 1
            assert board.loc[row.Index, f"test/{metric}_mean"] == pytest.approx(run.data.metrics[f"test/{metric}"],
                                                                                rel=1e-12)
        assert set(pd.read_csv(reports / "runs.csv")["run_id"]) == {r.info.run_id for r in runs.values()}

        # Figures went to the server's artifact store, and come back through it.
        airline = runs["airline"]
        assert airline.info.artifact_uri.startswith("mlflow-artifacts:"), airline.info.artifact_uri
        listed = [a.path for a in client.list_artifacts(airline.info.run_id)]
        assert "forecast_test.png" in listed, listed
        png = Path(client.download_artifacts(airline.info.run_id, "forecast_test.png", str(tmp_path)))
        assert png.read_bytes().startswith(b"\x89PNG")
        assert list((where / "artifacts").rglob("forecast_test.png")), "the figure is not in the server's store"
        assert not (results / "mlartifacts").exists(), "the client wrote artifacts itself"

        # Tuning through the server: one study run, its trials nested under it.
        assert main(["tune", "--models", "lstm", "--tasks", COPY, "--profile", "tiny", "--trials", "2", "--set",
                     "model.hidden_size=8", *common]) == 0
        copy_id = client.get_experiment_by_name("seqbench/copy").experiment_id
        kinds: dict[str, list[Any]] = defaultdict(list)
        for r in client.search_runs([copy_id], max_results=1000):
            kinds[r.data.tags.get("kind", "run")].append(r)
        (study,) = kinds["study"]
        trials = kinds["trial"]
        assert sorted(r.data.tags["trial"] for r in trials) == ["0", "1"]
        assert {r.data.tags.get("mlflow.parentRunId") for r in trials} == {study.info.run_id}
        assert [r.info.run_id for r in kinds["run"]] == [runs["copy"].info.run_id]  # the earlier run is untouched
