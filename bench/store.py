"""The results directory and the store files in it, checked before anything heavy loads.

Every check here costs microseconds and runs before torch, Lightning or MLflow are imported,
so a directory that cannot be used is named at once in one line, and nothing is written
when a command fails. ``file_lock`` serialises the first opening of a new SQLite store,
whose schema MLflow (or Optuna) creates on first contact: two processes creating it at once
would collide in the middle of the migrations.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.errors import BenchError

SQLITE_HEADER = b"SQLite format 3\x00"


def default_tracking_uri(results_dir: Path) -> str:
    return f"sqlite:///{(results_dir / 'mlflow.db').resolve()}"


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI (None for any other store)."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def check_results_dir(path: Path, must_exist: bool = False) -> None:
    """The results directory must be a writable directory, or one that can be created there
    (it is not created here: a command that fails later leaves nothing behind)."""
    if path.exists() and not path.is_dir():
        raise BenchError(f"Results directory {path} is not a directory: name another with --results")
    if not path.exists():
        if must_exist:
            raise BenchError(f"No results directory {path}: run `bench run` first, or name one with --results")
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is None or not parent.is_dir():
            raise BenchError(f"Cannot create the results directory {path}: {parent} is not a directory; "
                             "name another with --results")
        _writable(parent, f"Cannot create the results directory {path}: {parent} is not writable")
        return
    _writable(path, f"Results directory {path} is not writable")


def make_results_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"Cannot create the results directory {path}: {e.strerror}; "
                         "name another with --results") from None


def _writable(directory: Path, message: str) -> None:
    try:  # os.access says yes to root even where the file system or an immutable flag says no
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".seqbench-write-test-"):
            pass
    except OSError as e:
        raise BenchError(f"{message} ({e.strerror}); name another with --results") from None


def check_sqlite_file(path: Path, must_exist: bool) -> None:
    """A SQLite store file that exists must be one; a missing one is an error when
    ``must_exist`` (reading commands create nothing)."""
    if not path.exists():
        if must_exist:
            raise BenchError(f"No run store at {path}: run `bench run` first, or name one with --results "
                             "or --tracking-uri")
        return
    if not path.is_file():
        raise BenchError(f"The run store {path} is not a file: move it aside or name another with --results")
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as e:
        raise BenchError(f"Cannot read the run store {path}: {e.strerror}") from None
    if head and head != SQLITE_HEADER:  # an empty file is a new, empty database
        raise BenchError(f"The run store {path} is not a SQLite database (damaged or overwritten): move it "
                         "aside to start a new store, or name another with --results")


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (a SQLite store's first opening, or a claim).
    A lock file that cannot be written is locked read-only; where none can be made (a
    read-only directory), nothing can be created there either, and no lock is needed."""
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            yield
            return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
