"""``bench ui``: the MLflow UI on the run store, started in its own process group on
loopback, stopped with it (Ctrl+C, SIGTERM, SIGHUP)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.errors import BenchError

START_TIMEOUT_S = 120


def serve(uri: str, results: Path, host: str, port: int, console: Console) -> int:
    """Run the UI until it is stopped; 0 on a requested stop."""
    if uri.startswith(("http:", "https:")):
        console.print(f"{uri} is a tracking server: open it in a browser.")
        return 0
    url = f"http://{host}:{port}"
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
