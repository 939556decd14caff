"""Dataset files: where they live, checksum verification, and download from their source.

The data directory is ``--data-dir``, else ``$SEQBENCH_DATA_DIR``, else ``./data``.
A file that is missing is downloaded from its public source into that directory
(verified before it is moved into place); if that is impossible (offline, no write
access), one clear error names the file, the source and where to put it by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError

ENV_DATA_DIR = "SEQBENCH_DATA_DIR"
ENV_OFFLINE = "SEQBENCH_OFFLINE"  # set to 1 to never try a download
DOWNLOAD_TIMEOUT_S = 20.0


class MissingDataError(BenchError):
    pass


class ChecksumError(BenchError):
    pass


@dataclass(frozen=True)
class DataFile:
    path: str  # relative to the data directory, e.g. "airline/airline-passengers.csv"
    sha256: str  # "" where only an md5 is published
    url: str  # public source, pinned to a version where the host allows it
    dataset: str = ""  # a human name for messages, e.g. "Disaster tweets (Kaggle)"
    md5: str = ""
    how: str = ""  # when the source is not the file itself: how to make the file from it (no auto-download)

    @property
    def checksum(self) -> tuple[str, str]:
        return ("sha256", self.sha256) if self.sha256 else ("md5", self.md5)


def resolve_data_dir(explicit: str | Path | None = None) -> Path:
    return Path(explicit or os.environ.get(ENV_DATA_DIR) or "data").expanduser().resolve()


def digest_of(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_verified: dict[tuple[str, int, int], bool] = {}  # (path, size, mtime_ns) verified in this process


def verify(file: DataFile, path: Path) -> None:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _verified:
        return
    algorithm, expected = file.checksum
    got = digest_of(path, algorithm)
    if got != expected:
        raise ChecksumError(
            f"Checksum mismatch for {path}: expected {algorithm} {expected}, got {got}. "
            f"The file is corrupt or a different version; replace it with the one from {file.url}"
        )
    _verified[key] = True


def status(file: DataFile, data_dir: Path) -> str:
    """'verified', 'corrupt' or 'missing' (reads and hashes the file if present)."""
    path = data_dir / file.path
    if not path.is_file():
        return "missing"
    try:
        verify(file, path)
    except ChecksumError:
        return "corrupt"
    return "verified"


Progress = Callable[[int, int | None], None]  # (bytes so far, total bytes if known)
DOWNLOAD_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException)


def download(
    file: DataFile, target: Path, timeout: float = DOWNLOAD_TIMEOUT_S, progress: Progress | None = None
) -> None:
    """Fetch ``file.url`` to ``target``, verifying the checksum before moving it into place.

    The bytes go to ``target.part`` first, so an interrupted or truncated transfer never
    leaves a file that looks complete; a transfer shorter than its Content-Length raises.
    A download that fails leaves nothing behind: no file, and no directory it created."""
    created = make_dirs(target.parent)
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(file.url, timeout=timeout) as response, open(part, "wb") as out:
            total = response.length  # None when the server does not say
            done = 0
            while chunk := response.read(1 << 16):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            if total is not None and response.length:  # http.client counts down what is still owed
                raise http.client.IncompleteRead(b"", response.length)
        algorithm, expected = file.checksum
        got = digest_of(part, algorithm)
        if got != expected:
            raise ChecksumError(f"Downloaded {file.url} but its {algorithm} is {got}, expected {expected}; not used")
        part.replace(target)
    finally:
        part.unlink(missing_ok=True)
        if not target.is_file():
            remove_empty(created)


def make_dirs(path: Path) -> list[Path]:
    """Create ``path`` with its missing parents; return those it created, deepest first."""
    created = []
    missing = path
    while not missing.exists() and missing != missing.parent:
        created.append(missing)
        missing = missing.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        remove_empty(created)
        raise
    return created


def remove_empty(directories: list[Path]) -> None:
    """Remove ``directories`` (deepest first) while they are empty; one that another process
    filled meanwhile stays, with its parents."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            break


def ensure(
    file: DataFile, data_dir: Path, allow_download: bool | None = None, progress: Progress | None = None
) -> Path:
    """The verified path of ``file``, downloading it first if it is missing."""
    path = data_dir / file.path
    if not path.is_file():
        if allow_download is None:
            allow_download = os.environ.get(ENV_OFFLINE, "") in ("", "0")
        reason = "downloads are off (SEQBENCH_OFFLINE)" if not file.how else "it cannot be downloaded as is"
        if allow_download and not file.how:
            try:
                download(file, path, progress=progress)
            except (*DOWNLOAD_ERRORS, ChecksumError) as e:
                if isinstance(e, urllib.error.HTTPError):
                    cause: object = f"HTTP {e.code} {e.reason}"
                else:
                    cause = getattr(e, "reason", None) or e
                reason = f"download failed: {str(cause) or repr(cause)}"
        if not path.is_file():
            name = f"{file.dataset} file" if file.dataset else "Dataset file"
            get = f"Make it from {file.url}: {file.how}," if file.how else f"Get it from {file.url} and"
            raise MissingDataError(
                f"{name} '{file.path}' is missing from the data directory {data_dir} ({reason}). "
                f"{get} save it as {path} (or point --data-dir / ${ENV_DATA_DIR} at a directory that has it)."
            )
    verify(file, path)
    return path
