"""`python -m bot export-corrections --guild ID OUT_DIR`: the pictures members corrected, as a labelled folder.

OUT_DIR/<label>/<attachment id>.<ext>, one sub-folder per label: the layout an evaluation reads, so a community can
measure a model on its own pictures. An image's label is its members' choice (the most chosen; ties go to the latest
choice). Images whose members chose "none of these" are left out. Each picture is fetched from Discord with the bot's
token (attachment URLs expire, so the message is read again for a fresh one); a message that is gone is skipped and
its corrections are deleted, as the bot does when it sees the delete. OUT_DIR/corrections.csv lists what was
written: ids, the label, what the answer showed and how many members chose, never who. Exporting again into the
same folder replaces the earlier export (a picture whose label changed moves); a folder with other files is
refused.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord

from bot.services.corrections import consensus
from bot.store import Correction, StorageError, open_store
from wakeru.config import Config

log = logging.getLogger("wakeru.export")

_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f]')
CONCURRENCY = 4  # messages read at once (discord.py keeps to the rate limits)


def folder_name(label: str) -> str:
    """A label as a directory name that is valid everywhere (no separators, no leading dots)."""
    name = _UNSAFE.sub("_", unicodedata.normalize("NFC", label)).strip().lstrip(".")
    return name[:100] or "_"


@dataclass
class ExportReport:
    written: int = 0  # pictures in OUT_DIR
    none_of_these: int = 0  # images whose members chose "none of these"
    gone: int = 0  # messages deleted since (their corrections are deleted too)
    unreadable: int = 0  # messages or files the bot could not read (permissions, network)

    def __str__(self) -> str:
        return (
            f"{self.written} picture(s) written; left out: {self.none_of_these} marked none of these, "
            f"{self.gone} gone from Discord, {self.unreadable} unreadable"
        )


class NotAnExport(Exception):
    """OUT_DIR holds files that no earlier export wrote: nothing is overwritten or mixed in."""


def clear_previous(out_dir: Path) -> int:
    """Remove what an earlier export wrote to OUT_DIR (the files its corrections.csv lists, then the label folders
    left empty), so that a picture whose label changed since is not left under the old one. Returns how many files
    went. Raises NotAnExport when OUT_DIR has other files."""
    listing = out_dir / "corrections.csv"
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return 0
    if not listing.is_file():
        raise NotAnExport(f"{out_dir} is not empty and holds no earlier export (no corrections.csv): use a new folder")
    with listing.open(encoding="utf-8", newline="") as f:
        listed = [row.get("file") or "" for row in csv.DictReader(f)]
    removed = 0
    for name in listed:
        path = (out_dir / name).resolve()
        if out_dir.resolve() in path.parents and path.is_file():  # never outside OUT_DIR, whatever the file says
            path.unlink()
            removed += 1
    for folder in out_dir.iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    listing.unlink()
    return removed


async def export(config: Config, token: str, guild_id: int, out_dir: Path) -> ExportReport:
    """Write the folder; raises StorageError (the database), discord.LoginFailure (the token) and NotAnExport."""
    clear_previous(out_dir)
    store = await open_store(config.storage.url)
    report = ExportReport()
    try:
        rows = await store.corrections(guild_id)
        members: dict[int, int] = {}
        for row in rows:
            members[row.attachment_id] = members.get(row.attachment_id, 0) + 1
        chosen = consensus(rows)
        wanted = [c for c in chosen.values() if c.chosen is not None]
        report.none_of_these = len(chosen) - len(wanted)
        folders: dict[str, str] = {}  # label → its folder (two labels may clean up to one name)
        written: list[tuple[int, int, int, str, str, str, int]] = []
        gone: dict[int, list[int] | None] = {}  # message → the attachments still on it (None: deleted)
        limit = asyncio.Semaphore(CONCURRENCY)
        client = discord.Client(intents=discord.Intents.none())
        async with client:
            await client.login(token)

            async def one(correction: Correction) -> None:
                async with limit:
                    picture = await _picture(client, correction)
                if isinstance(picture, Gone):
                    gone[correction.message_id] = picture.kept
                    return
                if picture is None:
                    report.unreadable += 1
                    return
                filename, data = picture
                label = correction.chosen or ""
                if label not in folders:
                    folders[label] = _unique(folder_name(label), set(folders.values()))
                target = out_dir / folders[label] / f"{correction.attachment_id}{Path(filename).suffix.lower()}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                written.append(
                    (
                        correction.attachment_id,
                        correction.message_id,
                        correction.channel_id,
                        target.relative_to(out_dir).as_posix(),
                        label,
                        correction.shown,
                        members[correction.attachment_id],
                    )
                )

            await asyncio.gather(*(one(c) for c in wanted))
        report.written, report.gone = len(written), len(gone)
        deleted = [message for message, kept in gone.items() if kept is None]
        if deleted:
            await store.forget_corrections(guild_id, message_ids=deleted)
        for message, kept in gone.items():
            if kept is not None:  # an edit removed the picture: only its corrections go
                await store.keep_correction_attachments(message, kept)
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / "corrections.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["attachment_id", "message_id", "channel_id", "file", "label", "shown", "members"])
            written.sort(key=lambda line: line[3])
            writer.writerows(written)
    finally:
        await store.close()
    return report


@dataclass(frozen=True)
class Gone:
    """The picture is gone from Discord: its message was deleted (kept None), or an edit removed it (kept: the
    attachments still on the message)."""

    kept: list[int] | None


async def _picture(client: discord.Client, correction: Correction) -> tuple[str, bytes] | Gone | None:
    """(file name, bytes) of the corrected picture; Gone; None when unreadable (permissions, network)."""
    try:
        message = await client.http.get_message(correction.channel_id, correction.message_id)
    except discord.NotFound:
        return Gone(None)
    except discord.HTTPException as e:
        log.warning("message %s not readable: %s", correction.message_id, e)
        return None
    attachments: list[Any] = list(message.get("attachments") or [])
    attachment = next((a for a in attachments if int(a["id"]) == correction.attachment_id), None)
    if attachment is None:
        return Gone([int(a["id"]) for a in attachments])
    try:
        data = await client.http.get_from_cdn(attachment["url"])
    except discord.HTTPException as e:
        log.warning("picture %s not downloaded: %s", correction.attachment_id, e)
        return None
    return str(attachment.get("filename") or f"{correction.attachment_id}.img"), data


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    return candidate


def run(config: Config, token: str, guild_id: int, out_dir: Path) -> int:
    try:
        report = asyncio.run(export(config, token, guild_id, out_dir))
    except StorageError as e:
        print(f"error: storage.url: {e}", file=sys.stderr)
        return 2
    except discord.LoginFailure:
        print("error: Discord refused DISCORD_TOKEN (401 Unauthorized)", file=sys.stderr)
        return 2
    except NotAnExport as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{out_dir}: {report}")
    return 0
