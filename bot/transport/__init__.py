"""How the bot reaches the model worker: `make_transport(config)` picks the transport.

base.py: the interface callers use and the admission every transport shares; local.py: the
worker as a supervised child process over pipes; redis_streams.py: workers anywhere, through
Redis Streams.
"""

from __future__ import annotations

from bot.transport.base import Reservation, TransportBase, WorkerTransport
from wakeru.config import Config

__all__ = ["Reservation", "TransportBase", "WorkerTransport", "make_transport"]


def make_transport(config: Config) -> WorkerTransport:
    """worker.transport: local (a child process) or redis (workers anywhere, through Redis Streams)."""
    if config.worker.transport == "redis":
        from bot.transport.redis_streams import RedisWorkerTransport

        return RedisWorkerTransport(config)
    from .local import LocalWorkerTransport

    return LocalWorkerTransport(config)
