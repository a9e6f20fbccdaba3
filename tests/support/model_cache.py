"""An on-disk cache for the models the tests build: the tiny trained SigLIP (tests/support/train_tiny.py,
about a minute of training) and the tiny random-weight checkpoints of every family
(model_worker/devtools/checkpoints.py).

Each entry is keyed by a hash of everything that decides its content: the source of the code that
builds it (checkpoints.py; train_tiny.py and shapes.py for the trained model), the versions of the
libraries that run that code (torch, transformers, tokenizers, sentencepiece, safetensors, Pillow,
numpy), the Python version and LAYOUT (bump it when this file changes what an entry holds).
Changing any of them builds a new entry; a fresh clone or CI machine builds each once.

Where: $WAKERU_TEST_CACHE, else $XDG_CACHE_HOME/wakeru-tests, else ~/.cache/wakeru-tests (never in
the repository). WAKERU_TEST_CACHE=off builds everything afresh and stores nothing.

Concurrency: an entry is built in a temporary directory beside its final place and renamed into
place once complete, so a reader never sees half an entry; a lock file per entry makes a second
pytest run that wants the same entry wait for the first instead of building it twice. Tests get
a copy in their own temporary directory, so no test can change the cached files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_LIBRARIES = ("torch", "transformers", "tokenizers", "sentencepiece", "safetensors", "pillow", "numpy")
LAYOUT = 1  # what an entry holds and how it is built here
_CHECKPOINT_SOURCES = ("model_worker/devtools/checkpoints.py",)
_TRAINED_SOURCES = (*_CHECKPOINT_SOURCES, "tests/support/train_tiny.py", "tests/support/shapes.py")


def cache_root() -> Path | None:
    """The cache directory, or None when caching is switched off."""
    configured = os.environ.get("WAKERU_TEST_CACHE", "").strip()
    if configured.lower() in ("off", "0", "no", "false"):
        return None
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "wakeru-tests"


def key(kind: str, sources: tuple[str, ...]) -> str:
    h = hashlib.sha256(f"{kind}\0layout={LAYOUT}\0".encode())
    for name in sources:
        h.update(name.encode() + b"\0" + (REPO / name).read_bytes() + b"\0")
    for library in _LIBRARIES:
        try:
            version = metadata.version(library)
        except metadata.PackageNotFoundError:
            version = "-"
        h.update(f"{library}={version}\0".encode())
    h.update(f"python={sys.version_info[:3]}\0".encode())
    return f"{kind}-{h.hexdigest()[:16]}"


def cached(kind: str, sources: tuple[str, ...], build: Callable[[Path], None]) -> Path | None:
    """The cache entry for `kind`, built by build(directory) on a miss; None when caching is off."""
    root = cache_root()
    if root is None:
        return None
    root.mkdir(parents=True, exist_ok=True)
    entry = root / key(kind, sources)
    if (entry / ".complete").is_file():
        return entry
    with open(root / f"{entry.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run building it: wait for it, then use its entry
        if (entry / ".complete").is_file():
            return entry
        building = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=root))
        try:
            build(building)
            (building / ".complete").write_text("")
            if entry.exists():  # an incomplete leftover (from before the .complete marker was written)
                shutil.rmtree(entry)
            os.rename(building, entry)
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(building)
    return entry


def _copy(entry: Path, out: Path) -> Path:
    shutil.copytree(entry, out, ignore=shutil.ignore_patterns(".complete", "info.json"), symlinks=True)
    return out


def _train(directory: Path) -> dict:
    from tests.support.train_tiny import train

    info = train(directory)
    assert info["steps"] >= 1500, info  # stopped by the time guard far too early: the machine is overloaded
    return info


def cached_trained_model(out: Path) -> Path:
    """The trained model (tests/support/train_tiny.py), copied to `out`."""

    def build(directory: Path) -> None:
        info = _train(directory / "model")
        (directory / "info.json").write_text(json.dumps(info))

    entry = cached("trained-siglip-shapes", _TRAINED_SOURCES, build)
    if entry is None:
        _train(out)
        return out
    return _copy(entry / "model", out)


def cached_checkpoints(out: Path) -> dict[str, Path]:
    """family → a tiny random-weight checkpoint (model_worker.devtools.checkpoints), copied under `out`."""
    from model_worker.devtools.checkpoints import FAMILIES
    from model_worker.devtools.checkpoints import build as build_checkpoint

    def build(directory: Path) -> None:
        for family in FAMILIES:
            build_checkpoint(family, directory / family, "tiny")

    entry = cached("checkpoints-tiny", _CHECKPOINT_SOURCES, build)
    if entry is None:
        return {family: build_checkpoint(family, out / family, "tiny") for family in FAMILIES}
    return {family: _copy(entry / family, out / family) for family in FAMILIES}
