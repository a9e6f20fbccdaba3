import json
import subprocess
import sys

import pytest

from model_worker.cli import main
from tests.conftest import REPO, SAMPLES

SAMPLE_FILES = sorted(str(p) for p in SAMPLES.glob("*.jpg"))


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_one_object_per_input_in_order(checkpoints, capsys, tmp_path):
    missing = str(tmp_path / "missing.jpg")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    code, out, err = run(
        capsys,
        "classify",
        "--model",
        str(checkpoints["siglip"]),
        "--labels",
        "犬,猫、象\n鳥",
        "--top-k",
        "2",
        "--json",
        SAMPLE_FILES[0],
        missing,
        str(empty),
        SAMPLE_FILES[1],
    )
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [l["image"] for l in lines] == [SAMPLE_FILES[0], missing, str(empty), SAMPLE_FILES[1]]
    assert len(lines[0]["top"]) == 2 and {t["label"] for t in lines[0]["top"]} <= {"犬", "猫", "象", "鳥"}
    assert lines[1] == {"image": missing, "error": "unreadable", "message": lines[1]["message"]}
    assert "No such file" in lines[1]["message"]
    assert lines[2]["error"] == "empty_image"
    assert "top" in lines[3]


def test_table_output(checkpoints, capsys, tmp_path):
    bad = tmp_path / "page.html"
    bad.write_text("<html><body>hi</body></html>")
    code, out, _ = run(
        capsys,
        "classify",
        "--model",
        str(checkpoints["clip"]),
        "--labels",
        "犬,猫,宇宙飛行士",
        SAMPLE_FILES[0],
        str(bad),
    )
    assert code == 0
    assert SAMPLE_FILES[0] in out and "%" in out and "1. " in out and "3. " in out
    assert "error unsupported_format: this file is not an accepted image (HTML page)" in out


def test_default_labels_and_label_file(checkpoints, capsys, tmp_path):
    code, out, _ = run(capsys, "classify", "--model", str(checkpoints["siglip"]), "--json", SAMPLE_FILES[0])
    from wakeru.config import Config

    assert code == 0 and {t["label"] for t in json.loads(out)["top"]} <= set(Config().labels.default)
    label_file = tmp_path / "labels.txt"
    label_file.write_text("ロケット=🚀\n宇宙飛行士\nコーヒー\n", encoding="utf-8")  # as in Discord: 🚀 is not read
    code, out, _ = run(
        capsys,
        "classify",
        "--model",
        str(checkpoints["siglip"]),
        "--label-file",
        str(label_file),
        "--top-k",
        "5",
        "--json",
        SAMPLE_FILES[0],
    )
    assert code == 0 and {t["label"] for t in json.loads(out)["top"]} == {"ロケット", "宇宙飛行士", "コーヒー"}


def test_more_images_than_the_queue_holds(checkpoints, capsys, monkeypatch):
    monkeypatch.setenv("WAKERU_WORKER__QUEUE_SIZE", "2")
    monkeypatch.setenv("WAKERU_WORKER__MAX_BATCH", "2")
    files = SAMPLE_FILES * 3
    code, out, _ = run(capsys, "classify", "--model", str(checkpoints["siglip"]), "--json", *files)
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(lines) == len(files) and all("top" in l for l in lines)


@pytest.mark.parametrize(
    "argv, env, expected",
    [
        (
            ["classify", "--model", "/nonexistent/model", "x.jpg"],
            {},
            "model directory /nonexistent/model does not exist",
        ),
        (["classify", "--labels", " , ", "x.jpg"], {}, "labels: no labels given"),
        (["classify", "--labels", "a" * 60, "x.jpg"], {}, "the limit is 50"),
        (["classify", "--label-file", "/nonexistent.txt", "x.jpg"], {}, "cannot read label file"),
        (["classify", "--top-k", "0", "x.jpg"], {}, "--top-k must be at least 1"),
        (["classify"], {}, "the following arguments are required: IMAGE"),
        (["classify", "--labels", "a", "--label-file", "f", "x.jpg"], {}, "not allowed with argument"),
        (["frobnicate"], {}, "invalid choice"),
        (["classify", "x.jpg"], {"WAKERU_WORKER__MAX_BATCH": "0"}, "invalid configuration: worker.max_batch"),
        (["classify", "--device", "gpu", "x.jpg"], {}, "invalid configuration: model.device: must be auto, cpu, cuda"),
        (["classify", "x.jpg"], {"WAKERU_CONFIG": "/nonexistent.yaml"}, "config file '/nonexistent.yaml' not found"),
    ],
)
def test_usage_config_and_load_errors_exit_2_with_one_line(capsys, monkeypatch, argv, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err


def test_remote_code_and_offline_hub_errors(checkpoints, capsys):
    code, _, err = run(capsys, "classify", "--model", str(checkpoints["japanese-stable-clip"]), SAMPLE_FILES[0])
    assert code == 2 and "trust_remote_code: true" in err
    code, _, err = run(capsys, "classify", SAMPLE_FILES[0])  # the default hub model, offline and not cached
    assert code == 2 and "google/siglip2-base-patch16-256 is not in the local Hugging Face cache" in err


def test_remote_code_model_classifies_when_trusted(checkpoints, capsys, monkeypatch):
    monkeypatch.setenv("WAKERU_MODEL__TRUST_REMOTE_CODE", "true")
    code, out, err = run(
        capsys, "classify", "--model", str(checkpoints["japanese-stable-clip"]), "--json", SAMPLE_FILES[0]
    )
    assert code == 0, err
    assert len(json.loads(out)["top"]) == 3


@pytest.mark.slow
def test_module_entry_point_runs_as_a_process(checkpoints):
    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "model_worker", "classify", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )

    # both at once: each spends its time importing torch and transformers, on a core of its own
    good = start("--model", str(checkpoints["siglip2"]), "--labels", "犬,猫", "--json", SAMPLE_FILES[0])
    bad = start("--model", "/nope", "a.jpg")
    out, err = good.communicate(timeout=300)
    assert good.returncode == 0, err
    assert json.loads(out)["image"] == SAMPLE_FILES[0]
    _, err = bad.communicate(timeout=300)
    assert bad.returncode == 2 and err.strip().count("\n") == 0


def test_bench_reports_the_three_speeds(checkpoints, capsys):
    code, out, err = run(
        capsys,
        "bench",
        "--model",
        str(checkpoints["siglip"]),
        "--images",
        "6",
        "--naive-images",
        "2",
        "--labels",
        "5",
        "--batch",
        "3",
        "--image-size",
        "320x240",
        "--json",
    )
    assert code == 0, err
    report = json.loads(out)
    for key in ("naive_img_s", "engine_img_s", "model_only_img_s", "p50_ms", "p99_ms"):
        assert report[key] > 0, key
    import torch

    from model_worker.model.loading import resolve_dtype

    assert report["device"] == "cpu"
    assert report["dtype"] == str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    assert report["model"] == str(checkpoints["siglip"]) and report["labels"] == 5 and report["batch"] == 3
    assert report["p99_ms"] >= report["p50_ms"]
    assert "with_new_label_sets" not in report  # only when asked for
    code, out, _ = run(
        capsys,
        "bench",
        "--model",
        str(checkpoints["clip"]),
        "--images",
        "2",
        "--labels",
        "犬,猫",
        "--batch",
        "2",
        "--image-size",
        "200x150",
        "--new-label-sets",
        "2",
        "--new-set-size",
        "20",
    )
    assert code == 0 and "naive loop" in out and "vision tower" in out and "engine" in out
    assert "while 2 sets of 20 new labels arrived" in out or "while 1 sets of 20 new labels arrived" in out, out


def test_bench_argument_errors(capsys):
    assert run(capsys, "bench", "--image-size", "big")[0] == 2
    assert run(capsys, "bench", "--images", "0")[0] == 2


def test_make_checkpoint_builds_a_loadable_model(tmp_path, capsys):
    code, out, _ = run(capsys, "make-checkpoint", "--family", "clip", "--preset", "tiny", str(tmp_path / "ck"))
    assert code == 0 and out.strip() == str(tmp_path / "ck")
    code, out, err = run(capsys, "classify", "--model", str(tmp_path / "ck"), "--json", SAMPLE_FILES[0])
    assert code == 0, err


def test_similarity_ranks_a_recompressed_copy_above_another_picture(trained_model, capsys, tmp_path):
    """`similarity` is how an operator calibrates index.repost_threshold on their own pictures."""
    import io
    import random

    from PIL import Image

    from tests.support import shapes

    original = shapes.encode(shapes.draw("緑の四角", (320, 240), random.Random(7)), "PNG")
    image = Image.open(io.BytesIO(original)).convert("RGB").resize((160, 120))
    copy = io.BytesIO()
    image.save(copy, "JPEG", quality=60)
    files = {
        "orig.png": original,
        "copy.jpg": copy.getvalue(),
        "other.png": shapes.encode(shapes.draw("赤い丸", (320, 240), random.Random(8)), "PNG"),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    code = main(["similarity", "--model", str(trained_model), "--json", *(str(tmp_path / n) for n in files)])
    assert code == 0
    pairs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(pairs) == 3 and pairs == sorted(pairs, key=lambda p: -p["cosine"])
    best = pairs[0]
    assert {best["a"].rsplit("/", 1)[1], best["b"].rsplit("/", 1)[1]} == {"orig.png", "copy.jpg"}
    assert best["cosine"] > 0.999 > pairs[1]["cosine"]
    assert main(["similarity", "--model", str(trained_model), str(tmp_path / "orig.png")]) == 2
    assert main(["similarity", "--model", str(trained_model), str(tmp_path / "orig.png"), str(tmp_path / "nope")]) == 1
