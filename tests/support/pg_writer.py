"""tests/support/storage_writer.py's writer process, opening its URL with bot.store.open_store, so that it runs
against PostgreSQL too (tests/bot/store/test_postgres.py):

    python -m tests.support.pg_writer postgresql://… --mode add --name a --count 40 [--think-ms 2] [--wait-for-go]

Same arguments and output lines as storage_writer (--hold-ms reaches into the SQLite connection: SQLite only).
"""

from __future__ import annotations

import asyncio

from bot.store import open_store
from tests.support import storage_writer


class _AnyBackend:
    """Takes SQLiteLabelStore's place in storage_writer, whose main() only calls SQLiteLabelStore.open(url)."""

    open = staticmethod(open_store)


if __name__ == "__main__":
    storage_writer.SQLiteLabelStore = _AnyBackend
    asyncio.run(storage_writer.main())
