"""A throwaway PostgreSQL server on loopback, for the distributed tuning tests.

    python tests/pgcluster.py start DIR   # prints the URL of a fresh database
    python tests/pgcluster.py stop DIR

Uses the server binaries of Debian's ``postgresql`` package (``initdb``, ``pg_ctl``). The
server refuses to run as root, so as root it runs as the package's ``postgres`` user
(no runuser or su needed: subprocess switches user itself).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


def binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql "
                       "package (apt-get install postgresql)")


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """Run a server command; as root, as the postgres user (the server refuses root)."""
    if os.geteuid() == 0:
        kwargs.update(user="postgres", group="postgres", extra_groups=[])
    return subprocess.run(cmd, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(directory: Path) -> str:
    """Create a cluster in ``directory``, start it and return a URL for database 'seqbench'."""
    bin_dir = binaries()
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    data, sock = directory / "data", directory / "sock"
    sock.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
        shutil.chown(sock, "postgres")
    run: dict[str, Any] = dict(check=True, capture_output=True, text=True, timeout=120, cwd=directory)
    _run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"], **run)
    port = _free_port()
    options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(directory / "server.log"), "-w",
          "-t", "60", "start"], **run)
    (directory / "port").write_text(str(port))
    _run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "seqbench"], **run)
    return f"postgresql://postgres@127.0.0.1:{port}/seqbench"


def stop(directory: Path) -> None:
    data = directory.resolve() / "data"
    if data.is_dir():
        _run([str(binaries() / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
             timeout=60, cwd=directory)


if __name__ == "__main__":
    action, where = sys.argv[1], Path(sys.argv[2])
    try:
        if action == "start":
            print(start(where))
        else:
            stop(where)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or ""
        print(f"pgcluster: {e} {detail.strip()}", file=sys.stderr)
        sys.exit(1)
