"""bench reproduce: reference experiments run through the normal runner, recorded like any
run, and compared with their published figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from bench.catalog import load_catalog
from bench.cli import main
from bench.errors import BenchError
from bench.reproduce import REFERENCE_FILE, Experiment, load_experiments, plan
from tests.conftest import SMALL_TASK_PARAMS

COPY = "copy:" + ":".join(f"{k}={v}" for k, v in SMALL_TASK_PARAMS["copy"].items())


def experiment(**kw: Any) -> Experiment:
    base = dict(name="x", about="", models="lstm", tasks=COPY, metric="test/ce", published=1.0, source="s",
                check="at_most", tolerance=0.1)
    return Experiment(**{**base, **kw})


def test_checks_read_as_their_names() -> None:
    at_most, at_least, within = (experiment(check=c) for c in ("at_most", "at_least", "within"))
    assert at_most.passes(1.1) and at_most.passes(0.2) and not at_most.passes(1.11)
    assert at_least.passes(0.9) and at_least.passes(5.0) and not at_least.passes(0.89)
    assert within.passes(1.05) and not within.passes(0.85) and not within.passes(1.2)
    assert not at_most.passes(math.nan)
    assert at_most.bar == "≤ 1.1" and at_least.bar == "≥ 0.9"


def test_the_shipped_reference_file_resolves_against_the_registries() -> None:
    experiments = load_experiments()
    names = [e.name for e in experiments]
    assert {"dlinear-etth1", "neuralforecast-lstm-airline", "lstm-sst2", "lstm-imdb", "copy-memoryless"} <= set(names)
    planned = plan(experiments, load_catalog())
    for exp, configs in planned:
        assert configs and all(c.model in exp.models.split(",") for c in configs)
        assert exp.source and exp.metric.startswith("test/")
    copy = next(e for e in experiments if e.name == "copy-memoryless")
    assert copy.published == pytest.approx(10 * math.log(8) / 120, abs=1e-5)


@pytest.mark.parametrize(("text", "message"), [
    ("[[experiment]]\nname='a'\n", "published"),
    ("[[experiment]]\nname='a'\nabout=''\nmodels='lstm'\ntasks='copy'\nmetric='test/ce'\npublished=1\nsource=''\n"
     "check='roughly'\ntolerance=1\n", "check 'roughly'"),
    ("[[experiment]]\nname='a'\nsurprise=1\n", "unknown key(s) surprise"),
    ("not toml [", "Cannot read"),
])
def test_a_malformed_reference_file_is_a_one_line_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "ref.toml"
    path.write_text(text)
    with pytest.raises(BenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_experiments(path)


def test_unknown_names_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "--only", "dlinear-etth2", "--list"]) == 2
    assert "dlinear-etth2" in capsys.readouterr().err
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    assert "dlinear-etth1" in out and "0.386" in out
    assert REFERENCE_FILE.is_file()


@pytest.mark.slow
def test_reproduce_runs_records_and_compares(results_dir: Path, data_dir: Path, tmp_path: Path, mlflow_runs: Any,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """One experiment whose bar any model reaches and one that none can: the command records
    both runs in the store with their tag, prints both verdicts, writes the table, exits 1."""
    ref = tmp_path / "ref.toml"
    ref.write_text(f"""
[[experiment]]
name = "easy"
about = "a bar any model reaches"
models = "lstm"
tasks = "{COPY}"
profile = "tiny"
seeds = "0,1"
metric = "test/ce"
aggregate = "median"
published = 100.0
source = "test"
check = "at_most"
tolerance = 0.0

[[experiment]]
name = "impossible"
about = "a bar none reaches"
models = "gru"
tasks = "{COPY}"
profile = "tiny"
metric = "test/symbol_accuracy"
published = 2.0
source = "test"
check = "at_least"
tolerance = 0.0
""")
    monkeypatch.setattr("bench.reproduce.REFERENCE_FILE", ref)
    args = ["reproduce", "--results", str(results_dir), "--data-dir", str(data_dir)]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "easy" in out and "impossible" in out and "1 of 2 reference experiments" in out
    runs = mlflow_runs(results_dir)
    assert sorted(r.data.tags["reproduction"] for r in runs) == ["easy", "easy", "impossible"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags.get("seqbench.model") == "model" for r in runs), "reference runs keep their models"
    table = (results_dir / "reports" / "reproduce.md").read_text()
    easy = [r.data.metrics["test/ce"] for r in runs if r.data.tags["reproduction"] == "easy"]
    row = next(line for line in table.splitlines() if line.startswith("| easy "))
    assert f"{sorted(easy)[0] / 2 + sorted(easy)[1] / 2:.4g}" in row and "pass" in row
    assert "**miss**" in next(line for line in table.splitlines() if line.startswith("| impossible "))

    # Run again: nothing is trained again (same configuration, device and code), same verdicts.
    assert main([*args, "--only", "easy"]) == 0
    assert len(mlflow_runs(results_dir)) == 3
