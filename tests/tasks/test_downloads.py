"""Downloads over real HTTP from a server on loopback: a good file, a corrupted one, a
truncated transfer, a missing page and a closed port; and `bench data`."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tasks.data import ChecksumError, DataFile, MissingDataError, download, ensure

BODY = b"Month,Passengers\n1949-01,112\n1949-02,118\n" * 200
SHA = hashlib.sha256(BODY).hexdigest()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/good.csv":
            self._send(BODY, len(BODY))
        elif self.path == "/corrupt.csv":
            self._send(BODY.replace(b"112", b"113"), len(BODY))
        elif self.path == "/truncated.csv":
            self._send(BODY[:1000], len(BODY))  # says more than it sends, then closes
        else:
            self.send_error(404)

    def _send(self, body: bytes, length: int) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def file_at(url: str) -> DataFile:
    return DataFile("airline/airline-passengers.csv", SHA, url, dataset="Test series")


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_good_download_is_verified_and_put_in_place(server: str, tmp_path: Path) -> None:
    seen: list[tuple[int, int | None]] = []
    path = ensure(file_at(f"{server}/good.csv"), tmp_path, allow_download=True,
                  progress=lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "airline" / "airline-passengers.csv"
    assert path.read_bytes() == BODY
    assert leftovers(tmp_path) == ["airline/airline-passengers.csv"]  # no .part left behind
    assert seen and seen[-1] == (len(BODY), len(BODY))  # the progress callback saw every byte


def test_corrupted_download_is_refused_and_nothing_kept(server: str, tmp_path: Path) -> None:
    with pytest.raises(ChecksumError, match="sha256"):
        download(file_at(f"{server}/corrupt.csv"), tmp_path / "x.csv")
    assert leftovers(tmp_path) == []
    with pytest.raises(MissingDataError) as err:
        ensure(file_at(f"{server}/corrupt.csv"), tmp_path, allow_download=True)
    assert "download failed" in str(err.value) and "airline/airline-passengers.csv" in str(err.value)
    assert leftovers(tmp_path) == []


def test_truncated_transfer_leaves_no_file(server: str, tmp_path: Path) -> None:
    with pytest.raises(MissingDataError) as err:
        ensure(file_at(f"{server}/truncated.csv"), tmp_path, allow_download=True)
    assert "IncompleteRead" in str(err.value) or "expected" in str(err.value)
    assert leftovers(tmp_path) == []


def test_missing_page_and_closed_port_give_one_clear_message(server: str, tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match="404"):
        ensure(file_at(f"{server}/nothing-here.csv"), tmp_path, allow_download=True)
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(MissingDataError) as err:
        ensure(file_at(f"http://127.0.0.1:{port}/good.csv"), tmp_path, allow_download=True)
    message = str(err.value)
    assert "refused" in message.lower() and f"http://127.0.0.1:{port}/good.csv" in message
    assert str(tmp_path / "airline" / "airline-passengers.csv") in message  # where to put it by hand
    assert leftovers(tmp_path) == []


def test_a_failed_download_creates_no_directory(server: str, tmp_path: Path) -> None:
    """Nothing is written when a download fails: not ``<data-dir>/<dataset>/``, and not the data
    directory itself when it did not exist; what was there before stays."""
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/good.csv"
    data_dir = tmp_path / "new" / "data"
    for url in (f"{server}/nothing-here.csv", f"{server}/corrupt.csv", f"{server}/truncated.csv", closed):
        with pytest.raises(MissingDataError):
            ensure(file_at(url), data_dir, allow_download=True)
        assert list(tmp_path.iterdir()) == [], url
    mine = data_dir / "airline" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("kept")
    with pytest.raises(MissingDataError):
        ensure(file_at(f"{server}/corrupt.csv"), data_dir, allow_download=True)
    assert sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*")) == ["airline", "airline/notes.txt"]


def test_present_file_with_wrong_bytes_is_a_checksum_error(tmp_path: Path) -> None:
    target = tmp_path / "airline" / "airline-passengers.csv"
    target.parent.mkdir(parents=True)
    target.write_bytes(BODY + b"extra\n")
    with pytest.raises(ChecksumError, match="airline-passengers.csv"):
        ensure(file_at("http://127.0.0.1:9/unused"), tmp_path, allow_download=True)


def test_bench_data_lists_statuses(capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path) -> None:
    from bench.cli import main

    assert main(["data", "--data-dir", str(data_dir), "--tasks", "airline,agnews"]) == 0
    out = capsys.readouterr().out
    assert "airline/airline-passengers.csv" in out and "ag_news/train.csv" in out
    assert "present" in out and "missing" in out
    # --verify hashes the files; the missing AG News training file makes it exit 1
    assert main(["data", "--data-dir", str(data_dir), "--tasks", "airline,agnews", "--verify"]) == 1
    out = capsys.readouterr().out
    assert "verified" in out and "missing" in out
    assert main(["data", "--data-dir", str(data_dir), "--tasks", "airline,tweets", "--verify"]) == 0
    # offline, --fetch explains each missing file and exits 1 without writing anything
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "--data-dir", str(empty), "--tasks", "airline", "--fetch"]) == 1
    err = capsys.readouterr().err
    assert "airline/airline-passengers.csv" in err and "save it as" in err
    assert leftovers(empty) == []
