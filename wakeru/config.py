"""The one validated configuration: config.yaml, overridden by WAKERU_<SECTION>__<KEY> variables.

Lookup: an explicit path, else $WAKERU_CONFIG, else ./config.yaml if present, else
the defaults below (which match the shipped config.yaml). Every problem is reported
with the dotted key, what is wrong, and where the value came from.
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from .labels import LabelError, normalise_labels
from .templates import STANDARD, check_template, resolve_templates

ENV_PREFIX = "WAKERU_"
ENV_CONFIG_FILE = "WAKERU_CONFIG"
DEFAULT_FILE = "config.yaml"

# Formats the decoder knows how to read safely; config may allow a subset (or tiff).
KNOWN_FORMATS = ("jpeg", "png", "gif", "webp", "bmp", "tiff")


# Keys of earlier versions, with what replaced them (an old config.yaml gets this, not "unknown key").
REMOVED_KEYS: dict[tuple[str, str], str] = {
    ("discord", "low_confidence"): "removed: the share among labels cannot say whether any label fits; the "
    '"none of these labels fits" note follows model.match_threshold now. Delete it',
}


class ConfigError(Exception):
    """Invalid configuration; str() lists every problem, one per line."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _yaml_switch_words(cls, data: Any) -> Any:
        """YAML 1.1 reads an unquoted on/off as true/false: give a key whose choices are words its word back."""
        if not isinstance(data, dict):
            return data
        fixed = dict(data)
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if field is None or not isinstance(value, bool) or typing.get_origin(field.annotation) is not Literal:
                continue
            choices = typing.get_args(field.annotation)
            word = "on" if value else "off"
            if word in choices:
                fixed[name] = word
        return fixed


class ModelSection(_Section):
    id: str = Field(default="google/siglip2-base-patch16-256", min_length=1)
    revision: str | None = None
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # A list of templates, or the name of a set in wakeru/templates.py (standard, openai-ja), or a list
    # mixing both; always the tuple of templates after validation.
    templates: tuple[str, ...] = STANDARD
    trust_remote_code: bool = False
    # "Does this label fit at all?", independent of how many labels there are: a label fits when
    # its `match` reaches this. SigLIP family: the model's own sigmoid probability (default 0.01).
    # CLIP family: the probability that it beats `reference_label` (default 0.5). null = the default.
    match_threshold: float | None = Field(default=None, ge=0, le=1)
    # The neutral description CLIP-family labels are compared with (put through the templates).
    reference_label: str = Field(default="何か", min_length=1, max_length=50)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, not {v!r}")
        return v

    @field_validator("templates", mode="before")
    @classmethod
    def _template_sets(cls, v: Any) -> Any:
        # `templates: openai-ja` (YAML) arrives as text, WAKERU_MODEL__TEMPLATES=openai-ja as a
        # one-item list: both name the set. Anything else not text is left to the type check.
        if isinstance(v, str) or (isinstance(v, (list, tuple)) and all(isinstance(t, str) for t in v)):
            return resolve_templates(v)
        return v

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("give at least one template, e.g. ['{}の写真'], or a template set name")
        for t in v:
            check_template(t)
        return v


class WorkerSection(_Section):
    # strict: `true` or "8" is an error, not 1 or 8
    max_batch: StrictInt = Field(default=32, ge=1, le=1024)
    max_wait_ms: StrictFloat = Field(default=5.0, ge=0, le=10_000)
    queue_size: StrictInt = Field(default=256, ge=1, le=1_000_000)
    decode_threads: StrictInt = Field(default=0, ge=0, le=256)
    # How long the bot waits for one image's answer (queue + decode + model) before
    # telling the user it timed out; also the deadline the worker enforces.
    request_timeout_s: StrictFloat = Field(default=60.0, gt=0, le=900)
    # A worker that dies is restarted after this delay, doubled for every crash in a
    # row (a crash within restart_reset_s of the last start counts as "in a row").
    restart_backoff_s: StrictFloat = Field(default=1.0, ge=0, le=600)
    restart_backoff_max_s: StrictFloat = Field(default=60.0, ge=0, le=3600)
    restart_reset_s: StrictFloat = Field(default=120.0, ge=0, le=86_400)
    # local: the bot runs its own worker as a child process. redis: the bot sends images to
    # a Redis (or Valkey) stream served by `python -m model_worker serve` processes, anywhere.
    transport: Literal["local", "redis"] = "local"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Key prefix of the streams and heartbeats, so several deployments can share one Redis.
    redis_prefix: str = Field(default="wakeru", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    # Requests held by a worker that stays silent this long are taken over by another worker.
    # A live worker renews its claim while it works, so only a dead or hung one loses requests.
    claim_idle_s: StrictFloat = Field(default=30.0, ge=0.5, le=3600)
    # Workers announce themselves this often; one not heard from for 3 beats counts as gone.
    heartbeat_s: StrictFloat = Field(default=2.0, ge=0.1, le=60)
    # Requests waiting in the stream (all bots together); beyond this new images get "busy".
    stream_max_len: StrictInt = Field(default=10_000, ge=1, le=10_000_000)
    # How long either end waits for an answer from Redis (a server paused by a slow disk, a dead
    # link) before it counts the call as failed and retries; above the 1 s blocking reads.
    redis_timeout_s: StrictFloat = Field(default=15.0, ge=2, le=300)
    # Image bytes one bot process holds at once (downloads, images waiting for a worker or kept
    # to be sent again after a crash); beyond this new images get "busy". At least images.max_bytes.
    queue_max_bytes: StrictInt = Field(default=256 * 1024 * 1024, ge=1)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        v = v.strip()
        # query strings carry redis-py options such as ?ssl_cert_reqs=none; the message never
        # repeats the value (it may hold a password)
        if not re.match(r"^(redis|rediss)://[^/\s?#]*(/\d*)?(\?\S*)?$|^unix:///[^\s?]+(\?\S*)?$", v):
            raise ValueError(
                "must be redis://[:password@]host:port/db, rediss://… (TLS) or "
                "unix:///path/to/redis.sock, optionally with ?options (e.g. ?ssl_cert_reqs=required); "
                "percent-encode / ? # in a password (%2F %3F %23)"
            )
        return v

    def resolved_decode_threads(self) -> int:
        return self.decode_threads or max(1, min(8, os.cpu_count() or 1))


class ImagesSection(_Section):
    max_bytes: StrictInt = Field(default=25 * 1024 * 1024, ge=1)
    max_pixels: StrictInt = Field(default=40_000_000, ge=1)
    formats: tuple[str, ...] = ("jpeg", "png", "gif", "webp", "bmp")

    @field_validator("formats", mode="before")
    @classmethod
    def _formats(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            out = []
            for f in v:
                name = str(f).lower().strip()
                name = {"jpg": "jpeg", "tif": "tiff"}.get(name, name)
                if name not in KNOWN_FORMATS:
                    raise ValueError(f"unknown format {f!r}; choose from {', '.join(KNOWN_FORMATS)}")
                out.append(name)
            if not out:
                raise ValueError("allow at least one format")
            return tuple(dict.fromkeys(out))
        return v


# The presets shipped in config.yaml; also the defaults when no config file is found.
_PRESETS: dict[str, tuple[str, ...]] = {
    "animals": (
        "犬",
        "猫",
        "鳥",
        "魚",
        "馬",
        "牛",
        "羊",
        "うさぎ",
        "ハムスター",
        "熊",
        "象",
        "キリン",
        "ライオン",
        "虎",
        "猿",
        "パンダ",
        "狐",
        "狼",
        "亀",
        "蛇",
    ),
    "food": (
        "ラーメン",
        "寿司",
        "カレーライス",
        "天ぷら",
        "焼き鳥",
        "おにぎり",
        "うどん",
        "そば",
        "お好み焼き",
        "たこ焼き",
        "ケーキ",
        "パン",
        "ピザ",
        "ハンバーガー",
        "サラダ",
        "コーヒー",
        "お茶",
        "ビール",
        "果物",
        "アイスクリーム",
    ),
    "vehicles": (
        "車",
        "自転車",
        "バイク",
        "バス",
        "トラック",
        "電車",
        "新幹線",
        "飛行機",
        "船",
        "ロケット",
        "ヘリコプター",
        "タクシー",
    ),
    "scenery": (
        "山",
        "海",
        "川",
        "森",
        "街並み",
        "夜景",
        "夕焼け",
        "雪景色",
        "桜",
        "紅葉",
        "田んぼ",
        "神社",
        "寺",
        "城",
        "公園",
    ),
}


class LabelsSection(_Section):
    max_count: StrictInt = Field(default=100, ge=1, le=10_000)
    max_length: StrictInt = Field(default=50, ge=1, le=1_000)
    default: tuple[str, ...] = (
        "犬",
        "猫",
        "鳥",
        "人",
        "食べ物",
        "飲み物",
        "花",
        "車",
        "乗り物",
        "建物",
        "風景",
        "空",
        "海",
        "山",
        "街並み",
        "室内",
        "料理",
        "動物",
        "植物",
        "文字",
    )
    presets: dict[str, tuple[str, ...]] = Field(default_factory=lambda: dict(_PRESETS))

    @model_validator(mode="after")
    def _check_sets(self) -> LabelsSection:
        def checked_set(labels: tuple[str, ...]) -> tuple[str, ...]:
            return normalise_labels(labels, max_count=self.max_count, max_length=self.max_length)

        try:
            object.__setattr__(self, "default", checked_set(self.default))
        except LabelError as e:
            raise ValueError(f"default: {e}") from None
        checked = {}
        for name, labels in self.presets.items():
            try:
                checked[name] = checked_set(labels)
            except LabelError as e:
                raise ValueError(f"presets.{name}: {e}") from None
        object.__setattr__(self, "presets", checked)
        return self


def _check_url(value: str | None, schemes: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    value = value.strip().rstrip("/")
    if not re.match(rf"^({'|'.join(schemes)})://[^/\s]+", value):
        raise ValueError(f"must be an absolute {' or '.join(schemes)} URL such as {schemes[0]}://127.0.0.1:8080")
    return value


def redact_url(url: str) -> str:
    """A service URL without its user and password, for logs and messages.

    Everything up to the *last* "@" goes: a password may itself hold "@", "/", "?" or "#",
    so where the host starts cannot be trusted to a URL parser (redacting too much is safe)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "…@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"


class DiscordSection(_Section):
    # labeled_channels: only channels (or a thread's parent) with a label set of their own;
    # all: every channel the bot can read; off: only /classify and the context menu.
    auto_classify: Literal["labeled_channels", "all", "off"] = "labeled_channels"
    moderator_role_ids: tuple[int, ...] = ()
    # Language of replies to image posts (slash commands answer in the user's own locale).
    reply_locale: Literal["ja", "en"] = "ja"
    # Images offered by /classify's `sample` option.
    samples_dir: str = "samples"
    # REST base (e.g. a rate-limit proxy, or the tests' fake Discord) and gateway URL; null = Discord's own.
    api_base: str | None = None
    gateway_url: str | None = None
    # Sharding: null = one gateway connection (enough for up to 2,500 servers). A number (or
    # "auto": Discord's recommendation) runs that many shards; shard_ids picks this process's
    # slice of them, so several bot processes can share the load.
    shard_count: StrictInt | Literal["auto"] | None = None
    shard_ids: tuple[StrictInt, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        for key in data if isinstance(data, dict) else ():
            if ("discord", key) in REMOVED_KEYS:
                raise ValueError(f"{key}: {REMOVED_KEYS['discord', key]}")
        return data

    @model_validator(mode="after")
    def _shards(self) -> DiscordSection:
        count, ids = self.shard_count, self.shard_ids
        if isinstance(count, int) and not 1 <= count <= 100_000:
            raise ValueError(f"shard_count: must be between 1 and 100000, or auto, or null; got {count}")
        if ids is None:
            return self
        if not isinstance(count, int):
            raise ValueError("shard_ids: give shard_count as a number too (every process must agree on it)")
        if not ids:
            raise ValueError("shard_ids: give at least one shard id, or null for all of them")
        bad = [i for i in ids if not 0 <= i < count]
        if bad:
            raise ValueError(f"shard_ids: {bad} outside 0..{count - 1} (shard_count is {count})")
        if len(set(ids)) != len(ids):
            raise ValueError("shard_ids: each shard id may appear only once")
        return self

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, v: str | None) -> str | None:
        return _check_url(v, ("http", "https"))

    @field_validator("gateway_url")
    @classmethod
    def _gateway(cls, v: str | None) -> str | None:
        return _check_url(v, ("ws", "wss"))

    @field_validator("moderator_role_ids", mode="before")
    @classmethod
    def _role_ids(cls, v: Any) -> Any:
        # Snowflakes are often written as strings; accept "123" but not 1.5 or "abc".
        if isinstance(v, (list, tuple)):
            out = []
            for item in v:
                if isinstance(item, str) and item.strip().isdigit():
                    item = int(item)
                if not isinstance(item, int) or isinstance(item, bool) or item <= 0:
                    raise ValueError(f"role ids are positive integers (Discord snowflakes), got {item!r}")
                out.append(item)
            return tuple(out)
        return v


class StorageSection(_Section):
    # sqlite:///relative/path.db, sqlite:////absolute/path.db, or
    # postgresql://user:password@host:5432/dbname for several bot processes sharing one store
    url: str = "sqlite:///data/wakeru.db"
    # Rewritten every 15 s by the running bot; `python -m bot health` checks it.
    health_file: str = "data/health.json"


class AttachmentsSection(_Section):
    # Hosts images may be downloaded from (exact names); anything else is refused.
    allowed_hosts: tuple[str, ...] = ("cdn.discordapp.com", "media.discordapp.net")
    # Above this size (0: always), ask the media proxy for a rendition near the model's input size
    # first, for any picture bigger than that: fewer bytes to fetch, decode and hold.
    resize_above_bytes: StrictInt = Field(default=0, ge=0)
    # Shortest side requested from the media proxy; 0 = the model's input size, as the worker reports it.
    resize_to: StrictInt = Field(default=0, ge=0, le=8192)
    timeout_s: StrictFloat = Field(default=20.0, gt=0, le=300)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        hosts = tuple(dict.fromkeys(h.strip().lower() for h in v if h.strip()))
        if not hosts:
            raise ValueError("give at least one host, e.g. cdn.discordapp.com")
        return hosts


class LimitsSection(_Section):
    """Token buckets per user and per channel, counted in images (/classify, the menu and
    image posts alike): `*_per_minute` refills, `*_burst` is how many may come at once.
    0 per minute turns that limit off."""

    user_per_minute: StrictFloat = Field(default=20.0, ge=0, le=100_000)
    user_burst: StrictInt = Field(default=10, ge=1, le=100_000)
    channel_per_minute: StrictFloat = Field(default=60.0, ge=0, le=100_000)
    channel_burst: StrictInt = Field(default=30, ge=1, le=100_000)


class ServiceSection(_Section):
    # On SIGTERM: stop taking new work, let in-flight images finish for this long,
    # answer what is left as "unavailable", then stop the worker and exit 0.
    shutdown_grace_s: StrictFloat = Field(default=20.0, ge=0, le=600)
    # /metrics (Prometheus) and /healthz on this port; 0 = off.
    metrics_port: StrictInt = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    log_format: Literal["text", "json"] = "text"


class IndexSection(_Section):
    """The image index (/search, "Find similar images", reposts, /labels stats): see docs/index.md."""

    # Indexing where no moderator turned it on or off (/index enable|disable); off keeps members'
    # pictures out of the index until a server opts in.
    default: Literal["on", "off"] = "off"
    # Cosine similarity from which an image counts as a repost of an earlier one. Model-specific:
    # SigLIP and CLIP cosines live on different scales; calibrate with docs/index.md's recipe.
    repost_threshold: float = Field(default=0.95, gt=0, le=1)
    # Rows older than this many days are deleted (checked hourly); 0 = keep until Discord deletes them.
    retention_days: StrictInt = Field(default=0, ge=0, le=36_500)
    # /index backfill: how far back by default, and at most.
    backfill_days: StrictInt = Field(default=30, ge=1, le=3650)
    backfill_max_days: StrictInt = Field(default=365, ge=1, le=3650)
    # /search and "Find similar images": results shown (Discord allows 10 embeds per message).
    results: StrictInt = Field(default=10, ge=1, le=10)
    # A search result must be at least this similar to be shown (text→image cosines are small for
    # SigLIP models: keep it low); -1 shows the best matches whatever their score.
    min_score: float = Field(default=-1.0, ge=-1, le=1)
    # SQLite index: memory for the searched servers' vectors (about 330 MB per 100,000 pictures of 768
    # dimensions); a server that does not fit is searched in the file, slower. 0 = always in the file.
    memory_mb: StrictInt = Field(default=1024, ge=0, le=1_048_576)

    @model_validator(mode="after")
    def _days(self) -> IndexSection:
        if self.backfill_days > self.backfill_max_days:
            raise ValueError(
                f"backfill_days ({self.backfill_days}) must not exceed backfill_max_days ({self.backfill_max_days})"
            )
        return self


class Config(_Section):
    model: ModelSection = ModelSection()
    worker: WorkerSection = WorkerSection()
    images: ImagesSection = ImagesSection()
    labels: LabelsSection = LabelsSection()
    discord: DiscordSection = DiscordSection()
    storage: StorageSection = StorageSection()
    attachments: AttachmentsSection = AttachmentsSection()
    limits: LimitsSection = LimitsSection()
    service: ServiceSection = ServiceSection()
    index: IndexSection = IndexSection()

    @model_validator(mode="after")
    def _budgets(self) -> Config:
        if self.worker.queue_max_bytes < self.images.max_bytes:
            raise ValueError(
                f"worker.queue_max_bytes ({self.worker.queue_max_bytes:,}) must be at least "
                f"images.max_bytes ({self.images.max_bytes:,}), or the largest allowed image could "
                "never be classified"
            )
        return self

    def with_overrides(self, **sections: Mapping[str, Any]) -> Config:
        """A copy with some keys replaced (validated), e.g. with_overrides(model={"id": path})."""
        data = self.model_dump()
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        return _validate(data, sources={})


def _is_text(annotation: Any) -> bool:
    """str, str | None, or a Literal of strings (on/off, labeled_channels|all|off): such values are taken
    verbatim from the environment (YAML would read on/off as booleans)."""
    if annotation is str:
        return True
    if typing.get_origin(annotation) is Literal:
        return all(isinstance(arg, str) for arg in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set(typing.get_args(annotation)) == {str, type(None)}
    return False


def _item_type(annotation: Any) -> Any | None:
    """The element type of a tuple[X, ...] key (also inside `| None`), else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [t for t in map(_item_type, typing.get_args(annotation)) if t is not None]
        return found[0] if found else None
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        return args[0] if args else Any
    return None


def _parse_env_value(raw: str, annotation: Any) -> Any:
    # Text keys verbatim: a revision "0123456" or "1.10" must not become a number.
    # Lists as YAML ('[jpeg, png]') or plain comma-separated text (jpeg,png), each item
    # read like a value of its own type. Everything else as YAML, so
    # WAKERU_WORKER__MAX_BATCH=8 is an int.
    if _is_text(annotation):
        if annotation is not str and raw.strip().lower() in ("", "null", "none", "~"):
            return None
        return raw
    item = _item_type(annotation)
    if item is not None and not raw.lstrip().startswith("[") and raw.strip().lower() not in ("null", "none", "~"):
        return tuple(
            raw_item if _is_text(item) else _yaml_or_raw(raw_item)
            for raw_item in (part.strip() for part in raw.split(","))
            if raw_item
        )
    return _yaml_or_raw(raw)


def _yaml_or_raw(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, ...], str], list[str]]:
    overrides: dict[str, dict[str, Any]] = {}
    sources: dict[tuple[str, ...], str] = {}
    problems: list[str] = []
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section not in Config.model_fields:
            problems.append(f"{name}: unknown section {section!r} (known: {', '.join(Config.model_fields)})")
            continue
        fields = Config.model_fields[section].annotation.model_fields  # type: ignore[union-attr]
        if (section, key) in REMOVED_KEYS:
            problems.append(f"{name}: {section}.{key} was {REMOVED_KEYS[section, key]}")
            continue
        if key not in fields:
            problems.append(f"{name}: unknown key {section}.{key} (known: {', '.join(fields)})")
            continue
        overrides.setdefault(section, {})[key] = _parse_env_value(raw, fields[key].annotation)
        sources[(section, key)] = name
    return overrides, sources, problems


def _annotation(loc: tuple[str, ...]) -> Any:
    """The type of the key at `loc` (section, key, …), or None."""
    if len(loc) < 2 or loc[0] not in Config.model_fields:
        return None
    field = Config.model_fields[loc[0]].annotation.model_fields.get(loc[1])  # type: ignore[union-attr]
    return field.annotation if field is not None else None


def _shown_input(err: Mapping[str, Any]) -> str:
    """ "; got …" for an error, never echoing a URL whole: it may carry a password."""
    if err["type"] in ("extra_forbidden", "missing"):
        return ""
    given = err.get("input")
    if isinstance(given, dict):
        return ""
    if isinstance(given, str) and ("://" in given or "@" in given):
        return f"; got {redact_url(given)!r}"
    return f"; got {given!r}"


def _validate(data: Any, sources: Mapping[tuple[str, ...], str]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(str(p) for p in err["loc"])
            key = ".".join(loc) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling against config.yaml)"
            origin = sources.get(loc[:2]) or sources.get(loc)
            where = f" (from {origin})" if origin else ""
            if origin and _item_type(_annotation(loc)) is not None:
                where += "; give a list as comma-separated text (a,b) or in YAML ('[a, b]')"
            # a check across sections (loc ()) names its keys itself
            lines.append(f"{key}: {msg}{_shown_input(err)}{where}" if loc else msg)
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read, merge and validate the configuration. Raises ConfigError."""
    env = os.environ if env is None else env
    file_label = None
    if path is None and env.get(ENV_CONFIG_FILE):
        path, file_label = env[ENV_CONFIG_FILE], ENV_CONFIG_FILE
    if path is None and Path(DEFAULT_FILE).is_file():
        path = DEFAULT_FILE
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        origin = f" (from {file_label})" if file_label else ""
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found{origin}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must be a mapping of sections, not {type(loaded).__name__}")
        data = loaded or {}
    overrides, sources, problems = _env_overrides(env)
    if problems:
        raise ConfigError("\n".join(problems))
    for section, values in overrides.items():
        current = data.get(section)
        if current is None:
            current = {}
        if not isinstance(current, dict):
            raise ConfigError(f"{section}: must be a mapping of keys, not {type(current).__name__}")
        data[section] = {**current, **values}
    return _validate(data, sources)
