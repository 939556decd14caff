"""A shared MLflow server on PostgreSQL, as a team would run it: a real ``mlflow server`` (its
backend store a fresh database on the throwaway PostgreSQL of ``postgres_url``, its artifacts
proxied into a directory of its own) takes a sweep on Ray's local instance, two workers
recording at once; ``bench report`` and an ``MlflowClient`` read the runs back through it.

Every address is loopback: the server listens on 127.0.0.1, and Ray binds to loopback
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``). The server runs one worker and no job runners
(``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``): the default, 4 workers and 7 job processes,
is too much for a 2-core CI machine.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest

from bench.cli import main
from bench.ray_executor import NODE_TAG
from bench.saved_model import MODEL_TAG
from tests.conftest import SMALL_TASK_PARAMS, new_database

pytestmark = pytest.mark.slow

COPY = "copy:" + ":".join(f"{k}={v}" for k, v in SMALL_TASK_PARAMS["copy"].items())
COPY_LABEL = "copy:" + ":".join(f"{k}={v}" for k, v in sorted(SMALL_TASK_PARAMS["copy"].items()))
READY_S = 120  # how long the server may take to answer /health (about 10 s on 2 cores)


class Server(NamedTuple):
    url: str  # http://127.0.0.1:PORT
    artifacts: Path  # --artifacts-destination: where the server writes what clients upload
    log: Path  # its stdout and stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    try:
        with opener.open(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def server_command(backend: str, artifacts: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
            "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


@pytest.fixture(scope="module")
def mlflow_server(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``mlflow server`` on a fresh PostgreSQL database (SQLAlchemy's psycopg 3 dialect,
    ``postgresql+psycopg://``: a bare ``postgresql://`` means psycopg2, which is not installed),
    in a process group of its own, stopped with its workers at the end of the module."""
    backend = "postgresql+psycopg://" + new_database(postgres_url, "mlflow_shared_server").split("://", 1)[1]
    where = tmp_path_factory.mktemp("mlflow-server")
    artifacts, log = where / "artifacts", where / "server.log"
    artifacts.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    with pytest.MonkeyPatch.context() as mp, log.open("wb") as out:
        for var in ("NO_PROXY", "no_proxy"):  # the clients (here and in Ray's workers) reach it directly
            mp.setenv(var, ",".join(filter(None, [os.environ.get(var), "127.0.0.1", "localhost"])))
        proc = subprocess.Popen(server_command(backend, artifacts, port), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=where, start_new_session=True)
        try:
            deadline = time.monotonic() + READY_S
            while not healthy(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    what = f"exited with {proc.returncode}" if proc.returncode is not None else \
                        f"did not answer {url}/health in {READY_S} s"
                    pytest.fail(f"mlflow server {what}:\n{log.read_text(errors='replace')[-5000:]}")
                time.sleep(0.25)
            yield Server(url, artifacts, log)
        finally:
            stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """The server and every process it started (its group): SIGTERM, then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_ray_sweep_records_through_a_shared_server(mlflow_server: Server, tmp_path: Path, data_dir: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Two Ray workers train lstm and gru at once into the server: the sweep exits 0; the
    leaderboard read back through the server has both, with a finite test metric; the server
    holds exactly one FINISHED run per (model, seed), none RUNNING, each tagged with its Ray
    node, and their models went through the server into its artifact store."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    results = tmp_path / "results"
    code, out, err = run_cli(["run", "--ray", "--cpus-per-run", "1", "--models", "lstm,gru", "--tasks", COPY,
                              "--profile", "tiny", "--no-baselines", "--keep-model",  # (tiny keeps no model)
                              "--tracking-uri", mlflow_server.url, "--results", str(results),
                              "--data-dir", str(data_dir)], capsys)
    assert code == 0, f"{out}\n{err}\nserver log:\n{mlflow_server.log.read_text(errors='replace')[-3000:]}"
    assert "Traceback" not in out + err
    assert "2 finished" in out, out

    reports = tmp_path / "reports"
    code, out, err = run_cli(["report", "--tracking-uri", mlflow_server.url, "--format", "csv", "--out",
                              str(reports)], capsys)
    assert code == 0, f"{out}\n{err}"
    board = pd.read_csv(reports / "leaderboard.csv")
    copy = board[board.task == COPY_LABEL]
    assert sorted(copy.model) == ["gru", "lstm"], board
    for _, row in copy.iterrows():
        assert row["n"] == 1
        assert math.isfinite(row[f"test/{row['primary_metric']}_mean"]), row

    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment = client.get_experiment_by_name("seqbench/copy")
    assert experiment is not None
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment.artifact_location  # proxied
    runs = [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
            if r.data.tags.get("kind", "run") == "run"]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert Counter((r.data.tags["model"], r.data.tags["seed"]) for r in finished) == {("lstm", "0"): 1,
                                                                                      ("gru", "0"): 1}, \
        [(r.data.tags["model"], r.info.status, r.data.tags.get("failure_reason")) for r in runs]
    assert all(r.data.tags.get(NODE_TAG) for r in finished)
    assert len({r.data.tags[NODE_TAG] for r in finished}) == 1  # the local Ray instance: one node

    for run in finished:
        listed = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert run.data.tags[MODEL_TAG] in listed, listed
        on_server = mlflow_server.artifacts / experiment.experiment_id / run.info.run_id / "artifacts"
        assert (on_server / run.data.tags[MODEL_TAG]).is_dir(), sorted(mlflow_server.artifacts.rglob("*"))
    assert not (results / "mlartifacts").exists()  # the client wrote no artifact of its own


def test_a_server_that_does_not_answer_is_one_line_in_seconds(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listens at the address: the store is named in one error line after a few quick
    tries (its /health probed), not after MLflow's own minutes of retries; exit 2."""
    import bench.tracking

    monkeypatch.setattr(bench.tracking, "OPEN_ATTEMPTS", 2)
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = run_cli(["report", "--tracking-uri", url, "--out", str(tmp_path / "reports")], capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and url in errors[0] and "Connection refused" in errors[0], err
    assert "Traceback" not in out + err


def test_runs_that_log_one_dataset_at_once_both_record_it(tmp_path: Path) -> None:
    """MLflow's SQL store looks for a dataset, then inserts it: of two runs that log the same one
    at once, the later insert fails on the key. The tracker tries again (the dataset exists by
    then) instead of failing the run."""
    from mlflow.exceptions import MlflowException

    from bench.tracking import Tracker
    from tasks.registry import DataRecord

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)
    calls = []

    class Racing:
        def log_inputs(self, run_id: str, datasets: list) -> None:
            calls.append(run_id)
            if len(calls) == 1:
                raise MlflowException('(psycopg.errors.UniqueViolation) duplicate key value violates unique '
                                      'constraint "dataset_pk"')

    tracker._client = Racing()
    record = DataRecord(name="copy", context="train", digest="0123456789abcdef", source_type="code",
                        source={"generator": "tasks.synthetic.Copy"}, profile={"num_rows": 4})
    tracker.log_datasets("run-1", [record])
    assert calls == ["run-1", "run-1"]
