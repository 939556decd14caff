"""Shared fixtures: where the real datasets are, scratch results directories, reading runs
back from an MLflow store, and registering a temporary model or task for one test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Ray (the --ray tests) binds every service to loopback with this, in this process and the
# processes it starts; it is read when ray is first imported.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT / ".." / "shared" / "data"

# Small task parameters that keep every test fast.
SMALL_TASK_PARAMS: dict[str, dict[str, Any]] = {
    "copy": {"delay": 5, "n_train": 64, "n_val": 32, "n_test": 32},
    "adding": {"length": 10, "n_train": 64, "n_val": 32, "n_test": 32},
    "lra-text": {"max_len": 48},
    "listops": {"min_length": 10, "max_length": 60, "n_train": 64, "n_val": 32, "n_test": 32},
    "selective-copy": {"length": 12, "n_symbols": 3, "n_train": 64, "n_val": 32, "n_test": 32},
    "assoc-recall": {"n_pairs": 4, "length": 16, "n_train": 64, "n_val": 32, "n_test": 32},
    "moving-shapes": {"size": 8, "input_frames": 4, "predict_frames": 2, "n_train": 64, "n_val": 32, "n_test": 32},
}


def pytest_configure(config: pytest.Config) -> None:
    # Lightning's own deprecation noise (bench.runner filters it too, but pytest resets filters per test).
    config.addinivalue_line("filterwarnings", "ignore:.*LeafSpec.*")


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the catalog cache out of ~/.cache, never download, and ignore the caller's
    tracking or results settings (every test names its own results directory)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEQBENCH_CACHE_DIR", str(tmp_path_factory.mktemp("seqbench-cache")))
        mp.setenv("SEQBENCH_OFFLINE", "1")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        for var in ("MLFLOW_TRACKING_URI", "SEQBENCH_RESULTS", "SEQBENCH_STORAGE"):
            mp.delenv(var, raising=False)
        yield


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared, read-only datasets ($SEQBENCH_DATA_DIR, else ../shared/data next to the repo)."""
    path = Path(os.environ.get("SEQBENCH_DATA_DIR") or DEFAULT_DATA_DIR).expanduser().resolve()
    assert path.is_dir(), f"dataset directory {path} does not exist; set SEQBENCH_DATA_DIR"
    return path


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    """A results directory that does not exist yet (so a test can check nothing was written)."""
    return tmp_path / "results"


@pytest.fixture
def empty_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "no-data"
    path.mkdir()
    monkeypatch.setenv("SEQBENCH_OFFLINE", "1")
    return path


def read_runs(results: Path) -> list[Any]:
    """Every run in the SQLite MLflow store under ``results`` (all seqbench experiments)."""
    from mlflow.tracking import MlflowClient

    from bench.tracking import EXPERIMENT_PREFIX, default_tracking_uri

    db = results / "mlflow.db"
    assert db.is_file(), f"no MLflow store at {db}"
    client = MlflowClient(tracking_uri=default_tracking_uri(results))
    ids = [e.experiment_id for e in client.search_experiments() if e.name.startswith(EXPERIMENT_PREFIX)]
    if not ids:
        return []
    return list(client.search_runs(ids, max_results=10_000))


@pytest.fixture
def mlflow_runs() -> Callable[[Path], list[Any]]:
    return read_runs


@pytest.fixture
def register() -> Iterator[Callable[[Any, str, Any], Any]]:
    """``register(MODELS, "name", spec)`` / ``register(TASKS, "name", cls)``: added for one test only."""
    added: list[tuple[Any, str]] = []

    def _register(registry: Any, name: str, item: Any) -> Any:
        registry.items  # noqa: B018 - discover the real entries first, so a clash shows at once
        registry.add(name, item)
        added.append((registry, name))
        return item

    try:
        yield _register
    finally:
        for registry, name in reversed(added):
            registry.remove(name)


@pytest.fixture
def make_config() -> Callable[..., Any]:
    """One fully resolved RunConfig, through the same resolution as the CLI (live registries,
    so temporarily registered models and tasks work too)."""
    from bench.catalog import Request, resolve
    from bench.config import TaskRef

    def make(model_name: str, task: str, task_params: dict[str, Any] | None = None, *, seed: int = 0,
             profile: str = "tiny", model_overrides: dict[str, Any] | None = None,
             train_overrides: dict[str, Any] | None = None,
             budget_overrides: dict[str, Any] | None = None) -> Any:
        request = Request(
            models=[model_name],
            tasks=[TaskRef(task, "", dict(task_params or {}))],
            seeds=[seed],
            profile=profile,
            model_overrides=dict(model_overrides or {}),
            train_overrides=dict(train_overrides or {}),
            budget_overrides=dict(budget_overrides or {}),
        )
        (config,) = resolve(request)
        return config

    return make


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database on loopback: $SEQBENCH_TEST_POSTGRES (CI starts one), else a
    throwaway server started here from the pgserver wheel's binaries (tests/pgcluster.py)."""
    if os.environ.get("SEQBENCH_TEST_POSTGRES"):
        yield os.environ["SEQBENCH_TEST_POSTGRES"]
        return
    import tempfile

    from tests import pgcluster

    where = Path(tempfile.mkdtemp(prefix="seqbench-pg-"))
    try:
        yield pgcluster.start(where)
    finally:
        pgcluster.stop(where)


def new_database(url: str, name: str) -> str:
    """A fresh database on the server of ``url``; its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name
