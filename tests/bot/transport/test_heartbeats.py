"""Reading Redis workers' heartbeats: WorkerInfo from JSON, junk and other protocol versions skipped."""

from __future__ import annotations

import json
import logging

from bot.transport.redis_streams import _parse_heartbeats
from wakeru.protocol import PROTOCOL_VERSION, WorkerInfo

INFO = WorkerInfo(
    model="m",
    family="siglip",
    device="cuda:0",
    dtype="bfloat16",
    input_size=384,
    embedding_size=1152,
    pid=7,
    name="gpu-a",
    host="h1",
)


def test_live_workers_are_read_as_worker_info_and_junk_or_other_versions_are_skipped(caplog):
    caplog.set_level(logging.WARNING)
    old = {**INFO.to_dict(), "name": "gpu-old", "version": PROTOCOL_VERSION - 1}
    keys = [b"w:worker:gpu-a", b"w:worker:gpu-old", b"w:worker:junk", b"w:worker:gone", b"w:worker:partial"]
    values = [
        json.dumps({**INFO.to_dict(), "in_flight": 2, "served": 9, "at": 1.0}).encode(),
        json.dumps(old).encode(),
        b"[1, 2]",
        None,
        json.dumps({"name": "partial", "model": "m"}).encode(),
    ]
    workers = _parse_heartbeats(keys, values)
    assert workers == {"gpu-a": INFO}
    assert "protocol v%d" % (PROTOCOL_VERSION - 1) in caplog.text
    assert caplog.text.count("is not a worker's JSON object") == 2  # the list and the partial one
