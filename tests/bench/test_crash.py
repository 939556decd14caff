"""Nothing lost, nothing stuck: every way a run can end leaves it FINISHED, FAILED or KILLED
with a reason; runs abandoned by a killed process are found and run again; processes that
share a store neither collide nor train a configuration twice; unusable stores are named in
one line. Everything is read back from the store."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

import bench.module
import bench.runner
from bench.cli import main
from bench.progress import SweepProgress
from bench.runner import Runner
from bench.signals import requests
from bench.tracking import (
    ABANDONED,
    HEARTBEAT_TAG,
    OWNER_TAG,
    STALE_AFTER_S,
    Heartbeat,
    Tracker,
    this_machine,
    this_process,
)
from bench.tracking import default_tracking_uri as uri_of
from tests.conftest import REPO_ROOT, read_runs

COPY = "copy:delay=5:n_train=128:n_val=32:n_test=32"
RUN = ["run", "--no-baselines", "--models", "lstm", "--tasks", COPY, "--profile", "tiny",
       "--set", "model.hidden_size=16", "--accelerator", "cpu"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def statuses(results: Path) -> list[tuple[str, str, str]]:
    """(seed, status, failure reason) of every run, by seed."""
    return sorted((r.data.tags["seed"], r.info.status, r.data.tags.get("failure_reason", ""))
                  for r in read_runs(results))


# --- signals at every phase of a run ----------------------------------------------------------

SIGNALS = {"sigint": (signal.SIGINT, 130, "interrupted by the user (Ctrl+C)"),
           "sigterm": (signal.SIGTERM, 143, "terminated by SIGTERM")}


def send_once(signum: int, original: Any) -> Any:
    """``original`` wrapped so that its first call sends ``signum`` to this process first."""
    sent: list[bool] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    return wrapper


PHASES = {  # where the signal lands: (object, attribute)
    "training": (bench.module.SeqModule, "training_step"),
    "validation": (bench.module.SeqModule, "validation_step"),
    "test evaluation": (bench.module.SeqModule, "test_step"),
    "latency measurement": (bench.runner, "inference_latency"),
    "recording": (Runner, "_log_figures"),
}


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("how", list(SIGNALS))
def test_a_signal_at_any_phase_ends_the_run_and_the_sweep(phase: str, how: str, results_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl+C or SIGTERM in training, validation, test evaluation or the latency measurement:
    the run ends KILLED with the signal named, the sweep stops, and the exit code says which
    signal it was (130, 143), never 0 or 1. While the run is being recorded, the recording is
    finished first (FINISHED), then the sweep stops."""
    signum, code, reason = SIGNALS[how]
    owner, name = PHASES[phase]
    monkeypatch.setattr(owner, name, send_once(signum, getattr(owner, name)))
    got, _, err = run_cli([*RUN, "--seeds", "0,1", "--results", str(results_dir)], capsys)
    assert got == code, err
    assert "Traceback" not in err
    expected = ("0", "FINISHED", "") if phase == "recording" else ("0", "KILLED", reason)
    assert statuses(results_dir) == [expected], "the second seed must not start after the signal"
    assert not requests.installed, "the handlers stay installed after the command"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the lost interrupt, as expected
def test_ctrl_c_swallowed_by_a_destructor_still_stops_the_sweep(results_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A KeyboardInterrupt raised while Python runs a destructor is printed as "Exception
    ignored in …" and lost; the request it carried is not: the sweep stops before the next run."""

    class Collected:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)

    finished = SweepProgress.finished

    def finished_then_collect(self: SweepProgress, result: Any) -> None:
        finished(self, result)
        Collected()  # dropped at once: its destructor runs here, and the interrupt lands in it

    monkeypatch.setattr(SweepProgress, "finished", finished_then_collect)
    code, _, err = run_cli([*RUN, "--seeds", "0,1,2", "--results", str(results_dir)], capsys)
    assert code == 130
    assert [s[:2] for s in statuses(results_dir)] == [("0", "FINISHED")]


# --- live learning curves ---------------------------------------------------------------------


class FailAtStep(bench.runner.L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"failed on purpose at step {trainer.global_step}")


@pytest.mark.slow
def test_learning_curve_is_in_the_store_while_training_and_after_a_failure(results_dir: Path, data_dir: Path,
                                                                            make_config: Any) -> None:
    """Each validation is written as it happens: a run that fails after its first validation
    keeps that point of its curve, and a finished run has each step once."""
    tracker = Tracker(uri_of(results_dir), results_dir).connect()
    runner = Runner(tracker, data_dir, accelerator="cpu", rerun=True)
    config = make_config("lstm", "copy", {"delay": 5, "n_train": 512, "n_val": 32, "n_test": 32},
                         model_overrides={"hidden_size": 16})
    failed = runner.run(config, callbacks=(FailAtStep(6),), tags={"kind": "trial"})
    assert failed.status == "failed" and "failed on purpose" in failed.reason
    client = MlflowClient(uri_of(results_dir))
    curve = client.get_metric_history(failed.run_id, "val_curve/ce")
    assert [m.step for m in curve] == [4]  # tiny profile: a validation every 4 steps
    assert [m.step for m in client.get_metric_history(failed.run_id, "train/loss")] == [4]
    assert client.get_run(failed.run_id).info.status == "FAILED"

    done = runner.run(config)
    assert done.status == "finished"
    assert [m.step for m in client.get_metric_history(done.run_id, "val_curve/ce")] == [4, 8]


# --- heartbeats, abandoned runs, claims -------------------------------------------------------


def dead_pid() -> int:
    """A pid that no process has."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def tracker(results_dir: Path) -> Tracker:
    return Tracker(uri_of(results_dir), results_dir).connect()


def fake_run(tracker: Tracker, cache_key: str, owner: str | None, heartbeat: float | None,
             start_time_ms: int | None = None) -> str:
    tags = {"kind": "run", "cache_key": cache_key, "model": "lstm", "seed": "0", "task_variant": "copy"}
    if owner is not None:
        tags[OWNER_TAG] = owner
    if heartbeat is not None:
        tags[HEARTBEAT_TAG] = f"{heartbeat:.0f}"
    run = tracker.client.create_run(tracker.experiment_id("copy"), tags=tags, start_time=start_time_ms)
    return run.info.run_id


def test_a_run_alive_elsewhere_holds_its_configuration(tracker: Tracker) -> None:
    """A RUNNING run with a fresh heartbeat (on another host) or a live owner (here) is a claim;
    a later claim of the same configuration is not the first."""
    other = fake_run(tracker, "k1", "elsewhere/123/456/x", time.time())
    holder = tracker.claim("copy", "k1").holder
    assert holder is not None and holder.run_id == other
    mine = fake_run(tracker, "k2", this_process(), time.time())
    assert tracker.claim("copy", "k2").holder.run_id == mine
    later = fake_run(tracker, "k2", this_process(), time.time())
    assert tracker.claim("copy", "k2", mine=later).holder.run_id == mine
    assert tracker.claim("copy", "k2", mine=mine).holder is None
    assert tracker.status(other) == "RUNNING"
    # Same host name, another machine or pid namespace: only the heartbeat tells, and it is fresh.
    twin = fake_run(tracker, "k3", f"{platform.node()}/{dead_pid()}/1/other-boot:1", time.time())
    assert tracker.claim("copy", "k3").holder.run_id == twin


@pytest.mark.parametrize("orphan", ["dead process here", "stale heartbeat elsewhere", "recorded before heartbeats"])
def test_abandoned_runs_are_marked_failed_and_release_their_claim(orphan: str, tracker: Tracker) -> None:
    now = time.time()
    if orphan == "dead process here":
        run_id = fake_run(tracker, "k", f"{platform.node()}/{dead_pid()}/1/{this_machine()}", now)
    elif orphan == "stale heartbeat elsewhere":
        run_id = fake_run(tracker, "k", "elsewhere/123/456/x", now - STALE_AFTER_S - 5)
    else:
        run_id = fake_run(tracker, "k", None, None, start_time_ms=int((now - STALE_AFTER_S - 5) * 1000))
    assert tracker.claim("copy", "k").holder is None
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == ABANDONED


def test_a_claim_that_gives_way_ends_and_is_not_waited_for(tracker: Tracker, data_dir: Path,
                                                            make_config: Any) -> None:
    """Where the store gives no lock (a server), the later of two claims gives way: its run is
    ended and deleted, and a process waiting for it stops waiting."""
    first = fake_run(tracker, "k", this_process(), time.time())
    later = fake_run(tracker, "k", this_process(), time.time())
    assert tracker.claim("copy", "k", mine=later).holder.run_id == first
    tracker.give_way(later, first)
    run = tracker.client.get_run(later)
    assert (run.info.status, run.info.lifecycle_stage) == ("KILLED", "deleted")
    runner = Runner(tracker, data_dir, accelerator="cpu")
    busy = bench.runner.RunResult(make_config("lstm", "copy"), "busy", run_id=later)
    assert runner.wait(busy, every_s=0.1).info.run_id == later  # returns at once


@pytest.mark.slow
def test_a_store_that_fails_mid_sweep_is_one_line(results_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from sqlalchemy.exc import OperationalError

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("INSERT INTO runs", {}, Exception("attempt to write a readonly database"))

    monkeypatch.setattr(Tracker, "start", fail)
    code, _, err = run_cli([*RUN, "--results", str(results_dir)], capsys)
    one_line_error(code, err)
    assert "run store failed" in err and "readonly database" in err


def test_heartbeat_moves_while_the_run_lives(tracker: Tracker) -> None:
    run_id = tracker.start("copy", "beating", {}, {"kind": "run"})
    first = float(tracker.client.get_run(run_id).data.tags[HEARTBEAT_TAG])
    with Heartbeat(tracker, run_id, every_s=0.2):
        deadline = time.monotonic() + 20
        while float(tracker.client.get_run(run_id).data.tags[HEARTBEAT_TAG]) <= first:
            assert time.monotonic() < deadline, "the heartbeat never moved"
            time.sleep(0.2)
    assert tracker.client.get_run(run_id).data.tags[OWNER_TAG] == this_process()


@pytest.mark.slow
def test_report_shows_runs_that_are_running_or_abandoned(tracker: Tracker, results_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """An orphan RUNNING run is counted and listed in leaderboard.md, runs.csv and the HTML."""
    fake_run(tracker, "k", "elsewhere/1/2", time.time() - STALE_AFTER_S - 600)
    code, out, err = run_cli(["report", "--results", str(results_dir)], capsys)
    assert code == 0, err
    assert "0 finished and 1 failed or interrupted" in " ".join(out.split())
    reports = results_dir / "reports"
    for name in ("leaderboard.md", "runs.csv", "report.html"):
        text = (reports / name).read_text()
        assert "no heartbeat for" in text and "abandoned" in text, name


# --- unusable stores and directories ------------------------------------------------------------


def one_line_error(code: int, err: str) -> None:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) <= 2 and lines[0].startswith("error:"), err  # one message (rich may wrap it once)
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["run", "report"])
@pytest.mark.parametrize("case", ["results is a file", "results under a file", "under /proc", "garbage store",
                                  "truncated store", "store is a directory"])
def test_unusable_results_give_one_line_and_lose_nothing(case: str, command: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    kept: Path | None = None
    if case == "results is a file":
        results.write_text("not a directory")
        kept = results
    elif case == "results under a file":
        (tmp_path / "file").write_text("x")
        results = tmp_path / "file" / "results"
    elif case == "under /proc":
        results = Path("/proc/seqbench-results")
    elif case in ("garbage store", "truncated store"):
        results.mkdir()
        kept = results / "mlflow.db"
        if case == "garbage store":
            kept.write_bytes(os.urandom(4096))
        else:
            Tracker(uri_of(results), results).connect()
            data = kept.read_bytes()
            kept.write_bytes(data[: len(data) // 3])
    else:
        (results / "mlflow.db").mkdir(parents=True)
    before = kept.read_bytes() if kept is not None else None
    args = [*RUN, "--results", str(results)] if command == "run" else ["report", "--results", str(results)]
    code, _, err = run_cli(args, capsys)
    one_line_error(code, err)
    assert str(results) in err or "mlflow.db" in err
    if kept is not None:
        assert kept.read_bytes() == before, "the store was changed"


@pytest.mark.parametrize("exists", [False, True])
def test_report_on_an_empty_results_directory_creates_nothing(exists: bool, results_dir: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    if exists:
        results_dir.mkdir()
    code, _, err = run_cli(["report", "--results", str(results_dir)], capsys)
    one_line_error(code, err)
    assert results_dir.exists() == exists
    assert not (results_dir / "mlflow.db").exists()


# --- real processes: kill -9, SIGTERM, concurrent starts ------------------------------------------


def bench_process(args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})


def wait_for_running(results: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until a run is RUNNING in the store (its training has started). The store is read
    through Tracker, which takes the creation lock: a reader must not open a new store while
    the process that creates it is still creating its tables."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"bench exited ({proc.returncode}) before a run started:\n{proc.communicate()[0]}")
        if (results / "mlflow.db").is_file():
            client = Tracker(uri_of(results), results).client
            exp = client.get_experiment_by_name("seqbench/copy")
            if exp is not None and client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'"):
                return
        time.sleep(0.5)
    raise AssertionError("no run started")


LONG = ["run", "--no-baselines", "--models", "lstm", "--tasks", COPY, "--profile", "tiny", "--accelerator", "cpu",
        "--set", "model.hidden_size=16", "--set", "budget.max_steps=2000", "--set", "budget.max_epochs=1000",
        "--set", "budget.val_every_steps=200", "--set", "budget.patience=100"]  # about 10 s of training


@pytest.mark.slow
def test_a_run_killed_without_a_word_is_found_and_run_again(results_dir: Path) -> None:
    """kill -9 mid-training leaves a RUNNING run; the next bench run marks it FAILED
    (abandoned: no heartbeat) and trains the configuration: one FINISHED run, no orphan."""
    first = bench_process([*LONG, "--results", str(results_dir)])
    try:
        wait_for_running(results_dir, first)
        first.kill()
        first.wait(timeout=60)
    finally:
        first.kill()
    assert [s[1] for s in statuses(results_dir)] == ["RUNNING"]

    again = bench_process([*LONG, "--results", str(results_dir)])
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    runs = read_runs(results_dir)
    by_status = sorted((r.info.status, r.data.tags.get("failure_reason", "")) for r in runs)
    assert by_status == [("FAILED", ABANDONED), ("FINISHED", "")]
    assert len({r.data.tags["cache_key"] for r in runs}) == 1


@pytest.mark.slow
def test_sigterm_from_a_scheduler_records_killed_and_exits_143(results_dir: Path) -> None:
    proc = bench_process([*LONG, "--results", str(results_dir)])
    try:
        wait_for_running(results_dir, proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, out
    assert statuses(results_dir) == [("0", "KILLED", "terminated by SIGTERM")]


@pytest.mark.slow
def test_processes_started_at_once_share_a_new_store_and_train_each_configuration_once(
        results_dir: Path, data_dir: Path) -> None:
    """Two bench runs of the same sweep and a bench tune, started together on a store that does
    not exist yet: none crashes, and each configuration has exactly one FINISHED run (the second
    process waits for the first's run instead of training it again). Then the same on the
    existing store."""
    seeds = ["--seeds", "0,1"]
    tune = ["tune", "--models", "lstm", "--tasks", COPY, "--trials", "2", "--profile", "tiny", "--accelerator", "cpu",
            "--results", str(results_dir), "--data-dir", str(data_dir)]
    procs = [bench_process([*RUN, *seeds, "--results", str(results_dir)]) for _ in range(2)]
    procs.append(bench_process(tune))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
        assert "Traceback" not in out
    runs = [r for r in read_runs(results_dir) if r.data.tags.get("kind") == "run"]
    assert sorted((r.data.tags["seed"], r.info.status) for r in runs) == [("0", "FINISHED"), ("1", "FINISHED")]

    procs = [bench_process([*RUN, "--seeds", "2", "--results", str(results_dir)]) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    runs = [r for r in read_runs(results_dir) if r.data.tags.get("kind") == "run" and r.data.tags["seed"] == "2"]
    assert [r.info.status for r in runs] == ["FINISHED"]
