"""The sample images /classify can use instead of an attachment."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.services.attachments import image_format


def sample_names(directory: str | Path, formats: tuple[str, ...]) -> tuple[str, ...]:
    """Listed once at start-up (autocomplete runs on every keystroke); names fit a Discord choice."""
    root = Path(directory)
    if not root.is_dir():
        return ()
    return tuple(
        sorted(
            p.name for p in root.iterdir() if p.is_file() and len(p.name) <= 100 and image_format(None, p.name, formats)
        )
    )


async def read_sample(directory: str | Path, name: str, listed: tuple[str, ...]) -> bytes | None:
    """The bytes of a listed sample, or None: only listed names, so no path tricks; None if it vanished."""
    if name not in listed:
        return None
    try:
        return await asyncio.to_thread((Path(directory) / name).read_bytes)
    except OSError:
        return None
