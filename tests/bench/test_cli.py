"""The ``bench`` command line: exit codes, one-line errors, nothing written on bad input,
``bench list``, missing datasets, and the installed console script."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import bench.catalog
from bench.cli import main
from models import MODELS
from tasks import TASKS

COPY_SMALL = "copy:delay=5:n_train=128:n_val=32:n_test=32"


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_input_error(code: int, err: str, results: Path, *needles: str) -> str:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert not results.exists() or not any(results.iterdir()), "bad input must write nothing"
    return lines[0]


@pytest.mark.parametrize(("extra", "needles"), [
    (["--models", "lsmt", "--tasks", "copy"], ["Unknown model", "'lsmt'", "lstm", "Available:"]),
    (["--models", "lstm,lsmt,grv", "--tasks", "copy"], ["'lsmt'", "'grv'", "gru"]),
    (["--models", "lstm", "--tasks", "cpy"], ["Unknown task", "'cpy'", "copy"]),
    (["--models", "lstm", "--tasks", "copy:T300"], ["variant", "T300", "T200"]),
    (["--models", "lstm", "--tasks", "copy:delay=soon"], ["'soon' is not int"]),
    (["--models", "lstm", "--tasks", COPY_SMALL, "--set", "model.hidden_size=-4"], ["hidden_size=-4", "lstm"]),
    (["--models", "lstm", "--tasks", COPY_SMALL, "--set", "model.hidden_size=abc"], ["'abc' is not int"]),
    (["--models", "lstm", "--tasks", COPY_SMALL, "--set", "model.hiden_size=8"], ["hiden_size", "hidden_size"]),
    (["--models", "lstm", "--tasks", COPY_SMALL, "--set", "train.momentum=0.9"], ["momentum", "lr"]),
    (["--models", "lstm", "--tasks", COPY_SMALL, "--set", "train.batch_size=0"], ["batch sizes"]),
    (["--models", "lstm", "--tasks", COPY_SMALL, "--set", "speed=3"], ["Invalid --set 'speed=3'"]),
    (["--models", "lstm", "--tasks", COPY_SMALL, "--profile", "huge"], ["Unknown profile 'huge'", "tiny"]),
    (["--models", "lstm", "--tasks", COPY_SMALL, "--seeds", "x"], ["Invalid seeds 'x'"]),
    (["--models", "lstm", "--tasks", "copy:delay=0"], ["delay=0"]),
], ids=["unknown-model", "several-unknown-models", "unknown-task", "unknown-variant", "task-param-type",
        "negative-hidden-size", "hparam-type", "unknown-model-key", "unknown-train-key", "invalid-train-value",
        "bad-set-group", "bad-profile", "bad-seeds", "invalid-task-param"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    extra: list[str], needles: list[str], results_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "--no-baselines", *extra, "--results", str(results_dir)]
    if "--profile" not in extra:
        argv += ["--profile", "tiny"]
    code, out, err = run_cli(argv, capsys)
    assert_input_error(code, err, results_dir, *needles)
    assert "Traceback" not in out + err


def test_negative_seed_is_an_input_error(results_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--seeds=-1`` cannot be used to seed a run: it must be refused up front (exit 2,
    nothing written), not recorded as a failed run of each configuration."""
    code, out, err = run_cli(["run", "--no-baselines", "--models", "lstm", "--tasks", COPY_SMALL, "--profile", "tiny",
                              "--seeds=-1", "--results", str(results_dir)], capsys)
    assert_input_error(code, err, results_dir, "seed")


@pytest.mark.parametrize("selection", ["ls[a-z]", "lstm[/]"])
def test_error_message_shows_the_input_verbatim(selection: str, results_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Error lines quote what the user typed; brackets in it (wildcard classes such as
    ``[a-z]``) are text, not console markup to be swallowed or to crash on."""
    code, out, err = run_cli(["run", "--no-baselines",
                              "--models", selection, "--tasks", "copy", "--results", str(results_dir)],
                             capsys)
    assert_input_error(code, err, results_dir, f"'{selection}' matches no model")


def test_list_mentions_every_model_and_task(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, out, err = run_cli(["list", "--data-dir", str(data_dir)], capsys)
    assert code == 0, err
    for name in [*MODELS, *TASKS]:
        assert name in out, name
    assert str(data_dir) in out
    # The shared data directory lacks only AG News's training file.
    missing_lines = [line for line in out.splitlines() if "missing" in line]
    assert len(missing_lines) == 1 and "ag_news/train.csv" in missing_lines[0]
    code, out, _ = run_cli(["list", "--models-only"], capsys)
    assert code == 0 and "transformer" in out and "Tasks" not in out
    code, out, _ = run_cli(["list", "--tasks-only"], capsys)
    assert code == 0 and "adding" in out and "Models" not in out


def test_list_shows_missing_data(capsys: pytest.CaptureFixture[str], empty_data_dir: Path) -> None:
    code, out, _ = run_cli(["list", "--tasks-only", "--data-dir", str(empty_data_dir)], capsys)
    assert code == 0
    assert "disaster_tweets/train.csv" in out and "airline/airline-passengers.csv" in out


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert "seqbench" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--no-baselines", "--models", "lstm"])  # --tasks is required: argparse's usage error
    assert exit_info.value.code == 2


def test_missing_dataset_only_is_an_input_error(empty_data_dir: Path, results_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["run", "--no-baselines", "--models", "lstm", "--tasks", "tweets", "--profile", "tiny",
                              "--data-dir", str(empty_data_dir), "--results", str(results_dir)], capsys)
    assert code == 2
    assert "disaster_tweets/train.csv" in err
    assert "skipped" in err
    assert "error: Nothing to run" in err
    assert not results_dir.exists()
    assert list(empty_data_dir.iterdir()) == []


@pytest.mark.slow
def test_missing_dataset_skips_that_task_and_runs_the_rest(empty_data_dir: Path, results_dir: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            mlflow_runs: Any) -> None:
    code, out, err = run_cli(["run", "--no-baselines",
                              "--models", "lstm", "--tasks", f"tweets,{COPY_SMALL}", "--profile", "tiny",
                              "--set", "model.hidden_size=16", "--data-dir", str(empty_data_dir),
                              "--results", str(results_dir)], capsys)
    assert code == 0, err
    assert "skipped" in err and "tweets" in err and "disaster_tweets/train.csv" in err
    runs = mlflow_runs(results_dir)
    assert [(r.data.tags["model"], r.data.tags["task"], r.info.status) for r in runs] == [
        ("lstm", "copy", "FINISHED")
    ]


def test_causal_task_refusal_through_the_cli(monkeypatch: pytest.MonkeyPatch, results_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    catalog = copy.deepcopy(bench.catalog.load_catalog())
    catalog["tasks"]["copy"]["causal"] = True
    monkeypatch.setattr(bench.catalog, "load_catalog", lambda use_cache=True: catalog)
    code, out, err = run_cli(["run", "--no-baselines", "--models", "bi*", "--tasks", COPY_SMALL, "--profile", "tiny",
                              "--results", str(results_dir)], capsys)
    assert code == 2
    assert "refused" in err and "bilstm" in err and "bigru" in err and "causal" in err
    assert "error: Nothing to run" in err
    assert not results_dir.exists()


def test_console_script_is_installed(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "bench"
    assert script.is_file(), f"console script not found next to {sys.executable}"
    env = {**os.environ, "SEQBENCH_DATA_DIR": str(tmp_path)}
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "usage: bench" in done.stdout and "run" in done.stdout and "list" in done.stdout
    done = subprocess.run([str(script), "list"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    for name in ("lstm", "transformer", "copy", "tweets"):
        assert name in done.stdout
    done = subprocess.run([str(script), "run", "--models", "lsmt", "--tasks", "copy"], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: Unknown model") and "lstm" in done.stderr
    assert list(tmp_path.iterdir()) == [], "nothing written into the working directory"
