"""`python -m model_worker eval` with the tiny trained model (tests/support/train_tiny.py) on a generated labelled
folder: the figures are the engine's own answers, a planted mislabelled picture shows up as the confusion, and
--json, --plot, --templates and two --model entries do what they say."""

from __future__ import annotations

import contextlib
import io
import json
import random
import warnings
from pathlib import Path

import pytest

from model_worker.cli import main
from model_worker.evaluation.run import template_variants
from model_worker.model.adapters import load_adapter
from model_worker.model.engine import Engine
from tests.conftest import make_config
from tests.support.shapes import CLASSES, draw, encode
from wakeru.protocol import ClassifyRequest

PLANTED_TRUE, PLANTED_SHOWS = "赤い丸", "青い四角"  # a picture of 青い四角 filed under 赤い丸


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval-set")
    rng = random.Random(11)
    for label in CLASSES:
        for n in range(2):
            im = draw(label, (rng.randint(120, 300), rng.randint(120, 300)), rng)
            (root / label).mkdir(exist_ok=True)
            (root / label / f"{n}.png").write_bytes(encode(im, "PNG"))
    (root / PLANTED_TRUE / "planted.png").write_bytes(encode(draw(PLANTED_SHOWS, (200, 200), rng), "PNG"))
    (root / "緑の丸" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "緑の丸" / ".DS_Store").write_bytes(b"x")
    (root / "緑の丸" / "notes.txt").write_text("not a picture")
    return root


def _engine_top1(trained_model: Path, dataset: Path) -> tuple[float, list[tuple[str, str]]]:
    """What the engine itself answers for the folder's readable pictures: (top-1 accuracy, [(true, predicted)])."""
    labels = tuple(sorted(p.name for p in dataset.iterdir() if p.is_dir()))
    pictures = [(p.parent.name, p.read_bytes()) for p in sorted(dataset.glob("*/*.png"))]
    config = make_config(trained_model, model={"dtype": "float32"})
    with Engine(load_adapter(config.model), config) as engine:
        results = engine.classify(
            [ClassifyRequest(id=str(i), image=d, labels=labels, top_k=5) for i, (_, d) in enumerate(pictures)]
        )
    pairs = [(truth, r.top[0].label) for (truth, _), r in zip(pictures, results)]
    return sum(t == p for t, p in pairs) / len(pairs), pairs


@pytest.fixture(scope="module")
def report(trained_model, dataset, checkpoints, tmp_path_factory) -> tuple[dict, Path]:
    """One run with every option (the model loads are the slow part): the trained model twice and a random one."""
    plot = tmp_path_factory.mktemp("plot") / "matrix.png"
    models = [str(trained_model), str(trained_model), str(checkpoints["siglip"])]
    argv = ["eval", *(arg for model in models for arg in ("--model", model)), "--dtype", "float32"]
    argv += ["--json", "--templates", "--plot", str(plot), str(dataset)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return json.loads(out.getvalue()), plot


def test_accuracy_and_confusions_are_the_engines_own(trained_model, dataset, report):
    data, _ = report
    expected, pairs = _engine_top1(trained_model, dataset)
    trained = data["models"][0]
    assert data["images"] == 14 and data["skipped"] == {"hidden": 1, "not an image": 1}
    assert trained["answered"] == 13 and trained["top1"] == pytest.approx(expected)
    assert trained["top5"] >= trained["top1"]
    expected_confusions: dict[tuple[str, str], int] = {}
    for truth, predicted in pairs:
        if truth != predicted:
            expected_confusions[truth, predicted] = expected_confusions.get((truth, predicted), 0) + 1
    assert {(c["true"], c["predicted"]): c["count"] for c in trained["confusions"]} == expected_confusions
    # the trained model knows its shapes: the planted picture is the confusion it makes
    assert (PLANTED_TRUE, PLANTED_SHOWS) in expected_confusions
    rows = {row["label"]: row for row in trained["per_label"]}
    assert rows[PLANTED_TRUE]["support"] == 3 and rows["緑の丸"]["support"] == 2
    assert trained["unreadable"]["count"] == 1
    (failure,) = trained["unreadable"]["first"]
    assert failure["path"].endswith("broken.jpg") and failure["error"] == "corrupt_image"
    assert trained["images_per_second"] > 0


def test_two_models_get_a_mcnemar_figure(report):
    data, _ = report
    assert [(c["a"], c["b"]) for c in data["comparisons"]] == [(0, 1), (0, 2), (1, 2)]  # every pair of the three
    same = data["comparisons"][0]
    # the same model twice: identical answers, no discordant pictures
    assert same["difference"] == 0 and same["only_a_right"] == same["only_b_right"] == 0 and same["p_value"] == 1
    other = data["comparisons"][1]  # trained vs the random checkpoint
    assert other["model_b"] == data["models"][2]["model"] != other["model_a"]
    assert other["pictures"] == 13
    assert other["difference"] == pytest.approx(other["top1_b"] - other["top1_a"], abs=1e-5)
    assert 0 < other["p_value"] <= 1 and other["only_a_right"] + other["only_b_right"] > 0


def test_templates_report_every_variant(report):
    data, _ = report
    variants = data["models"][0]["templates"]
    names = [v["variant"] for v in variants]
    config = make_config()
    assert names == [name for name, _ in template_variants(config.model.templates)]
    assert names[0] == "configured ensemble" and names[-1] == "bare label"
    assert all(f"alone {t}" in names for t in config.model.templates)
    # the configured ensemble ranks exactly as the engine does (the same embeddings, the same label rule)
    assert variants[0]["top1"] == pytest.approx(data["models"][0]["top1"])
    assert all(0 <= v["top1"] <= v["top5"] <= 1 for v in variants)


def test_plot_is_a_png(report):
    _, plot = report
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_draws_japanese_labels_in_ipaexgothic():
    from model_worker.evaluation.plot import confusion_figure

    labels = list(CLASSES[:3])
    figure = confusion_figure(labels, [("モデル", [[2, 1, 0], [0, 3, 0], [1, 0, 1]])])
    ax = figure.axes[0]
    ticks = ax.get_xticklabels()
    assert [t.get_text() for t in ticks] == labels and [t.get_text() for t in ax.get_yticklabels()] == labels
    assert all(t.get_fontfamily() == ["IPAexGothic"] for t in [*ticks, *ax.get_yticklabels(), ax.title])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure.canvas.draw()  # renders every text: a glyph the font lacks would warn here
    assert not [w for w in caught if "missing from font" in str(w.message)]


def test_text_output(trained_model, dataset, capsys):
    code = main(["eval", "--model", str(trained_model), "--dtype", "float32", str(dataset)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "top-1" in out and "top-5" in out and "images/s" in out
    assert f"{PLANTED_TRUE} → {PLANTED_SHOWS}: 1" in out
    assert "1 image(s) could not be read" in out and "broken.jpg: corrupt_image" in out
    assert err == ""  # no progress line: stderr is not a terminal here
    print(out)  # shown with -s: the report a person reads


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: ["eval", str(root / "missing")], "dataset: no such file or folder"),
        (lambda root: ["eval", str(root)], "holds no images"),
        (lambda root: ["eval", "--plot", str(root / "x.jpg"), str(root)], "--plot writes a PNG"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, make, message):
    assert main(make(tmp_path)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_csv_of_the_same_pictures_gives_the_same_figures(trained_model, dataset, report, tmp_path):
    """The CSV form of the folder (paths relative to the CSV) gives the same figures; a row without a label is refused."""
    rows = ["path,label"]
    for picture in sorted(dataset.glob("*/*.png")) + sorted(dataset.glob("*/*.jpg")):
        rows.append(f"{picture.relative_to(dataset.parent).as_posix()},{picture.parent.name}")
    listing = dataset.parent / "set.csv"
    listing.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["eval", "--model", str(trained_model), "--dtype", "float32", "--json", str(listing)]) == 0
    from_csv = json.loads(out.getvalue())["models"][0]
    from_folder = report[0]["models"][0]
    assert from_csv["top1"] == pytest.approx(from_folder["top1"]) and from_csv["answered"] == from_folder["answered"]
    listing.write_text("path,label\n" + rows[1].split(",")[0] + ",\n", encoding="utf-8")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["eval", "--model", str(trained_model), str(listing)]) == 2
    assert "label is empty" in err.getvalue() and err.getvalue().count("\n") == 1
