"""The local transport's typed pipe messages and WorkerInfo: what both ends of the pipe rely on."""

from __future__ import annotations

import pickle

import pytest

from wakeru.protocol import (
    PROTOCOL_VERSION,
    Cancel,
    Cancelled,
    Classify,
    ClassifyRequest,
    ClassifyResult,
    ErrorCode,
    Failed,
    LabelScore,
    ProtocolError,
    Ready,
    Result,
    Stop,
    WorkerInfo,
    decode_from_worker,
    decode_to_worker,
    encode,
    pack_embedding,
)

INFO = WorkerInfo(
    model="/models/x", family="siglip", device="cpu", dtype="float32", input_size=224, embedding_size=768, pid=42
)


@pytest.mark.parametrize(
    "message",
    [
        Classify(ClassifyRequest(id="e1-1", image=b"\xff\xd8\xff", labels=("犬", "猫"), top_k=2, deadline=1.5)),
        Classify(ClassifyRequest(id="e1-2", image=b"\xff\xd8\xff", labels=(), embed=True)),
        Classify(ClassifyRequest(id="e1-3", image=b"", labels=(), query="赤い丸")),
        Cancel("e1-1"),
        Stop(),
    ],
)
def test_messages_to_the_worker_survive_the_pipe(message):
    # the pipe pickles what encode() gives: plain tuples, dicts, bytes and strings
    wire = pickle.loads(pickle.dumps(encode(message)))
    assert isinstance(wire, tuple) and isinstance(wire[0], str)
    assert decode_to_worker(wire) == message


@pytest.mark.parametrize(
    "message",
    [
        Ready(INFO),
        Failed("out of memory while loading /models/x"),
        Result(ClassifyResult(id="e1-1", top=(LabelScore("犬", 0.9, 0.4, True),))),
        Result(ClassifyResult(id="e1-4", embedding=pack_embedding((0.6, 0.8)), embedding_model="/models/x@v1")),
        Result(ClassifyResult.failure("e1-2", ErrorCode.CORRUPT, "truncated")),
        Cancelled("e1-3"),
    ],
)
def test_messages_from_the_worker_survive_the_pipe(message):
    assert decode_from_worker(pickle.loads(pickle.dumps(encode(message)))) == message


def test_a_malformed_classify_names_its_request_so_it_can_be_answered():
    with pytest.raises(ProtocolError) as caught:
        decode_to_worker(("classify", {"id": "e9-1", "labels": ["犬"]}))  # no image
    assert caught.value.request_id == "e9-1"
    with pytest.raises(ProtocolError) as caught:
        decode_to_worker(("classify", {"id": "e9-2", "image": "not bytes", "labels": ["犬"]}))
    assert caught.value.request_id == "e9-2"
    with pytest.raises(ProtocolError) as caught:
        decode_to_worker(("explode", {"id": "e9-3"}))
    assert caught.value.request_id == "e9-3"


@pytest.mark.parametrize("raw", [None, "classify", ("classify",), ("stop", None, None), (1, 2), ("cancel", 7)])
def test_junk_is_a_protocol_error_without_a_request(raw):
    with pytest.raises(ProtocolError) as caught:
        decode_to_worker(raw)
    assert caught.value.request_id is None


@pytest.mark.parametrize(
    "raw",
    [
        ("ready", {"model": "x"}),
        ("ready", "x"),
        ("result", {"top": []}),
        ("failed", None),
        ("cancelled", 3),
        ("hello", None),
        ["result", {}],
    ],
)
def test_the_bot_rejects_junk_from_a_worker(raw):
    with pytest.raises(ProtocolError):
        decode_from_worker(raw)


def test_worker_info_is_strict_on_what_it_needs_and_tolerant_of_extras():
    heartbeat = {**INFO.to_dict(), "name": "gpu-1", "host": "h", "in_flight": 3, "served": 10, "at": 1.0}
    parsed = WorkerInfo.from_dict(heartbeat)
    assert parsed.name == "gpu-1" and parsed.embedding_size == 768 and parsed.version == PROTOCOL_VERSION
    for key in ("model", "family", "input_size", "embedding_size", "pid"):
        with pytest.raises(ProtocolError, match=key):
            WorkerInfo.from_dict({k: v for k, v in INFO.to_dict().items() if k != key})
    with pytest.raises(ProtocolError, match="input_size"):
        WorkerInfo.from_dict({**INFO.to_dict(), "input_size": True})  # a bool is not a size
    older = WorkerInfo.from_dict({**INFO.to_dict(), "version": 2})
    assert older.version == 2  # parsed; the transports refuse it by comparing with PROTOCOL_VERSION
