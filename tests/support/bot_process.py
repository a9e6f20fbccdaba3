"""`python -m bot` as a real subprocess pointed at a FakeDiscord, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import REPO


class BotProcess:
    def __init__(self, fake, model: Path, workdir: Path, *, worker: str = "real", **overrides: str):
        """worker: "real" runs `python -m bot` with its model worker; "stub" runs the same bot with the
        torch-free stand-in worker of tests/support/stub_worker.py (`model` then only has to be a
        directory: see stub_worker.make_model_dir).

        The bot serves /healthz on a free loopback port (service.metrics_port), so `state()` sees a
        change at once instead of at the heartbeat file's next write (up to a second later);
        WAKERU_SERVICE__METRICS_PORT="0" keeps to the file (and `health` to the file's check)."""
        assert worker in ("real", "stub"), worker
        overrides.setdefault("WAKERU_SERVICE__METRICS_PORT", str(free_port()))
        self.fake = fake
        self.command = [sys.executable, "-m", "tests.support.stub_bot" if worker == "stub" else "bot"]
        self.workdir = workdir
        self.log_path = workdir / "bot.log"
        self.health = workdir / "health.json"
        self.env = {
            **os.environ,
            "DISCORD_TOKEN": fake.token,
            "WAKERU_DISCORD__API_BASE": fake.api_base,
            "WAKERU_DISCORD__GATEWAY_URL": fake.gateway_url,
            "WAKERU_DISCORD__MODERATOR_ROLE_IDS": "[]",
            "WAKERU_ATTACHMENTS__ALLOWED_HOSTS": '["127.0.0.1"]',
            "WAKERU_STORAGE__URL": f"sqlite:///{workdir}/wakeru.db",
            "WAKERU_STORAGE__HEALTH_FILE": str(self.health),
            "WAKERU_MODEL__ID": str(model),
            "WAKERU_MODEL__DTYPE": "float32",
            "WAKERU_WORKER__MAX_WAIT_MS": "2",
            "WAKERU_DISCORD__SAMPLES_DIR": str(REPO / "samples"),
            # flows post many images as one member; the reliability tests set limits of their own
            "WAKERU_LIMITS__USER_PER_MINUTE": "0",
            "WAKERU_LIMITS__CHANNEL_PER_MINUTE": "0",
            # the bot runs from workdir (so relative paths land there) but imports this checkout
            "PYTHONPATH": str(REPO),
            **overrides,
            # fault injection (WAKERU_FAULTS) also needs its explicit switch
            **({"WAKERU_ALLOW_FAULTS": "1"} if "WAKERU_FAULTS" in overrides else {}),
        }
        self.process: subprocess.Popen | None = None

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A one-shot command (`sync`, `health`) with the same environment."""
        return subprocess.run(
            [sys.executable, "-m", "bot", *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, wait: bool = True) -> BotProcess:
        self.health.unlink(missing_ok=True)
        log = open(self.log_path, "a")
        self.process = subprocess.Popen(
            self.command, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        if wait:
            self.wait_ready()
        return self

    def state(self) -> dict:
        """The bot's live /healthz when it serves one (service.metrics_port), else its heartbeat file
        (rewritten at most once a second)."""
        port = self.env.get("WAKERU_SERVICE__METRICS_PORT")
        if port and port != "0":
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                return json.loads(e.read())
            except (OSError, ValueError):
                pass
        try:
            return json.loads(self.health.read_text())
        except (OSError, ValueError):
            return {}

    def wait_ready(self, timeout: float = 150) -> None:
        """Gateway session up and the worker's model loaded."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise AssertionError(f"the bot exited with {self.process.returncode}:\n{self.log()}")
            try:  # in short slices, so a bot that exits meanwhile is noticed at once
                self.fake.wait_ready(timeout=min(1.0, max(0.1, end - time.monotonic())))
            except TimeoutError:
                continue
            if self.state().get("worker") == "ready":
                return
            if self.state().get("worker") == "failed":
                raise AssertionError(f"the worker failed:\n{self.log()}")
            time.sleep(0.2)
        raise AssertionError(f"the bot did not become ready:\n{self.log()}")

    def stop(self, timeout: float = 30) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the bot did not stop on SIGTERM:\n{self.log()}") from None

    def worker_pid(self) -> int | None:
        return self.state().get("worker_pid")

    def wait_state(self, predicate, timeout: float = 60, what: str = "a state") -> dict:
        """Poll the heartbeat file (rewritten within a second of any change)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            state = self.state()
            if state and predicate(state):
                return state
            time.sleep(0.05)
        raise AssertionError(f"the bot did not reach {what}: {self.state()}\n{self.log()}")

    def wait_serving(self, timeout: float = 150) -> dict:
        """Like ``wait_ready``, for a bot that shares the fake with other bots (each running a slice of
        the shards): its own state says connected (every shard of this process ready) and worker ready."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise AssertionError(f"the bot exited with {self.process.returncode}:\n{self.log()}")
            state = self.state()
            if state.get("worker") == "failed":
                raise AssertionError(f"the worker failed:\n{self.log()}")
            if state.get("connected") and state.get("worker") == "ready":
                return state
            time.sleep(0.2)
        raise AssertionError(f"the bot did not become ready: {self.state()}\n{self.log()}")

    def full_log(self) -> str:
        """The whole log (``log()`` keeps the tail, for failure messages)."""
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-6000:]
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_kib(pid: int) -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, in KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields


def sharded_bots(fake, model: Path, root: Path, shards=(0, 1), *, worker: str = "real", **overrides: str):
    """One guild, one token and one (not yet started) `python -m bot` per shard of len(shards), each
    process running only its own shard. Returns (guilds, tokens, bots), each keyed by shard id."""
    count = len(shards)
    guilds = {k: fake.add_guild(shard=k, shard_count=count) for k in shards}
    tokens = {k: fake.add_token(f"token-shard-{k}") for k in shards}
    bots = {}
    for k in shards:
        (root / f"shard{k}").mkdir()
        bots[k] = BotProcess(
            fake,
            model,
            root / f"shard{k}",
            worker=worker,
            DISCORD_TOKEN=tokens[k],
            WAKERU_DISCORD__SHARD_COUNT=str(count),
            WAKERU_DISCORD__SHARD_IDS=f"[{k}]",
            **overrides,
        )
    return guilds, tokens, bots
