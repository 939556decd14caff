"""MLflow tracking: one experiment per task, one run per (model, task variant, seed);
``bench scale`` adds the experiment ``seqbench/scale``, one run per measured point.

Metric keys follow one scheme so runs of different models compare in the UI:
``val/<metric>``, ``test/<metric>``, ``train/loss``, ``perf/<meter>``, ``model/params``.
The default store is embedded (SQLite under ``results/``): nothing to start, and
``mlflow ui --backend-store-uri sqlite:///results/mlflow.db`` opens it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO lines about creating tables

EXPERIMENT_PREFIX = "seqbench/"


def default_tracking_uri(results_dir: Path) -> str:
    return f"sqlite:///{(results_dir / 'mlflow.db').resolve()}"


class Tracker:
    def __init__(self, tracking_uri: str, results_dir: Path) -> None:
        self.uri = tracking_uri
        self.local = tracking_uri.startswith("sqlite:") or tracking_uri.startswith("file:")
        # A server stores artifacts itself; with a database URI (SQLite, PostgreSQL, ...) the
        # client writes them, under results/.
        self.local_artifacts = not tracking_uri.startswith(("http:", "https:", "databricks"))
        self.artifact_root = (results_dir / "mlartifacts").resolve()
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._experiments: dict[str, str] = {}

    def experiment_id(self, task: str) -> str:
        name = EXPERIMENT_PREFIX + task
        if name not in self._experiments:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                location = (self.artifact_root / task).as_uri() if self.local_artifacts else None
                try:
                    exp_id = self.client.create_experiment(name, artifact_location=location)
                except MlflowException:  # another worker created it a moment ago
                    exp = self.client.get_experiment_by_name(name)
                    if exp is None:
                        raise
                    exp_id = exp.experiment_id
            else:
                exp_id = exp.experiment_id
            self._experiments[name] = exp_id
        return self._experiments[name]

    def find_finished(self, task: str, cache_key: str) -> Any | None:
        """A finished run with this cache key (the configuration, the kind of device and the
        version of the code: see ``Runner.run``), if one was recorded (tuning trials, which
        skip the test split, do not count)."""
        runs = self.client.search_runs(
            [self.experiment_id(task)],
            filter_string=f"tags.cache_key = '{cache_key}' and attributes.status = 'FINISHED'",
            max_results=50,
        )
        return next((r for r in runs if r.data.tags.get("kind", "run") == "run"), None)

    def search(self, task: str, filter_string: str) -> list[Any]:
        return self.client.search_runs([self.experiment_id(task)], filter_string=filter_string, max_results=1000)

    def delete(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    def set_status(self, run_id: str, status: str) -> None:
        """Mark a run RUNNING again (a study continued), or ended."""
        if status == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.client.set_terminated(run_id, status=status)

    def start(self, task: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id(task), run_name=run_name, tags=tags)
        run_id = run.info.run_id
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[i : i + 100])
        return run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def log_history(self, run_id: str, history: list[tuple[int, dict[str, float]]]) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for step, values in history for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_figure(self, run_id: str, figure: Any, name: str) -> None:
        self.client.log_figure(run_id, figure, name)

    def log_dict(self, run_id: str, data: dict[str, Any], name: str) -> None:
        self.client.log_dict(run_id, data, name)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_artifact(self, run_id: str, path: Path) -> None:
        """A file written elsewhere (a plot, a table), under its own name."""
        self.client.log_artifact(run_id, str(path))

    def end(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)
