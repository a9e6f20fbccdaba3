import json
import pickle
import subprocess
import sys

from wakeru.protocol import PROTOCOL_VERSION, ClassifyRequest, ClassifyResult, ErrorCode, LabelScore, Timings


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
