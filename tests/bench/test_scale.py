"""bench scale: a sweep's table, files and MLflow runs (read back from the store), the report's
efficiency section, out-of-memory and time-limit handling, and one-line errors on bad input."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from bench.scale import Point, PointResult, Settings, Sweeper, fit_slopes
from bench.tracking import Tracker, default_tracking_uri
from tests.bench.test_cli import assert_input_error, run_cli

METRICS = {"scale/train_samples_per_s", "scale/train_tokens_per_s", "scale/infer_samples_per_s",
           "scale/peak_memory_mb"}


def points(runs: list[Any]) -> dict[tuple[str, int], Any]:
    """The point runs by (model, length), from the store."""
    out = {(r.data.params["model"], int(r.data.params["length"])): r for r in runs if r.data.tags["kind"] == "scale"}
    assert len(out) == sum(r.data.tags["kind"] == "scale" for r in runs), "one run per point"
    return out


def sweep(results: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    return run_cli(["scale", "--batch-sizes", "2", "--steps", "1", "--warmup-steps", "0", "--results", str(results),
                    *extra], capsys)


@pytest.mark.slow
def test_tiny_sweep_writes_table_files_runs_and_report(results_dir: Path, capsys: pytest.CaptureFixture[str],
                                                       mlflow_runs: Any) -> None:
    code, out, err = sweep(results_dir, capsys, "--models", "lstm,transformer", "--lengths", "16,8",
                           "--sweep", "tiny")
    assert code == 0, err
    assert "train samples/s" in out and "slope" in out
    folder = results_dir / "scale" / "tiny"
    with open(folder / "scale.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["length"], r["status"]) for r in rows] == [
        ("lstm", "8", "ok"), ("lstm", "16", "ok"), ("transformer", "8", "ok"), ("transformer", "16", "ok")]
    assert (folder / "scale.png").read_bytes()[:4] == b"\x89PNG"

    runs = mlflow_runs(results_dir)
    found = points(runs)
    assert set(found) == {("lstm", 8), ("lstm", 16), ("transformer", 8), ("transformer", 16)}
    parent = next(r for r in runs if r.data.tags["kind"] == "scale-sweep")
    for (model, length), r in found.items():
        assert r.info.status == "FINISHED" and r.data.tags["status"] == "ok"
        assert r.data.params["batch_size"] == "2" and r.data.params["steps"] == "1"
        assert r.data.tags["sweep_id"] == "tiny" and r.data.tags["device"].startswith(("cpu", "cuda"))
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert set(r.data.metrics) == METRICS and all(v > 0 for v in r.data.metrics.values())
        m = r.data.metrics
        assert m["scale/train_tokens_per_s"] == pytest.approx(m["scale/train_samples_per_s"] * length)
        row = next(x for x in rows if (x["model"], x["length"]) == (model, str(length)))
        assert float(row["train_samples_per_s"]) == pytest.approx(m["scale/train_samples_per_s"])
    client = Tracker(default_tracking_uri(results_dir), results_dir).client
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"scale.csv", "scale.png"}

    code, out, err = run_cli(["report", "--results", str(results_dir), "--format", "html"], capsys)
    assert code == 0, err
    page = (results_dir / "reports" / "report.html").read_text()
    assert "Efficiency: cost against sequence length" in page and "tiny" in page
    section = page[page.index('id="efficiency"'):]
    assert "data:image/png;base64," in section and section.count(">ok</td>") == 4


@pytest.mark.slow
def test_a_point_out_of_memory_skips_longer_lengths_and_the_sweep_goes_on(
        results_dir: Path, capsys: pytest.CaptureFixture[str], mlflow_runs: Any) -> None:
    # Both models' memory grows linearly with length (the transformer's attention is fused): at
    # batch 2 each takes under 100 MB up to length 4096 and several times that at 16384.
    code, out, err = sweep(results_dir, capsys, "--models", "lstm,transformer", "--lengths", "8,1024,16384,32768",
                           "--memory-limit-mb", "100")
    assert code == 0, err
    found = points(mlflow_runs(results_dir))
    for model in ("lstm", "transformer"):  # the sweep went on past the first model's failure
        assert all(found[(model, n)].data.tags["status"] == "ok" for n in (8, 1024))
        oom, skipped = found[(model, 16384)], found[(model, 32768)]
        assert oom.data.tags["status"] == "oom" and oom.info.status == "FAILED"
        assert "allocate" in oom.data.tags["failure_reason"].lower()
        assert skipped.data.tags["status"] == "skipped"
        assert skipped.data.tags["failure_reason"].startswith("longer than a point that ran out of memory")
        assert not oom.data.metrics and not skipped.data.metrics, "no numbers for a point that did not finish"


@pytest.mark.slow
def test_points_out_of_time_are_recorded_and_the_sweep_completes(
        results_dir: Path, capsys: pytest.CaptureFixture[str], mlflow_runs: Any) -> None:
    code, out, err = sweep(results_dir, capsys, "--models", "lstm,transformer", "--lengths", "8,16",
                           "--point-timeout", "0.001")
    assert code == 0, err
    found = points(mlflow_runs(results_dir))
    for model in ("lstm", "transformer"):
        timeout, skipped = found[(model, 8)], found[(model, 16)]
        assert timeout.data.tags["status"] == "timeout" and timeout.info.status == "FAILED"
        assert "0.001 s point timeout" in timeout.data.tags["failure_reason"]
        assert skipped.data.tags["failure_reason"].startswith("longer than a point that ran out of time")
        assert not timeout.data.metrics


@pytest.mark.slow
def test_an_overrunning_worker_is_killed_and_the_next_point_gets_a_new_one(tmp_path: Path) -> None:
    # No grace past the deadline: the parent kills the worker before it reaches its first step.
    tracker = Tracker(default_tracking_uri(tmp_path), tmp_path)
    sweeper = Sweeper(Settings(steps=1, warmup_steps=0, point_timeout_s=0.001, kill_grace_s=0.0))
    try:
        result = sweeper.run(["lstm", "transformer"], [8], [2], tracker, tmp_path / "scale")
    finally:
        sweeper.close()
    assert [(r.point.model, r.status) for r in result.results] == [("lstm", "timeout"), ("transformer", "timeout")]


def test_slopes_are_one_for_linear_cost_and_two_for_quadratic() -> None:
    lengths = [64, 128, 256, 512]
    results = [PointResult(Point("linear", n, 4), "ok", train_samples_per_s=1e5 / n) for n in lengths]
    results += [PointResult(Point("quadratic", n, 4), "ok", train_samples_per_s=1e7 / (n * n + 1000 * n))
                for n in lengths]
    results.append(PointResult(Point("quadratic", 1024, 4), "oom", "out of memory"))
    slopes = fit_slopes(results)
    assert slopes[("linear", 4)].all_points == pytest.approx(1.0)
    assert 1.0 < slopes[("quadratic", 4)].all_points < slopes[("quadratic", 4)].longest < 2.0
    assert fit_slopes([PointResult(Point("one", 8, 4), "ok", train_samples_per_s=1.0)])[("one", 4)].longest is None


@pytest.mark.parametrize(("extra", "needles"), [
    (["--models", "lsmt"], ["Unknown model", "'lsmt'", "lstm", "Available:"]),
    (["--models", "lstm", "--lengths", "64,abc"], ["--lengths", "'abc'"]),
    (["--models", "lstm", "--lengths", "0,64"], ["--lengths", "'0'", "positive"]),
    (["--models", "lstm", "--lengths", "-8"], ["--lengths", "'-8'"]),
    (["--models", "lstm", "--batch-sizes", "2,,4"], ["--batch-sizes"]),
    (["--models", "lstm", "--point-timeout", "soon"], ["--point-timeout", "'soon'"]),
    (["--models", "lstm", "--memory-limit-mb", "-5"], ["--memory-limit-mb"]),
    (["--models", "lstm", "--steps", "0"], ["--steps 0"]),
    (["--models", "majority"], ["majority", "baseline"]),
], ids=["unknown-model", "garbled-length", "zero-length", "negative-length", "empty-batch-size", "bad-timeout",
        "negative-memory-limit", "no-steps", "baseline-only"])
def test_bad_input_exits_2_with_one_line(extra: list[str], needles: list[str], results_dir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["scale", "--results", str(results_dir), *extra], capsys)
    assert_input_error(code, err, results_dir, *needles)
