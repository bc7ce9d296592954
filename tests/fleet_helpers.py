"""A real PostgreSQL for the fleet tests: a throwaway server started from the installed server
binaries (Debian's /usr/lib/postgresql/<version>/bin) in a temporary folder, on a free loopback
port, and a fresh database per test (pytest-postgresql's DatabaseJanitor). initdb refuses to run
as root, so as root the server runs as the `postgres` system user (or `nobody`) through runuser.
Where none of this is possible the PostgreSQL half of the tests skips, saying why."""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_USER = "edgeopt"
_counter = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin() -> Path | None:
    """The newest installed server binaries (EDGEOPT_PG_BIN overrides)."""
    if os.environ.get("EDGEOPT_PG_BIN"):
        return Path(os.environ["EDGEOPT_PG_BIN"])
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    """initdb + pg_ctl start in a temporary folder; stop() removes everything."""

    def __init__(self) -> None:
        bin_dir = _pg_bin()
        if bin_dir is None or not (bin_dir / "pg_ctl").is_file():
            raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql package")
        self.prefix: list[str] = []
        self.folder = Path(tempfile.mkdtemp(prefix="edgeopt-pg-"))
        if os.geteuid() == 0:  # initdb and postgres refuse root: run them as an unprivileged system user
            runuser = shutil.which("runuser")
            user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
            if runuser is None or user is None:
                raise RuntimeError("running as root without runuser or an unprivileged user (postgres, nobody) for initdb")
            entry = pwd.getpwnam(user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
            self.prefix = [runuser, "-u", user, "--"]
        self.bin = bin_dir
        self.data = self.folder / "data"
        self.port = free_port()
        try:
            self._run("initdb", "-D", str(self.data), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
            options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-o", options, "-w", "-t", "120",
                      "start")
        except BaseException:
            self.stop()
            raise

    def _run(self, tool: str, *args: str) -> None:
        proc = subprocess.run([*self.prefix, str(self.bin / tool), *args], capture_output=True, text=True, timeout=180,
                              cwd=self.folder)
        if proc.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text()[-1500:] if log.is_file() else ""
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]} {tail}")

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{dbname}"

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"PostgreSQL cannot start here: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the test server, dropped afterwards."""
    from pytest_postgresql.janitor import DatabaseJanitor

    name = f"fleet_{os.getpid()}_{next(_counter)}"
    with DatabaseJanitor(user=PG_USER, host="127.0.0.1", port=postgres_server.port, dbname=name):
        yield postgres_server.url(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same tests on both backends: SQLite in a file, and PostgreSQL for real."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    return str(request.getfixturevalue("postgres_url"))


def enroll_device(repo: Path, device_id: str, key_file: Path, db: str | None = None) -> None:
    """What an operator does with 'edgeopt fleet enroll DEVICE --out KEY': a key for the device, its
    public half in the fleet database."""
    import datetime as dt

    from edgeopt.fleet.auth import generate_device_key, parse_public_key
    from edgeopt.fleet.store import open_store

    with open_store(repo, db) as store:
        store.enroll(device_id, parse_public_key(generate_device_key(key_file)), dt.datetime.now(dt.UTC))
