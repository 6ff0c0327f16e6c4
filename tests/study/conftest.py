"""A private PostgreSQL 15 server for the study tests: initdb and pg_ctl in a temporary
folder, on a free port of 127.0.0.1, stopped at the end. Run as a non-root user (PostgreSQL
refuses root): the `pgtest` user, created with useradd when missing. ENGINE_TEST_POSTGRES_URL
names a server to use instead. Skipped only when the PostgreSQL binaries are absent."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

BIN = Path(os.environ.get("ENGINE_TEST_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
USER = "pgtest"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_user(cmd: list[str]) -> list[str]:
    """`cmd` as the server's user: root runs it through runuser as `pgtest`."""
    if os.getuid() != 0:
        return cmd
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", USER], check=True)
    return ["runuser", "-u", USER, "--", *cmd]


@pytest.fixture(scope="session")
def postgres_server():
    """The base URL (without a database) of a running PostgreSQL server."""
    if os.environ.get("ENGINE_TEST_POSTGRES_URL"):
        yield os.environ["ENGINE_TEST_POSTGRES_URL"].rstrip("/")
        return
    if not (BIN / "initdb").is_file():
        pytest.skip(f"PostgreSQL binaries not found in {BIN}")
    folder = Path(tempfile.mkdtemp(prefix="engine-pg-"))
    data, port = folder / "data", _free_port()
    if os.getuid() == 0:
        _as_user(["true"])
        shutil.chown(folder, USER)
    folder.chmod(0o755)

    def run(*cmd: str) -> None:
        subprocess.run(_as_user(list(cmd)), check=True, capture_output=True, text=True,
                       timeout=120)

    run(str(BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", USER, "--no-sync")
    run(str(BIN / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l", str(folder / "log"),
        "-o", f"-p {port} -k {folder} -h 127.0.0.1 -c fsync=off", "start")
    try:
        yield f"postgresql://{USER}@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_user([str(BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                                 "stop"]), capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A new, empty database on the test server."""
    import psycopg2
    name = f"study_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(f"{postgres_server}/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return f"{postgres_server}/{name}"
