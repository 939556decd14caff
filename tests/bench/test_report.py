"""bench report: leaderboards from the MLflow store, and their numbers against the store's."""

from __future__ import annotations

import math
import re
import statistics
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench.catalog import load_catalog
from bench.cli import main, parse_since
from bench.errors import BenchError
from bench.report import Run, average_ranks, boards, env_summary, environment, markdown, pareto, table_cells, welch_p
from bench.tracking import Tracker, default_tracking_uri
from models import MODELS
from tests.bench.test_runner import _raise, wrapped_spec
from tests.conftest import SMALL_TASK_PARAMS

COPY = "copy:" + ":".join(f"{k}={v}" for k, v in SMALL_TASK_PARAMS["copy"].items())


def run(model: str, seed: int, value: float, status: str = "FINISHED", variant: str = "copy", start: int = 0,
        **tags: str) -> Run:
    metrics = {"test/ce": value, "test/answer_ce": value * 2, "perf/train_samples_per_s": 100.0 + seed}
    return Run(f"{model}-{seed}-{start}", "copy", variant, model, str(seed), status, start, metrics,
               {"model": model, **tags})


def test_rows_aggregate_seeds_and_rank_with_the_task_direction() -> None:
    runs = [run("a", 0, 0.50), run("a", 1, 0.52), run("b", 0, 0.30), run("b", 1, 0.31), run("c", 0, 0.90),
            run("c", 1, 0.91)]
    (board,) = boards(runs, load_catalog())  # copy: cross-entropy, lower is better
    assert [r.label for r in board.rows] == ["b", "a", "c"]
    assert [r.rank for r in board.rows] == [1, 2, 3]
    assert board.rows[0].mean("test/ce") == pytest.approx(0.305)
    assert board.rows[0].std("test/ce") == pytest.approx(statistics.stdev([0.30, 0.31]))
    assert board.metrics[0] == "ce"


def test_rows_within_noise_share_a_rank_and_ties_do_not_chain() -> None:
    runs = [run("a", s, v) for s, v in enumerate([0.30, 0.40, 0.35])]
    runs += [run("b", s, v) for s, v in enumerate([0.33, 0.41, 0.37])]  # within a's spread
    runs += [run("c", s, v) for s, v in enumerate([0.36, 0.44, 0.40])]  # within b's, not clearly a's
    runs += [run("d", s, v) for s, v in enumerate([0.90, 0.91, 0.92])]
    (board,) = boards(runs, load_catalog())
    rows = {r.label: r for r in board.rows}
    assert rows["b"].tied and rows["b"].rank == 1
    assert rows["b"].p_value == pytest.approx(welch_p([0.30, 0.40, 0.35], [0.33, 0.41, 0.37]))
    assert not rows["d"].tied and rows["d"].rank == 4
    # c is judged against a (the first row of rank 1), not against b
    assert rows["c"].p_value == pytest.approx(welch_p([0.30, 0.40, 0.35], [0.36, 0.44, 0.40]))


def test_one_seed_rows_are_ranked_by_value_alone() -> None:
    (board,) = boards([run("a", 0, 0.5), run("b", 0, 0.50001)], load_catalog())
    assert [(r.label, r.rank, r.tied) for r in board.rows] == [("a", 1, False), ("b", 2, False)]
    assert math.isnan(board.rows[1].p_value)


def test_latest_run_of_a_seed_counts_and_failures_are_listed() -> None:
    runs = [run("a", 0, 0.9, start=1), run("a", 0, 0.4, start=2), run("a", 1, 0.5),
            run("b", 0, math.nan, status="FAILED", failure_reason="NonFiniteLossError: loss became nan"),
            run("a", 2, 0.1, status="KILLED", failure_reason="interrupted by the user")]
    (board,) = boards(runs, load_catalog())
    assert [r.label for r in board.rows] == ["a"]
    assert sorted(r.metrics["test/ce"] for r in board.rows[0].runs) == [0.4, 0.5]
    assert {r.model for r in board.failed} == {"a", "b"}
    text = markdown([board], {}, "t")
    assert "b, seed 0: failed, NonFiniteLossError: loss became nan" in text
    assert "a, seed 2: killed, interrupted by the user" in text


def test_tuned_runs_are_their_own_row_and_average_ranks_span_tasks() -> None:
    runs = [run("lstm", 0, 0.5), run("lstm", 0, 0.3, **{"tuned.study": "lstm@copy@quick"}),
            run("gru", 0, 0.4), run("gru", 0, 0.2, variant="copy:T200"), run("lstm", 0, 0.6, variant="copy:T200")]
    result = boards(runs, load_catalog())
    assert [b.variant for b in result] == ["copy", "copy:T200"]
    assert [r.label for r in result[0].rows] == ["lstm (tuned)", "gru", "lstm"]
    assert average_ranks(result) == [("lstm (tuned)", 1.0, 1), ("gru", 1.5, 2), ("lstm", 2.5, 2)]


def test_a_row_that_hit_the_time_limit_says_so() -> None:
    runs = [run("a", 0, 0.5, stop_reason="max_time"), run("a", 1, 0.4, stop_reason="max_steps"),
            run("b", 0, 0.6, stop_reason="early stopping")]
    (board,) = boards(runs, load_catalog())
    header, body = table_cells(board)
    assert header[-1] == "notes"
    assert [cells[-1] for cells in body] == ["time limit hit (seed 0)", ""]


def test_pareto_front_respects_the_direction() -> None:
    points = [(0.9, 10.0), (0.8, 100.0), (0.7, 50.0), (0.95, 5.0)]  # (quality, throughput)
    assert pareto(points, higher_is_better=True) == [0, 1, 3]
    assert pareto(points, higher_is_better=False) == [1, 2]


def test_environment_counts_runs_per_value_and_names_one_shared_value_alone() -> None:
    runs = [run("a", 0, 0.5, **{"version.torch": "2.13.0"}), run("a", 1, 0.5, **{"version.torch": "2.13.0"}),
            run("b", 0, 0.5, **{"version.torch": "2.12.1"})]
    env = environment(runs)
    assert env_summary(env["version.torch"]) == "2.13.0 (2 runs); 2.12.1 (1 run)"
    assert env_summary([("cpu", 3)]) == "cpu"


def test_since_accepts_dates_and_durations() -> None:
    assert parse_since("2026-11-01") == int(time.mktime((2026, 11, 1, 0, 0, 0, 0, 0, -1)) * 1000)
    assert abs(parse_since("12h") - (time.time() - 12 * 3600) * 1000) < 60_000
    assert abs(parse_since("3d") - (time.time() - 3 * 86400) * 1000) < 60_000
    with pytest.raises(BenchError, match="Invalid --since 'yesterday'"):
        parse_since("yesterday")


def test_report_without_runs_is_a_clear_error(results_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--results", str(results_dir)]) == 2
    assert "No run store at" in capsys.readouterr().err  # and none is created (tests/bench/test_crash.py)
    results_dir.mkdir()
    Tracker(default_tracking_uri(results_dir), results_dir).connect()  # a store without runs
    assert main(["report", "--results", str(results_dir)]) == 2
    assert "No runs match" in capsys.readouterr().err
    assert main(["report", "--results", str(results_dir), "--format", "pdf"]) == 2
    assert "Invalid --format 'pdf'" in capsys.readouterr().err


@pytest.mark.slow
def test_report_numbers_equal_the_store(results_dir: Path, data_dir: Path, register: Any, mlflow_runs: Any,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep with two seeds and one failing model: every number in the CSV and Markdown
    equals the mean (and std) of the store's runs; the failure is listed with its reason."""
    from tests.bench.test_runner import catalog_with

    register(MODELS, "boom-model", wrapped_spec(_raise(RuntimeError("boom in forward"))))
    monkeypatch.setattr("bench.catalog.load_catalog", lambda *a, **k: catalog_with({"boom-model": "lstm"}))
    args = ["--results", str(results_dir), "--data-dir", str(data_dir)]
    assert main(["run", "--models", "lstm,gru,boom-model", "--tasks", COPY, "--profile", "tiny", "--seeds", "0,1",
                 "--sweep", "first", *args]) == 1
    assert main(["run", "--models", "gru", "--tasks", "airline", "--profile", "tiny", "--no-baselines",
                 "--sweep", "second", *args]) == 0
    assert main(["report", "--results", str(results_dir), "--format", "md,csv"]) == 0

    out = results_dir / "reports"
    board = pd.read_csv(out / "leaderboard.csv")
    runs = [r for r in mlflow_runs(results_dir) if r.info.status == "FINISHED"]
    for _, row in board.iterrows():
        mine = [r for r in runs if r.data.tags["model"] == row["model"] and r.data.tags["task_variant"] == row["task"]]
        assert len(mine) == row["n"]
        values = [r.data.metrics[f"test/{row['primary_metric']}"] for r in mine]
        assert row[f"test/{row['primary_metric']}_mean"] == pytest.approx(statistics.fmean(values))
        if len(values) > 1:
            assert row[f"test/{row['primary_metric']}_std"] == pytest.approx(statistics.stdev(values))
        memory = [r.data.metrics["perf/peak_memory_mb"] for r in mine]
        assert row["perf/peak_memory_mb_mean"] == pytest.approx(statistics.fmean(memory))
    copy_label = "copy:" + ":".join(f"{k}={v}" for k, v in sorted(SMALL_TASK_PARAMS["copy"].items()))
    assert {"lstm", "gru", "char-ngram"} <= set(board[board.task == copy_label].model)
    assert set(board[board.task == "airline"].model) == {"gru"}

    text = (out / "leaderboard.md").read_text()
    lstm = [r.data.metrics["test/ce"] for r in runs if r.data.tags["model"] == "lstm"]
    line = next(ln for ln in text.splitlines() if re.match(r"\| =?\d+ \| lstm \|", ln))
    assert f"{statistics.fmean(lstm):.4g} ± {statistics.stdev(lstm):.2g}" in line
    assert "boom-model, seed 0: failed, RuntimeError: boom in forward" in text
    assert "## Environment" in text and "version.torch" in text and "profile: tiny" in text

    # Filters: one sweep; one model; nothing since tomorrow.
    assert main(["report", "--results", str(results_dir), "--sweep", "second", "--format", "csv",
                 "--out", str(results_dir / "second")]) == 0
    assert list(pd.read_csv(results_dir / "second" / "leaderboard.csv").task.unique()) == ["airline"]
    assert main(["report", "--results", str(results_dir), "--models", "lstm", "--format", "csv",
                 "--out", str(results_dir / "lstm")]) == 0
    assert set(pd.read_csv(results_dir / "lstm" / "leaderboard.csv").model) == {"lstm"}
    assert main(["report", "--results", str(results_dir), "--since", "2999-01-01"]) == 2


@pytest.mark.slow
def test_two_configurations_of_one_model_are_two_rows(results_dir: Path, data_dir: Path,
                                                      mlflow_runs: Any) -> None:
    """Runs of one model under two profiles, and under an override, in one store: three rows,
    each labelled by what differs, each aggregating only its own seeds (read from the store)."""
    args = ["--results", str(results_dir), "--data-dir", str(data_dir), "--no-baselines", "--models", "lstm",
            "--tasks", COPY, "--seeds", "0,1"]
    assert main(["run", *args, "--profile", "tiny"]) == 0
    assert main(["run", *args, "--profile", "quick", "--set", "budget.max_steps=4",
                 "--set", "budget.val_every_steps=2"]) == 0
    assert main(["run", *args, "--profile", "tiny", "--set", "model.hidden_size=16"]) == 0
    assert main(["report", "--results", str(results_dir), "--format", "md,csv"]) == 0

    board = pd.read_csv(results_dir / "reports" / "leaderboard.csv")
    assert len(board) == 3 and (board.n == 2).all()
    labels = set(board.model)
    assert any("profile=quick" in label for label in labels)
    assert any("model.hidden_size=16" in label for label in labels)
    runs = [r for r in mlflow_runs(results_dir) if r.info.status == "FINISHED"]
    by_config: dict[str, list[float]] = {}
    for r in runs:
        by_config.setdefault(r.data.tags["config_id"], []).append(r.data.metrics["test/ce"])
    assert len(by_config) == 3
    assert sorted(board["test/ce_mean"]) == pytest.approx(sorted(statistics.fmean(v) for v in by_config.values()))
    assert sorted(board.config_id) == sorted(by_config)
