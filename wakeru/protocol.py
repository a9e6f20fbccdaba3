"""The contract between the bot and the model worker: the one place both ends agree on.

- ClassifyRequest / ClassifyResult (with LabelScore, Timings, ErrorCode): one image in, its ranking
  out. With `embed` the result also carries the image's embedding (from the same forward pass);
  with empty labels and `embed` it carries only the embedding (index backfill); with `query` (and
  no image, no labels) it carries the embedding of that text as a search query, made by the same
  template rule as a label's (the label cache's template ensemble). Embeddings travel as packed
  float32 little-endian bytes (`pack_embedding` / `unpack_embedding`), L2-normalised, with the
  `model_key` of the model that made them: vectors of different model keys do not compare.
- WorkerInfo: what a worker reports once its model is loaded (model, revision, family, device,
  dtype, input size, embedding size, pid), by the pipe's Ready message or a Redis heartbeat.
- The pipe messages of the local transport, typed: bot → worker Classify, Cancel, Stop;
  worker → bot Ready, Failed, Result, Cancelled (the acknowledgement of a Cancel that reached a
  request still in the worker: every request sent gets exactly one Result or Cancelled back).
- The Redis Streams wire format (keys and entry fields) of the networked transport; `embed` and
  `query` are entry fields of their own, a result's embedding rides base64 in its JSON.

Plain frozen dataclasses: picklable, convertible to JSON-ready dicts. On the pipe they travel
as (kind, payload) tuples of plain values, so a garbled or foreign message is a ProtocolError at
the receiving end, never an unpickled object of the wrong type. No torch, no PIL: the bot
imports this. Bump PROTOCOL_VERSION when a field changes meaning; peers reject other versions.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

# 2: LabelScore.fits, and `match` for the CLIP family too. 3: typed pipe messages, WorkerInfo
# with embedding_size and the worker's protocol version. 4: embeddings – `embed`, `query`,
# `ClassifyResult.embedding/embedding_model`, `WorkerInfo.revision`.
PROTOCOL_VERSION = 4

MAX_QUERY_LENGTH = 1000  # characters of a search query (after stripping), like a long message


def pack_embedding(values: Sequence[float]) -> bytes:
    """An embedding as it travels: float32, little-endian, 4 bytes per value."""
    return struct.pack(f"<{len(values)}f", *values)


def unpack_embedding(data: bytes) -> tuple[float, ...]:
    """The values of a packed embedding; ValueError if its length is not a multiple of 4."""
    if len(data) % 4:
        raise ValueError(f"an embedding is float32 values: {len(data)} bytes is not a multiple of 4")
    return struct.unpack(f"<{len(data) // 4}f", data)


def model_key(model: str, revision: str | None) -> str:
    """Names the weights an embedding came from: vectors of different keys do not compare."""
    return f"{model}@{revision}" if revision else model


class ErrorCode(str, enum.Enum):
    """Stable error codes; the message that travels with them is for people."""

    EMPTY = "empty_image"  # zero bytes
    TOO_LARGE = "too_large"  # more bytes than images.max_bytes
    TOO_MANY_PIXELS = "too_many_pixels"  # width × height above images.max_pixels (checked before decoding)
    BAD_DIMENSIONS = "bad_dimensions"  # zero-sized or otherwise unusable geometry
    UNSUPPORTED_FORMAT = "unsupported_format"  # not an allowed image format (SVG, PDF, EPS, HTML, archives, …)
    CORRUPT = "corrupt_image"  # an allowed format that fails to decode (truncated, damaged)
    UNREADABLE = "unreadable"  # the input could not be read at all (missing file, …)
    BAD_LABELS = "bad_labels"  # the label set breaks the label rules
    BAD_REQUEST = "bad_request"  # malformed request (wrong version, bad top_k, …)
    QUEUE_FULL = "queue_full"  # the worker's bounded queue is full: busy, try again
    DEADLINE_EXCEEDED = "deadline_exceeded"  # the request's deadline passed before it ran
    UNAVAILABLE = "unavailable"  # no model loaded (loading, failed, shutting down)
    INTERNAL = "internal_error"  # a bug or a device failure; the worker keeps running
    CRASHED = "worker_crashed"  # the worker died twice while holding this request; not retried again


@dataclass(frozen=True, slots=True)
class ClassifyRequest:
    """One image and the labels to rank it against.

    The label set travels by value; the worker caches its embeddings by content,
    so sending the same set again costs no text-tower work.

    `embed`: also return the image's embedding (same forward pass); labels may then be empty
    (embed only: the result has no labels). `query`: embed this text as a search query instead
    of an image; `image` is then b"" and `labels` (). See `request_shape_problem` for the rules.
    """

    id: str
    image: bytes
    labels: tuple[str, ...]  # the labels' names, in the label rules' spelling ("=" is plain text: 犬=🐕 is sent as 犬)
    top_k: int = 3
    deadline: float | None = None  # wall-clock (time.time()) seconds; None = no deadline
    embed: bool = False  # also return the image's embedding
    query: str | None = None  # embed this text as a search query instead of an image
    version: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        # the image stays bytes: a queue pickles it as is; a networked transport encodes it
        return {
            "id": self.id,
            "image": self.image,
            "labels": list(self.labels),
            "top_k": self.top_k,
            "deadline": self.deadline,
            "embed": self.embed,
            "query": self.query,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifyRequest:
        return cls(
            id=d["id"],
            image=d["image"],
            labels=tuple(d["labels"]),
            top_k=d.get("top_k", 3),
            deadline=d.get("deadline"),
            embed=d.get("embed", False),
            query=d.get("query"),
            version=d.get("version", PROTOCOL_VERSION),
        )


def request_shape_problem(request: ClassifyRequest) -> str | None:
    """Why this combination of image, labels, `embed` and `query` is not a valid request (None:
    it is). The label rules themselves (wakeru.labels) are checked separately. Workers answer a
    problem with BAD_REQUEST."""
    embed: object = request.embed
    query: object = request.query
    if not isinstance(embed, bool):
        return "embed must be true or false"
    if query is not None:
        if not isinstance(query, str):
            return "the query must be text"
        if request.image or request.labels:
            return "a query is embedded on its own: send it without an image and without labels"
        text = query.strip()
        if not text:
            return "the query is empty"
        if len(text) > MAX_QUERY_LENGTH:
            return f"the query is {len(text):,} characters; the limit is {MAX_QUERY_LENGTH:,}"
        return None
    labels: object = request.labels
    if not labels and not embed:
        return "no labels given: send labels, or ask for the embedding alone (embed) or a query"
    return None


@dataclass(frozen=True, slots=True)
class LabelScore:
    """One label's result. `score` ranks the labels against each other; `match` and `fits` say
    whether the label describes the picture at all, whatever the other labels are."""

    label: str
    score: float  # share among the given labels, in [0, 1]; the shares of all labels sum to 1
    # Independent of the other labels, in [0, 1]. SigLIP family: the model's own sigmoid match
    # probability. CLIP family: the probability that the label fits better than a neutral
    # description (model.reference_label). None: the model gives none.
    match: float | None = None
    fits: bool | None = None  # match >= the model's match threshold (model.match_threshold)


@dataclass(frozen=True, slots=True)
class Timings:
    queue_ms: float = 0.0  # submit → its batch started
    decode_ms: float = 0.0  # decode + preprocess of this image
    model_ms: float = 0.0  # forward pass of the batch it ran in
    total_ms: float = 0.0  # submit → result
    batch_size: int = 0


@dataclass(frozen=True, slots=True)
class ClassifyResult:
    id: str
    top: tuple[LabelScore, ...] = ()
    error: ErrorCode | None = None
    message: str | None = None
    timings: Timings = field(default_factory=Timings)
    # float32 little-endian, L2-normalised, embedding_size × 4 bytes (pack_embedding); set when the
    # request asked for it (embed, query) and it succeeded
    embedding: bytes | None = None
    embedding_model: str | None = None  # model_key of the model that made the embedding
    version: int = PROTOCOL_VERSION

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def none_fits(self) -> bool:
        """Even the best label does not fit: none of the labels describes the picture."""
        return self.ok and bool(self.top) and self.top[0].fits is False

    @classmethod
    def failure(cls, request_id: str, code: ErrorCode, message: str, timings: Timings | None = None) -> ClassifyResult:
        return cls(id=request_id, error=code, message=message, timings=timings or Timings())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values: the embedding as base64 text."""
        d = asdict(self)
        d["error"] = self.error.value if self.error else None
        d["embedding"] = None if self.embedding is None else base64.b64encode(self.embedding).decode("ascii")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifyResult:
        return cls(
            id=d["id"],
            top=tuple(LabelScore(s["label"], s["score"], s.get("match"), s.get("fits")) for s in d.get("top", ())),
            error=ErrorCode(d["error"]) if d.get("error") else None,
            message=d.get("message"),
            timings=Timings(**d.get("timings", {})),
            embedding=_embedding_from_text(d.get("embedding")),
            embedding_model=_optional_text(d.get("embedding_model"), "embedding_model"),
            version=d.get("version", PROTOCOL_VERSION),
        )


def _embedding_from_text(value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"embedding must be base64 text, not {type(value).__name__}")
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("embedding is not valid base64") from None
    if len(data) % 4:
        raise ValueError(f"embedding is {len(data)} bytes, not a whole number of float32 values")
    return data


def _optional_text(value: Any, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be text, not {type(value).__name__}")
    return value


class ProtocolError(ValueError):
    """A message that does not follow this contract. `request_id` is set when the message still
    named a request, so its sender can be answered."""

    def __init__(self, message: str, request_id: str | None = None):
        super().__init__(message)
        self.request_id = request_id


def _field(d: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = d.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(f"worker info field {key!r} is missing or not {getattr(kind, '__name__', kind)}")
    return value


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker says about itself once its model is loaded."""

    model: str  # model.id it loaded (a hub id or a local path)
    family: str  # "clip", "siglip" or "japanese-stable-clip"
    device: str  # "cpu", "cuda:0", …
    dtype: str  # "float32", "bfloat16", …
    input_size: int  # the model's input side in pixels: the bot downloads renditions about this big
    embedding_size: int  # length of its image and text embeddings (what an image index stores)
    pid: int
    name: str = ""  # Redis workers: the consumer name; "" for the local worker
    host: str = ""  # Redis workers: the host it runs on
    revision: str = ""  # model.revision it loaded; "" when none was configured
    version: int = PROTOCOL_VERSION

    @property
    def model_key(self) -> str:
        """The key its embeddings carry (ClassifyResult.embedding_model)."""
        return model_key(self.model, self.revision or None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> WorkerInfo:
        """Strict on the fields it needs, tolerant of extra ones (a heartbeat adds its counters)."""
        if not isinstance(d, dict):
            raise ProtocolError(f"worker info must be an object, not {type(d).__name__}")
        return cls(
            model=_field(d, "model", str),
            family=_field(d, "family", str),
            device=_field(d, "device", str),
            dtype=_field(d, "dtype", str),
            input_size=_field(d, "input_size", int),
            embedding_size=_field(d, "embedding_size", int),
            pid=_field(d, "pid", int),
            name=d.get("name") or "",
            host=d.get("host") or "",
            revision=_field(d, "revision", str) if d.get("revision") is not None else "",
            version=_field(d, "version", int) if "version" in d else PROTOCOL_VERSION,
        )


# ---- the local transport's pipe messages ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Classify:
    """bot → worker: classify this image. Answered by exactly one Result or Cancelled."""

    KIND: ClassVar[str] = "classify"
    request: ClassifyRequest

    def payload(self) -> Any:
        return self.request.to_dict()


@dataclass(frozen=True, slots=True)
class Cancel:
    """bot → worker: the bot gave up on this request (its deadline passed); drop it if not started."""

    KIND: ClassVar[str] = "cancel"
    request_id: str

    def payload(self) -> Any:
        return self.request_id


@dataclass(frozen=True, slots=True)
class Stop:
    """bot → worker: finish and exit."""

    KIND: ClassVar[str] = "stop"

    def payload(self) -> Any:
        return None


@dataclass(frozen=True, slots=True)
class Ready:
    """worker → bot: the model is loaded; requests may come."""

    KIND: ClassVar[str] = "ready"
    info: WorkerInfo

    def payload(self) -> Any:
        return self.info.to_dict()


@dataclass(frozen=True, slots=True)
class Failed:
    """worker → bot: the model could not be loaded (the message says why, for the operator)."""

    KIND: ClassVar[str] = "failed"
    message: str

    def payload(self) -> Any:
        return self.message


@dataclass(frozen=True, slots=True)
class Result:
    """worker → bot: a request's answer."""

    KIND: ClassVar[str] = "result"
    result: ClassifyResult

    def payload(self) -> Any:
        return self.result.to_dict()


@dataclass(frozen=True, slots=True)
class Cancelled:
    """worker → bot: a Cancel reached this request before it ran; no Result follows."""

    KIND: ClassVar[str] = "cancelled"
    request_id: str

    def payload(self) -> Any:
        return self.request_id


ToWorker = Classify | Cancel | Stop
FromWorker = Ready | Failed | Result | Cancelled


def encode(message: ToWorker | FromWorker) -> tuple[str, Any]:
    """The pipe form of a message: (kind, plain payload)."""
    return message.KIND, message.payload()


def _split(raw: Any) -> tuple[str, Any]:
    if not (isinstance(raw, tuple) and len(raw) == 2 and isinstance(raw[0], str)):
        raise ProtocolError(f"not a (kind, payload) message: {raw!r:.200}")
    return raw


def _text(kind: str, payload: Any) -> str:
    if not isinstance(payload, str):
        raise ProtocolError(f"{kind}: expected text, got {type(payload).__name__}")
    return payload


def decode_to_worker(raw: Any) -> ToWorker:
    """A message the worker received; ProtocolError (with the request id when there is one) if malformed."""
    kind, payload = _split(raw)
    if kind == Stop.KIND:
        return Stop()
    if kind == Cancel.KIND:
        return Cancel(_text(kind, payload))
    request_id = payload.get("id") if isinstance(payload, dict) else None
    request_id = request_id if isinstance(request_id, str) else None
    if kind != Classify.KIND:
        raise ProtocolError(f"unknown message kind {kind!r}", request_id)
    try:
        request = ClassifyRequest.from_dict(payload)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ProtocolError(f"malformed classify request: {e!r:.200}", request_id) from None
    if not (
        isinstance(request.id, str)
        and isinstance(request.image, (bytes, bytearray))
        and all(isinstance(label, str) for label in request.labels)
        and isinstance(request.top_k, int)
        and isinstance(request.embed, bool)
        and (request.query is None or isinstance(request.query, str))
    ):
        raise ProtocolError("malformed classify request: wrong field types", request_id)
    return Classify(request)


def decode_from_worker(raw: Any) -> FromWorker:
    """A message the bot received; ProtocolError if malformed."""
    kind, payload = _split(raw)
    if kind == Result.KIND:
        try:
            return Result(ClassifyResult.from_dict(payload))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ProtocolError(f"malformed result: {e!r:.200}") from None
    if kind == Cancelled.KIND:
        return Cancelled(_text(kind, payload))
    if kind == Ready.KIND:
        return Ready(WorkerInfo.from_dict(payload))
    if kind == Failed.KIND:
        return Failed(_text(kind, payload))
    raise ProtocolError(f"unknown message kind {kind!r}")


# ---- Redis Streams wire format (worker.transport: redis) ----------------------------------
# Both ends build their keys and entries here, so a bot and a worker of the same
# PROTOCOL_VERSION always agree. Stream field values are binary-safe: the image travels as
# raw bytes (b"" for a query), the rest as short text or JSON ("embed" "1"/"0", "query" the text
# or ""); a result is its to_dict() as JSON, the embedding base64 inside it.

REQUESTS_GROUP = "workers"  # the consumer group every worker reads the request stream with


def requests_key(prefix: str) -> str:
    return f"{prefix}:requests"


def replies_key(prefix: str, bot_id: str) -> str:
    return f"{prefix}:replies:{bot_id}"


def heartbeat_key(prefix: str, worker_name: str) -> str:
    return f"{prefix}:worker:{worker_name}"


def request_fields(request: ClassifyRequest, reply_to: str) -> dict[str, bytes | str]:
    return {
        "v": str(request.version),
        "id": request.id,
        "reply": reply_to,
        "labels": json.dumps(list(request.labels), ensure_ascii=False),
        "top_k": str(request.top_k),
        "deadline": "" if request.deadline is None else repr(request.deadline),
        "embed": "1" if request.embed else "0",
        "query": "" if request.query is None else request.query,
        "image": request.image,
    }


def parse_request_fields(fields: dict[bytes, bytes]) -> tuple[ClassifyRequest, str]:
    """(request, reply stream key); raises ValueError/KeyError on a malformed entry (use
    `request_reply_of` to still answer it)."""
    text = {k.decode(): v for k, v in fields.items()}
    deadline = text["deadline"].decode()
    embed = text.get("embed", b"0").decode()
    if embed not in ("0", "1"):
        raise ValueError(f"embed must be 0 or 1, not {embed!r:.20}")
    query = text.get("query", b"").decode()
    labels = json.loads(text["labels"].decode())
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ValueError("labels must be a JSON list of strings")
    request = ClassifyRequest(
        id=text["id"].decode(),
        image=bytes(text["image"]),
        labels=tuple(labels),
        top_k=int(text["top_k"]),
        deadline=float(deadline) if deadline else None,
        embed=embed == "1",
        query=query or None,
        version=int(text["v"]),
    )
    return request, text["reply"].decode()


def request_reply_of(fields: dict[bytes, bytes]) -> tuple[str, str] | None:
    """(request id, reply key) of an entry that could not be parsed, when it has them."""
    try:
        return fields[b"id"].decode(), fields[b"reply"].decode()
    except (KeyError, UnicodeDecodeError, AttributeError):
        return None


def result_fields(result: ClassifyResult) -> dict[str, str]:
    return {"id": result.id, "result": json.dumps(result.to_dict(), ensure_ascii=False)}


def parse_result_fields(fields: dict[bytes, bytes]) -> ClassifyResult:
    return ClassifyResult.from_dict(json.loads(fields[b"result"].decode()))
