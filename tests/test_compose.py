"""docker-compose.yml, checked without Docker: the services and their wiring, every WAKERU_*
variable against the real configuration model (with Compose's ${VAR:-default} / ${VAR:?error}
interpolation resolved as Compose does), the commented sharding example, .env.example, the
Dockerfile's stages (the slim `bot` without torch, the CUDA `worker`, the default bot-with-its-own-
worker image), and the worker's healthcheck run for real against redis-server and a
`python -m model_worker serve` process."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import REPO
from tests.support.redis_server import RedisServer, WorkerProcess, redis_server, redis_url, wait_for_workers  # noqa: F401
from wakeru.config import Config, load_config

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
IMAGE_SERVICES = ("bot", "worker")  # built from this repository's Dockerfile


# ---- Compose interpolation ------------------------------------------------------------------

_VARIABLE = re.compile(
    r"""\$(?:
      (?P<escaped>\$)
    | \{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}
    | (?P<named>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<invalid>)
)""",
    re.VERBOSE,
)


def dummy_value(name: str) -> str:
    """What a required variable (${NAME:?…}) stands for here: letters and digits, as .env.example asks."""
    return "dummy0" + re.sub(r"[^a-z0-9]", "", name.lower())


def interpolate(text: str, variables: Mapping[str, str], required: set[str] | None = None) -> str:
    """Compose's substitution: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error},
    ${VAR?error}, ${VAR:+alt}, ${VAR+alt}. A required variable that is not given takes
    dummy_value(name) (and is recorded in `required`); nested substitutions are not used here."""

    def substitute(m: re.Match) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("invalid") is not None:
            raise AssertionError(f"invalid $ in {text!r} (write $$ for a literal $)")
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg")
        value = variables.get(name)
        is_set = value is not None
        is_full = bool(value)
        if arg is not None and "$" in arg:
            raise AssertionError(f"nested substitution in {text!r}: extend this resolver")
        if op in (":-", "-"):
            return value if (is_full if op == ":-" else is_set) else arg
        if op in (":?", "?"):
            if is_full if op == ":?" else is_set:
                return value
            assert arg.strip(), f"${{{name}{op}}} in {text!r} should say what to set"
            if required is not None:
                required.add(name)
            return dummy_value(name)
        if op in (":+", "+"):
            return arg if (is_full if op == ":+" else is_set) else ""
        return value or ""

    return _VARIABLE.sub(substitute, text)


def interpolate_tree(node: Any, variables: Mapping[str, str], required: set[str] | None = None) -> Any:
    """Values only, as Compose does (keys are not interpolated)."""
    if isinstance(node, str):
        return interpolate(node, variables, required)
    if isinstance(node, list):
        return [interpolate_tree(v, variables, required) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, variables, required) for k, v in node.items()}
    return node


def test_interpolation_resolver():
    given = {"SET": "value", "EMPTY": ""}
    required: set[str] = set()
    assert interpolate("a-${SET}-$SET-$$SET", given) == "a-value-value-$SET"
    assert interpolate("${UNSET:-x} ${EMPTY:-x} ${EMPTY-x} ${SET:-x}", given) == "x x  value"
    assert interpolate("${UNSET:?set it} ${SET:?set it}", given, required) == "dummy0unset value"
    assert interpolate("${EMPTY:?set it}", given, required) == "dummy0empty"
    assert interpolate("${EMPTY?set it}", given, required) == ""
    assert interpolate("${SET:+alt}|${EMPTY:+alt}|${EMPTY+alt}", given) == "alt||alt"
    assert required == {"UNSET", "EMPTY"}
    with pytest.raises(AssertionError):
        interpolate("price: 5$", given)


# ---- The files ------------------------------------------------------------------------------


def _load(text: str, variables: Mapping[str, str] | None = None, required: set[str] | None = None) -> dict:
    raw = yaml.safe_load(text)
    return interpolate_tree(raw, variables or {}, required)


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def raw(compose_text) -> dict:
    """As written, before interpolation (anchors and merge keys resolved by YAML)."""
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="module")
def compose(compose_text) -> dict:
    """Interpolated with nothing set: required variables take dummy values."""
    return _load(compose_text)


@dataclass(frozen=True)
class Stage:
    """One FROM … [AS name] of the Dockerfile and its instructions, (KEYWORD, arguments) each."""

    name: str | None
    base: str
    instructions: tuple[tuple[str, str], ...]


def dockerfile_lines(text: str) -> list[str]:
    """The logical lines, as Docker reads them: a line ending in the escape character (\\) goes on
    with the next one (the escape and the newline removed); comment and blank lines are dropped,
    inside a continuation too."""
    lines: list[str] = []
    current: str | None = None
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        m = re.match(r"^(.*)\\[ \t]*$", raw)
        piece = m.group(1) if m else raw
        current = piece.lstrip() if current is None else current + piece
        if not m:
            lines.append(current.strip())
            current = None
    assert current is None, "the Dockerfile ends inside a continuation line"
    return lines


def dockerfile_stages() -> dict[str | None, Stage]:
    """Stage name → Stage, in Dockerfile order; the key None is the default (last) stage."""
    stages: list[Stage] = []
    for line in dockerfile_lines(DOCKERFILE.read_text(encoding="utf-8")):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            assert m, f"cannot read {line!r}"
            stages.append(Stage(m.group(2), m.group(1), ()))
        else:
            assert stages, f"{line!r} before the first FROM"
            last = stages[-1]
            stages[-1] = Stage(last.name, last.base, (*last.instructions, (keyword, args)))
    assert stages, "no FROM in the Dockerfile"
    named = {stage.name: stage for stage in stages if stage.name}
    assert len(named) == len([s for s in stages if s.name]), "two stages of one name"
    return {**named, None: stages[-1]}


def stage_chain(target: str | None = None) -> list[Stage]:
    """The stage and the stages it is built FROM, root first."""
    stages = dockerfile_stages()
    assert target in stages, f"the Dockerfile has no stage {target!r}: {[s for s in stages if s]}"
    chain = [stages[target]]
    while chain[0].base in stages and chain[0].base is not None:
        chain.insert(0, stages[chain[0].base])
    return chain


def stage_instructions(target: str | None, keyword: str) -> list[str]:
    """The arguments of every `keyword` instruction that goes into the target's image, in order."""
    return [args for stage in stage_chain(target) for kw, args in stage.instructions if kw == keyword]


def stage_exec_form(target: str | None, keyword: str) -> list[str]:
    """The effective (last) CMD or ENTRYPOINT of the target, which must be in exec form."""
    args = stage_instructions(target, keyword)
    assert args, f"stage {target!r} has no {keyword}"
    value = json.loads(args[-1])
    assert isinstance(value, list), f"{keyword} in exec form, so SIGTERM reaches Python rather than a shell"
    return value


def stage_healthcheck(target: str | None) -> tuple[dict[str, str], list[str]]:
    """The effective HEALTHCHECK of the target: its options and its exec-form command."""
    args = stage_instructions(target, "HEALTHCHECK")
    assert args, f"stage {target!r} has no HEALTHCHECK"
    m = re.fullmatch(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(\[.*\])", args[-1], re.S)
    assert m, f"HEALTHCHECK of {target!r} in exec form: {args[-1]!r}"
    options = dict(option[2:].split("=", 1) for option in m.group(1).split())
    return options, json.loads(m.group(2))


def dockerfile_env(target: str | None = None) -> dict[str, str]:
    """The ENV instructions of a Dockerfile stage (and of the stages it is built from): what every
    container of that image starts with. target None: the default (last) stage."""
    env: dict[str, str] = {}
    for args in stage_instructions(target, "ENV"):
        words = shlex.split(args, comments=False)
        if "=" not in words[0]:  # legacy form: ENV NAME value
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            name, _, value = word.partition("=")
            env[name] = value
    return env


def build_target(service: Mapping[str, Any]) -> str | None:
    """The Dockerfile stage a service builds (None: the default, last stage)."""
    build = service.get("build")
    assert build is not None, "built from this repository's Dockerfile"
    return None if isinstance(build, str) else build.get("target")


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (item.partition("=") for item in environment)
        environment = {name: (value if sep else None) for name, sep, value in pairs}
    env = {}
    for name, value in environment.items():
        assert value is None or isinstance(value, str), (
            f"{name}: write environment values as strings (YAML would turn {value!r} into {str(value)!r})"
        )
        if value is not None:  # a bare name would be taken from the host's environment
            env[name] = value
    return env


def container_env(service: Mapping[str, Any]) -> dict[str, str]:
    """The image's ENV (the service's build target), then the service's environment on top (as Docker does)."""
    return {**dockerfile_env(build_target(service)), **service_env(service)}


def container_config(service: Mapping[str, Any]) -> Config:
    # The image's WORKDIR /app holds config.yaml (COPY config.yaml ./), so load_config() reads it.
    return load_config(path=REPO / "config.yaml", env=container_env(service))


def duration_s(text: str) -> float:
    """Compose durations: 45s, 1m30s, 1h, 500ms, 2.5s."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def named_volumes(service: Mapping[str, Any]) -> dict[str, str]:
    """volume name → mount point, for the named volumes (not bind mounts) of a service."""
    out = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "volume" and volume.get("source"):
                out[volume["source"]] = volume["target"]
            continue
        source, _, rest = volume.partition(":")
        if rest and not source.startswith((".", "/", "~", "$")):
            out[source] = rest.split(":")[0]
    return out


def mounts(service: Mapping[str, Any]) -> list[str]:
    targets = []
    for volume in service.get("volumes") or []:
        targets.append(volume["target"] if isinstance(volume, dict) else volume.split(":")[1])
    return targets


# ---- Structure ------------------------------------------------------------------------------


def test_services_and_compose_v2_layout(raw):
    assert "version" not in raw, "Compose v2 ignores (and warns about) a top-level version:"
    assert {"redis", "postgres", "bot", "worker"} <= set(raw["services"])
    for name, service in raw["services"].items():
        assert "container_name" not in service, f"{name}: a fixed container_name stops --scale"


def test_bot_and_worker_build_their_targets_of_this_repository(compose):
    """The bot builds the slim `bot` stage (no torch), the worker the `worker` stage."""
    services = compose["services"]
    for name in IMAGE_SERVICES:
        build = services[name].get("build")
        assert isinstance(build, dict), f"{name}: build: with context and target"
        context = build.get("context", ".")
        dockerfile = build.get("dockerfile", "Dockerfile")
        assert (REPO / context / dockerfile).resolve() == DOCKERFILE.resolve(), (name, build)
        assert build.get("target") == name, f"{name} builds target {build.get('target')!r}"
        assert name in dockerfile_stages(), f"the Dockerfile has no stage {name!r}"
    images = [services[name].get("image") for name in IMAGE_SERVICES]
    # Two targets under one tag would overwrite each other on every build.
    assert None in images or len(set(images)) == len(images), images


def test_worker_reserves_an_nvidia_gpu_and_the_bot_none(compose):
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert len(gpus) == 1, devices
    gpu = gpus[0]
    assert ("count" in gpu) != ("device_ids" in gpu), "count and device_ids exclude each other"
    assert gpu.get("count") == 1 or gpu.get("device_ids"), gpu
    assert "deploy" not in compose["services"]["bot"], "the bot (transport redis) runs no model"


def test_worker_command_is_model_worker_serve(compose):
    from model_worker.cli import build_parser

    command = compose["services"]["worker"]["command"]
    assert isinstance(command, list), "exec form, so SIGTERM reaches Python rather than a shell"
    assert command[:3] == ["python", "-m", "model_worker"] and command[3] == "serve", command
    args = build_parser().parse_args(command[3:])  # the real CLI accepts it
    assert args.command == "serve"
    assert "command" not in compose["services"]["bot"], "the bot runs the image's CMD (python -m bot)"
    assert stage_exec_form("bot", "CMD") == ["python", "-m", "bot"]
    assert stage_exec_form("worker", "CMD") == command, "the worker image alone runs the same"


def test_redis_persists_the_stream(compose):
    redis = compose["services"]["redis"]
    assert redis["image"].split(":")[0] in ("redis", "valkey/valkey")
    command = redis["command"]
    command = command if isinstance(command, list) else shlex.split(command)
    assert command[command.index("--appendonly") + 1] == "yes", "queued requests must survive a restart"
    assert "/data" in mounts(redis)
    assert named_volumes(redis), "the append-only file lives in a named volume"


def test_redis_memory_is_bounded_and_a_full_redis_refuses_rather_than_evicts(compose, tmp_path):
    """The compose file's memory flags, given to a real redis-server: a bound, and noeviction (a full
    Redis refuses new writes, which the bots answer "busy", instead of dropping queued images)."""
    command = compose["services"]["redis"]["command"]
    command = command if isinstance(command, list) else shlex.split(command)
    flags = {command[i]: command[i + 1] for i in range(1, len(command) - 1, 2)}
    assert flags["--maxmemory-policy"] == "noeviction"
    server = RedisServer(
        tmp_path / "redis", "--maxmemory", flags["--maxmemory"], "--maxmemory-policy", flags["--maxmemory-policy"]
    ).start()
    try:
        client = server.client()
        maxmemory = int(client.config_get("maxmemory")["maxmemory"])
        assert 256 * 1024**2 <= maxmemory <= 64 * 1024**3, maxmemory  # set, and of a sensible size
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    finally:
        server.stop()


def test_postgres_service_matches_the_bot_storage_url(compose_text):
    compose = _load(compose_text, {"POSTGRES_PASSWORD": "s3cret0x"})
    postgres = compose["services"]["postgres"]
    # pgvector: the image index's vectors (the official postgres image has no pgvector)
    assert postgres["image"].startswith("pgvector/pgvector:pg")
    env = service_env(postgres)
    url = urlsplit(container_config(compose["services"]["bot"]).storage.url)
    assert url.scheme in ("postgresql", "postgres")
    assert url.hostname == "postgres" and (url.port or 5432) == 5432
    assert url.username == env["POSTGRES_USER"]
    assert url.password == env["POSTGRES_PASSWORD"] == "s3cret0x"
    assert url.path.lstrip("/") == env["POSTGRES_DB"]
    assert "/var/lib/postgresql/data" in mounts(postgres)


def test_databases_are_not_published_to_the_host(compose):
    for name in ("redis", "postgres"):
        assert not compose["services"][name].get("ports"), f"{name} must stay on the project network"
        assert compose["services"][name].get("network_mode") != "host"


def test_dependencies_wait_for_healthy_services(compose):
    services = compose["services"]
    for name, wanted in (("bot", {"redis", "postgres"}), ("worker", {"redis"})):
        depends = services[name]["depends_on"]
        assert isinstance(depends, dict), f"{name}: use the long form with condition: service_healthy"
        assert wanted <= set(depends), (name, depends)
        for dependency, spec in depends.items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert spec.get("condition") == "service_healthy", (name, dependency, spec)
            check = services[dependency].get("healthcheck") or {}
            assert check.get("test") and not check.get("disable"), f"{dependency} needs a healthcheck"


def test_healthchecks_of_redis_and_postgres(compose):
    redis = compose["services"]["redis"]["healthcheck"]["test"]
    assert redis[0] in ("CMD", "CMD-SHELL") and "redis-cli" in " ".join(redis) and "ping" in redis[-1]
    postgres = compose["services"]["postgres"]["healthcheck"]["test"]
    assert "pg_isready" in " ".join(postgres)


def test_named_volumes_are_declared(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for volume in named_volumes(service):
            assert volume in declared, f"{name} uses volume {volume!r}, not declared under volumes:"
            used.add(volume)
    assert declared <= used, f"declared but unused: {declared - used}"


def test_bot_keeps_its_heartbeat_and_the_worker_its_models_on_volumes(compose):
    services = compose["services"]
    bot = container_config(services["bot"])
    health_dir = str(Path(bot.storage.health_file).parent)
    assert health_dir in named_volumes(services["bot"]).values(), (bot.storage.health_file, services["bot"])
    hf_home = container_env(services["worker"])["HF_HOME"]
    assert hf_home in named_volumes(services["worker"]).values(), "downloaded models must outlive the container"


def test_stop_grace_covers_the_shutdown_grace(compose):
    for name in IMAGE_SERVICES:
        service = compose["services"][name]
        grace = container_config(service).service.shutdown_grace_s
        # the bot gives its own worker 15 s more; a redis worker flushes results for up to 10 s
        assert duration_s(service["stop_grace_period"]) >= grace + 15, (name, service.get("stop_grace_period"))
        signal = service.get("stop_signal", "SIGTERM")
        assert signal == "SIGTERM"


# ---- Configuration through the environment -------------------------------------------------


@pytest.mark.parametrize("name", IMAGE_SERVICES)
def test_every_wakeru_variable_is_a_valid_config_key(compose, name):
    env = service_env(compose["services"][name])
    assert any(key.startswith("WAKERU_") for key in env)
    for key in env:
        if key.startswith("WAKERU_"):
            section, sep, field = key[len("WAKERU_") :].lower().partition("__")
            assert sep and section in Config.model_fields, key
            assert field in Config.model_fields[section].annotation.model_fields, key
    container_config(compose["services"][name])  # raises ConfigError on any bad value


def test_bot_uses_redis_and_postgres(compose):
    config = container_config(compose["services"]["bot"])
    assert config.worker.transport == "redis"
    assert urlsplit(config.storage.url).scheme == "postgresql"
    assert urlsplit(config.worker.redis_url).hostname == "redis"
    # python -m bot health asks /healthz, which needs the port the Dockerfile sets
    assert config.service.metrics_port == 9464


def test_worker_and_bot_share_one_stream(compose):
    services = compose["services"]
    bot, worker = (container_config(services[name]).worker for name in ("bot", "worker"))
    url = urlsplit(worker.redis_url)
    assert url.hostname == "redis" and url.hostname in services
    assert (url.port or 6379) == 6379
    assert (worker.redis_url, worker.redis_prefix) == (bot.redis_url, bot.redis_prefix)
    assert container_config(services["worker"]).model.device == "auto"


def test_secrets_go_only_where_they_are_needed(raw):
    bot, worker = (service_env(raw["services"][name]) for name in ("bot", "worker"))
    assert re.fullmatch(r"\$\{DISCORD_TOKEN:\?.+\}", bot["DISCORD_TOKEN"]), "the bot must not start without a token"
    assert "DISCORD_TOKEN" not in worker
    assert "HF_TOKEN" in worker and "HF_TOKEN" not in bot
    assert re.fullmatch(r"\$\{HF_TOKEN:?-\}", worker["HF_TOKEN"]), "HF_TOKEN is optional"
    postgres = service_env(raw["services"]["postgres"])["POSTGRES_PASSWORD"]
    assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?.+\}", postgres), "no default password"


def test_env_example_lists_every_variable(compose_text):
    required: set[str] = set()
    _load(compose_text, {}, required)
    referenced = {
        m.group("braced") or m.group("named")
        for m in _VARIABLE.finditer(compose_text)
        if m.group("braced") or m.group("named")
    }
    example = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not NAME=value"
            example[name.strip()] = value
    assert required == {"DISCORD_TOKEN", "POSTGRES_PASSWORD"}
    assert referenced <= set(example), f"missing from .env.example: {referenced - set(example)}"
    assert not any(example.values()), ".env.example holds no secrets, only empty slots"
    # Copied unfilled, Compose refuses to start rather than run with an empty password or token.
    unfilled: set[str] = set()
    _load(compose_text, example, unfilled)
    assert unfilled == required


# ---- The sharding example ------------------------------------------------------------------


def uncomment_shard_example(text: str) -> str:
    """docker-compose.yml with the commented sharding example switched on, as its comments say:
    the two lines in bot's environment, the bot-shard1 service and its volume."""
    lines = text.splitlines()
    out, in_block, block_indent = [], False, 0
    for line in lines:
        m = re.match(r"^(\s*)# (\S.*)$", line)
        if m and re.match(r"(WAKERU_DISCORD__SHARD_\w+|bot-shard1(-data)?):", m.group(2)):
            out.append(m.group(1) + m.group(2))
            in_block = m.group(2) == "bot-shard1:"
            block_indent = len(m.group(1))
            continue
        if in_block:
            c = re.match(r"^(\s*)#( {2,}\S.*)$", line)
            if c and len(c.group(1)) == block_indent:
                out.append(c.group(1) + c.group(2)[1:])
                continue
            in_block = False
        out.append(line)
    return "\n".join(out) + "\n"


def test_sharding_example_is_valid_when_uncommented(compose_text, compose):
    assert "bot-shard1" not in compose["services"], "the example stays commented out"
    sharded = _load(uncomment_shard_example(compose_text))
    services = sharded["services"]
    assert "bot-shard1" in services
    bots = {name: container_config(services[name]) for name in ("bot", "bot-shard1")}
    counts = {config.discord.shard_count for config in bots.values()}
    assert counts == {2}, counts
    ids = [i for config in bots.values() for i in config.discord.shard_ids]
    assert sorted(ids) == [0, 1], "every shard exactly once"
    assert len({(c.storage.url, c.worker.redis_url, c.worker.redis_prefix) for c in bots.values()}) == 1
    shard = services["bot-shard1"]
    assert shard.get("build") == services["bot"]["build"] and shard["depends_on"] == services["bot"]["depends_on"]
    assert shard["stop_grace_period"] == services["bot"]["stop_grace_period"]
    # Each bot writes its own heartbeat file: no shared /data volume.
    assert not set(named_volumes(shard)) & set(named_volumes(services["bot"]))
    declared = set(sharded.get("volumes") or {})
    assert set(named_volumes(shard)) <= declared


# ---- The Dockerfile ------------------------------------------------------------------------


def test_dockerfile_copies_every_package_and_the_config():
    text = DOCKERFILE.read_text(encoding="utf-8")
    copied = set()
    for line in text.splitlines():
        words = line.split()
        if words and words[0].upper() == "COPY":
            copied.update(w.rstrip("/") for w in words[1:-1] if not w.startswith("--"))
    packages = {p.parent.name for p in REPO.glob("*/__init__.py") if p.parent.name != "tests"}
    assert {"wakeru", "model_worker", "bot"} <= packages
    assert packages <= copied, f"not copied into the image: {packages - copied}"
    assert {"pyproject.toml", "config.yaml"} <= copied
    assert dockerfile_env().get("WAKERU_SERVICE__METRICS_PORT") == "9464"
    assert "HF_HOME" in dockerfile_env()


def copied_into(target: str | None) -> set[str]:
    """The sources of every COPY that goes into the target's image."""
    copied = set()
    for args in stage_instructions(target, "COPY"):
        words = args.split()
        copied.update(w.rstrip("/") for w in words[:-1] if not w.startswith("--"))
    return copied


def pip_installs(target: str | None) -> list[str]:
    """What `pip install` is given in the RUN instructions of the target's image."""
    installs = []
    for args in stage_instructions(target, "RUN"):
        for m in re.finditer(r"pip install((?:\s+(?!&&|\|\||;)\S+)+)", args):
            installs += [w.strip("'\"") for w in m.group(1).split() if not w.startswith("-")]
    return installs


def installed_extras(target: str | None) -> set[str]:
    extras = set()
    for spec in pip_installs(target):
        m = re.fullmatch(r"\.\[([^\]]*)\]", spec)
        assert m or spec == ".", f"pip install {spec}: install the project with its extras, pinned in pyproject.toml"
        extras.update(e.strip() for e in (m.group(1).split(",") if m else []))
    return extras


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def pyproject_requirements(*extras: str) -> set[str]:
    project = pyproject()["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower().replace("_", "-") for r in requirements}


def test_bot_stage_installs_the_bot_extra_and_never_torch():
    chain = stage_chain("bot")
    assert not any(re.search(r"pytorch|cuda|nvidia", s.base, re.I) for s in chain), [s.base for s in chain]
    assert installed_extras("bot") == {"bot"}, pip_installs("bot")
    assert not any("torch" in spec or "transformers" in spec for spec in pip_installs("bot"))
    requirements = pyproject_requirements("bot")
    # the bot's side of the scale-out: Redis Streams, label sets in PostgreSQL, the shared config
    assert {"discord.py", "redis", "asyncpg", "pyyaml", "pydantic"} <= requirements, requirements
    assert not {"torch", "transformers"} & requirements
    copied = copied_into("bot")
    assert {"wakeru", "bot", "pyproject.toml", "config.yaml", "samples"} <= copied
    assert "model_worker" not in copied, "the bot image runs no model"
    env = dockerfile_env("bot")
    assert load_config(path=REPO / "config.yaml", env=env).worker.transport == "redis", (
        "without a model the bot image can only send its images to workers over Redis"
    )
    assert "HF_HOME" not in env


def test_worker_stage_installs_the_model_side_on_the_cuda_base():
    base = stage_chain("worker")[0].base
    assert base.startswith("pytorch/pytorch:") and "cuda" in base, base
    # Its torch must satisfy the worker extra's range, so pip keeps it instead of pulling CUDA wheels.
    from packaging.requirements import Requirement

    worker = pyproject()["project"]["optional-dependencies"]["worker"]
    torch = next(Requirement(r) for r in worker if Requirement(r).name == "torch")
    assert torch.specifier.contains(re.match(r"pytorch/pytorch:([\d.]+)", base).group(1)), (str(torch), base)
    # [bot] too: the default image runs the bot with this worker in one container.
    assert {"bot", "worker"} <= installed_extras("worker"), pip_installs("worker")
    assert {"wakeru", "bot", "model_worker", "config.yaml"} <= copied_into("worker")
    assert dockerfile_env("worker").get("HF_HOME") in stage_volumes("worker")
    assert "WAKERU_WORKER__TRANSPORT" not in dockerfile_env("worker"), "the default image is the local worker"


def stage_volumes(target: str | None) -> set[str]:
    volumes = set()
    for args in stage_instructions(target, "VOLUME"):
        volumes.update(json.loads(args) if args.startswith("[") else args.split())
    return volumes


def test_default_stage_runs_the_bot_with_a_local_worker():
    """`docker build -t wakeru .` then `docker run … wakeru`: one container, the bot spawning its worker."""
    assert dockerfile_stages()[None].name != "bot", "the default image holds the model worker too"
    assert stage_exec_form(None, "CMD") == ["python", "-m", "bot"]
    assert not stage_instructions(None, "ENTRYPOINT")
    assert {"bot", "worker"} <= installed_extras(None), pip_installs(None)
    assert {"wakeru", "bot", "model_worker"} <= copied_into(None)
    env = dockerfile_env(None)
    config = load_config(path=REPO / "config.yaml", env=env)
    assert config.worker.transport == "local", "the bot spawns its own model worker"
    assert config.service.metrics_port == 9464, "python -m bot health asks /healthz on this port"
    assert "9464" in " ".join(stage_instructions(None, "EXPOSE"))
    options, test = stage_healthcheck(None)
    assert test == ["python", "-m", "bot", "health"], test
    assert duration_s(options["start-period"]) >= 120, "the first start downloads the model"
    assert {"/data", "/cache/huggingface"} <= stage_volumes(None)
    assert str(Path(config.storage.health_file).parent) in stage_volumes(None)
    # sqlite:////data/wakeru.db: the label sets outlive the container
    assert config.storage.url.startswith("sqlite:////data/"), config.storage.url


@pytest.mark.parametrize("target", ["bot", "worker", None])
def test_every_stage_runs_as_a_user_and_stops_on_sigterm(target):
    users = stage_instructions(target, "USER")
    assert users and users[-1] not in ("root", "0"), (target, users)
    assert stage_instructions(target, "STOPSIGNAL")[-1:] == ["SIGTERM"], target
    assert stage_instructions(target, "WORKDIR")[-1:] == ["/app"], "load_config() reads ./config.yaml"
    env = dockerfile_env(target)
    assert str(Path(load_config(path=REPO / "config.yaml", env=env).storage.health_file).parent) in stage_volumes(
        target
    ), target
    for key in env:
        if key.startswith("WAKERU_"):
            section, sep, field = key[len("WAKERU_") :].lower().partition("__")
            assert sep and section in Config.model_fields, key
            assert field in Config.model_fields[section].annotation.model_fields, key


def test_bot_stage_health_check_asks_the_bot():
    options, test = stage_healthcheck("bot")
    assert test == ["python", "-m", "bot", "health"], test
    assert dockerfile_env("bot").get("WAKERU_SERVICE__METRICS_PORT") == "9464"
    assert "9464" in " ".join(stage_instructions("bot", "EXPOSE"))


def test_worker_stage_health_check_is_the_compose_one(compose):
    """The worker image's own HEALTHCHECK (for workers started without compose) is the heartbeat
    check that compose gives and test_worker_healthcheck_follows_its_own_heartbeat runs for real."""
    options, test = stage_healthcheck("worker")
    check = compose["services"]["worker"]["healthcheck"]
    assert test[:2] == check["test"][1:3] == ["python", "-c"], (test, check["test"])
    code = test[2]
    compile(code, "<worker HEALTHCHECK>", "exec")
    assert " ".join(code.split()) == " ".join(check["test"][3].split())
    for option in ("interval", "timeout", "start_period", "retries"):
        ours = options[option.replace("_", "-")]
        theirs = check[option]
        assert (int(ours) == theirs) if option == "retries" else (duration_s(ours) == duration_s(theirs)), option


# ---- The worker's healthcheck, run for real ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from model_worker.devtools.checkpoints import build

    return build("siglip", tmp_path_factory.mktemp("compose-model") / "siglip", "tiny")


def _healthcheck(compose: dict) -> tuple[list[str], float]:
    check = compose["services"]["worker"]["healthcheck"]
    test = check["test"]
    assert test[0] == "CMD" and test[1] == "python", test
    assert "bot health" not in " ".join(test), "the image's `python -m bot health` does not apply to the worker"
    assert duration_s(check["start_period"]) >= 120, "the first start downloads the model"
    return [sys.executable, *test[2:]], duration_s(check["timeout"])


def _run_check(argv: list[str], env: Mapping[str, str], timeout: float) -> subprocess.CompletedProcess:
    started = time.monotonic()
    done = subprocess.run(
        argv,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )
    assert time.monotonic() - started < timeout, f"the check took longer than its own timeout {timeout} s"
    return done


def test_worker_healthcheck_follows_its_own_heartbeat(compose, redis_url, tiny_model, tmp_path):
    argv, timeout = _healthcheck(compose)
    env = {k: v for k, v in service_env(compose["services"]["worker"]).items() if k.startswith("WAKERU_")}
    env["WAKERU_WORKER__REDIS_URL"] = redis_url
    prefix = env["WAKERU_WORKER__REDIS_PREFIX"]

    import redis

    client = redis.Redis.from_url(redis_url)
    # Another container's worker does not make this one healthy.
    client.set(f"{prefix}:worker:some-other-host-1-abcdef", "{}", px=60_000)
    assert _run_check(argv, env, timeout).returncode == 1

    worker = WorkerProcess(tiny_model, redis_url, tmp_path, **env).start()
    try:
        wait_for_workers(client, prefix, 2, timeout=120, processes=(worker,))
        done = _run_check(argv, env, timeout)
        assert done.returncode == 0, done.stderr
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    # A stopped worker deletes its heartbeat at once.
    assert _run_check(argv, env, timeout).returncode == 1


def test_worker_healthcheck_fails_without_redis(compose, tmp_path):
    from tests.support.redis_server import free_port

    argv, timeout = _healthcheck(compose)
    env = {"WAKERU_WORKER__REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    done = _run_check(argv, env, timeout)
    assert done.returncode == 1 and "ConnectionError" in done.stderr, done.stderr
