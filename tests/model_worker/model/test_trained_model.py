"""A tiny model trained on coloured shapes: the right Japanese label must win through
the engine and the CLI, which proves decoding, preprocessing, tokenisation and template
ensembling feed the model what it learnt from."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from model_worker.cli import NONE_FITS, format_table
from model_worker.model.adapters import load_adapter
from model_worker.model.engine import Engine
from tests.conftest import REPO, make_config
from tests.support.shapes import CLASSES, draw, encode
from wakeru.protocol import ClassifyRequest

FORMATS = [("JPEG", dict(quality=88)), ("PNG", {}), ("WEBP", dict(quality=90)), ("GIF", {}), ("BMP", {})]


def fresh_images(seed: int, count: int):
    """Pictures the model never saw: other seeds, sizes up to 1200 px, every accepted format."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        label = CLASSES[i % len(CLASSES)]
        side = rng.randint(48, 1200)
        im = draw(label, (side, int(side * rng.uniform(0.6, 1.6))), rng)
        fmt, kw = FORMATS[i % len(FORMATS)]
        out.append((label, fmt, encode(im, fmt, **kw)))
    return out


@pytest.fixture(scope="module")
def engine(trained_model):
    config = make_config(trained_model)  # the default Japanese templates, ensembled
    with Engine(load_adapter(config.model), config) as engine:
        yield engine


def accuracy(engine, images) -> float:
    results = engine.classify(
        [ClassifyRequest(id=str(i), image=data, labels=CLASSES) for i, (_, _, data) in enumerate(images)]
    )
    assert all(r.ok for r in results), [r.message for r in results if not r.ok]
    return float(np.mean([r.top[0].label == label for r, (label, _, _) in zip(results, images)]))


def test_right_label_wins_through_the_engine(engine):
    images = fresh_images(seed=1234, count=60)
    assert accuracy(engine, images) >= 0.9
    # every format on its own too
    for fmt, _ in FORMATS:
        subset = [x for x in images if x[1] == fmt]
        assert accuracy(engine, subset) >= 0.75, fmt


def test_a_preprocessing_mistake_would_be_caught(engine, monkeypatch):
    """Swap the colour channels (a classic RGB/BGR bug): red and blue shapes flip labels."""
    images = fresh_images(seed=99, count=30)
    good = accuracy(engine, images)
    prepare = engine.adapter.preprocessor.prepare

    def bgr(im):
        out = prepare(im)
        out["pixels"] = np.ascontiguousarray(out["pixels"][..., ::-1])
        return out

    monkeypatch.setattr(engine.adapter.preprocessor, "prepare", bgr)
    assert accuracy(engine, images) < good - 0.25


@pytest.mark.slow
def test_right_label_wins_through_the_cli(trained_model, tmp_path):
    paths, truth = [], []
    for i, (label, fmt, data) in enumerate(fresh_images(seed=7, count=12)):
        path = tmp_path / f"img{i}.{fmt.lower()}"
        path.write_bytes(data)
        paths.append(str(path))
        truth.append(label)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")  # an SVG named .jpg
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "model_worker",
            "classify",
            "--model",
            str(trained_model),
            "--labels",
            "、".join(CLASSES),
            "--json",
            *paths,
            str(broken),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["image"] for line in lines] == paths + [str(broken)]
    correct = sum(line["top"][0]["label"] == label for line, label in zip(lines, truth))
    assert correct >= 11, lines
    for line in lines[:-1]:
        assert len(line["top"]) == 3
        assert set(line["top"][0]) == {"label", "score", "match", "fits"}  # SigLIP: its own match probability
        assert line["top"][0]["fits"] and line["none_fits"] is False
        scores = [t["score"] for t in line["top"]]
        assert scores == sorted(scores, reverse=True) and 0 <= scores[-1] <= scores[0] <= 1
    assert lines[-1]["error"] == "unsupported_format" and "SVG" in lines[-1]["message"]


def _one(engine, label: str, labels, seed: int = 5):
    image = encode(draw(label, (200, 160), random.Random(seed)), "PNG")
    result = engine.submit(ClassifyRequest(id=label, image=image, labels=tuple(labels))).result()
    assert result.ok, result.message
    return result


def test_two_labels_that_do_not_fit_are_marked_whatever_their_share(engine):
    """A blue square against 「赤い丸、黄色い三角」: one of the two takes most of the share, but the
    model's own match says neither describes it, and the answer says so."""
    result = _one(engine, "青い四角", ["赤い丸", "黄色い三角"])
    assert result.top[0].score > 0.5  # a softmax over two labels always crowns one
    assert all(s.match < 0.01 and s.fits is False for s in result.top)
    assert result.none_fits
    table = format_table("square.png", result)
    assert NONE_FITS in table and "✗" in table


def test_a_clear_match_among_many_labels_fits_and_its_match_does_not_depend_on_the_set(engine):
    many = [*CLASSES, "犬", "猫", "車", "山", "花", "空の写真", "夜景"]
    for label in CLASSES:
        among_many = _one(engine, label, many)
        assert among_many.top[0].label == label and among_many.top[0].fits and not among_many.none_fits
        assert NONE_FITS not in format_table("x.png", among_many)
        pair = _one(engine, label, [label, "黄色い三角"])
        # the share moves with the set; the match is the label's own
        assert pair.top[0].match == pytest.approx(among_many.top[0].match, abs=1e-5)
