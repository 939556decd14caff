"""What a run records beyond its numbers, read back from the MLflow store: its experiment's
kind, its data as dataset inputs, its model (loaded back and scored again) and, on request,
MLflow's system metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

from bench.cli import main
from bench.tracking import KIND_TAG, TRAINING_KIND, Tracker, default_tracking_uri
from tasks import get_task
from tasks.registry import content_digest
from tests.conftest import SMALL_TASK_PARAMS

COPY_PARAMS = SMALL_TASK_PARAMS["copy"]
COPY = "copy:" + ":".join(f"{k}={v}" for k, v in COPY_PARAMS.items())


def client_of(results: Path) -> MlflowClient:
    return MlflowClient(default_tracking_uri(results))


def inputs_of(run: Any) -> dict[str, Any]:
    """A run's dataset inputs by context (train, validation, test)."""
    out = {}
    for d in run.inputs.dataset_inputs:
        (context,) = [t.value for t in d.tags if t.key == "mlflow.data.context"]
        assert context not in out, f"two {context} datasets on run {run.info.run_id}"
        out[context] = d.dataset
    return out


def bench(*args: str, results: Path, data_dir: Path) -> int:
    return main([*args, "--results", str(results), "--data-dir", str(data_dir)])


# -- the experiment's kind -------------------------------------------------------------------
def test_experiments_are_created_as_model_training(results_dir: Path, data_dir: Path) -> None:
    assert bench("run", "--models", "last-value", "--tasks", "airline", "--profile", "tiny",
                 results=results_dir, data_dir=data_dir) == 0
    experiment = client_of(results_dir).get_experiment_by_name("seqbench/airline")
    assert experiment.tags.get(KIND_TAG) == TRAINING_KIND


def test_an_existing_store_is_fixed_when_bench_writes_to_it(results_dir: Path, data_dir: Path) -> None:
    """Experiments written without the kind (or with another one) get the training kind the
    next time bench writes to the store; experiments that are not seqbench's are left alone,
    and a report (which only reads) changes nothing."""
    results_dir.mkdir()
    tracker = Tracker(default_tracking_uri(results_dir), results_dir)
    client = tracker.client
    old = client.create_experiment("seqbench/copy")
    guessed = client.create_experiment("seqbench/airline", tags={KIND_TAG: "genai_development"})
    foreign = client.create_experiment("someone-else")
    assert KIND_TAG not in client.get_experiment(old).tags

    client.create_run(old, tags={"kind": "run"})
    assert main(["report", "--results", str(results_dir), "--format", "md"]) == 2  # nothing to report yet
    assert KIND_TAG not in client.get_experiment(old).tags
    assert bench("run", "--models", "last-value", "--tasks", "airline", "--profile", "tiny",
                 results=results_dir, data_dir=data_dir) == 0
    for exp_id in (old, guessed):
        assert client.get_experiment(exp_id).tags.get(KIND_TAG) == TRAINING_KIND
    assert KIND_TAG not in client.get_experiment(foreign).tags
    assert Tracker(default_tracking_uri(results_dir), results_dir).mark_training_experiments() == 0  # once is enough


# -- datasets ------------------------------------------------------------------------------
def test_runs_log_their_splits_as_dataset_inputs(results_dir: Path, data_dir: Path) -> None:
    assert bench("run", "--models", "lstm", "--tasks", f"{COPY},airline", "--profile", "tiny", "--seeds", "0,1",
                 "--no-baselines", "--set", "model.hidden_size=8", results=results_dir, data_dir=data_dir) == 0
    client = client_of(results_dir)
    by_task: dict[str, dict[int, dict[str, Any]]] = {}
    for task in ("copy", "airline"):
        exp = client.get_experiment_by_name(f"seqbench/{task}")
        runs = client.search_runs([exp.experiment_id])
        assert len(runs) == 2
        by_task[task] = {int(r.data.tags["seed"]): inputs_of(r) for r in runs}
        for inputs in by_task[task].values():
            assert sorted(inputs) == ["test", "train", "validation"], inputs
            label = runs[0].data.tags["task_variant"]
            assert {d.name for d in inputs.values()} == {label}

    # Copy: generated. The training set is drawn from the run's seed, the held-out sets from fixed ones.
    copy = by_task["copy"]
    assert copy[0]["train"].digest != copy[1]["train"].digest
    assert copy[0]["validation"].digest == copy[1]["validation"].digest
    assert copy[0]["test"].digest == copy[1]["test"].digest
    for seed in (0, 1):
        task_cls = get_task("copy")
        splits = task_cls(task_cls.make_params(**COPY_PARAMS), None, seed).setup()
        for context, split in (("train", splits.train), ("validation", splits.val), ("test", splits.test)):
            dataset = copy[seed][context]
            assert dataset.digest == content_digest(split), (seed, context)  # the data the run saw
            assert dataset.source_type == "code"
            source = json.loads(dataset.source)
            assert source["generator"] == "tasks.synthetic.Copy" and source["params"]["delay"] == COPY_PARAMS["delay"]
            assert json.loads(dataset.profile)["num_rows"] == len(split)
        assert json.loads(copy[seed]["train"].source)["seed"] == seed

    # Airline: a file. Every seed sees the same data; the source is the public file and its checksum.
    airline = by_task["airline"]
    assert {c: d.digest for c, d in airline[0].items()} == {c: d.digest for c, d in airline[1].items()}
    assert len({d.digest for d in airline[0].values()}) == 3
    file = get_task("airline").file
    for dataset in airline[0].values():
        assert dataset.source_type == "http" and json.loads(dataset.source) == {"url": file.url}
        assert json.loads(dataset.profile)["files"] == {file.path: f"sha256:{file.sha256}"}


def test_a_digest_changes_with_the_data_and_nothing_else() -> None:
    task_cls = get_task("copy")
    splits = task_cls(task_cls.make_params(**COPY_PARAMS), None, 0).setup()
    again = task_cls(task_cls.make_params(**COPY_PARAMS), None, 0).setup()
    assert content_digest(splits.train) == content_digest(again.train)
    again.train.tensors["x"][0, 0] += 1
    assert content_digest(splits.train) != content_digest(again.train)


# -- the model -----------------------------------------------------------------------------
def test_a_kept_model_loads_back_and_scores_what_the_run_recorded(results_dir: Path, data_dir: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert bench("run", "--models", "lstm,seasonal-naive", "--tasks", "airline", "--profile", "tiny",
                 "--no-baselines", "--keep-model", results=results_dir, data_dir=data_dir) == 0
    from bench.saved_model import load

    tracker = Tracker(default_tracking_uri(results_dir), results_dir)
    exp = tracker.client.get_experiment_by_name("seqbench/airline")
    runs = tracker.client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["model"] for r in runs) == ["lstm", "seasonal-naive"]
    for run in runs:
        assert run.data.tags["seqbench.model"] == "model"
        listed = {a.path for a in tracker.client.list_artifacts(run.info.run_id, "model")}
        assert listed == {"model/model.json", "model/weights.pt"}
        assert run.data.metrics["model/artifact_mb"] > 0
        loaded = load(run.info.run_id, tracker, data_dir)
        for split, prefix in (("test", "test"), ("val", "val")):
            scored = loaded.evaluate(split)
            recorded = {k.split("/", 1)[1]: v for k, v in run.data.metrics.items() if k.startswith(prefix + "/")}
            assert scored.keys() == recorded.keys()
            for k, v in scored.items():
                assert v == pytest.approx(recorded[k], rel=1e-5, abs=1e-6), (run.data.tags["model"], split, k)
        x = loaded.splits.train.tensors["x"][:2]
        assert loaded.predict(x).shape == (2, *loaded.task.output.shape)

    # A baseline fitted by counting (char-ngram) keeps its counts too.
    assert bench("run", "--models", "char-ngram", "--tasks", COPY, "--profile", "tiny", "--no-baselines",
                 "--keep-model", results=results_dir, data_dir=data_dir) == 0
    (ngram,) = tracker.client.search_runs([tracker.client.get_experiment_by_name("seqbench/copy").experiment_id])
    scored = load(ngram.info.run_id, tracker, data_dir).evaluate("test")
    assert scored == pytest.approx({k[5:]: v for k, v in ngram.data.metrics.items() if k.startswith("test/")},
                                   rel=1e-9)

    lstm = next(r for r in runs if r.data.tags["model"] == "lstm")
    capsys.readouterr()
    assert bench("load", lstm.info.run_id, results=results_dir, data_dir=data_dir) == 0
    out = capsys.readouterr().out
    mase = f"{lstm.data.metrics['test/mase']:.6g}"
    assert out.count(mase) == 2, out  # the loaded model's figure beside the recorded one


def test_quick_and_tiny_runs_keep_no_model_unless_asked(results_dir: Path, data_dir: Path, make_config: Any,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--models", "lstm", "--tasks", COPY, "--profile", "tiny", "--no-baselines", "--set",
              "model.hidden_size=8"]
    assert bench("run", *common, results=results_dir, data_dir=data_dir) == 0
    client = client_of(results_dir)
    (run,) = client.search_runs([client.get_experiment_by_name("seqbench/copy").experiment_id])
    assert "seqbench.model" not in run.data.tags and "model/artifact_mb" not in run.data.metrics
    assert not client.list_artifacts(run.info.run_id, "model")
    assert not list((results_dir / "mlartifacts").rglob("weights.pt"))

    capsys.readouterr()
    assert bench("load", run.info.run_id, results=results_dir, data_dir=data_dir) == 2
    err = capsys.readouterr().err
    assert "kept no model" in err and len(err.strip().splitlines()) == 1, err

    # A run that keeps models by default (a profile's, --tuned, bench reproduce) takes the earlier
    # run as it is ...
    from bench.runner import Runner

    runner = Runner(Tracker(default_tracking_uri(results_dir), results_dir), data_dir, keep_model=True)
    config = make_config("lstm", "copy", COPY_PARAMS, model_overrides={"hidden_size": 8})
    assert runner.run(config).status == "cached"
    # ... and asking for the model explicitly trains the configuration again (its earlier run
    # has none); the earlier run stays as it was.
    assert bench("run", *common, "--keep-model", results=results_dir, data_dir=data_dir) == 0
    runs = client.search_runs([run.info.experiment_id])
    assert len(runs) == 2
    (kept,) = [r for r in runs if r.info.run_id != run.info.run_id]
    assert kept.data.tags["seqbench.model"] == "model" and kept.info.status == "FINISHED"
    # ... and once kept, it is not trained a third time.
    assert bench("run", *common, "--keep-model", results=results_dir, data_dir=data_dir) == 0
    assert len(client.search_runs([run.info.experiment_id])) == 2


def test_a_model_that_cannot_be_kept_leaves_the_run_finished(results_dir: Path, data_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr("bench.runner.save_model", broken)
    assert bench("run", "--models", "last-value", "--tasks", "airline", "--profile", "tiny", "--no-baselines",
                 "--keep-model", results=results_dir, data_dir=data_dir) == 0
    client = client_of(results_dir)
    (run,) = client.search_runs([client.get_experiment_by_name("seqbench/airline").experiment_id])
    assert run.info.status == "FINISHED" and "test/mase" in run.data.metrics
    assert "seqbench.model" not in run.data.tags
    assert run.data.tags["seqbench.model_error"] == "OSError: No space left on device"


def test_profiles_choose_whether_models_are_kept() -> None:
    from bench.saved_model import keeps_model

    assert [keeps_model(p, None) for p in ("tiny", "quick", "standard", "full")] == [False, False, True, True]
    assert keeps_model("quick", True) and not keeps_model("full", False)


def test_a_tampered_model_is_refused(results_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    """A model directory whose weights do not fit the model it names is an error that says so."""
    from bench.errors import BenchError
    from bench.saved_model import load_dir

    assert bench("run", "--models", "lstm", "--tasks", "airline", "--profile", "tiny", "--no-baselines",
                 "--keep-model", results=results_dir, data_dir=data_dir) == 0
    tracker = Tracker(default_tracking_uri(results_dir), results_dir)
    (run,) = tracker.client.search_runs([tracker.client.get_experiment_by_name("seqbench/airline").experiment_id])
    local = tracker.download(run.info.run_id, "model", tmp_path)
    spec = json.loads((local / "model.json").read_text())
    spec["model_params"]["hidden_size"] = 2 * int(spec["model_params"]["hidden_size"])
    (local / "model.json").write_text(json.dumps(spec))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_dir(local, data_dir)
    spec["format"] = 99
    (local / "model.json").write_text(json.dumps(spec))
    with pytest.raises(BenchError, match="format 99"):
        load_dir(local, data_dir)
    assert torch.load(local / "weights.pt", weights_only=True)  # plain tensors


# -- system metrics --------------------------------------------------------------------------
def test_system_metrics_are_sampled_on_request(results_dir: Path, data_dir: Path) -> None:
    common = ["--models", "lstm", "--tasks", COPY, "--profile", "tiny", "--no-baselines",
              "--set", "budget.max_steps=150", "--set", "budget.max_epochs=150", "--set", "budget.val_every_steps=50",
              "--set", "model.hidden_size=8"]  # training lasts several sampling intervals
    assert bench("run", *common, "--system-metrics", "0.2", results=results_dir, data_dir=data_dir) == 0
    assert bench("run", *common, "--seeds", "1", results=results_dir, data_dir=data_dir) == 0
    client = client_of(results_dir)
    runs = {int(r.data.tags["seed"]): r for r in
            client.search_runs([client.get_experiment_by_name("seqbench/copy").experiment_id])}
    sampled = client.get_metric_history(runs[0].info.run_id, "system/cpu_utilization_percentage")
    assert sampled, sorted(runs[0].data.metrics)
    assert all(0 <= m.value <= 100 * (torch.get_num_threads() + 64) for m in sampled)
    assert "system/system_memory_usage_megabytes" in runs[0].data.metrics
    assert not [k for k in runs[1].data.metrics if k.startswith("system/")]  # off unless asked


@pytest.mark.parametrize("value", ["0", "-1", "abc", "inf"])
def test_a_bad_sampling_interval_is_refused(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--models", "lstm", "--tasks", "airline", "--system-metrics", value])
    assert exit_info.value.code == 2
    assert "number of seconds" in capsys.readouterr().err


# -- bench ui's links ------------------------------------------------------------------------
def test_ui_links_per_task_and_a_store_it_cannot_write(results_dir: Path, data_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """bench ui saves each task's view and links to it; where the store refuses writes, the
    links carry the same filter and sort as URL parameters instead (and bench ui still starts)."""
    import urllib.parse

    from bench.ui import LEADERBOARD_RUNS, VIEW_TAG, prepare

    assert bench("run", "--models", "last-value", "--tasks", "airline", "--profile", "tiny",
                 results=results_dir, data_dir=data_dir) == 0
    assert bench("run", "--models", "last-value", "--tasks", "airline", "--profile", "tiny", "--seeds", "1",
                 "--sweep", "second", results=results_dir, data_dir=data_dir) == 0
    tracker = Tracker(default_tracking_uri(results_dir), results_dir)
    exp = tracker.client.get_experiment_by_name("seqbench/airline")
    tracker.client.delete_experiment_tag(exp.experiment_id, KIND_TAG)

    (links,) = prepare(tracker, "http://h:1")
    exp = tracker.client.get_experiment(exp.experiment_id)
    assert exp.tags[KIND_TAG] == TRAINING_KIND and VIEW_TAG in exp.tags
    view = json.loads(exp.tags[VIEW_TAG])
    state = json.loads(view["state"])
    assert state["orderByKey"] == "metrics.`test/mase`" and state["orderByAsc"] is True
    assert state["searchFilter"] == LEADERBOARD_RUNS
    assert {"tags.`model`", "tags.`seed`", "metrics.`test/mase`"} <= set(state["selectedColumns"])
    assert links.runs_url == (f"http://h:1/#/experiments/{exp.experiment_id}/runs?"
                              "viewStateShareKey=seqbench-leaderboard&workflowType=machine_learning")
    assert (links.task, links.finished, links.sweep, links.compared) == ("airline", 6, "second", 3)  # + baselines
    second = tracker.client.search_runs([exp.experiment_id], filter_string="tags.sweep_id = 'second'")
    query = urllib.parse.parse_qs(links.compare_url.split("?", 1)[1])
    assert sorted(json.loads(query["runs"][0])) == sorted(r.info.run_id for r in second)
    assert json.loads(query["experiments"][0]) == [exp.experiment_id]

    # A store that refuses writes, and holds no saved view yet: whether the kinds are all set
    # already (nothing to write but the view) or not.
    tracker.client.delete_experiment_tag(exp.experiment_id, VIEW_TAG)

    def refuse(*args: Any) -> None:
        raise PermissionError("read-only")

    monkeypatch.setattr(tracker, "set_experiment_tag", refuse)
    for _ in range(2):
        (links,) = prepare(tracker, "http://h:1")
        query = urllib.parse.parse_qs(links.runs_url.split("?", 1)[1])
        assert query == {"searchFilter": [LEADERBOARD_RUNS], "orderByKey": ["metrics.`test/mase`"],
                         "orderByAsc": ["true"], "workflowType": ["machine_learning"]}
        assert links.compare_url and VIEW_TAG not in tracker.client.get_experiment(exp.experiment_id).tags
        monkeypatch.setattr(tracker, "mark_training_experiments", refuse)


GENERATED = ["listops", "selective-copy", "assoc-recall", "seq-pixels:permuted", "moving-shapes"]


@pytest.mark.slow
def test_a_generated_tasks_data_is_made_again_from_the_store_alone(results_dir: Path, data_dir: Path) -> None:
    """The long-range generators: the run's params and its dataset sources hold everything that
    made its data; the task built from them alone gives splits with the recorded digests."""
    tasks = ",".join(name + "".join(f":{k}={v}" for k, v in SMALL_TASK_PARAMS.get(name, {}).items())
                     for name in GENERATED)
    assert bench("run", "--models", "lstm", "--tasks", tasks, "--profile", "tiny", "--seeds", "3", "--no-baselines",
                 "--set", "model.hidden_size=8", results=results_dir, data_dir=data_dir) == 0
    client = client_of(results_dir)
    for name in GENERATED:
        task = name.split(":")[0]
        (run,) = client.search_runs([client.get_experiment_by_name(f"seqbench/{task}").experiment_id])
        inputs = inputs_of(run)
        source = json.loads(inputs["test"].source)
        cls = get_task(task)
        assert source["generator"].endswith("." + cls.__qualname__) and source["version"] == cls.version
        # the params as recorded (MLflow's strings) agree with the generator's
        recorded = {k.removeprefix("task."): v for k, v in run.data.params.items() if k.startswith("task.")}
        assert recorded == {k: str(v) for k, v in source["params"].items()}
        again = cls(cls.make_params(**source["params"]), data_dir, int(run.data.params["seed"])).setup()
        for context, split in (("train", again.train), ("validation", again.val), ("test", again.test)):
            assert inputs[context].digest == content_digest(split), (task, context)
