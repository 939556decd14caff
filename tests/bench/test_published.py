"""Published figures: a task's figures from papers go into each run's tags, come back from the
store, and are printed under the sweep's table and in the reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.catalog import load_catalog
from bench.report import boards, load_runs, markdown
from bench.runner import Runner
from bench.summary import task_tables
from bench.tracking import Tracker, default_tracking_uri
from tasks import TASKS
from tasks.published import Published, describe, from_tags, to_tags
from tasks.synthetic import Copy
from tests.conftest import SMALL_TASK_PARAMS

FIGURES = (Published("Transformer", "ce", 0.25, "Someone et al. 2020", "delay 1000"),
           Published("S4", "symbol_accuracy", 0.9, "Other et al. 2022"))


def test_figures_round_trip_through_tags_and_read_as_one_line() -> None:
    tags = to_tags(FIGURES)
    assert tags["published.Transformer.ce"] == "0.25"
    assert tags["published.Transformer.ce.source"] == "Someone et al. 2020; delay 1000"
    back = from_tags({**tags, "reference.ce": "0.3", "model": "lstm"})
    assert {(f.model, f.metric, f.value) for f in back} == {(f.model, f.metric, f.value) for f in FIGURES}
    line = describe(back)
    assert line.startswith("published: ") and "Transformer ce 0.25 (Someone et al. 2020; delay 1000)" in line
    assert describe([]) == ""


@pytest.mark.parametrize("model", ["", "a.b"])
def test_a_figure_needs_a_plain_model_name(model: str) -> None:
    with pytest.raises(ValueError, match="published model"):
        Published(model, "accuracy", 0.5, "x")


def test_published_figures_of_the_tasks_are_on_the_tasks_scale() -> None:
    for name in TASKS:
        cls = TASKS.get(name)
        for f in cls.published:
            assert f.source
            if f.metric in ("accuracy", "symbol_accuracy", "macro_f1"):
                assert 0 <= f.value <= 1, f"{name}: {f} is not a fraction"


@pytest.mark.slow
def test_a_runs_published_figures_are_read_back_from_the_store(tmp_path: Path, data_dir: Path, register: Any,
                                                               make_config: Any) -> None:
    class PublishedCopy(Copy):
        name = "copy-published"
        published = FIGURES

    register(TASKS, "copy-published", PublishedCopy)
    results = tmp_path / "results"
    tracker = Tracker(default_tracking_uri(results), results)
    runner = Runner(tracker, data_dir, sweep_id="published", accelerator="cpu")
    config = make_config("lstm", "copy-published", SMALL_TASK_PARAMS["copy"], model_overrides={"hidden_size": 8})
    first = runner.run(config)
    assert first.status == "finished", first.reason

    tags = tracker.client.get_run(first.run_id).data.tags
    assert {(f.model, f.metric, f.value, f.where) for f in from_tags(tags)} == {
        (f.model, f.metric, f.value, f.where) for f in FIGURES}

    again = Runner(tracker, data_dir, sweep_id="again", accelerator="cpu").run(config)  # read from the store
    assert again.status == "cached" and again.published == from_tags(tags)
    (table,) = task_tables([again])
    assert "published: S4 symbol_accuracy 0.9 (Other et al. 2022)" in str(table.caption)

    runs = load_runs(tracker.client)
    text = markdown(boards(runs, load_catalog()), {}, "Leaderboard")
    assert "Published: S4 symbol_accuracy 0.9 (Other et al. 2022), Transformer ce 0.25" in text
