"""A real redis-server on loopback for the tests (own port, own directory, no persistence),
and `python -m model_worker serve` processes pointed at it.

CI installs redis-server from Debian's packages (.ci/run) and sets WAKERU_REQUIRE_SERVICES=1,
so there a missing server fails the run instead of skipping these tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import REPO


def _missing(what: str) -> None:
    message = f"{what} is not installed (apt-get install redis-server; .ci/run does)"
    if os.environ.get("WAKERU_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, directory: Path, *extra_args: str):
        self.directory = directory
        self.extra_args = extra_args  # more redis-server options, e.g. ("--maxmemory", "1gb")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server") or shutil.which("valkey-server")
        if binary is None:
            _missing("redis-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client().ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {(self.directory / 'redis.log').read_text()}")
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """The shared server, emptied for this test."""
    redis_server.client().flushall()
    return redis_server.url


class WorkerProcess:
    """`python -m model_worker serve` as a real subprocess; with worker="stub", the same command line
    and Redis consumer around the torch-free stand-in engine of tests/support/stub_worker.py."""

    def __init__(
        self,
        model: Path,
        redis_url: str,
        workdir: Path,
        name: str = "worker",
        *,
        worker: str = "real",
        **overrides: str,
    ):
        assert worker in ("real", "stub"), worker
        self.command = [
            sys.executable,
            "-m",
            "tests.support.stub_worker" if worker == "stub" else "model_worker",
            "serve",
        ]
        self.log_path = workdir / f"{name}.log"
        self.env = {
            **os.environ,
            "WAKERU_MODEL__ID": str(model),
            "WAKERU_MODEL__DTYPE": "float32",
            "WAKERU_WORKER__REDIS_URL": redis_url,
            "WAKERU_WORKER__MAX_WAIT_MS": "2",
            "WAKERU_WORKER__DECODE_THREADS": "1",
            "PYTHONPATH": str(REPO),
            # quick takeovers and heartbeats, so failover tests take seconds
            "WAKERU_WORKER__CLAIM_IDLE_S": "2",
            "WAKERU_WORKER__HEARTBEAT_S": "0.2",
            **overrides,
            # fault injection (WAKERU_FAULTS) also needs its explicit switch
            **({"WAKERU_ALLOW_FAULTS": "1"} if "WAKERU_FAULTS" in overrides else {}),
        }
        self.workdir = workdir
        self.process: subprocess.Popen | None = None
        self._terminated = False

    def start(self) -> WorkerProcess:
        self._terminated = False
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command, cwd=self.workdir, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> None:
        """SIGTERM once (a second one would hurry its shutdown): stop several workers at once with
        terminate() on each, then stop() on each."""
        if self.process is not None and self.process.poll() is None and not self._terminated:
            self._terminated = True
            self.process.terminate()

    def stop(self, timeout: float = 30) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return self.process.returncode


def wait_for_workers(
    client: redis.Redis, prefix: str, count: int, timeout: float = 120, processes: tuple[WorkerProcess, ...] = ()
) -> list[bytes]:
    """Until `count` heartbeat keys exist; fails early with the log of a worker that died."""
    deadline = time.monotonic() + timeout
    while True:
        keys = list(client.scan_iter(match=f"{prefix}:worker:*"))
        if len(keys) >= count:
            return keys
        for p in processes:
            if p.process.poll() is not None:
                raise AssertionError(f"worker exited with {p.process.returncode}:\n{p.log()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(keys)} of {count} workers alive after {timeout} s")
        time.sleep(0.1)
