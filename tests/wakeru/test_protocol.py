import json
import pickle
import struct
import subprocess
import sys

import pytest

from wakeru.protocol import (
    MAX_QUERY_LENGTH,
    PROTOCOL_VERSION,
    Classify,
    ClassifyRequest,
    ClassifyResult,
    ErrorCode,
    LabelScore,
    ProtocolError,
    Timings,
    WorkerInfo,
    decode_from_worker,
    decode_to_worker,
    encode,
    model_key,
    pack_embedding,
    parse_request_fields,
    parse_result_fields,
    request_fields,
    request_shape_problem,
    result_fields,
    unpack_embedding,
)


def test_result_round_trips_through_json_and_pickle():
    result = ClassifyResult(
        id="7", top=(LabelScore("犬", 0.9, 0.4), LabelScore("猫", 0.1)), timings=Timings(1.0, 2.0, 3.0, 4.0, 5)
    )
    assert ClassifyResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    assert pickle.loads(pickle.dumps(result)) == result
    failure = ClassifyResult.failure("8", ErrorCode.CORRUPT, "broken")
    assert ClassifyResult.from_dict(failure.to_dict()) == failure
    assert not failure.ok and result.ok


def test_request_pickles_with_bytes():
    request = ClassifyRequest(id="1", image=b"\xff\xd8", labels=("犬",))
    assert pickle.loads(pickle.dumps(request)) == request
    assert request.version == PROTOCOL_VERSION


def test_error_codes_are_stable_strings():
    # the bot and other clients match on these values: changing one is a protocol change
    assert {c.value for c in ErrorCode} == {
        "empty_image",
        "too_large",
        "too_many_pixels",
        "bad_dimensions",
        "unsupported_format",
        "corrupt_image",
        "unreadable",
        "bad_labels",
        "bad_request",
        "queue_full",
        "deadline_exceeded",
        "unavailable",
        "internal_error",
        "worker_crashed",
    }


def test_shared_modules_do_not_import_torch():
    code = (
        "import sys, wakeru.protocol, wakeru.config, wakeru.labels, model_worker;"
        "bad = [m for m in ('torch', 'transformers', 'PIL') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- protocol 4: embeddings ---------------------------------------------------------------


def _wire(fields: dict) -> dict[bytes, bytes]:
    """request_fields as Redis hands them back: every key and value as bytes."""
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}


def test_embeddings_pack_as_little_endian_float32():
    values = (0.6, -0.8, 0.0)
    packed = pack_embedding(values)
    assert packed == struct.pack("<3f", *values) and len(packed) == 12
    assert unpack_embedding(packed) == pytest.approx(values)
    assert unpack_embedding(b"") == ()
    with pytest.raises(ValueError, match="multiple of 4"):
        unpack_embedding(b"\0" * 5)


def test_model_key_names_the_revision_only_when_there_is_one():
    assert model_key("google/siglip", "abc123") == "google/siglip@abc123"
    assert model_key("google/siglip", None) == "google/siglip"
    assert model_key("google/siglip", "") == "google/siglip"
    info = WorkerInfo(
        model="m", family="siglip", device="cpu", dtype="float32", input_size=224, embedding_size=3, pid=1
    )
    assert info.revision == "" and info.model_key == "m"
    pinned = WorkerInfo.from_dict({**info.to_dict(), "revision": "v2"})
    assert pinned.revision == "v2" and pinned.model_key == "m@v2"
    older = {k: v for k, v in info.to_dict().items() if k != "revision"}
    assert WorkerInfo.from_dict(older).revision == ""  # optional: an older heartbeat still parses
    with pytest.raises(ProtocolError, match="revision"):
        WorkerInfo.from_dict({**info.to_dict(), "revision": 7})


def test_a_result_with_an_embedding_round_trips_as_plain_json():
    embedding = pack_embedding((0.6, -0.8, 0.0, 0.0))
    result = ClassifyResult(id="9", top=(LabelScore("犬", 1.0),), embedding=embedding, embedding_model="m@r")
    d = result.to_dict()
    assert isinstance(d["embedding"], str) and d["embedding"].isascii()  # base64 text: JSON-ready
    assert ClassifyResult.from_dict(json.loads(json.dumps(d))) == result
    assert pickle.loads(pickle.dumps(result)) == result
    plain = ClassifyResult(id="10")
    assert plain.to_dict()["embedding"] is None and ClassifyResult.from_dict(plain.to_dict()) == plain
    old = {k: v for k, v in plain.to_dict().items() if k not in ("embedding", "embedding_model")}
    assert ClassifyResult.from_dict(old) == plain  # missing fields: no embedding
    assert parse_result_fields(_wire(result_fields(result))) == result


@pytest.mark.parametrize(
    "bad", [{"embedding": "AAAAAAA="}, {"embedding": "not base64!"}, {"embedding": 5}, {"embedding_model": 3}]
)
def test_a_malformed_embedding_is_refused(bad):
    d = {**ClassifyResult(id="1").to_dict(), **bad}
    with pytest.raises(ValueError):
        ClassifyResult.from_dict(d)
    with pytest.raises(ProtocolError):
        decode_from_worker(("result", d))


@pytest.mark.parametrize(
    "request_",
    [
        ClassifyRequest(id="a", image=b"\xff\xd8", labels=("犬",), embed=True, deadline=5.0),
        ClassifyRequest(id="b", image=b"\xff\xd8", labels=(), embed=True),
        ClassifyRequest(id="c", image=b"", labels=(), query="赤い 丸, 👨‍👩‍👧"),
        ClassifyRequest(id="d", image=bytes(range(256)), labels=("犬", "猫")),
    ],
)
def test_embed_and_query_travel_the_pipe_and_redis(request_):
    assert decode_to_worker(pickle.loads(pickle.dumps(encode(Classify(request_))))) == Classify(request_)
    assert parse_request_fields(_wire(request_fields(request_, "r"))) == (request_, "r")
    assert ClassifyRequest.from_dict(request_.to_dict()) == request_


def test_missing_embed_and_query_default_to_a_plain_classification():
    d = ClassifyRequest(id="a", image=b"x", labels=("犬",)).to_dict()
    del d["embed"], d["query"]
    parsed = ClassifyRequest.from_dict(d)
    assert parsed.embed is False and parsed.query is None
    fields = _wire(request_fields(ClassifyRequest(id="a", image=b"x", labels=("犬",)), "r"))
    del fields[b"embed"], fields[b"query"]
    assert parse_request_fields(fields)[0] == parsed


@pytest.mark.parametrize(
    "payload",
    [
        {"id": "q1", "image": b"", "labels": [], "embed": "yes"},
        {"id": "q1", "image": b"", "labels": [], "embed": 1},
        {"id": "q1", "image": b"", "labels": [], "query": 42},
        {"id": "q1", "image": b"", "labels": [], "query": [b"x"]},
    ],
)
def test_wrongly_typed_embed_or_query_is_a_protocol_error_naming_the_request(payload):
    with pytest.raises(ProtocolError) as caught:
        decode_to_worker(("classify", payload))
    assert caught.value.request_id == "q1"


@pytest.mark.parametrize(
    "fields, message",
    [({"embed": b"yes"}, "embed"), ({"labels": b'{"a": 1}'}, "labels"), ({"labels": b"[1]"}, "labels")],
)
def test_malformed_redis_entries_are_refused(fields, message):
    wire = {**_wire(request_fields(ClassifyRequest(id="a", image=b"x", labels=("犬",)), "r")), **fields}
    with pytest.raises(ValueError, match=message):
        parse_request_fields({k.encode() if isinstance(k, str) else k: v for k, v in wire.items()})


@pytest.mark.parametrize(
    "request_, problem",
    [
        (ClassifyRequest(id="a", image=b"x", labels=("犬",)), None),
        (ClassifyRequest(id="a", image=b"x", labels=(), embed=True), None),
        (ClassifyRequest(id="a", image=b"", labels=(), query=" 犬 "), None),
        (ClassifyRequest(id="a", image=b"", labels=(), query="x" * MAX_QUERY_LENGTH), None),
        (ClassifyRequest(id="a", image=b"x", labels=()), "no labels"),
        (ClassifyRequest(id="a", image=b"x", labels=(), query="犬"), "without an image"),
        (ClassifyRequest(id="a", image=b"", labels=("犬",), query="犬"), "without labels"),
        (ClassifyRequest(id="a", image=b"", labels=(), query="  "), "empty"),
        (ClassifyRequest(id="a", image=b"", labels=(), query="x" * 2000), "limit is 1,000"),
        (ClassifyRequest(id="a", image=b"x", labels=(), embed="1"), "true or false"),  # type: ignore[arg-type]
    ],
)
def test_the_request_shape_rules(request_, problem):
    found = request_shape_problem(request_)
    assert found is None if problem is None else problem in found
