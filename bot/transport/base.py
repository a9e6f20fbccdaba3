"""What the rest of the bot knows about reaching the model worker: the `WorkerTransport`
interface, the `Reservation` that admits one image, and `TransportBase`, the admission and
bookkeeping every transport shares.

A transport always answers `classify` with a ClassifyResult (never raises for a request's
problems). Admission happens before an image is downloaded: `reserve()` takes one place of
`worker.queue_size` and the image's bytes of `worker.queue_max_bytes`, or says why not (busy,
shutting down, no model). The reservation is a context manager; `classify(...,
reservation=...)` takes it over, and leaving the `with` block gives back what was not taken
over, so no path can leak a place.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any, Generic, Protocol, TypeVar

from bot.services import metrics
from wakeru.config import Config
from wakeru.protocol import ClassifyRequest, ClassifyResult, ErrorCode, WorkerInfo

log = logging.getLogger("wakeru.transport")

# Extra time the bot waits beyond a request's deadline for the worker's own
# deadline answer to arrive before it answers for the worker.
_DEADLINE_GRACE_S = 2.0


class WorkerTransport(Protocol):
    """Everything the rest of the bot may use of a transport."""

    state: str  # "stopped" | "starting" | "ready" | "restarting" | "failed" (local);
    #                            "stopped" | "starting" | "ready" | "no_workers" | "unreachable" (redis)
    failure: str | None  # why there is no model, for the operator (log, /healthz); None while there is one
    info: WorkerInfo | None  # what the (first) live worker reported; None before any was ready
    ready: asyncio.Event  # set once the first worker is ready, or there will be none
    restarts: int  # worker restarts so far (local)

    @property
    def in_flight(self) -> int:
        """Requests this bot is waiting for an answer to."""

    @property
    def held_bytes(self) -> int:
        """Image bytes this bot holds for admitted requests (downloads included)."""

    @property
    def live_workers(self) -> int:
        """Workers able to answer now."""

    async def start(self) -> None: ...

    def reserve(self, request_id: str, nbytes: int) -> Reservation | ClassifyResult:
        """A place for an image of about `nbytes`, or the answer that says why not."""

    async def classify(self, request: ClassifyRequest, *, reservation: Reservation | None = None) -> ClassifyResult: ...

    def stop_accepting(self) -> None: ...

    def abandon(self, message: str) -> None: ...

    async def close(self) -> None: ...


class _PendingEntry(Protocol):
    """What TransportBase needs of a transport's record of a request in flight."""

    request: ClassifyRequest
    future: asyncio.Future[ClassifyResult]
    place: Reservation


_E = TypeVar("_E", bound=_PendingEntry)  # a transport's own record of a request in flight


class Reservation:
    """One place in this bot's queue and the bytes of its image, taken before the image is
    downloaded (so a burst is refused unfetched). `classify(..., reservation=...)` takes it
    over; used as a context manager it is given back unless that happened."""

    def __init__(self, transport: TransportBase[Any], nbytes: int):
        self._transport = transport
        self.bytes = 0
        self.open = True
        transport._places += 1
        self.resize(nbytes)

    def resize(self, nbytes: int) -> None:
        """The image turned out this big (a rendition is smaller than the original), or 0 once
        the bytes are no longer held here (handed to Redis)."""
        if self.open:
            self._transport._held_bytes += nbytes - self.bytes
            self.bytes = nbytes

    def release(self) -> None:
        if self.open:
            self.resize(0)
            self.open = False
            self._transport._places -= 1

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class TransportBase(Generic[_E]):
    """What every transport shares: its state, the places and image bytes a bot may hold
    (downloads included), refusals while it cannot serve or is shutting down, and the
    futures of the requests in flight (`_E`: the transport's record of one)."""

    def __init__(self, config: Config):
        self.config = config
        self.state = "stopped"
        self.failure: str | None = None  # why there is no model (load failure, repeated crashes)
        self.info: WorkerInfo | None = None  # what the worker reported when ready
        self.ready = asyncio.Event()  # set once the first worker is ready (or has failed for good)
        self.restarts = 0
        self._capacity = config.worker.queue_size
        self._byte_budget = config.worker.queue_max_bytes
        self._accepting = True
        self._places = 0  # reservations: images downloading or waiting for an answer
        self._held_bytes = 0  # image bytes this process holds for them
        self._pending: dict[str, _E] = {}  # request id → an entry with .request, .future and .place
        metrics.QUEUE_DEPTH.set_function(lambda: len(self._pending))
        metrics.QUEUE_BYTES.set_function(lambda: self._held_bytes)
        metrics.set_worker_state(self.state)

    def stop_accepting(self) -> None:
        """Shutdown has begun: new requests are refused; those in flight go on."""
        self._accepting = False

    def abandon(self, message: str) -> None:
        """Answer everything in flight now (the grace period is over)."""
        self._fail_all(ErrorCode.UNAVAILABLE, message)

    def reserve(self, request_id: str, nbytes: int) -> Reservation | ClassifyResult:
        """A place for an image of about `nbytes` about to be downloaded, or why not (failed,
        shutting down, busy). Hand it to `classify(..., reservation=...)`, or release it."""
        return self._refusal(request_id) or self._room_for(request_id, nbytes) or Reservation(self, nbytes)

    def _take_over(self, request: ClassifyRequest, reservation: Reservation | None) -> Reservation | ClassifyResult:
        """The request's place: the one reserved for it before its download, or a new one."""
        if reservation is None:
            return self.reserve(request.id, len(request.image))
        refused = self._refusal(request.id)
        if refused is None:
            reservation.resize(len(request.image))
            if self._held_bytes > self._byte_budget and self._held_bytes > reservation.bytes:
                refused = self._busy(request.id)  # the download was bigger than announced
        if refused is not None:
            reservation.release()
            return refused
        return reservation

    def _unavailable_because(self) -> str | None:
        """Why new images cannot even wait for a worker now (None: they can). Members read it:
        no paths, hosts or model ids (the log has those)."""
        return "the worker is stopped"

    def _refusal(self, request_id: str) -> ClassifyResult | None:
        if not self._accepting:
            return ClassifyResult.failure(request_id, ErrorCode.UNAVAILABLE, "the bot is shutting down")
        why = self._unavailable_because()
        if why is not None:
            return ClassifyResult.failure(request_id, ErrorCode.UNAVAILABLE, why)
        return None

    def _room_for(self, request_id: str, nbytes: int) -> ClassifyResult | None:
        if self._places >= self._capacity or self._held_bytes + nbytes > self._byte_budget:
            return self._busy(request_id)
        return None

    def _busy(self, request_id: str) -> ClassifyResult:
        return ClassifyResult.failure(
            request_id,
            ErrorCode.QUEUE_FULL,
            f"the model is busy ({self._places} images, {_mib(self._held_bytes)} waiting); try again",
        )

    def _fail_all(self, code: ErrorCode, message: str, entries: Iterable[_E] | None = None) -> None:
        for entry in list(self._pending.values()) if entries is None else entries:
            if not entry.future.done():
                entry.future.set_result(ClassifyResult.failure(entry.request.id, code, message))

    def _set_state(self, state: str) -> None:
        self.state = state
        metrics.set_worker_state(state)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    @property
    def live_workers(self) -> int:
        return 1 if self.state == "ready" else 0


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def deadline_wait(request: ClassifyRequest) -> float | None:
    """How long the bot waits for an answer: the request's deadline plus a grace for the
    worker's own deadline answer to arrive."""
    return None if request.deadline is None else max(0.0, request.deadline - time.time()) + _DEADLINE_GRACE_S


def timed_out(request: ClassifyRequest) -> ClassifyResult:
    return ClassifyResult.failure(request.id, ErrorCode.DEADLINE_EXCEEDED, "no answer from the model worker in time")
