"""The sample images /classify can use instead of an attachment."""

from __future__ import annotations

import asyncio
from pathlib import Path

from .attachments import image_format


def sample_names(directory: str | Path, formats: tuple[str, ...]) -> list[str]:
    root = Path(directory)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_file() and image_format(None, p.name, formats))


async def read_sample(directory: str | Path, name: str, formats: tuple[str, ...]) -> bytes | None:
    """The bytes of a listed sample, or None: only names from the listing, so no path tricks."""
    if name not in sample_names(directory, formats):
        return None
    return await asyncio.to_thread((Path(directory) / name).read_bytes)
