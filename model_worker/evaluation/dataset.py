"""A labelled set of pictures: a folder with one sub-folder per label, or a CSV of `path,label`.

Folder: DATASET/<label>/… (sub-folders of a label folder belong to it). An optional DATASET/labels.txt maps folder
names to labels, one `folder<TAB>label` or `folder,label` per line (a label a folder name cannot spell). The folder
`python -m bot export-corrections` writes is read the same way: its corrections.csv is a listing, not a picture.

CSV: one `path,label` row per picture (an optional `path,label` header), paths relative to the CSV's folder.

Labels follow the label rules (wakeru.labels) with the config's limits, spelled as the engine spells them, so the
engine's answers compare with them directly. Hidden files and files that are not images (by their extension) are
skipped and counted; whether an image decodes is the engine's business (its own error codes).
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from wakeru.labels import LabelError, label_name, normalise_labels

# Extensions the engine's decoder may read (model_worker/image/sniff.py: JPEG, PNG, GIF, WebP, BMP, TIFF; the content
# decides, the name only spares reading notes and listings). Anything else is counted as "not an image".
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
LABELS_FILE = "labels.txt"
EXPORT_LISTING = "corrections.csv"  # written by `python -m bot export-corrections` next to the label folders


class DatasetError(Exception):
    """A dataset that cannot be evaluated; the message (one line) says what to fix."""


@dataclass(frozen=True)
class Item:
    path: Path
    label: str


@dataclass
class Dataset:
    items: list[Item]
    labels: tuple[str, ...]  # every label of the set, the candidates each picture is classified against
    skipped: Counter[str] = field(default_factory=Counter)  # reason → files left out

    def support(self) -> Counter[str]:
        return Counter(item.label for item in self.items)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _take(path: Path, label: str, hidden: bool, items: list[Item], skipped: Counter[str]) -> None:
    """A listed file, as folders and CSVs both sort them: hidden files and non-images are counted as skipped."""
    if hidden:
        skipped["hidden"] += 1
    elif not _is_image(path):
        skipped["not an image"] += 1
    else:
        items.append(Item(path, label))


def _check_label(text: str, where: str, max_length: int) -> str:
    """One label by the label rules, as the engine spells it (its name: "犬=🐕" is the label 犬)."""
    try:
        (label,) = normalise_labels([text], max_count=1, max_length=max_length)
    except LabelError as e:
        if e.code == "empty":
            raise DatasetError(f"{where}: the label is empty") from None
        raise DatasetError(f"{where}: {e}") from None
    # the engine reads labels with emoji=False; normalising the name again makes it the engine's spelling
    return normalise_labels([label_name(label)], max_count=1, max_length=max_length, emoji=False)[0]


def _check_set(labels: list[str], max_count: int) -> tuple[str, ...]:
    distinct = tuple(dict.fromkeys(labels))
    if len(distinct) < 2:
        found = f" ({distinct[0]})" if distinct else ""
        raise DatasetError(f"the dataset has {len(distinct)} label(s){found}; an evaluation needs at least 2")
    if len(distinct) > max_count:
        raise DatasetError(f"the dataset has {len(distinct)} labels; labels.max_count is {max_count}")
    return distinct


def read_labels_file(path: Path) -> dict[str, str]:
    """folder name → label text, from `folder<TAB>label` or `folder,label` lines (blank lines and # comments skipped)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None
    mapping: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        sep = "\t" if "\t" in line else ","
        folder, found, label = line.partition(sep)
        if not found or not folder.strip():
            raise DatasetError(f"{path}, line {number}: expected `folder<TAB>label` or `folder,label`, got {line!r}")
        mapping[folder.strip()] = label.strip()
    return mapping


def read_export_listing(path: Path) -> dict[str, str]:
    """folder name → label, from the corrections.csv of `python -m bot export-corrections`: the export makes label
    names safe as folder names ("a/b" → "a_b"), and its listing keeps the label as members chose it."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None
    mapping: dict[str, str] = {}
    for row in rows:
        folder, _, rest = (row.get("file") or "").partition("/")
        if folder and rest and row.get("label"):
            mapping.setdefault(folder, row["label"])
    return mapping


def read_folder(root: Path, *, max_count: int, max_length: int) -> Dataset:
    skipped: Counter[str] = Counter()
    listing = read_export_listing(root / EXPORT_LISTING) if (root / EXPORT_LISTING).is_file() else {}
    # labels.txt, written by a person, wins over the export's listing
    mapping = {**listing, **(read_labels_file(root / LABELS_FILE) if (root / LABELS_FILE).is_file() else {})}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = {p.name for p in folders}
    for name in mapping:
        if name not in names and name not in listing:
            raise DatasetError(f"{root / LABELS_FILE} names the folder {name!r}, which is not in {root}")
    for entry in root.iterdir():
        if entry.is_dir():
            if entry.name.startswith("."):
                skipped["hidden"] += sum(1 for p in entry.rglob("*") if p.is_file())
        elif entry.name.startswith("."):
            skipped["hidden"] += 1
        elif entry.name not in (LABELS_FILE, EXPORT_LISTING):
            # a picture at the top has no label folder: it cannot be scored
            skipped["outside a label folder"] += 1
    items: list[Item] = []
    labels: list[str] = []
    for folder in folders:
        text = mapping.get(folder.name, folder.name)
        source = EXPORT_LISTING if folder.name in listing and text == listing[folder.name] else LABELS_FILE
        where = f"folder {folder.name!r}" + (f" (label {text!r} in {source})" if folder.name in mapping else "")
        label = _check_label(text, where, max_length)
        labels.append(label)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            _take(path, label, _hidden(path, root), items, skipped)
    if not items:
        raise DatasetError(f"{root} holds no images in label folders (one sub-folder per label)")
    return Dataset(items, _check_set(labels, max_count), skipped)


def read_csv(path: Path, *, max_count: int, max_length: int) -> Dataset:
    base = path.parent
    skipped: Counter[str] = Counter()
    items: list[Item] = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None
    for number, row in enumerate(rows, 1):
        if not row or not any(cell.strip() for cell in row):
            continue
        if number == 1 and [c.strip().lower() for c in row] == ["path", "label"]:
            continue  # the header
        if len(row) != 2:
            raise DatasetError(f"{path}, line {number}: expected two columns `path,label`, got {len(row)}")
        name, text = row[0].strip(), row[1]
        where = f"{path}, line {number}"
        if not name:
            raise DatasetError(f"{where}: the path is empty")
        label = _check_label(text, where, max_length)
        image = base / name
        if not image.is_file():
            raise DatasetError(f"{where}: no such file {image}")
        hidden = any(part.startswith(".") and part not in (".", "..") for part in Path(name).parts)
        _take(image, label, hidden, items, skipped)
    if not items:
        raise DatasetError(f"{path} lists no images")
    # the label set: every label the CSV names, in order of first appearance
    return Dataset(items, _check_set([i.label for i in items], max_count), skipped)


def read_dataset(path: str | Path, *, max_count: int, max_length: int) -> Dataset:
    """The folder or CSV at `path`; DatasetError with one line saying what is wrong."""
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"no such file or folder: {root}")
    if root.is_dir():
        return read_folder(root, max_count=max_count, max_length=max_length)
    if root.suffix.lower() != ".csv":
        raise DatasetError(f"{root} is neither a folder nor a .csv file")
    return read_csv(root, max_count=max_count, max_length=max_length)
