"""Sweeps on Ray (``bench run --ray``), on Ray's own multi-node test cluster on loopback (a head
and a second node, one CPU each): two sweeps started at once train each pair once; Ctrl+C
cancels what is queued and records the runs under way KILLED; tuning runs a worker per slot on
one study; a node killed mid-sweep (the last test: the cluster keeps one node) has its run
retried elsewhere, leaving exactly one FINISHED run per configuration and no orphan.

Every Ray service binds to 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, set for the
whole test session in tests/conftest.py)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.cli import main
from bench.ray_executor import NODE_TAG, TASK_TAG
from bench.signals import REASONS
from bench.tracking import ABANDONED, OWNER_TAG, Tracker
from bench.tracking import default_tracking_uri as uri_of
from tests.conftest import REPO_ROOT, read_runs

pytestmark = pytest.mark.slow

COPY = "copy:delay=5:n_train=128:n_val=32:n_test=32"
TINY = ["run", "--no-baselines", "--tasks", COPY, "--profile", "tiny", "--accelerator", "cpu",
        "--set", "model.hidden_size=16"]
# Runs that train for about 6 s each: long enough to be caught mid-training.
LONG = [*TINY, "--set", "budget.max_steps=100000", "--set", "budget.max_epochs=100000",
        "--set", "budget.max_time_s=6", "--set", "budget.val_every_steps=100", "--set", "budget.patience=1000"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Ray's 2-node test cluster: the head and a second node, one CPU each."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def bench_process(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def running(results: Path) -> list[Any]:
    """The RUNNING runs in the store (read through Tracker, which waits for a new store's tables)."""
    if not (results / "mlflow.db").is_file():
        return []
    client = Tracker(uri_of(results), results).client
    exp = client.get_experiment_by_name("seqbench/copy")
    return list(client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")) if exp else []


def wait_until(what: str, check: Any, proc: subprocess.Popen | None = None, timeout: float = 240) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"bench exited ({proc.returncode}) before {what}:\n{proc.communicate()[0]}")
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting until {what}")


def sweep_counts(out: str) -> tuple[int, int]:
    """(finished, recorded earlier) from a sweep's summary line."""
    found = re.search(r"(\d+) finished, (\d+) recorded earlier", out)
    assert found, out
    return int(found.group(1)), int(found.group(2))


def test_two_sweeps_started_at_once_train_each_pair_once(cluster: Any, tmp_path: Path, data_dir: Path) -> None:
    """Both sweeps ask for the same pairs on the same store: one trains each pair, the other
    waits for it and takes its result; each pair ends with exactly one FINISHED run."""
    results = tmp_path / "results"
    args = [*TINY, "--ray", cluster.address, "--models", "lstm,gru", "--results", str(results),
            "--data-dir", str(data_dir)]
    procs = [bench_process(args) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
        assert "Traceback" not in out
    counts = [sweep_counts(out) for out in outs]
    assert sum(finished for finished, _ in counts) == 2, outs  # each pair trained by one sweep
    assert all(finished + earlier == 2 for finished, earlier in counts), outs
    runs = read_runs(results)
    assert sorted((r.data.tags["model"], r.info.status) for r in runs) == [("gru", "FINISHED"), ("lstm", "FINISHED")]
    assert {r.data.tags[NODE_TAG] for r in runs} <= {n.node_id for n in [cluster.head_node, *cluster.worker_nodes]}


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_stop_cancels_the_sweep_and_records_the_runs_under_way_killed(signum: int, code: int, cluster: Any,
                                                                        tmp_path: Path, data_dir: Path) -> None:
    """Three long runs on two CPUs: two train, one waits for a worker. Ctrl+C (or a scheduler's
    SIGTERM) to the sweep: the two end KILLED with the reason, the third never starts, nothing
    stays RUNNING; exit 130 (143), as a local sweep."""
    results = tmp_path / "results"
    # runs that only the signal ends: LONG's 6 s time limit can end one first on a loaded machine
    proc = bench_process([*LONG, "--set", "budget.max_time_s=600", "--ray", cluster.address, "--models", "lstm",
                          "--seeds", "0,1,2",
                          "--results", str(results), "--data-dir", str(data_dir)])
    try:
        wait_until("two runs train", lambda: len(running(results)) == 2, proc)
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, out
    runs = read_runs(results)
    assert sorted((r.info.status, r.data.tags.get("failure_reason")) for r in runs) == \
        [("KILLED", REASONS[signum])] * 2, out


def test_tuning_on_ray_spreads_one_study_over_the_workers(cluster: Any, tmp_path: Path, data_dir: Path) -> None:
    """bench tune --ray: a tuning worker per slot (two here), both on one shared study (each
    summarises its work in the study's parent run); the study holds exactly the trials asked
    for, each trial one run in the store. (Which worker takes how many trials is a race: the
    first to start may take them all.)"""
    import optuna

    results = tmp_path / "results"
    proc = bench_process(["tune", "--ray", cluster.address, "--models", "lstm", "--tasks", COPY, "--trials", "4",
                          "--profile", "tiny", "--accelerator", "cpu", "--results", str(results),
                          "--data-dir", str(data_dir)])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    storage = f"sqlite:///{results / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    runs = read_runs(results)
    trial_runs = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert sorted(r.data.tags["trial"] for r in trial_runs) == ["0", "1", "2", "3"]
    assert {r.info.status for r in trial_runs} == {"FINISHED"}
    (study,) = [r for r in runs if r.data.tags.get("kind") == "study"]
    client = Tracker(uri_of(results), results).client
    assert len(client.get_metric_history(study.info.run_id, "time/study_worker_s")) == 2  # both workers'
    assert all(r.data.tags.get(TASK_TAG) and r.data.tags.get(NODE_TAG) for r in trial_runs)  # from Ray workers


def test_a_node_killed_mid_sweep_has_its_run_retried_elsewhere(cluster: Any, tmp_path: Path, data_dir: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The second node dies while it trains a run: Ray starts that run again on the head, which
    marks the dead one FAILED (abandoned); every configuration ends with exactly one FINISHED
    run, none RUNNING. The head's worker stays warm: one process trains several runs."""
    results = tmp_path / "results"
    (doomed,) = [n for n in cluster.worker_nodes]
    killed: list[str] = []

    def kill_when_it_trains() -> None:
        wait_until("a run trains on the second node",
                   lambda: any(r.data.tags.get(NODE_TAG) == doomed.node_id for r in running(results)))
        cluster.remove_node(doomed)
        killed.append(doomed.node_id)

    killer = threading.Thread(target=kill_when_it_trains, daemon=True)
    killer.start()
    code = main([*LONG, "--ray", cluster.address, "--models", "lstm", "--seeds", "0,1,2",
                 "--results", str(results), "--data-dir", str(data_dir)])
    out = capsys.readouterr().out
    killer.join(timeout=60)
    assert killed, out
    assert code == 0, out

    runs = read_runs(results)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["seed"] for r in finished) == ["0", "1", "2"]
    (dead,) = [r for r in runs if r.info.status == "FAILED"]
    assert dead.data.tags["failure_reason"] == ABANDONED
    assert dead.data.tags[NODE_TAG] == doomed.node_id
    again = next(r for r in finished if r.data.tags["seed"] == dead.data.tags["seed"])
    assert again.data.tags[NODE_TAG] != doomed.node_id  # retried on the head
    pids = Counter(r.data.tags[OWNER_TAG].split("/")[1] for r in finished if r.data.tags[NODE_TAG] != doomed.node_id)
    assert max(pids.values()) >= 2  # a warm worker process trained more than one run

