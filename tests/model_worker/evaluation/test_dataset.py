"""Reading a labelled folder, labels.txt, a CSV and the export-corrections layout; every malformed case says what
is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_worker.evaluation.dataset import DatasetError, read_dataset

LIMITS = dict(max_count=25, max_length=50)


def _touch(path: Path, data: bytes = b"\xff\xd8\xff") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folder_one_subfolder_per_label_skips_hidden_and_non_image_files(tmp_path):
    _touch(tmp_path / "犬" / "a.jpg")
    _touch(tmp_path / "犬" / "nested" / "b.PNG")  # a label folder's sub-folders belong to it
    _touch(tmp_path / "犬" / ".c.jpg")  # hidden
    _touch(tmp_path / "猫" / "d.webp")
    _touch(tmp_path / "猫" / "notes.txt")  # not an image
    _touch(tmp_path / ".git" / "x.jpg")  # a hidden folder: its files are hidden files
    _touch(tmp_path / "top.jpg")  # no label folder
    dataset = read_dataset(tmp_path, **LIMITS)
    assert dataset.labels == ("犬", "猫")
    assert [(p.path.relative_to(tmp_path).as_posix(), p.label) for p in dataset.items] == [
        ("犬/a.jpg", "犬"),
        ("犬/nested/b.PNG", "犬"),
        ("猫/d.webp", "猫"),
    ]
    assert dataset.skipped == {"hidden": 2, "not an image": 1, "outside a label folder": 1}


def test_labels_txt_maps_folders_to_labels_tab_or_comma(tmp_path):
    _touch(tmp_path / "dog" / "a.jpg")
    _touch(tmp_path / "cat" / "b.jpg")
    _touch(tmp_path / "bird" / "c.jpg")
    (tmp_path / "labels.txt").write_text("# folder → label\ndog\t犬\ncat, 猫 \n\n", encoding="utf-8")
    dataset = read_dataset(tmp_path, **LIMITS)
    assert dataset.labels == ("bird", "猫", "犬")  # folders in name order; bird keeps its own name
    assert {p.path.name: p.label for p in dataset.items} == {"a.jpg": "犬", "b.jpg": "猫", "c.jpg": "bird"}
    assert not dataset.skipped  # labels.txt is not counted as a skipped file


def test_labels_are_spelled_as_the_engine_spells_them(tmp_path):
    _touch(tmp_path / "犬=🐕" / "a.jpg")  # a label with its emoji: the label is its name
    _touch(tmp_path / "\u30ab\u3099" / "b.jpg")  # decomposed カ + ゛: one spelling (NFC)
    dataset = read_dataset(tmp_path, **LIMITS)
    assert set(dataset.labels) == {"犬", "ガ"}


def test_export_corrections_layout(tmp_path):
    """bot/tools/export_corrections.py: OUT/<label>/<attachment id>.<ext> plus OUT/corrections.csv (a listing)."""
    _touch(tmp_path / "犬" / "1001.jpg")
    _touch(tmp_path / "猫" / "1002.png")
    (tmp_path / "corrections.csv").write_text(
        "attachment_id,message_id,channel_id,file,label,shown,members\n1001,1,2,犬/1001.jpg,犬,猫,1\n", encoding="utf-8"
    )
    dataset = read_dataset(tmp_path, **LIMITS)
    assert dataset.labels == ("犬", "猫") and len(dataset.items) == 2 and not dataset.skipped


def test_the_exports_listing_gives_back_labels_a_folder_name_could_not_spell(tmp_path):
    """The export names folders safely ("a/b" → "a_b"); its corrections.csv keeps the label, and labels.txt,
    written by a person, still wins."""
    _touch(tmp_path / "a_b" / "1001.jpg")
    _touch(tmp_path / "_上" / "1002.jpg")
    _touch(tmp_path / "猫" / "1003.jpg")
    (tmp_path / "corrections.csv").write_text(
        "attachment_id,message_id,channel_id,file,label,shown,members\n"
        "1001,1,2,a_b/1001.jpg,a/b,猫,1\n1002,1,2,_上/1002.jpg,../上,猫,2\n1003,1,2,猫/1003.jpg,猫,犬,1\n",
        encoding="utf-8",
    )
    dataset = read_dataset(tmp_path, **LIMITS)
    assert {p.path.name: p.label for p in dataset.items} == {"1001.jpg": "a/b", "1002.jpg": "../上", "1003.jpg": "猫"}
    (tmp_path / "labels.txt").write_text("a_b\tAとB\n", encoding="utf-8")
    assert {p.path.name: p.label for p in read_dataset(tmp_path, **LIMITS).items}["1001.jpg"] == "AとB"


def test_csv_of_path_and_label_relative_to_the_csv(tmp_path):
    _touch(tmp_path / "pics" / "a.jpg")
    _touch(tmp_path / "pics" / "b.jpg")
    _touch(tmp_path / "pics" / "c.gif")
    _touch(tmp_path / "pics" / "readme.md")
    _touch(tmp_path / "pics" / ".hidden.jpg")
    csv = tmp_path / "set.csv"
    csv.write_text(
        "path,label\npics/a.jpg,犬\npics/b.jpg, 猫\npics/c.gif,犬\npics/readme.md,猫\npics/.hidden.jpg,猫\n",
        encoding="utf-8",
    )
    dataset = read_dataset(csv, **LIMITS)
    assert dataset.labels == ("犬", "猫")
    assert [(p.path.name, p.label) for p in dataset.items] == [("a.jpg", "犬"), ("b.jpg", "猫"), ("c.gif", "犬")]
    assert dataset.skipped == {"hidden": 1, "not an image": 1}
    # without a header too
    csv.write_text("pics/a.jpg,犬\npics/b.jpg,猫\n", encoding="utf-8")
    assert len(read_dataset(csv, **LIMITS).items) == 2


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root / "missing", "no such file or folder"),
        (lambda root: root, "holds no images"),  # an empty folder
        (lambda root: _touch(root / "犬" / "a.jpg").parent.parent, "needs at least 2"),
        (lambda root: _touch(root / "犬" / "a.txt").parent.parent, "holds no images"),
        (lambda root: _touch(root / "notes.txt"), "neither a folder nor a .csv"),
    ],
)
def test_malformed_folders(tmp_path, make, message):
    with pytest.raises(DatasetError, match=message):
        read_dataset(make(tmp_path), **LIMITS)


def test_a_folder_name_that_breaks_the_label_rules_is_named(tmp_path):
    _touch(tmp_path / ("長" * 60) / "a.jpg")
    _touch(tmp_path / "猫" / "b.jpg")
    with pytest.raises(DatasetError, match="folder '長長長.*the limit is 50") as e:
        read_dataset(tmp_path, **LIMITS)
    assert "\n" not in str(e.value)
    # through labels.txt: the folder and the label are both named
    (tmp_path / ("長" * 60)).rename(tmp_path / "long")
    (tmp_path / "labels.txt").write_text("long\t犬=x\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"folder 'long' \(label '犬=x' in labels.txt\).*not one emoji"):
        read_dataset(tmp_path, **LIMITS)
    (tmp_path / "labels.txt").write_text("gone\t犬\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="names the folder 'gone'"):
        read_dataset(tmp_path, **LIMITS)
    (tmp_path / "labels.txt").write_text("just-a-folder\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="line 1: expected"):
        read_dataset(tmp_path, **LIMITS)


def test_too_many_labels_for_the_config(tmp_path):
    for i in range(3):
        _touch(tmp_path / f"l{i}" / "a.jpg")
    with pytest.raises(DatasetError, match="3 labels; labels.max_count is 2"):
        read_dataset(tmp_path, max_count=2, max_length=50)


@pytest.mark.parametrize(
    "rows, message",
    [
        ("path,label\npics/a.jpg,犬\npics/nope.jpg,猫\n", r"line 3: no such file .*nope.jpg"),
        ("path,label\npics/a.jpg,犬\npics/a.jpg,\n", "line 3: the label is empty"),
        ("path,label\npics/a.jpg,犬\npics/a.jpg,\x07bell\n", "line 3: label .* control characters"),
        ("path,label\npics/a.jpg,犬\npics/a.jpg,猫=nope\n", "line 3: label .* not one emoji"),
        ("path\npics/a.jpg\n", "line 1: expected two columns"),
        ("path,label,extra\npics/a.jpg,犬,1\n", "line 1: expected two columns"),
        ("path,label\n,犬\n", "line 2: the path is empty"),
        ("path,label\n", "lists no images"),
        ("path,label\npics/a.jpg,犬\n", "needs at least 2"),
    ],
)
def test_malformed_csv(tmp_path, rows, message):
    _touch(tmp_path / "pics" / "a.jpg")
    csv = tmp_path / "set.csv"
    csv.write_text(rows, encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        read_dataset(csv, **LIMITS)
