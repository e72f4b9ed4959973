"""Archive integration fixtures: index back ends, including a real PostgreSQL server.

`postgres_server` (session) runs Debian's PostgreSQL binaries: initdb a throwaway cluster in a
temporary directory (as the `postgres` system user when we are root, since initdb refuses
root), start it listening on 127.0.0.1 only, on a free port, with password authentication,
and stop it when the session ends. Each xdist worker starts its own. Without the binaries the
fixture fails, never skips: the contract suite must run against both back ends.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

PG_BINARIES = "/usr/lib/postgresql/*/bin"
PG_USER = "pacsguard"


def _pg_bindir() -> Path:
    found = [p for p in Path("/").glob(PG_BINARIES.lstrip("/")) if (p / "pg_ctl").exists()]
    if not found:
        pytest.fail(
            f"PostgreSQL server binaries (initdb, pg_ctl) not found under {PG_BINARIES}: "
            "install Debian's package with `apt-get install -y postgresql` (./dev test does). "
            "The index contract suite runs against a real server and does not skip it.",
            pytrace=False,
        )

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name))

    return max(found, key=version)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class PostgresServer:
    port: int
    password: str

    def conninfo(self, database: str) -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={PG_USER} "
            f"password={self.password} dbname={database}"
        )

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{PG_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.conninfo("postgres"), autocommit=True)


class _Cluster:
    """initdb + pg_ctl in `base`, run as `postgres` when we are root."""

    def __init__(self, bindir: Path, base: Path) -> None:
        self.bindir = bindir
        self.base = base
        self.data = base / "data"
        self.as_root = os.geteuid() == 0

    def run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = self.base / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(
                f"{tool} failed ({done.returncode}): {done.stderr.strip()}\n{tail}", pytrace=False
            )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    cluster = _Cluster(_pg_bindir(), Path(tempfile.mkdtemp(prefix="pacsguard-pg-")))
    password = secrets.token_urlsafe(24)
    pwfile = cluster.base / "pwfile"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    if cluster.as_root:
        for path in (cluster.base, pwfile):
            shutil.chown(path, "postgres", "postgres")
    try:
        cluster.run(
            "initdb",
            f"--pgdata={cluster.data}",
            f"--username={PG_USER}",
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
        )
        pwfile.unlink()
        port = _free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {cluster.base} "
            "-c fsync=off -c full_page_writes=off -c max_connections=60"
        )
        cluster.run(
            "pg_ctl",
            f"--pgdata={cluster.data}",
            f"--log={cluster.base / 'server.log'}",
            f"--options={options}",
            "--wait",
            "--timeout=60",
            "start",
        )
        try:
            yield PostgresServer(port, password)
        finally:
            cluster.run("pg_ctl", f"--pgdata={cluster.data}", "--mode=fast", "--wait", "stop")
    finally:
        shutil.rmtree(cluster.base, ignore_errors=True)


@dataclass(frozen=True)
class PostgresDatabase:
    server: PostgresServer
    name: str

    @property
    def url(self) -> str:
        return self.server.url(self.name)

    def reset(self) -> None:
        """Empty the database: drop every table, the Alembic version table too."""
        with psycopg.connect(self.server.conninfo(self.name), autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")


@pytest.fixture(scope="session")
def postgres_database(postgres_server: PostgresServer) -> PostgresDatabase:
    """One database for the test session, emptied by each test that uses it."""
    name = "pacsguard_" + secrets.token_hex(4)
    with postgres_server.admin() as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return PostgresDatabase(postgres_server, name)


#: The SQLCipher key of the encrypted SQLite back end.
INDEX_KEY = bytes(range(32))


@dataclass(frozen=True)
class IndexTarget:
    """An empty index database: its URL and, for the encrypted SQLite back end, its key."""

    url: str
    key: bytes | None = None


@pytest.fixture(params=["sqlite", "sqlite-encrypted", "postgresql"])
def index_target(request: pytest.FixtureRequest, tmp_path: Path) -> IndexTarget:
    """An empty index database on each back end: SQLite, SQLite encrypted with SQLCipher (as
    the archive opens it by default), PostgreSQL."""
    if request.param == "sqlite":
        return IndexTarget(f"sqlite:///{tmp_path / 'index.db'}")
    if request.param == "sqlite-encrypted":
        return IndexTarget(f"sqlite:///{tmp_path / 'index.db'}", INDEX_KEY)
    database: PostgresDatabase = request.getfixturevalue("postgres_database")
    database.reset()
    return IndexTarget(database.url)


@pytest.fixture
def index_url(index_target: IndexTarget) -> str:
    return index_target.url
