"""A throwaway PostgreSQL server on loopback, for the distributed tuning tests.

    python tests/pgcluster.py start DIR   # prints the URL of a fresh database
    python tests/pgcluster.py stop DIR    # stops it and removes what start put in DIR

The server binaries (``initdb``, ``pg_ctl``, ``postgres``) are the ones the ``pgserver`` wheel
ships, which the test extra installs: no system PostgreSQL is needed. Only the binaries are
used; pgserver's own start-up would add a system user and widen the permissions of every
directory above the venv when run as root.

The server refuses to run as root, so as root it runs as ``nobody`` (subprocess switches user
itself), from a copy of the binaries inside DIR: the venv may lie where ``nobody`` cannot
reach it (a clone under /root).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

SERVER_USER = "nobody"  # as root; any user but root will do, and this one exists everywhere


def installed_binaries() -> Path:
    """The ``bin`` directory of the PostgreSQL build inside the installed pgserver package."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        raise RuntimeError("the pgserver package is missing: install the test extra "
                           "(pip install -c constraints.txt -e '.[test]'; scripts/test does)")
    return Path(spec.origin).parent / "pginstall" / "bin"


def _copy_binaries(directory: Path) -> Path:
    """Copy the server build into ``directory`` so that ``nobody`` can run it; its ``bin``.

    The layout is kept: the binaries find libpq through the rpath ``$ORIGIN/../../../pgserver.libs``
    and their ``lib``/``share`` directories relative to ``bin``.
    """
    package = installed_binaries().parent.parent  # site-packages/pgserver
    root = directory / "pg"
    shutil.copytree(package / "pginstall", root / "pgserver" / "pginstall",
                    ignore=shutil.ignore_patterns("include", "*.a", "pkgconfig"))
    shutil.copytree(package.parent / "pgserver.libs", root / "pgserver.libs")
    for path in [root, *root.rglob("*")]:  # readable (and, where the owner may, runnable) by all
        mode = path.stat().st_mode
        path.chmod(mode | (0o555 if path.is_dir() or mode & 0o100 else 0o444))
    return root / "pgserver" / "pginstall" / "bin"


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """Run a server command; as root, as ``nobody`` (the server refuses root)."""
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
    return subprocess.run(cmd, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin_dir(directory: Path) -> Path:
    copied = directory / "pg" / "pgserver" / "pginstall" / "bin"
    return copied if copied.is_dir() else installed_binaries()


def start(directory: Path) -> str:
    """Create a cluster in ``directory``, start it and return a URL for database 'seqbench'."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    bin_dir = _copy_binaries(directory) if os.geteuid() == 0 else installed_binaries()
    data, sock = directory / "data", directory / "sock"
    sock.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        for path in (directory, sock):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    run: dict[str, Any] = dict(check=True, capture_output=True, text=True, timeout=120, cwd=directory)
    _run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync",
          "--encoding=UTF8", "--locale=C"], **run)
    port = _free_port()
    options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(directory / "server.log"), "-w",
          "-t", "60", "start"], **run)
    _run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "seqbench"], **run)
    return f"postgresql://postgres@127.0.0.1:{port}/seqbench"


def stop(directory: Path) -> None:
    """Stop the server started in ``directory`` and remove the cluster (and ``directory`` if then empty)."""
    directory = directory.resolve()
    data = directory / "data"
    if (data / "postmaster.pid").is_file():
        _run([str(_bin_dir(directory) / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
             capture_output=True, timeout=60, cwd=directory)
    for name in ("data", "sock", "pg"):
        shutil.rmtree(directory / name, ignore_errors=True)
    (directory / "server.log").unlink(missing_ok=True)
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


if __name__ == "__main__":
    action, where = sys.argv[1], Path(sys.argv[2])
    try:
        if action == "start":
            print(start(where))
        else:
            stop(where)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or ""
        print(f"pgcluster: {e} {detail.strip()}", file=sys.stderr)
        sys.exit(1)
