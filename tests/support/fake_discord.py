"""A local fake Discord (REST + gateway + interactions + CDN) for end-to-end tests.

The REAL discord.py client talks to it.  Point a client at it with::

    discord.http.Route.BASE = fake.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    await bot.start(fake.token)

The server runs in a background thread with its own event loop, so plain synchronous
tests (and tests whose bot lives in a subprocess) can drive it.  Every public method is
synchronous and thread-safe.  Do not call the blocking ``wait_*`` methods from the event
loop that runs an in-process bot (that would freeze the bot): use ``asyncio.to_thread``.

At a glance: ``post_message(...)`` (a user posts; MESSAGE_CREATE), ``interact(...)`` /
``autocomplete(...)`` (INTERACTION_CREATE; returns a :class:`FakeInteraction` / the choices),
``wait_for_message(since=fake.mark())`` over ``sent_messages``, ``synced_commands``,
``attachment_requests``, ``unknown_requests`` (should stay empty), ``dispatch(event, data)``.

Behaviour worth knowing (it mirrors Discord, so the bot under test must cope):
- JSON responses carry ``Content-Type: application/json`` exactly (discord.py only parses
  that exact value; aiohttp's ``json_response`` adds a charset and breaks it).
- Attachment URLs are signed (``ex``/``is``/``hm``); a URL without the right ``hm``, or an
  attachment expired with :meth:`FakeDiscord.expire_attachments`, gets 404 like the CDN.
- The media proxy (``proxy_url``) honours ``width``/``height`` by shrinking to fit inside
  them (never enlarging), re-encoded in the same format; bytes Pillow cannot open come
  back unchanged (a proxy that gives up), never a 415.
- Interaction callbacks later than ``interaction_deadline`` seconds (3.0, as on Discord;
  ``None`` disables) get 404 "Unknown interaction" (10062); a second callback gets 400
  (40060); a followup before any callback gets 404 "Unknown Webhook" (10015).
- Messages over Discord's limits (2,000 characters, 10 embeds, embed field limits, 6,000
  embed characters) and invalid command payloads get 400 "Invalid Form Body" (50035) and
  are recorded in ``invalid_requests``.
- discord.py fires ``on_ready`` ``guild_ready_timeout`` (2 s by default) after
  GUILD_CREATE; events dispatched before that are still processed normally.
- Messages sent with ``nonce`` and ``enforce_nonce: true`` (discord.py's ``channel.send`` always
  sends both, with a random nonce unless given one) are deduplicated per channel for
  ``nonce_window`` seconds: a repeat answers the first message and creates nothing (recorded in
  ``deduplicated_messages``); a nonce over 25 characters gets 400.

- A session identified without the Message Content intent gets MESSAGE_CREATE with empty
  ``content``, ``attachments``, ``embeds`` and ``components``, except for messages that mention
  the bot, messages the bot sent, and DMs (Discord's "Message Content Intent" rules).
- After a deferral (callback type 5), the first followup becomes the deferred response: it is
  ephemeral exactly when the deferral was, whatever its own flags; later followups (and any
  followup once @original was edited) keep their own flags.  ``DELETE @original`` marks
  ``FakeInteraction.original_deleted``; a followup to a deleted deferred response that was never
  answered gets 404 "Unknown Message" (10008).

Fault injection, for reliability tests (every event is timestamped with ``time.monotonic()``):
- Gateway: ``disconnect_all(code)`` drops the websockets (discord.py RESUMEs; missed dispatches
  are replayed with their original ``s``, then RESUMED), ``invalidate_sessions(resumable)`` sends
  op 9, ``forget_sessions()`` makes the next RESUME get op 9 ``d=false`` (discord.py then
  IDENTIFYs, after its ``before_identify_hook``: 5 s by default).  ``gateway_events``,
  ``identify_count()``, ``resume_count()`` and ``wait_reconnected(since)`` (seconds until ready
  again) measure the outcome.
- REST: ``inject_rest_faults(method, path_regex, statuses, processed=..., retry_after=...)``
  answers the next matching requests with Discord-shaped 429s / 5xx / any status, optionally
  after doing the work (``processed=True``); they are listed in ``injected_faults``.
- Interactions: ``expire_interactions()`` invalidates every token issued so far (webhook routes
  401 50027, callbacks 404 10062), as ``interaction_token_lifetime`` (15 min) does on its own.

Guilds and sharding (as Discord does it):
- One guild exists from the start (``guild_id``, ``channel_id``, ``other_channel_id``, ``thread_id``);
  ``add_guild(shard=k, shard_count=n)`` adds more (a :class:`FakeGuild` with its own channels and
  thread; its id lands on shard ``k`` of ``n``: ``(guild_id >> 22) % n == k``, see
  ``new_guild_id``/``shard_of``).  ``post_message``/``interact`` take the guild from the channel.
- ``GET /gateway/bot`` answers ``recommended_shards`` (1 unless set) and a ``session_start_limit``
  (``max_concurrency`` 1; ``remaining`` counts down with each IDENTIFY); ``GET /gateway`` only the URL.
- An IDENTIFY with ``shard: [id, count]`` gets READY carrying that shard and only the guilds of that
  shard (one GUILD_CREATE each); every dispatch about a guild (``guild_id`` in the payload, or the
  ``id`` of a ``GUILD_*`` event) goes only to the ready sessions owning the guild's shard; DMs (no
  guild) go to shard 0.  Sessions without ``shard`` (unsharded clients) get everything, as before.
  Refused, with the websocket closed: ``id >= count`` (or a malformed shard, or a count other than
  the one live sharded sessions use) with 4010 "Invalid shard"; when ``require_sharding`` is set,
  fewer than ``recommended_shards`` shards (an unsharded client counts as 1) with 4011 "Sharding
  required".  Refusals are listed in ``refused_identifies``.
- ``sessions()`` lists the connections (session id, shard, token, readiness); ``deliveries``
  records which session (and shard, token) carried each ``dispatch``; ``wait_ready(guild_id=...)``
  and ``wait_shards_ready(count)`` wait for the right shards.  ``add_token()`` makes another token
  of the same bot valid, so a test running several bot processes can tell them apart
  (``requests``/``sent_messages`` entries and sessions carry the ``token`` they used).

The image index surfaces (history, fresh URLs, deletions, permissions, threads, components, edits):
- History: ``GET /channels/{id}/messages`` (``limit`` 1-100, default 50; one of ``before``/``after``/
  ``around``; always newest first) over every stored message (posted, sent by the bot, or stored
  without any dispatch by ``seed_history(channel_id, [(author, filename, data, when), ...])``, whose
  ids are snowflakes of ``when``: see ``snowflake_at``/``snowflake_time``).  Needs View Channel (403
  50001); without Read Message History the page is ``[]``.  ``history_rate_limit(per_second, per=1.0)``
  limits it per channel with ``X-RateLimit-*`` headers (discord.py waits) and 429s for clients that do
  not; ``route_counts`` / ``request_count(route, path=...)`` count requests per route template
  (``"GET /channels/{channel}/messages"``; each ``requests`` record has its ``route``).
- ``GET /channels/{c}/messages/{m}`` (and history, and a context menu's resolved message, and a
  clicked message) re-signs attachment URLs that ``expire_attachments()`` killed; ``attachment_url_works``
  tells whether a URL is still served.  Unknown/deleted message: 404 10008; no Read Message History: 403 50013.
- Deletions as gateway events: ``delete_message`` (MESSAGE_DELETE ``{id, channel_id, guild_id}``),
  ``bulk_delete`` (MESSAGE_DELETE_BULK ``{ids, channel_id, guild_id}``), ``edit_message(...,
  attachments=[kept])`` (MESSAGE_UPDATE, whole message), ``delete_channel`` (CHANNEL_DELETE, or
  THREAD_DELETE ``{id, guild_id, parent_id, type}``), ``remove_from_guild`` (GUILD_DELETE ``{id}``; the
  guild's channel routes then answer 403 50001).  The bot's own REST deletes (``DELETE
  .../messages/{m}``, ``POST .../messages/bulk-delete``) dispatch MESSAGE_DELETE(_BULK) too.  Deleted
  messages' attachments stop being served.
- Permissions: ``add_role``, ``add_user(name, roles=...)``, ``set_member_roles``, ``add_channel(...,
  overwrites=[overwrite(id, allow=..., deny=..., member=...)], type=0|4|15|16, parent_id=...)``,
  ``set_overwrites``; ``channel_permissions(user, channel_id)`` computes what discord.py's
  ``permissions_for`` does (owner/Administrator: all; @everyone, role and member overwrites; threads use
  the parent's; private threads need membership or Manage Threads).  Interaction payloads carry these
  channel permissions (``member.permissions``, ``app_permissions``) and the member's stored roles.
- Threads: ``add_thread(parent_id, name, private=..., members=[...], owner=..., archived=...)``
  (THREAD_CREATE when the bot can see it), ``add_thread_member``; ``GET /channels/{thread}/thread-members[/{user}]``
  (404 10007 for a non-member); ``GET /channels/{id}`` answers 403 50001 for a channel the bot cannot see.
- Components: messages keep the ``components`` the bot sent (validated: custom_id 1-100 and unique, at
  most 5 rows of 5 buttons, one select per row, labels up to 80); ``click(message, custom_id, user=...,
  roles=..., values=...)`` sends INTERACTION_CREATE type 3; callbacks 6 (DEFERRED_UPDATE_MESSAGE) and 7
  (UPDATE_MESSAGE, edits the clicked message) are accepted, and ``@original`` is then that message.
- Edits: every bot edit of a message (``PATCH /channels/{c}/messages/{m}``, PATCH of @original or a
  followup, callback 7) is in ``edits_of(message_id)`` / ``wait_for_edits(message_id, n)``; edits may
  carry files (``attachments`` lists the kept ones).  ``attachment://name`` in an embed's image or
  thumbnail becomes the attachment's URL in the stored message; entries keep what was sent, and other
  schemes than http(s)/attachment get 400.

Forums, reactions, components on private answers, user-installed apps:
- Forum (15) and media (16) channels: ``add_channel(..., type=15, tags=[...], flags=REQUIRE_TAG)``
  (``available_tags`` ``{id, name, moderated, emoji_id, emoji_name}``; at most 20, names 1-20),
  ``set_available_tags`` (CHANNEL_UPDATE), ``tag_id(channel, name)``.  ``create_post(forum, title=...,
  tags=[names or ids])`` is a user's post: a thread whose starter message has the thread's id;
  THREAD_CREATE (``newly_created``) then MESSAGE_CREATE.  ``PATCH /channels/{thread}`` (``Thread.edit``)
  sets ``applied_tags``/``name``/``archived``/``locked`` (another's post, ``locked`` and moderated tags
  need Manage Threads: 403 50013; unknown tags or more than 5: 400 50035), THREAD_UPDATE, recorded in
  ``thread_edits`` (``wait_for_thread_edit``, ``applied_tag_names``); other channels need Manage Channels
  (``channel_edits``).
- Reactions: ``PUT/DELETE .../reactions/{emoji}/@me`` (Read Message History, and Add Reactions unless the
  emoji is already there: 403 50013; unknown emoji 400 10014; a 21st emoji 400 30010) are stored on the
  message (``reactions [{count, me, emoji}]``), in ``reactions`` (decoded: "👍" or "name:id"; see
  ``reactions_on``/``wait_for_reaction``) and dispatched (MESSAGE_REACTION_ADD/REMOVE).  ``add_emoji``
  makes a guild's custom emoji (GUILD_EMOJIS_UPDATE); ``react`` is a user's reaction.
- ``click`` finds the messages of interaction answers (ephemeral ones too: ``FakeInteraction.messages``),
  lets only their user click an ephemeral one, and checks a select's ``values`` (options, min/max).
- User-installed apps: ``synced_command(name)`` shows ``integration_types``/``contexts`` as synced;
  ``interact(..., context=1|2)`` in a DM/group DM from ``add_private_channel`` (no guild, a ``user``),
  ``interact(..., installed_in_guild=False)`` in a guild, e.g. one the bot is not in
  (``add_guild(bot_member=False)``: nothing dispatched, its REST answers 403 50001).  Without "0" in
  ``authorizing_integration_owners`` a sixth followup gets 400 (40094).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import io
import itertools
import json
import math
import mimetypes
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, unquote

import emoji as emoji_lib
from aiohttp import WSMsgType, web

__all__ = [
    "CHAT_INPUT",
    "MESSAGE_CONTEXT",
    "REQUIRE_TAG",
    "FakeDiscord",
    "FakeGuild",
    "FakeInteraction",
    "Perm",
    "overwrite",
    "shard_of",
    "snowflake_at",
    "snowflake_time",
]

CHAT_INPUT = 2  # interact(type=...): a slash command (interaction type 2, data.type 1)
MESSAGE_CONTEXT = 3  # interact(type=...): a message context menu (data.type 3)
MESSAGE_CONTENT_INTENT = 1 << 15
REQUIRE_TAG = 1 << 4  # channel flag of a forum/media channel: a post needs a tag (add_channel(flags=...))
DISCORD_EPOCH_MS = 1420070400000
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024
# Where a handler leaves the entry it recorded, for a processed fault to mark (aiohttp ≥ 3.12 wants a key).
_ENTRY_KEY: Any = web.RequestKey("fake_entry", dict) if hasattr(web, "RequestKey") else "fake_entry"


class Perm:
    """Permission bits (https://discord.com/developers/docs/topics/permissions)."""

    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    USE_APPLICATION_COMMANDS = 1 << 31
    MANAGE_THREADS = 1 << 34
    SEND_MESSAGES_IN_THREADS = 1 << 38

    MEMBER = (
        VIEW_CHANNEL
        | SEND_MESSAGES
        | READ_MESSAGE_HISTORY
        | ADD_REACTIONS
        | EMBED_LINKS
        | ATTACH_FILES
        | USE_APPLICATION_COMMANDS
        | SEND_MESSAGES_IN_THREADS
    )
    MODERATOR = MANAGE_CHANNELS | MANAGE_GUILD | MANAGE_MESSAGES | MANAGE_THREADS
    BOT = MEMBER | MANAGE_MESSAGES
    ALL = (1 << 53) - 1  # what an owner or an Administrator has
    # What a recipient may do in a DM or group DM (there are no overwrites there).
    PRIVATE = (MEMBER & ~SEND_MESSAGES_IN_THREADS) | MENTION_EVERYONE | USE_EXTERNAL_EMOJIS


# Events a session only gets with their gateway intent (Discord's Gateway Intents list); the others go to every
# session, as the fake has always sent them.
_EVENT_INTENTS = {
    "GUILD_EMOJIS_UPDATE": 1 << 3,  # GUILD_EXPRESSIONS
    "MESSAGE_REACTION_ADD": 1 << 10,  # GUILD_MESSAGE_REACTIONS
    "MESSAGE_REACTION_REMOVE": 1 << 10,
}


def overwrite(target_id: int, *, allow: int = 0, deny: int = 0, member: bool = False) -> dict:
    """A channel permission overwrite as Discord sends it: ``type`` 0 for a role (the guild id is
    @everyone), 1 for a member; ``allow``/``deny`` as strings."""
    return {"id": str(target_id), "type": 1 if member else 0, "allow": str(int(allow)), "deny": str(int(deny))}


# ---------------------------------------------------------------------------- builders


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard that carries a guild's events: ``(guild_id >> 22) % shard_count``."""
    return (int(guild_id) >> 22) % shard_count


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def _as_datetime(when: datetime | float | int | str | None) -> datetime:
    """A datetime (naive ones are UTC), a POSIX timestamp, an ISO 8601 string, or None (now)."""
    if when is None:
        return datetime.now(timezone.utc)
    if isinstance(when, datetime):
        return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    if isinstance(when, str):
        return _as_datetime(datetime.fromisoformat(when))
    return datetime.fromtimestamp(float(when), timezone.utc)


def snowflake_at(when: datetime | float | int | str, low: int = 0) -> int:
    """The snowflake of a moment: ``(ms since 2015-01-01) << 22``, plus ``low`` (22 bits) to keep
    ids of one millisecond apart; discord.py's ``time_snowflake(dt)`` gives the ``low=0`` one."""
    ms = int(_as_datetime(when).timestamp() * 1000) - DISCORD_EPOCH_MS
    return (ms << 22) | (low & 0x3FFFFF)


def snowflake_time(snowflake: int | str) -> datetime:
    """When a snowflake was made (UTC)."""
    return datetime.fromtimestamp(((int(snowflake) >> 22) + DISCORD_EPOCH_MS) / 1000, timezone.utc)


def _json(data: Any, status: int = 200) -> web.Response:
    # Exactly "application/json": discord.py compares the header verbatim.
    return web.Response(status=status, body=json.dumps(data).encode(), headers={"Content-Type": "application/json"})


def _error(status: int, message: str, code: int = 0, errors: dict | None = None) -> web.Response:
    body: dict[str, Any] = {"message": message, "code": code}
    if errors:
        body["errors"] = {k: {"_errors": [{"code": "INVALID", "message": v}]} for k, v in errors.items()}
    return _json(body, status)


def make_user(user_id: int, username: str, *, bot: bool = False, global_name: str | None = None) -> dict:
    """A user object as Discord sends it."""
    return {
        "id": str(user_id),
        "username": username,
        "global_name": global_name,
        "discriminator": "4242" if bot else "0",
        "avatar": None,
        "bot": bot,
        "public_flags": 0,
        "flags": 0,
    }


def make_member(user: dict, *, roles: Iterable[int] = (), permissions: int | None = None) -> dict:
    """A guild member object; ``permissions`` (interaction payloads only) as a string."""
    member = {
        "user": user,
        "roles": [str(r) for r in roles],
        "nick": None,
        "avatar": None,
        "joined_at": "2024-01-01T00:00:00+00:00",
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
        "communication_disabled_until": None,
    }
    if permissions is not None:
        member["permissions"] = str(permissions)
    return member


def _role(role_id: int, name: str, permissions: int, position: int, **extra: Any) -> dict:
    return {
        "id": str(role_id),
        "name": name,
        "permissions": str(permissions),
        "position": position,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "managed": False,
        "mentionable": False,
        "icon": None,
        "unicode_emoji": None,
        "flags": 0,
        **extra,
    }


def _text_channel(channel_id: int, guild_id: int, name: str, position: int) -> dict:
    return {
        "id": str(channel_id),
        "type": 0,
        "guild_id": str(guild_id),
        "name": name,
        "position": position,
        "permission_overwrites": [],
        "nsfw": False,
        "topic": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "parent_id": None,
        "flags": 0,
    }


def _thread(thread_id: int, guild_id: int, parent_id: int, owner_id: int, name: str, *, private: bool = False) -> dict:
    thread = {
        "id": str(thread_id),
        "type": 12 if private else 11,
        "guild_id": str(guild_id),
        "parent_id": str(parent_id),
        "owner_id": str(owner_id),
        "name": name,
        "last_message_id": None,
        "message_count": 0,
        "member_count": 1,
        "total_message_sent": 0,
        "rate_limit_per_user": 0,
        "flags": 0,
        "thread_metadata": {
            "archived": False,
            "auto_archive_duration": 1440,
            "locked": False,
            "archive_timestamp": "2024-01-01T00:00:00+00:00",
            "create_timestamp": "2024-01-01T00:00:00+00:00",
        },
    }
    if private:
        thread["thread_metadata"]["invitable"] = True
    return thread


def _channel_of_type(channel_id: int, guild_id: int, name: str, position: int, ctype: int, parent_id: int | None):
    channel = _text_channel(channel_id, guild_id, name, position)
    channel.update(type=ctype, parent_id=str(parent_id) if parent_id else None)
    if ctype in (15, 16):  # forum / media: posts are threads
        channel.update(
            available_tags=[],
            default_reaction_emoji=None,
            default_thread_rate_limit_per_user=0,
            default_sort_order=None,
            default_forum_layout=0,
            default_auto_archive_duration=1440,
        )
    elif ctype == 4:  # a category
        for key in ("topic", "last_message_id", "rate_limit_per_user", "nsfw"):
            channel.pop(key, None)
    return channel


def _image_size(data: bytes) -> tuple[int, int] | None:
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:
        return None


def _resize(data: bytes, width: int | None, height: int | None) -> bytes:
    """Shrink to fit inside width×height keeping the aspect ratio; unreadable bytes come back as-is."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or "PNG"
            ow, oh = im.size
            scale = min(width / ow if width else 1.0, height / oh if height else 1.0, 1.0)
            size = (max(1, round(ow * scale)), max(1, round(oh * scale)))
            if size == (ow, oh):
                return data
            out = im.convert("RGB") if fmt == "JPEG" and im.mode not in ("RGB", "L", "CMYK") else im
            out = out.resize(size, Image.LANCZOS)
            buf = io.BytesIO()
            out.save(buf, format=fmt)
            return buf.getvalue()
    except Exception:
        return data


def _message_errors(payload: dict, files: list, *, partial: bool = False) -> dict[str, str]:
    """Discord's message limits → {field: error}; empty when the payload is acceptable."""
    errors: dict[str, str] = {}
    content = payload.get("content") or ""
    if len(content) > 2000:
        errors["content"] = "Must be 2000 or fewer in length."
    embeds = payload.get("embeds") or []
    if len(embeds) > 10:
        errors["embeds"] = "Must be 10 or fewer in length."
    total = 0
    for i, e in enumerate(embeds):
        limits = [
            ("title", e.get("title"), 256),
            ("description", e.get("description"), 4096),
            ("footer.text", (e.get("footer") or {}).get("text"), 2048),
            ("author.name", (e.get("author") or {}).get("name"), 256),
        ]
        fields = e.get("fields") or []
        if len(fields) > 25:
            errors[f"embeds.{i}.fields"] = "Must be 25 or fewer in length."
        for j, f in enumerate(fields):
            limits += [(f"fields.{j}.name", f.get("name"), 256), (f"fields.{j}.value", f.get("value"), 1024)]
            if not f.get("name") or not f.get("value"):
                errors[f"embeds.{i}.fields.{j}"] = "Field name and value are required."
        for key, text, limit in limits:
            total += len(text or "")
            if text and len(text) > limit:
                errors[f"embeds.{i}.{key}"] = f"Must be {limit} or fewer in length."
    if total > 6000:
        errors["embeds"] = "Embed size exceeds maximum size of 6000"
    for i, e in enumerate(embeds):
        for key in ("image", "thumbnail"):
            url = (e.get(key) or {}).get("url")
            if url is not None and not re.match(r"(https?|attachment)://", str(url)):
                scheme = str(url).split(":", 1)[0] if ":" in str(url) else ""
                errors[f"embeds.{i}.{key}.url"] = (
                    f"Scheme \"{scheme}\" is not supported. Scheme must be one of ('http', 'https', 'attachment')."
                )
    errors.update(_component_errors(payload.get("components"), int(payload.get("flags") or 0)))
    for f in files:
        if len(f["data"]) > ATTACHMENT_SIZE_LIMIT:
            errors[f"files.{f['filename']}"] = "Request entity too large"
    if not partial and not (
        content or embeds or files or payload.get("components") or payload.get("sticker_ids") or payload.get("poll")
    ):
        errors["content"] = "Cannot send an empty message"
    return errors


def _component_errors(components: Any, flags: int = 0) -> dict[str, str]:
    """Discord's checks of message components (legacy action rows; Components V2 is not checked)."""
    errors: dict[str, str] = {}
    if not components or flags & (1 << 15):  # IS_COMPONENTS_V2
        return errors
    if len(components) > 5:
        errors["components"] = "Must be 5 or fewer in length."
    seen: set[str] = set()
    for i, row in enumerate(components):
        path = f"components.{i}"
        if row.get("type") != 1:
            errors[f"{path}.type"] = "Top-level components must be action rows (type 1)."
            continue
        children = row.get("components") or []
        if not 1 <= len(children) <= 5:
            errors[f"{path}.components"] = "Must be between 1 and 5 in length."
        selects = [c for c in children if c.get("type") in (3, 5, 6, 7, 8)]
        if selects and len(children) > 1:
            errors[f"{path}.components"] = "A select menu must be alone in its action row."
        for j, c in enumerate(children):
            p = f"{path}.components.{j}"
            ctype, custom_id = c.get("type"), c.get("custom_id")
            if ctype == 2:
                style = c.get("style")
                if style not in (1, 2, 3, 4, 5, 6):
                    errors[f"{p}.style"] = "Value must be one of (1, 2, 3, 4, 5, 6)."
                if style == 5:
                    if not c.get("url") or custom_id is not None:
                        errors[p] = "A link button needs a url and no custom_id."
                    custom_id = None
                elif style == 6:
                    custom_id = None
                elif custom_id is None:
                    errors[f"{p}.custom_id"] = "This field is required"
                if c.get("label") is not None and len(c["label"]) > 80:
                    errors[f"{p}.label"] = "Must be 80 or fewer in length."
                if not c.get("label") and not c.get("emoji") and style != 6:
                    errors[p] = "A button needs a label or an emoji."
            elif ctype in (3, 5, 6, 7, 8):
                if custom_id is None:
                    errors[f"{p}.custom_id"] = "This field is required"
                options = c.get("options") or []
                if ctype == 3 and not 1 <= len(options) <= 25:
                    errors[f"{p}.options"] = "Must be between 1 and 25 in length."
                if c.get("placeholder") is not None and len(c["placeholder"]) > 150:
                    errors[f"{p}.placeholder"] = "Must be 150 or fewer in length."
            else:
                errors[f"{p}.type"] = f"Component type {ctype} is not allowed in an action row of a message."
            if custom_id is not None:
                if not 1 <= len(str(custom_id)) <= 100:
                    errors[f"{p}.custom_id"] = "Must be between 1 and 100 in length."
                elif custom_id in seen:
                    errors[f"{p}.custom_id"] = "Component custom id cannot be duplicated"
                seen.add(custom_id)
    return errors


def _find_component(components: list[dict], custom_id: str) -> dict | None:
    for c in components or []:
        if c.get("custom_id") == custom_id:
            return c
        found = _find_component(c.get("components") or [], custom_id)
        if found is not None:
            return found
    return None


def _tag_errors(tags: list[dict]) -> dict[str, str]:
    """Discord's checks of a forum/media channel's ``available_tags`` (at most 20, names 1-20)."""
    errors: dict[str, str] = {}
    if len(tags) > 20:
        errors["available_tags"] = "Must be 20 or fewer in length."
    for i, t in enumerate(tags):
        name = t.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 20:
            errors[f"available_tags.{i}.name"] = "Must be between 1 and 20 in length."
    names = [t.get("name") for t in tags]
    if len(set(names)) != len(names):
        errors["available_tags"] = "Tag names must be unique."
    return errors


def _tag(spec: str | dict, tag_id: int) -> dict:
    """A forum tag as Discord shows it: ``{id, name, moderated, emoji_id, emoji_name}``."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    emoji_id = spec.get("emoji_id")
    return {
        "id": str(spec.get("id") or tag_id),
        "name": spec.get("name"),
        "moderated": bool(spec.get("moderated", False)),
        "emoji_id": str(emoji_id) if emoji_id else None,
        "emoji_name": spec.get("emoji_name"),
    }


_CUSTOM_EMOJI_RE = re.compile(r"^<?(?:a:)?:?([A-Za-z0-9_~]+):(\d+)>?$")


def _emoji_object(key: str, custom: dict | None) -> dict:
    """The partial emoji of a reaction: ``{id: None, name}`` for Unicode, ``{id, name, animated}``
    for a guild's custom emoji."""
    if custom is None:
        return {"id": None, "name": key}
    return {"id": custom["id"], "name": custom["name"], "animated": bool(custom.get("animated"))}


def _select_value_errors(component: dict, values: list[str]) -> str | None:
    """Why a user could not pick ``values`` in a select menu (None when they could): string
    selects offer only their options; every select enforces ``min_values``/``max_values``."""
    low, high = int(component.get("min_values", 1)), int(component.get("max_values", 1))
    if len(set(values)) != len(values):
        return f"the values {values} repeat one"
    if not low <= len(values) <= high:
        return f"{len(values)} values picked; the select takes {low} to {high}"
    if component["type"] == 3:
        offered = [o.get("value") for o in component.get("options") or []]
        unknown = [v for v in values if v not in offered]
        if unknown:
            return f"{unknown} are not options of the select (options: {offered})"
    return None


_NAME_RE = re.compile(r"^[-_\w]{1,32}$")


def _command_errors(commands: list[dict]) -> dict[str, str]:
    """The checks Discord runs on a bulk-overwrite of application commands."""
    errors: dict[str, str] = {}

    def check_options(path: str, options: list[dict]) -> None:
        if len(options) > 25:
            errors[f"{path}.options"] = "Must be 25 or fewer in length."
        for j, o in enumerate(options):
            p = f"{path}.options.{j}"
            name = o.get("name", "")
            if not _NAME_RE.match(name) or name != name.lower():
                errors[f"{p}.name"] = f"Invalid option name {name!r}"
            if not 1 <= len(o.get("description") or "") <= 100:
                errors[f"{p}.description"] = "Must be between 1 and 100 in length."
            if len(o.get("choices") or []) > 25:
                errors[f"{p}.choices"] = "Must be 25 or fewer in length."
            check_options(p, o.get("options") or [])

    for i, c in enumerate(commands):
        name, ctype = c.get("name", ""), c.get("type", 1)
        if ctype == 1:
            if not _NAME_RE.match(name) or name != name.lower():
                errors[f"{i}.name"] = f"Invalid command name {name!r}"
            if not 1 <= len(c.get("description") or "") <= 100:
                errors[f"{i}.description"] = "Must be between 1 and 100 in length."
            check_options(str(i), c.get("options") or [])
        elif not 1 <= len(name) <= 32:
            errors[f"{i}.name"] = "Must be between 1 and 32 in length."
    if sum(1 for c in commands if c.get("type", 1) == 1) > 100:
        errors["_"] = "Maximum number of application commands reached (100)"
    if sum(1 for c in commands if c.get("type") == 3) > 15:
        errors["_"] = "Maximum number of message commands reached (15)"
    return errors


# ---------------------------------------------------------------------------- records


@dataclass
class _Attachment:
    id: int
    channel_id: int
    filename: str
    data: bytes
    content_type: str | None
    hm: str
    payload: dict
    signatures: set | None = None  # the hm values whose URLs still work (expiry/deletion clears it)


class _SessionState:
    """A gateway session as Discord keeps it: its id, sequence and the dispatches a RESUME can replay.

    It outlives the websocket it was created on; a RESUME attaches it to the new connection."""

    def __init__(
        self, session_id: str, history: int = 1000, *, shard: tuple[int, int] | None = None, token: str | None = None
    ):
        self.session_id = session_id
        self.shard = shard  # (id, count) from IDENTIFY; None: an unsharded session (gets everything)
        self.token = token
        self.intents = 0
        self.seq = 0
        self.history: deque[tuple[int, str | None, Any]] = deque(maxlen=history)  # (s, t, d)


class _Session:
    """One gateway websocket connection (``state`` is set by a successful IDENTIFY or RESUME)."""

    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws
        self.state: _SessionState | None = None
        self.ready = False
        self.ready_at: float | None = None  # time.monotonic() when it last became ready
        self.lock = asyncio.Lock()

    @property
    def session_id(self) -> str | None:
        return self.state.session_id if self.state else None

    @property
    def shard(self) -> tuple[int, int] | None:
        return self.state.shard if self.state else None

    def receives(self, guild_id: int | None) -> bool:
        """Whether this session gets the events of a guild (None: a DM, carried by shard 0)."""
        if self.state is None:
            return False
        if self.state.shard is None:
            return True
        shard_id, count = self.state.shard
        return shard_id == (0 if guild_id is None else shard_of(guild_id, count))

    async def send(self, op: int, d: Any, t: str | None = None) -> None:
        async with self.lock:  # keeps "s" increasing in send order
            s = None
            if op == 0:
                assert self.state is not None, "a dispatch before READY/RESUMED"
                self.state.seq += 1
                s = self.state.seq
                if t != "RESUMED":  # an answer to one RESUME, never replayed by a later one
                    self.state.history.append((s, t, d))
            await self.ws.send_str(json.dumps({"op": op, "d": d, "s": s, "t": t}))

    async def replay(self, after: int) -> int:
        """Re-send the dispatches numbered above ``after`` with their original ``s``; how many."""
        assert self.state is not None
        async with self.lock:
            missed = [(s, t, d) for s, t, d in self.state.history if s > after]
            for s, t, d in missed:
                await self.ws.send_str(json.dumps({"op": 0, "d": d, "s": s, "t": t}))
        return len(missed)


@dataclass
class _FaultRule:
    """Answers to inject into the next REST requests that match (see ``inject_rest_faults``)."""

    methods: set[str]
    pattern: re.Pattern
    statuses: deque
    processed: bool
    retry_after: float

    def matches(self, method: str, tail: str) -> bool:
        return ("*" in self.methods or method in self.methods) and bool(
            self.pattern.fullmatch(tail) or self.pattern.fullmatch("/" + tail)
        )


@dataclass
class FakeGuild:
    """A guild of the fake (see ``FakeDiscord.add_guild``): its id and the ids of its channels."""

    id: int
    name: str
    locale: str
    channel_id: int
    other_channel_id: int
    thread_id: int

    def shard(self, shard_count: int) -> int:
        return shard_of(self.id, shard_count)


class FakeInteraction:
    """What the bot answered to one interaction the fake dispatched.

    ``responses``/``followups``/``edits``/``followup_edits`` are lists of entries shaped like
    ``sent_messages`` entries (``type`` is set on callbacks; 8 carries ``choices``).
    """

    def __init__(self, fake: FakeDiscord, payload: dict):
        self._fake = fake
        self.payload = payload
        self.id = int(payload["id"])
        self.token: str = payload["token"]
        self.type: int = payload["type"]
        self.name: str = payload["data"].get("name") or payload["data"].get("custom_id", "")
        self.custom_id: str | None = payload["data"].get("custom_id")  # a component interaction (click)
        self.created = time.monotonic()
        self.responses: list[dict] = []
        self.followups: list[dict] = []
        self.edits: list[dict] = []
        self.followup_edits: list[dict] = []
        self.timeline: list[dict] = []  # followups and @original edits in arrival order
        self.original: dict | None = None  # the message the callback created, as last edited
        self.original_deleted = False  # DELETE @original (a private "thinking…" removed, say)
        self.late = False  # a callback came after interaction_deadline
        self.failed: list[dict] = []  # ``requests`` records of its calls answered >= 400 (injected too)

    def __repr__(self) -> str:
        kinds = [r.get("type") for r in self.responses]
        return (
            f"<FakeInteraction {self.name!r} responses={kinds} followups={len(self.followups)} "
            f"edits={len(self.edits)} late={self.late} failed={[r['status'] for r in self.failed]}>"
        )

    @property
    def expired(self) -> bool:
        """Whether the token is no longer accepted (see ``FakeDiscord.expire_interactions``)."""
        return self._fake._token_expired(self)

    @property
    def deferred(self) -> bool:
        return bool(self.responses) and self.responses[0]["type"] in (5, 6)

    @property
    def ephemeral(self) -> bool:
        return bool(self.responses) and bool(self.responses[0]["flags"] & 64)

    @property
    def choices(self) -> list[dict] | None:
        return self.responses[0].get("choices") if self.responses else None

    def wait_response(self, timeout: float = 20) -> dict:
        """The first callback the bot posted (``type`` 4 message, 5 deferral, 8 autocomplete, ...)."""
        return self._fake.wait_for(
            lambda: self.responses[0] if self.responses else None, timeout, f"a callback to {self!r}"
        )

    def wait_final(self, timeout: float = 20) -> dict:
        """The answer the user sees: the callback message, or after a deferral the first
        followup/@original edit (its ``ephemeral`` is the deferral's, as on Discord). When the bot
        instead deleted the deferred response, the channel message it posted for this interaction
        (the one naming the user, see ``announcement``)."""
        first = self.wait_response(timeout)
        if first["type"] != 5:
            return first

        def answer() -> dict | None:
            if self.timeline:
                return self.timeline[0]
            return self.announcement() if self.original_deleted else None

        return dict(self._fake.wait_for(answer, timeout, f"a followup, edit or announcement after {self!r}"))

    @property
    def user_id(self) -> int:
        """The invoking user (``member.user`` in a guild, ``user`` in a DM or group DM)."""
        user = self.payload["member"]["user"] if "member" in self.payload else self.payload["user"]
        return int(user["id"])

    @property
    def messages(self) -> list[dict]:
        """The message payloads this interaction's answers created (the callback's, then the
        followups'), as stored now (edits included): what ``FakeDiscord.click`` takes."""
        found = [r["message"] for r in self.responses if r.get("message") and r.get("type") in (4, 5)]
        return found + [f["message"] for f in self.followups if f.get("message")]

    def announcement(self) -> dict | None:
        """The bot's plain channel message (no reply) in this interaction's channel, sent after it
        arrived and naming its user (<@id>): how a bot makes a change public after a private deferral."""
        channel_id, mention = int(self.payload["channel_id"]), f"<@{self.user_id}>"
        with self._fake._cond:
            for m in self._fake.sent_messages:
                if (
                    m["kind"] == "channel"
                    and m["channel_id"] == channel_id
                    and m["time"] >= self.created
                    and not m["message_reference"]
                    and mention in (m["content"] or "")
                ):
                    return m
        return None


# ---------------------------------------------------------------------------- the fake


class FakeDiscord:
    """A fake Discord server in a background thread.  See the module docstring."""

    guild_id = 1310000000000000001
    application_id = 1310000000000000002  # also the bot user's id, as for real bots
    moderator_role_id = 1310000000000000003
    bot_role_id = 1310000000000000004
    channel_id = 1310000000000000010
    other_channel_id = 1310000000000000011
    thread_id = 1310000000000000012
    moderator_id = 1310000000000000020
    member_id = 1310000000000000021
    owner_id = 1310000000000000022
    heartbeat_interval = 41250

    def __init__(self, *, token: str = "fake-token", guild_locale: str = "ja"):
        self.token = token
        self.tokens: list[str] = [token]  # every token the bot may use (see add_token)
        self.guild_locale = guild_locale
        self.recommended_shards = 1  # GET /gateway/bot "shards"
        self.require_sharding = False  # True: IDENTIFY with fewer than recommended_shards shards → 4011
        self.session_start_total = 1000
        self.refuse_message_content = False
        self.interaction_deadline: float | None = 3.0
        self.interaction_token_lifetime: float | None = 15 * 60  # then webhooks answer 401 (50027)
        self.nonce_window = 300.0  # seconds an enforce_nonce duplicate returns the first message
        self.bot_user = {
            **make_user(self.application_id, "wakeru", bot=True),
            "verified": True,
            "mfa_enabled": False,
            "locale": "en-US",
        }
        self.users = {
            "member": make_user(self.member_id, "taro", global_name="太郎"),
            "moderator": make_user(self.moderator_id, "hanako_mod", global_name="花子"),
            "owner": make_user(self.owner_id, "owner_sato"),
        }
        self.roles = {
            "everyone": _role(self.guild_id, "@everyone", Perm.MEMBER, 0),
            "moderator": _role(self.moderator_role_id, "モデレーター", Perm.MODERATOR, 1),
            "bot": _role(
                self.bot_role_id, "Wakeru", Perm.BOT, 2, managed=True, tags={"bot_id": str(self.application_id)}
            ),
        }
        self.channels = {
            self.channel_id: _text_channel(self.channel_id, self.guild_id, "写真", 0),
            self.other_channel_id: _text_channel(self.other_channel_id, self.guild_id, "雑談", 1),
        }
        self.threads = {
            self.thread_id: _thread(self.thread_id, self.guild_id, self.channel_id, self.member_id, "スレッド")
        }
        self.guilds: dict[int, FakeGuild] = {
            self.guild_id: FakeGuild(
                self.guild_id, "分けるテスト", guild_locale, self.channel_id, self.other_channel_id, self.thread_id
            )
        }
        # Recordings (appended by the server thread, read by tests).
        self.requests: list[dict] = []  # every REST request: method, path, query, status
        self.unknown_requests: list[dict] = []
        self.invalid_requests: list[dict] = []
        self.identify_payloads: list[dict] = []
        self.resume_payloads: list[dict] = []
        # (kind, time.monotonic(), session_id); kind is "identify" (IDENTIFY received; session_id is
        # the one issued, None when refused), "resume" (RESUME received, the session id it asked for),
        # "ready" (READY+GUILD_CREATE or RESUMED sent: the session is usable again), "invalidated"
        # (op 9 sent) or "disconnect" (the fake closed the websocket).
        self.gateway_events: list[tuple[str, float, str | None]] = []
        self.injected_faults: list[dict] = []  # REST answers replaced by inject_rest_faults
        self.deduplicated_messages: list[dict] = []  # enforce_nonce duplicates answered with the first message
        self.gateway_ops: list[dict] = []  # client ops other than heartbeat/identify/resume
        # IDENTIFYs refused for their shard: {"code": 4010|4011, "shard": [id, count] | None, "time"}
        self.refused_identifies: list[dict] = []
        # One entry per dispatch() per session that carried it: {"event", "id" (the payload's id),
        # "guild_id", "session_id", "shard" ((id, count) or None), "token", "time"}.
        self.deliveries: list[dict] = []
        self.sent_messages: list[dict] = []
        self.edited_messages: list[dict] = []
        self.deleted_messages: list[tuple[int, int]] = []
        # The bot's reactions now on messages, in the order it added them: (channel, message, emoji),
        # the emoji decoded ("👍", or "name:id" for a custom one); DELETE .../@me takes one out.
        self.reactions: list[tuple[int, int, str]] = []
        # Every successful thread edit of the bot (PATCH /channels/{thread}), in order: {"thread_id",
        # "parent_id", "payload" (as sent), "applied_tags" (ids after it), "applied_tag_names", "thread"
        # (the whole thread after it), "token", "time"}; channel_edits likewise for other channels.
        self.thread_edits: list[dict] = []
        self.channel_edits: list[dict] = []
        self.typing: list[int] = []
        self.attachment_requests: list[dict] = []
        self.synced_commands: dict[int | None, list[dict]] = {}
        self.channel_messages: dict[int, dict] = {}
        self.interactions: dict[int, FakeInteraction] = {}
        self._interactions_by_token: dict[str, FakeInteraction] = {}
        self._attachments: dict[int, _Attachment] = {}
        self._expired: set[int] = set()
        self._sessions: list[_Session] = []
        self._session_states: dict[str, _SessionState] = {}  # sessions a RESUME may continue
        self._faults: list[_FaultRule] = []
        self._nonces: dict[tuple[int, str], tuple[float, int]] = {}  # (channel, nonce) → (time, message id)
        self._expired_tokens: set[str] = set()
        # The image-index surfaces (history, permissions, threads, components, deletions).
        self.extra_roles: dict[int, list[dict]] = {}  # guild id → roles added with add_role
        self.member_roles: dict[tuple[int, int], list[int]] = {}  # (guild, user) → roles (set_member_roles)
        self.thread_members: dict[int, dict[int, str]] = {
            self.thread_id: {self.member_id: "2024-01-01T00:00:00+00:00"}
        }  # thread → user → join_timestamp
        self.archived_threads: set[int] = set()  # threads left out of GUILD_CREATE (GET /channels/{id} still works)
        self.removed_guilds: set[int] = set()  # guilds the bot was removed from (remove_from_guild)
        self._gone_channels: dict[int, int] = {}  # channel → guild, for channels of removed guilds
        self.route_counts: dict[str, int] = {}  # "GET /channels/{channel}/messages" → requests received
        self.message_edits: dict[int, list[dict]] = {}  # message id → the bot's edits of it, in order
        # Guilds the bot is NOT in (add_guild(bot_member=False)): a user-installed app is used there.
        self.foreign_guilds: dict[int, FakeGuild] = {}
        self.private_channels: dict[int, dict] = {}  # DMs (type 1) and group DMs (type 3): add_private_channel
        self.private_members: dict[int, list[int]] = {}  # private channel → its participants' ids
        self.emojis: dict[int, list[dict]] = {}  # guild id → custom emojis (add_emoji)
        self._reactors: dict[int, dict[str, list[int]]] = {}  # message → emoji key → user ids, in order
        # integration_types Discord echoes for a synced command that sent none (the app's install setting)
        self.default_integration_types: list[int] = [0]
        self._history_limit: tuple[int, float] | None = None  # (requests, per seconds) per channel
        self._history_windows: dict[int, list[float]] = {}  # channel → [window start, requests in it]
        self._seed_ids = itertools.count(1)
        self._background: set[asyncio.Future] = set()
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._session_ids = itertools.count(1)
        self._command_ids: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FakeDiscord:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._startup())
            except BaseException as exc:  # surfaced by start()
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-discord", daemon=True)
        self._thread.start()
        if not started.wait(10) or failure:
            raise RuntimeError(f"fake Discord failed to start: {failure}")
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeDiscord:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def _startup(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{channel}/{attachment}/{filename}", self._cdn)
        app.router.add_get("/media/attachments/{channel}/{attachment}/{filename}", self._cdn)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._api)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _shutdown(self) -> None:
        for s in list(self._sessions):
            await s.ws.close(code=1001, message=b"fake Discord stopping")
        if self._runner is not None:
            await self._runner.cleanup()

    # ---------------------------------------------------------------- addresses

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def cdn_host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---------------------------------------------------------------- waiting

    def wait_for(self, check: Callable[[], Any], timeout: float = 20, what: str = "a condition") -> Any:
        """Block until ``check()`` returns something truthy; return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = check()
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"timed out after {timeout}s waiting for {what}.\n{self.describe()}")
                self._cond.wait(min(remaining, 0.5))

    def describe(self) -> str:
        """A summary of what the fake received, for failure messages."""
        reqs = [f"{r['method']} {r['path']} → {r['status']}" for r in self.requests[-15:]]
        msgs = [
            f"#{m['channel_id']}: {m['content']!r} embeds={[e.get('title') for e in m['embeds']]}"
            for m in self.sent_messages[-10:]
        ]
        events = [f"{k}@{t:.2f}" for k, t, _ in self.gateway_events[-8:]]
        shards = [(s["session_id"], s["shard"], s["ready"]) for s in self.sessions()]
        return (
            f"sessions ready={self.connected_sessions} {shards} identifies={self.identify_count()} "
            f"resumes={self.resume_count()} gateway events: {events}\n"
            f"last requests: {reqs}\nsent messages: {msgs}\n"
            f"injected faults: {[(f['method'], f['path'], f['status']) for f in self.injected_faults[-5:]]}\n"
            f"interactions: {list(self.interactions.values())[-5:]}\n"
            f"refused identifies: {self.refused_identifies[-5:]}\n"
            f"unknown: {self.unknown_requests} invalid: {self.invalid_requests}"
        )

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    @property
    def connected_sessions(self) -> int:
        return sum(1 for s in self._sessions if s.ready)

    def wait_ready(self, timeout: float = 20, *, guild_id: int | None = None) -> None:
        """Block until a gateway session has received READY and GUILD_CREATE; with ``guild_id``, a
        session that gets that guild's events (the one owning its shard, or an unsharded one)."""
        if guild_id is None:
            self.wait_for(lambda: self.connected_sessions > 0, timeout, "a gateway session to become ready")
        else:
            self.wait_for(
                lambda: self._targets(guild_id), timeout, f"a ready gateway session for guild {guild_id} (shard of it)"
            )

    def sessions(self) -> list[dict]:
        """The open gateway connections: session id, shard ((id, count) or None), token, ready."""
        return [
            {
                "session_id": s.session_id,
                "shard": s.shard,
                "token": s.state.token if s.state else None,
                "ready": s.ready,
            }
            for s in list(self._sessions)
        ]

    def ready_shards(self, shard_count: int) -> set[int]:
        """Ids of the shards (of ``shard_count``) that have a ready session."""
        return {s.shard[0] for s in list(self._sessions) if s.ready and s.shard and s.shard[1] == shard_count}

    def wait_shards_ready(self, shard_count: int, shard_ids: Iterable[int] | None = None, timeout: float = 20) -> None:
        """Block until every shard in ``shard_ids`` (default: all ``shard_count``) has a ready session."""
        wanted = set(range(shard_count) if shard_ids is None else shard_ids)
        self.wait_for(
            lambda: wanted <= self.ready_shards(shard_count),
            timeout,
            f"shards {sorted(wanted)} of {shard_count} to be ready",
        )

    def _targets(self, guild_id: int | None) -> list[_Session]:
        return [s for s in list(self._sessions) if s.ready and s.receives(guild_id)]

    def mark(self) -> int:
        """A position in ``sent_messages``, for ``wait_for_message(since=...)``."""
        return len(self.sent_messages)

    def wait_for_message(
        self,
        predicate: Callable[[dict], bool] | None = None,
        *,
        channel_id: int | None = None,
        since: int = 0,
        timeout: float = 20,
    ) -> dict:
        """The first channel message the bot sent at or after index ``since`` that matches."""

        def find() -> dict | None:
            for m in self.sent_messages[since:]:
                if (channel_id is None or m["channel_id"] == channel_id) and (predicate is None or predicate(m)):
                    return m
            return None

        return self.wait_for(find, timeout, f"a bot message (channel={channel_id}, since={since})")

    # ---------------------------------------------------------------- gateway control

    def _call(self, coro: Any, timeout: float = 20) -> Any:
        assert self._loop is not None, "FakeDiscord is not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @staticmethod
    def _guild_of_event(event: str, data: Any) -> int | None:
        if not isinstance(data, dict):
            return None
        if data.get("guild_id"):
            return int(data["guild_id"])
        if event.startswith("GUILD_") and data.get("id"):  # GUILD_CREATE/UPDATE/DELETE carry the guild itself
            return int(data["id"])
        return None

    def dispatch(self, event: str, data: dict, *, guild_id: int | str | None = "auto", timeout: float = 20) -> None:
        """Send a DISPATCH (op 0) to every ready session that gets it, waiting for one if none is ready.

        Sharded sessions only get the events of their shard's guilds (the guild is the payload's
        ``guild_id``, unless given); events without a guild (DMs) go to shard 0."""
        if guild_id == "auto":
            guild_id = self._guild_of_event(event, data)
        self.wait_ready(timeout, guild_id=guild_id)

        self._call(self._deliver(event, data, guild_id), timeout)  # type: ignore[arg-type]

    async def _deliver(self, event: str, data: dict, guild_id: int | None) -> None:
        """(on the server loop) send a dispatch to the ready sessions that get it: those that asked for the
        event's intent, where the event has one (_EVENT_INTENTS)."""
        wanted = _EVENT_INTENTS.get(event)
        for s in self._targets(guild_id):
            if wanted is not None and s.state is not None and not s.state.intents & wanted:
                continue
            await s.send(0, self._as_seen_by(s, event, data), event)
            with self._cond:
                self.deliveries.append(
                    {
                        "event": event,
                        "id": data.get("id") if isinstance(data, dict) else None,
                        "guild_id": guild_id,
                        "session_id": s.session_id,
                        "shard": s.shard,
                        "token": s.state.token if s.state else None,
                        "time": time.monotonic(),
                    }
                )
                self._cond.notify_all()

    def _dispatch_from_handler(self, event: str, data: dict) -> None:
        """(in a REST handler, on the server loop) dispatch without blocking the loop."""
        task = asyncio.ensure_future(self._deliver(event, data, self._guild_of_event(event, data)))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _as_seen_by(self, session: _Session, event: str, data: Any) -> Any:
        """Without the Message Content intent, a message's content, attachments, embeds and components
        arrive empty, unless it mentions the bot, the bot wrote it, or it is a DM."""
        if (
            event not in ("MESSAGE_CREATE", "MESSAGE_UPDATE")
            or not isinstance(data, dict)
            or session.state is None
            or session.state.intents & MESSAGE_CONTENT_INTENT
            or not data.get("guild_id")
        ):
            return data
        bot_id = self.bot_user["id"]
        if (data.get("author") or {}).get("id") == bot_id or any(
            u.get("id") == bot_id for u in data.get("mentions") or ()
        ):
            return data
        return {**data, "content": "", "attachments": [], "embeds": [], "components": []}

    def delivered(self, payload_id: int | str) -> list[dict]:
        """The ``deliveries`` of the dispatch whose payload had this id (a message, an interaction)."""
        with self._cond:
            return [d for d in self.deliveries if d["id"] is not None and str(d["id"]) == str(payload_id)]

    def _event(self, kind: str, session_id: str | None) -> None:
        with self._cond:
            self.gateway_events.append((kind, time.monotonic(), session_id))
            self._cond.notify_all()

    def identify_count(self) -> int:
        """How many IDENTIFY (op 2) the fake received, refused ones included."""
        with self._cond:
            return sum(1 for e in self.gateway_events if e[0] == "identify")

    def resume_count(self) -> int:
        """How many RESUME (op 6) the fake received, whether it answered RESUMED or op 9."""
        with self._cond:
            return sum(1 for e in self.gateway_events if e[0] == "resume")

    def disconnect_all(self, code: int = 4000, *, shard: int | None = None) -> int:
        """Drop every gateway websocket (only those of shard id ``shard`` when given) with close
        ``code``; return how many were open.

        4000 (or any code but 1000/4004/4010-4014) makes discord.py RESUME straight away; the
        session stays known, so the RESUME gets RESUMED (after replaying missed dispatches)."""

        async def close() -> int:
            sessions = [s for s in self._sessions if shard is None or (s.shard and s.shard[0] == shard)]
            for s in sessions:
                s.ready = False
                self._event("disconnect", s.session_id)
                await s.ws.close(code=code, message=b"fake disconnect")
            return len(sessions)

        return self._call(close())

    def invalidate_sessions(self, resumable: bool = False, *, shard: int | None = None) -> int:
        """Send op 9 INVALID_SESSION (``d=resumable``) to every ready session (of shard id ``shard``
        when given); return how many.

        discord.py closes the websocket on op 9.  With ``d=true`` it reconnects and RESUMEs the same
        session.  With ``d=false`` it forgets the session and IDENTIFYs anew, after the
        ``before_identify_hook`` (5 s by default for every IDENTIFY but the first); the fake also
        forgets those sessions, so even a RESUME would be refused."""

        async def invalidate() -> int:
            sessions = [s for s in self._sessions if s.ready and (shard is None or (s.shard and s.shard[0] == shard))]
            for s in sessions:
                s.ready = False
                if not resumable and s.session_id:
                    self._session_states.pop(s.session_id, None)
                self._event("invalidated", s.session_id)
                try:
                    await s.send(9, resumable)
                except ConnectionError:  # closing anyway
                    pass
            self._notify()
            return len(sessions)

        return self._call(invalidate())

    def forget_sessions(self) -> int:
        """Forget every session issued so far (as when Discord expires them); return how many.

        Open connections are left alone; the next RESUME of a forgotten session is answered op 9
        ``d=false`` instead of RESUMED, and discord.py then IDENTIFYs anew.  Usually followed by
        ``disconnect_all()``."""

        async def forget() -> int:
            n = len(self._session_states)
            self._session_states.clear()
            return n

        return self._call(forget())

    def wait_reconnected(self, since: float, timeout: float = 30) -> float:
        """Block until a gateway session is ready that became ready at or after ``since`` (a
        ``time.monotonic()`` taken before the fault); return how many seconds after ``since``.

        Ready means READY+GUILD_CREATE (after an IDENTIFY) or RESUMED was sent, so dispatches from
        then on reach the client."""

        def ready_at() -> float | None:
            times = [s.ready_at for s in self._sessions if s.ready and s.ready_at is not None and s.ready_at >= since]
            return min(times) if times else None

        at = self.wait_for(ready_at, timeout, f"a gateway session to be ready again after t={since:.3f}")
        return at - since

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, compress=False, timeout=2.0)  # 2 s: quick stop()
        await ws.prepare(request)
        session = _Session(ws)
        self._sessions.append(session)
        try:
            await session.send(10, {"heartbeat_interval": self.heartbeat_interval, "_trace": ["fake"]})
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue  # discord.py only ever sends JSON text
                packet = json.loads(msg.data)
                op, d = packet.get("op"), packet.get("d")
                if op == 1:
                    await session.send(11, None)
                elif op == 2:
                    await self._identify(session, d)
                elif op == 6:
                    await self._resume(session, d)
                else:
                    with self._cond:
                        self.gateway_ops.append(packet)
        finally:
            session.ready = False
            self._sessions.remove(session)
            self._notify()
        return ws

    def _mark_ready(self, session: _Session) -> None:
        session.ready = True
        session.ready_at = time.monotonic()
        self._event("ready", session.session_id)

    def _shard_refusal(self, session: _Session, shard: Any) -> tuple[int, bytes] | None:
        """The close code and reason Discord would refuse this IDENTIFY's ``shard`` with, or None."""
        count = 1
        if shard is not None:
            if (
                not isinstance(shard, (list, tuple))
                or len(shard) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in shard)
            ):
                return 4010, b"Invalid shard."
            shard_id, count = shard
            if count < 1 or not 0 <= shard_id < count:
                return 4010, b"Invalid shard."
            live = {
                s.shard[1] for s in list(self._sessions) if s is not session and s.shard is not None and not s.ws.closed
            }
            if live and count not in live:  # every sharded session of a bot uses the same count
                return 4010, b"Invalid shard."
        if self.require_sharding and count < self.recommended_shards:
            return 4011, b"Sharding required."
        return None

    async def _identify(self, session: _Session, d: dict) -> None:
        with self._cond:
            self.identify_payloads.append(d)
        if d.get("token") not in self.tokens:
            self._event("identify", None)
            await session.ws.close(code=4004, message=b"Authentication failed.")
            return
        if self.refuse_message_content and int(d.get("intents", 0)) & MESSAGE_CONTENT_INTENT:
            self._event("identify", None)
            await session.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        raw_shard = d.get("shard")
        if (refusal := self._shard_refusal(session, raw_shard)) is not None:
            with self._cond:
                self.refused_identifies.append({"code": refusal[0], "shard": raw_shard, "time": time.monotonic()})
            self._event("identify", None)
            await session.ws.close(code=refusal[0], message=refusal[1])
            return
        shard = (raw_shard[0], raw_shard[1]) if raw_shard is not None else None
        state = _SessionState(f"fake-session-{next(self._session_ids)}", shard=shard, token=d["token"])
        state.intents = int(d.get("intents", 0))
        self._session_states[state.session_id] = state
        session.state = state
        guilds = [g for g in list(self.guilds) if session.receives(g)]
        self._event("identify", state.session_id)
        await session.send(
            0,
            {
                "v": 10,
                "user": self.bot_user,
                "guilds": [{"id": str(g), "unavailable": True} for g in guilds],
                "session_id": state.session_id,
                "resume_gateway_url": self.gateway_url,
                "session_type": "normal",
                "shard": list(shard) if shard else [0, 1],
                "private_channels": [],
                "relationships": [],
                "presences": [],
                "guild_join_requests": [],
                "user_settings": {},
                "geo_ordered_rtc_regions": [],
                "auth": {},
                "_trace": ["fake"],
                "application": {"id": str(self.application_id), "flags": 1 << 19},  # GATEWAY_MESSAGE_CONTENT_LIMITED
            },
            "READY",
        )
        for g in guilds:
            await session.send(0, self.guild_payload(g), "GUILD_CREATE")
        self._mark_ready(session)

    async def _resume(self, session: _Session, d: dict) -> None:
        """RESUME: replay the dispatches the client missed (``s`` above its ``seq``), then RESUMED.

        An unknown (forgotten or never issued) session gets op 9 ``d=false``, as on Discord."""
        with self._cond:
            self.resume_payloads.append(d)
        session_id = d.get("session_id")
        self._event("resume", session_id)
        if d.get("token") not in self.tokens:
            await session.ws.close(code=4004, message=b"Authentication failed.")
            return
        state = self._session_states.get(session_id or "")
        seq = d.get("seq")
        if state is None or seq is None or int(seq) > state.seq:
            self._event("invalidated", session_id)
            await session.send(9, False)
            return
        for other in self._sessions:  # a session is delivered on one connection only
            if other is not session and other.state is state:
                other.ready = False
        session.state = state
        await session.replay(int(seq))
        await session.send(0, {"_trace": ["fake"]}, "RESUMED")
        self._mark_ready(session)

    # ---------------------------------------------------------------- world

    def guild_payload(self, guild_id: int | None = None) -> dict:
        """The GUILD_CREATE payload (a full guild) of ``guild_id`` (default: the first guild)."""
        guild = self.guilds[guild_id or self.guild_id]
        gid = str(guild.id)
        members = [
            make_member(u, roles=self.roles_of(u["id"], guild.id)) for u in [self.bot_user, *self.users.values()]
        ]
        # Every guild has the same moderator and bot roles; @everyone's id is the guild's.
        roles = [dict(r, id=gid) if key == "everyone" else r for key, r in self.roles.items()]
        roles += self.extra_roles.get(guild.id, [])
        channels = [c for c in list(self.channels.values()) if c["guild_id"] == gid]
        # Active threads the bot can see (a private one: a member of it, or Manage Threads).
        threads = [
            t
            for t in list(self.threads.values())
            if t["guild_id"] == gid and int(t["id"]) not in self.archived_threads and self._bot_sees(int(t["id"]))
        ]
        locale = self.guild_locale if guild.id == self.guild_id else guild.locale
        return {
            "id": gid,
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 1,
            "default_message_notifications": 1,
            "explicit_content_filter": 2,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": locale,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "vanity_url_code": None,
            "features": [],
            "emojis": list(self.emojis.get(guild.id, [])),
            "stickers": [],
            "roles": roles,
            "channels": channels,
            "threads": threads,
            "members": members,
            "member_count": len(members),
            "large": False,
            "unavailable": False,
            "joined_at": "2024-01-01T00:00:00+00:00",
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "max_members": 500000,
            "premium_progress_bar_enabled": False,
            "application_id": None,
        }

    def new_id(self) -> int:
        """A fresh snowflake (time-ordered, unique within this process)."""
        return ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (next(self._ids) & 0x3FFFFF)

    def new_guild_id(self, shard: int, shard_count: int) -> int:
        """A fresh snowflake on shard ``shard`` of ``shard_count``: its timestamp part is moved (by
        less than ``shard_count`` ms) so that ``(id >> 22) % shard_count == shard``."""
        if not 0 <= shard < shard_count:
            raise ValueError(f"shard {shard} is not in 0..{shard_count - 1}")
        raw = self.new_id()
        ms = raw >> 22
        return ((ms - ms % shard_count + shard) << 22) | (raw & 0x3FFFFF)

    def add_guild(
        self,
        *,
        shard: int | None = None,
        shard_count: int | None = None,
        guild_id: int | None = None,
        name: str | None = None,
        locale: str | None = None,
        bot_member: bool = True,
    ) -> FakeGuild:
        """Add a guild the bot is in (two text channels and a thread, the same users and roles as
        the first guild); with ``shard``/``shard_count`` its id lands on that shard.  Ready sessions
        that own its shard get its GUILD_CREATE at once, as when a bot joins a server.

        ``bot_member=False``: a server the bot is NOT in (kept in ``foreign_guilds``), where members use
        the app they installed on their account (``interact(..., installed_in_guild=False)``).  Nothing
        about it reaches the gateway (no GUILD_CREATE; ``post_message``, ``add_channel``, ``add_emoji``
        there dispatch nothing), and the bot's REST calls to it or its channels answer 403 "Missing
        Access" (50001)."""
        if guild_id is None:
            guild_id = self.new_guild_id(shard, shard_count) if shard_count else self.new_id()
        elif shard_count and shard_of(guild_id, shard_count) != shard:
            raise ValueError(f"guild {guild_id} is on shard {shard_of(guild_id, shard_count)}, not {shard}")
        if guild_id in self.guilds or guild_id in self.foreign_guilds:
            raise ValueError(f"guild {guild_id} exists")
        guild = FakeGuild(
            guild_id,
            name or f"サーバー{len(self.guilds) + 1}",
            locale or self.guild_locale,
            self.new_id(),
            self.new_id(),
            self.new_id(),
        )
        self.channels[guild.channel_id] = _text_channel(guild.channel_id, guild_id, "写真", 0)
        self.channels[guild.other_channel_id] = _text_channel(guild.other_channel_id, guild_id, "雑談", 1)
        self.threads[guild.thread_id] = _thread(guild.thread_id, guild_id, guild.channel_id, self.member_id, "スレッド")
        if not bot_member:
            self.foreign_guilds[guild_id] = guild
            return guild
        self.guilds[guild_id] = guild
        if self._loop is not None and self._targets(guild_id):
            self.dispatch("GUILD_CREATE", self.guild_payload(guild_id))
        return guild

    def guild_of(self, channel_id: int) -> int:
        """The guild a channel or thread belongs to (a DM or group DM has none: ValueError)."""
        guild_id = self._guild_id_of(channel_id)
        if guild_id is None:
            raise ValueError(f"channel {channel_id} is a DM or group DM: it has no guild")
        return guild_id

    def _guild_id_of(self, channel_id: int) -> int | None:
        """The guild of a channel or thread, None for a DM or group DM."""
        guild_id = self._channel(channel_id).get("guild_id")
        return int(guild_id) if guild_id else None

    def _guild_fields(self, channel_id: int) -> dict:
        """``{"guild_id": ...}`` for a guild channel, ``{}`` for a DM (Discord leaves the key out)."""
        guild_id = self._guild_id_of(channel_id)
        return {"guild_id": str(guild_id)} if guild_id is not None else {}

    def _guild_record(self, guild_id: int) -> FakeGuild:
        """A guild the bot is in, or one it is not in (``foreign_guilds``)."""
        return self.guilds.get(guild_id) or self.foreign_guilds[guild_id]

    def _bot_present(self, channel_id: int) -> bool:
        """Whether the bot is where the channel is: a guild it is in, or a DM it is a recipient of
        (gateway events of the channel reach it; its REST calls there are not 403 "Missing Access")."""
        channel = self._channel(channel_id)
        if channel["type"] in (1, 3):
            return self.application_id in self.private_members[channel_id]
        return int(channel["guild_id"]) in self.guilds

    def _user(self, who: str | dict | int) -> dict:
        if isinstance(who, dict):
            return who.get("user", who)
        if isinstance(who, int):
            found = [u for u in [self.bot_user, *self.users.values()] if int(u["id"]) == who]
            if not found:
                raise KeyError(f"unknown user id {who}")
            return found[0]
        return self.bot_user if who == "bot" else self.users[who]

    def _user_id(self, who: str | dict | int) -> int:
        if isinstance(who, int) or (isinstance(who, str) and who.isdigit()):
            return int(who)
        return int(self._user(who)["id"])

    def roles_of(self, user: str | dict | int, guild_id: int | None = None) -> list[int]:
        """The role ids a user has in a guild (default: the first): as set with
        ``set_member_roles``, else the bot role for the bot, the moderator role for "moderator"."""
        user_id, guild_id = self._user_id(user), int(guild_id or self.guild_id)
        if (guild_id, user_id) in self.member_roles:
            return list(self.member_roles[(guild_id, user_id)])
        if user_id == self.application_id:
            return [self.bot_role_id]
        return [self.moderator_role_id] if user_id == self.moderator_id else []

    def permissions_for(self, role_ids: Iterable[int], guild_id: int | None = None) -> int:
        """Guild permissions of a member with these roles (plus @everyone); Administrator → all."""
        perms = int(self.roles["everyone"]["permissions"])
        by_id = {int(r["id"]): int(r["permissions"]) for r in self.roles.values()}
        by_id.update({int(r["id"]): int(r["permissions"]) for r in self.extra_roles.get(guild_id or self.guild_id, [])})
        for r in role_ids:
            perms |= by_id.get(int(r), 0)
        return Perm.ALL if perms & Perm.ADMINISTRATOR else perms

    def channel_permissions(
        self, user: str | dict | int, channel_id: int, *, roles: Iterable[int] | None = None
    ) -> int:
        """A member's permissions in a channel, computed as Discord (and discord.py's
        ``permissions_for``) does: the owner and Administrator get everything; otherwise @everyone's
        and the roles' permissions, then the @everyone overwrite, the role overwrites together, the
        member overwrite.  A thread takes its parent's overwrites; a private thread (type 12) is only
        visible to its members and to Manage Threads.  Without View Channel: 0."""
        channel = self._channel(channel_id)
        user_id = self._user_id(user)
        if channel["type"] in (1, 3):  # a DM or group DM: its recipients, no overwrites
            return Perm.PRIVATE if user_id in self.private_members[channel_id] else 0
        guild_id = int(channel["guild_id"])
        if user_id == self.application_id and guild_id in self.foreign_guilds:
            return 0  # not a member there
        if user_id == self.owner_id:
            return Perm.ALL
        roles = [int(r) for r in (self.roles_of(user_id, guild_id) if roles is None else roles)]
        perms = self.permissions_for(roles, guild_id)
        if perms & Perm.ADMINISTRATOR:
            return Perm.ALL
        is_thread = channel["type"] in (10, 11, 12)
        base = self._channel(int(channel["parent_id"])) if is_thread else channel
        overwrites = base.get("permission_overwrites") or []
        for ow in overwrites:
            if ow["type"] == 0 and int(ow["id"]) == guild_id:
                perms = (perms & ~int(ow["deny"])) | int(ow["allow"])
        allow = deny = 0
        for ow in overwrites:
            if ow["type"] == 0 and int(ow["id"]) in roles:
                allow, deny = allow | int(ow["allow"]), deny | int(ow["deny"])
        perms = (perms & ~deny) | allow
        for ow in overwrites:
            if ow["type"] == 1 and int(ow["id"]) == user_id:
                perms = (perms & ~int(ow["deny"])) | int(ow["allow"])
        if (
            channel["type"] == 12
            and user_id not in self.thread_members.get(int(channel["id"]), {})
            and not perms & Perm.MANAGE_THREADS
        ):
            perms &= ~Perm.VIEW_CHANNEL
        return perms if perms & Perm.VIEW_CHANNEL else 0

    def _bot_sees(self, channel_id: int) -> bool:
        return bool(self.channel_permissions(self.application_id, channel_id) & Perm.VIEW_CHANNEL)

    def _member_for(
        self,
        who: str | dict,
        roles: Iterable[int] | None,
        permissions: int | None,
        channel_id: int | None = None,
    ) -> dict:
        if isinstance(who, dict) and "user" in who:
            member = copy.deepcopy(who)
        else:
            if roles is None:
                guild_id = self._guild_id_of(channel_id) if channel_id else None
                roles = self.roles_of(self._user_id(who), guild_id)
            member = make_member(self._user(who), roles=roles)
        if permissions is None:
            role_ids = [int(r) for r in member["roles"]]
            if channel_id is not None:
                permissions = self.channel_permissions(member["user"], channel_id, roles=role_ids)
            else:
                permissions = self.permissions_for(role_ids)
        member["permissions"] = str(permissions)
        return member

    def _channel(self, channel_id: int) -> dict:
        found = self.channels.get(channel_id) or self.threads.get(channel_id) or self.private_channels.get(channel_id)
        if found is None:
            raise KeyError(f"unknown channel {channel_id}; known: {list(self.channels) + list(self.threads)}")
        return found

    # ---------------------------------------------------------------- attachments

    def _sign(self, att_id: int, channel_id: int, filename: str) -> tuple[str, str]:
        """A signed CDN path (``ex``/``is``/``hm``) for an attachment, and its ``hm``."""
        now = int(time.time())
        ex, is_ = f"{now + 86400:x}", f"{now:x}"
        hm = hashlib.sha256(f"{att_id}:{ex}:{is_}:{next(self._ids)}".encode()).hexdigest()
        return f"/attachments/{channel_id}/{att_id}/{quote(filename)}?ex={ex}&is={is_}&hm={hm}&", hm

    def _store_attachment(
        self, channel_id: int, filename: str, data: bytes, content_type: str | None, *, att_id: int | None = None
    ) -> dict:
        att_id = att_id or self.new_id()
        path, hm = self._sign(att_id, channel_id, filename)
        att = {
            "id": str(att_id),
            "filename": filename,
            "size": len(data),
            "url": self.cdn_host + path,
            "proxy_url": self.cdn_host + "/media" + path,
        }
        if content_type is not None:
            att["content_type"] = content_type
        size = _image_size(data)
        if size:
            att["width"], att["height"] = size
        self._attachments[att_id] = _Attachment(att_id, channel_id, filename, data, content_type, hm, att, {hm})
        return att

    def expire_attachments(self) -> None:
        """Make every attachment URL issued so far answer 404, like an expired signature.  Fetching
        the message again (``GET /channels/{c}/messages/{m}``, history, an interaction's resolved
        message) hands out freshly signed URLs that work."""
        with self._cond:
            for att in self._attachments.values():
                att.signatures = set()
                self._expired.add(att.id)

    def attachment_url_works(self, url: str) -> bool:
        """Whether the CDN would serve this attachment URL now (signature known and not expired)."""
        m = re.search(r"/attachments/(\d+)/(\d+)/[^?]*\?(?:.*&)?hm=([0-9a-f]+)", url)
        att = self._attachments.get(int(m.group(2))) if m else None
        return bool(att and m and str(att.channel_id) == m.group(1) and m.group(3) in (att.signatures or ()))

    def _refresh_attachments(self, message: dict) -> dict:
        """Re-sign (in place) the attachment URLs of a stored message whose signatures no longer
        work, as Discord hands out fresh URLs each time a message is fetched; returns the message."""
        for a in message.get("attachments") or []:
            att = self._attachments.get(int(a["id"]))
            if att is None or self.attachment_url_works(a["url"]):
                continue
            path, hm = self._sign(att.id, att.channel_id, att.filename)
            att.signatures = (att.signatures or set()) | {hm}
            att.hm = hm
            self._expired.discard(att.id)
            a["url"], a["proxy_url"] = self.cdn_host + path, self.cdn_host + "/media" + path
            att.payload = a
        return message

    def _forget_attachments(self, message: dict) -> None:
        """A deleted message's attachments stop being served."""
        for a in message.get("attachments") or []:
            att = self._attachments.get(int(a["id"]))
            if att is not None:
                att.signatures = set()

    async def _cdn(self, request: web.Request) -> web.Response:
        media = request.path.startswith("/media/")
        record = {"kind": "media" if media else "cdn", "path": request.path, "query": dict(request.query)}
        att = None
        try:
            att = self._attachments.get(int(request.match_info["attachment"]))
        except ValueError:
            pass
        if (
            att is None
            or str(att.channel_id) != request.match_info["channel"]
            or request.query.get("hm") not in (att.signatures or ())
        ):
            record["status"] = 404
            response = web.Response(status=404, text="This content is no longer available.")
        else:
            data = att.data
            if media and ("width" in request.query or "height" in request.query):
                try:
                    w = int(request.query.get("width") or 0) or None
                    h = int(request.query.get("height") or 0) or None
                except ValueError:
                    w = h = None
                data = _resize(data, w, h)
            record["status"] = 200
            response = web.Response(body=data, headers={"Content-Type": att.content_type or "application/octet-stream"})
        with self._cond:
            self.attachment_requests.append(record)
            self._cond.notify_all()
        return response

    # ---------------------------------------------------------------- users posting

    def post_message(
        self,
        channel_id: int | None = None,
        *,
        author: str | dict = "member",
        content: str = "",
        attachments: Iterable[tuple[str, bytes, str | None]] = (),
        bot: bool = False,
        timeout: float = 20,
    ) -> dict:
        """A user posts a message: dispatch MESSAGE_CREATE and return its payload.

        In a DM or group DM (``add_private_channel``) the message has no ``guild_id``/``member``; it
        is dispatched only when the bot is a recipient, and stored either way (a context menu's
        ``target_message``).  In a guild the bot is not in (``add_guild(bot_member=False)``) it is
        stored, never dispatched."""
        channel_id = channel_id or self.channel_id
        message = self._user_message(channel_id, author, content, attachments, bot=bot)
        if self._bot_present(channel_id):
            self.dispatch("MESSAGE_CREATE", message, guild_id=self._guild_id_of(channel_id), timeout=timeout)
        return message

    def _user_message(
        self,
        channel_id: int,
        author: str | dict,
        content: str,
        attachments: Iterable[tuple[str, bytes, str | None]],
        *,
        bot: bool = False,
        message_id: int | None = None,
    ) -> dict:
        """Build and store (not dispatch) a user's message; a thread counts it."""
        guild_id = self._guild_id_of(channel_id)
        user = dict(self._user(author))
        if bot:
            user["bot"] = True
        known = {u["id"]: u for u in [self.bot_user, *self.users.values()]}
        mentioned = [known[i] for i in dict.fromkeys(re.findall(r"<@!?(\d+)>", content)) if i in known]
        message: dict[str, Any] = {
            "id": str(message_id or self.new_id()),
            "channel_id": str(channel_id),
            **({"guild_id": str(guild_id)} if guild_id is not None else {}),
            "author": user,
            "content": content,
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": "@everyone" in content,
            "mentions": [{**u, "member": make_member(u)} if guild_id else u for u in mentioned],
            "mention_roles": re.findall(r"<@&(\d+)>", content),
            "attachments": [self._store_attachment(channel_id, n, d, t) for n, d, t in attachments],
            "embeds": [],
            "reactions": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
            "components": [],
            "nonce": str(self.new_id()),
        }
        if guild_id is not None:
            roles = self.roles_of(int(user["id"]), guild_id) if not isinstance(author, dict) else []
            message["member"] = {k: v for k, v in make_member(user, roles=roles).items() if k != "user"}
        thread = self.threads.get(channel_id)
        if thread is not None:
            message["position"] = thread["total_message_sent"]
            if int(message["id"]) != channel_id:  # a forum post's starter message is not counted
                thread["message_count"] += 1
            thread["total_message_sent"] += 1
            thread["last_message_id"] = message["id"]
        elif channel_id in self.private_channels or "last_message_id" in self.channels.get(channel_id, {}):
            self._channel(channel_id)["last_message_id"] = message["id"]
        self.channel_messages[int(message["id"])] = message
        return message

    # ---------------------------------------------------------------- forums and media channels

    def create_post(
        self,
        forum_id: int,
        *,
        title: str = "投稿",
        content: str = "",
        attachments: Iterable[tuple[str, bytes, str | None]] = (),
        author: str | dict = "member",
        tags: Iterable[str | int] = (),
        timeout: float = 20,
    ) -> tuple[int, dict]:
        """A user creates a post in a forum (15) or media (16) channel; return ``(thread_id, the
        starter message payload)``.

        As on Discord the post is a public thread (type 11, ``parent_id`` the forum, ``owner_id`` the
        author, ``applied_tags`` the tags' ids, ``message_count`` 0) and its starter message has the
        thread's id and ``channel_id``: THREAD_CREATE (``newly_created: true``) is dispatched first,
        then MESSAGE_CREATE (both only when the bot can see the forum).  ``tags``: names or ids of the
        forum's ``available_tags``.  Raises (a user could not post it) on an unknown tag, more than 5
        tags, no tag in a channel with the REQUIRE_TAG flag (Discord's 40067), a title not 1-100
        characters, or an empty post."""
        forum = self.channels.get(forum_id)
        if forum is None or forum["type"] not in (15, 16):
            raise ValueError(f"channel {forum_id} is not a forum or media channel")
        tag_ids = list(dict.fromkeys(self._tag_ref(forum_id, t) for t in tags))
        if len(tag_ids) > 5:
            raise ValueError(f"a post takes at most 5 tags, not {len(tag_ids)}")
        if not tag_ids and int(forum.get("flags") or 0) & REQUIRE_TAG:
            raise ValueError(f"forum {forum_id} requires a tag (40067: A tag is required to create a forum post)")
        if not 1 <= len(title) <= 100:
            raise ValueError("a post's title must be 1-100 characters")
        attachments = list(attachments)
        if not content and not attachments:
            raise ValueError("a post needs content or attachments (Cannot send an empty message)")
        owner_id = self._user_id(author)
        thread_id = self.new_id()
        thread = _thread(thread_id, int(forum["guild_id"]), forum_id, owner_id, title)
        now = _now_iso()
        thread["thread_metadata"].update(
            create_timestamp=now, archive_timestamp=now, auto_archive_duration=forum["default_auto_archive_duration"]
        )
        thread["applied_tags"] = [str(t) for t in tag_ids]
        thread["rate_limit_per_user"] = forum.get("default_thread_rate_limit_per_user") or 0
        self.threads[thread_id] = thread
        self.thread_members[thread_id] = {owner_id: now}
        message = self._user_message(thread_id, author, content, attachments, message_id=thread_id)
        forum["last_message_id"] = str(thread_id)  # a forum's last_message_id is its newest post
        if self._bot_present(forum_id) and self._bot_sees(thread_id):
            self.dispatch("THREAD_CREATE", {**copy.deepcopy(thread), "newly_created": True}, timeout=timeout)
            self.dispatch("MESSAGE_CREATE", message, timeout=timeout)
        return thread_id, message

    def _tag_ref(self, forum_id: int, tag: str | int) -> int:
        """A tag of a forum given by name or id → its id (KeyError when it has none such)."""
        for t in self.channels[forum_id].get("available_tags") or []:
            if t["name"] == tag or t["id"] == str(tag):
                return int(t["id"])
        raise KeyError(f"forum {forum_id} has no tag {tag!r}: {self._tag_names(forum_id)}")

    def _tag_names(self, forum_id: int) -> list[str]:
        return [t["name"] for t in self.channels[forum_id].get("available_tags") or []]

    def _new_tags(self, specs: Iterable[str | dict], current: Iterable[dict] = ()) -> list[dict]:
        """Tag objects for names/dicts (a known name or id keeps its id); ValueError over the limits."""
        by_name = {t["name"]: t["id"] for t in current}
        tags = []
        for spec in specs:
            spec = {"name": spec} if isinstance(spec, str) else dict(spec)
            spec.setdefault("id", by_name.get(spec.get("name")))
            tags.append(_tag(spec, self.new_id()))
        if errors := _tag_errors(tags):
            raise ValueError(f"invalid forum tags: {errors}")
        return tags

    def tag_id(self, channel_id: int, name: str) -> int:
        """The id of a forum/media channel's tag with this name (KeyError when it has none)."""
        return self._tag_ref(channel_id, name)

    def set_available_tags(self, channel_id: int, tags: Iterable[str | dict]) -> list[dict]:
        """Replace a forum/media channel's ``available_tags`` (names or dicts ``{name, emoji_name?,
        emoji_id?, moderated?}``; a tag keeping its name keeps its id) and dispatch CHANNEL_UPDATE;
        return the new tags.  At most 20, names 1-20 characters (ValueError)."""
        channel = self.channels[channel_id]
        if channel["type"] not in (15, 16):
            raise ValueError(f"channel {channel_id} of type {channel['type']} has no tags")
        channel["available_tags"] = self._new_tags(tags, channel["available_tags"])
        self._maybe_dispatch("CHANNEL_UPDATE", copy.deepcopy(channel))
        return channel["available_tags"]

    def applied_tag_names(self, thread_id: int) -> list[str]:
        """The names of the tags now applied to a forum/media post, in ``applied_tags`` order."""
        thread = self.threads[thread_id]
        names = {t["id"]: t["name"] for t in self.channels[int(thread["parent_id"])].get("available_tags") or []}
        return [names.get(t, t) for t in thread.get("applied_tags") or []]

    def wait_for_thread_edit(self, thread_id: int, timeout: float = 20, *, since: int = 0) -> dict:
        """The first ``thread_edits`` entry (at or after index ``since``) for this thread: the bot's
        successful ``PATCH /channels/{thread}`` (``Thread.edit``)."""

        def find() -> dict | None:
            for e in self.thread_edits[since:]:
                if e["thread_id"] == thread_id:
                    return e
            return None

        return self.wait_for(find, timeout, f"an edit of thread {thread_id} (since {since})")

    # ---------------------------------------------------------------- DMs, group DMs, foreign guilds

    def add_private_channel(self, *users: str | dict | int, group: bool = False, name: str | None = None) -> int:
        """Create a DM (type 1, exactly two users) or, with ``group``, a group DM (type 3, 2-10
        users) between these users (names, users, ids; "bot" for the bot: a DM with the bot is where
        ``interact(context=1)`` happens); return its id.  Nothing is dispatched (Discord sends no
        CHANNEL_CREATE for DMs to bots).  Without the bot among the users, the bot's REST calls to it
        answer 403 "Missing Access" (50001) and ``post_message`` there dispatches nothing."""
        ids = list(dict.fromkeys(self._user_id(u) for u in users))
        if not group and len(ids) != 2:
            raise ValueError(f"a DM is between exactly two users, not {len(ids)}")
        if group and not 2 <= len(ids) <= 10:
            raise ValueError(f"a group DM has 2 to 10 users, not {len(ids)}")
        if group and self.application_id in ids:
            raise ValueError("a bot cannot be in a group DM")
        channel_id = self.new_id()
        channel: dict[str, Any] = {
            "id": str(channel_id),
            "type": 3 if group else 1,
            "last_message_id": None,
            "flags": 0,
            "recipients": [self._user(i) for i in ids if i != self.application_id],
        }
        if group:
            channel.update(name=name, icon=None, owner_id=str(ids[0]))
        self.private_channels[channel_id] = channel
        self.private_members[channel_id] = ids
        return channel_id

    # ---------------------------------------------------------------- custom emojis and reactions

    def add_emoji(self, guild_id: int | None = None, name: str = "neko", *, animated: bool = False) -> int:
        """Create a custom emoji in a guild (default: the first): ``{id, name, animated, available:
        true, managed: false, require_colons: true, roles: []}``, listed in the guild's GUILD_CREATE
        ``emojis`` and dispatched as GUILD_EMOJIS_UPDATE ``{guild_id, emojis}`` when a bot is
        connected; return its id.  Names are 2-32 characters of letters, digits and ``_``."""
        guild_id = int(guild_id or self.guild_id)
        if guild_id not in self.guilds and guild_id not in self.foreign_guilds:
            raise KeyError(f"unknown guild {guild_id}")
        if not re.fullmatch(r"[A-Za-z0-9_]{2,32}", name):
            raise ValueError(f"invalid emoji name {name!r}")
        emoji_id = self.new_id()
        emojis = self.emojis.setdefault(guild_id, [])
        emojis.append(
            {
                "id": str(emoji_id),
                "name": name,
                "animated": animated,
                "available": True,
                "managed": False,
                "require_colons": True,
                "roles": [],
            }
        )
        self._maybe_dispatch("GUILD_EMOJIS_UPDATE", {"guild_id": str(guild_id), "emojis": copy.deepcopy(emojis)})
        return emoji_id

    def _find_emoji(self, emoji_id: int) -> dict | None:
        """A custom emoji of a guild the bot is in (None: unknown to the bot)."""
        for guild_id in self.guilds:
            for e in self.emojis.get(guild_id, []):
                if int(e["id"]) == emoji_id:
                    return e
        return None

    def _reaction_key(self, raw: str) -> tuple[str, dict | None] | None:
        """A reaction emoji as the URL names it → (decoded key, custom emoji or None); None when
        Discord would answer "Unknown Emoji" (10014)."""
        text = unquote(raw) if "%" in raw else raw
        m = _CUSTOM_EMOJI_RE.match(text)
        if m:
            custom = self._find_emoji(int(m.group(2)))
            return (f"{custom['name']}:{custom['id']}", custom) if custom else None
        # Discord also takes a lone regional indicator (🇦 … 🇿), which the emoji package does not list
        indicator = len(text) == 1 and 0x1F1E6 <= ord(text) <= 0x1F1FF
        return (text, None) if indicator or emoji_lib.is_emoji(text) else None

    def _add_reaction(self, message: dict, key: str, custom: dict | None, user_id: int) -> bool:
        """(under ``_cond``) one user's reaction on a stored message; False when it was there."""
        reactors = self._reactors.setdefault(int(message["id"]), {}).setdefault(key, [])
        if user_id in reactors:
            return False
        reactors.append(user_id)
        reactions = message.setdefault("reactions", [])
        entry = next((r for r in reactions if self._key_of(r["emoji"]) == key), None)
        if entry is None:
            entry = {
                "count": 0,
                "count_details": {"burst": 0, "normal": 0},
                "me": False,
                "me_burst": False,
                "burst_colors": [],
                "emoji": _emoji_object(key, custom),
            }
            reactions.append(entry)
        entry["count"] += 1
        entry["count_details"]["normal"] += 1
        entry["me"] = entry["me"] or user_id == self.application_id
        return True

    def _remove_reaction(self, message: dict, key: str, user_id: int) -> bool:
        """(under ``_cond``) take one user's reaction off; False when it was not there."""
        reactors = self._reactors.get(int(message["id"]), {}).get(key, [])
        if user_id not in reactors:
            return False
        reactors.remove(user_id)
        for entry in list(message.get("reactions") or []):
            if self._key_of(entry["emoji"]) == key:
                entry["count"] -= 1
                entry["count_details"]["normal"] -= 1
                entry["me"] = self.application_id in reactors
                if entry["count"] <= 0:
                    message["reactions"].remove(entry)
        return True

    @staticmethod
    def _key_of(emoji: dict) -> str:
        return f"{emoji['name']}:{emoji['id']}" if emoji.get("id") else emoji["name"]

    def _reaction_event(self, message: dict, key: str, custom: dict | None, user_id: int) -> dict:
        """MESSAGE_REACTION_ADD/REMOVE's payload."""
        channel_id = int(message["channel_id"])
        event: dict[str, Any] = {
            "user_id": str(user_id),
            "channel_id": str(channel_id),
            "message_id": message["id"],
            **self._guild_fields(channel_id),
            "emoji": _emoji_object(key, custom),
            "burst": False,
            "type": 0,
        }
        guild_id = self._guild_id_of(channel_id)
        if guild_id is not None:
            event["member"] = make_member(self._user(user_id), roles=self.roles_of(user_id, guild_id))
        return event

    def react(
        self, message: dict | int | str, emoji: str, *, user: str | dict | int = "member", timeout: float = 20
    ) -> None:
        """A user reacts to a stored message with ``emoji`` ("👍", or "name:id" of a custom emoji):
        stored on the message (``reactions``) and dispatched as MESSAGE_REACTION_ADD when the bot is
        there.  After it, the bot may add the same reaction without Add Reactions."""
        stored = self.channel_messages[int(message["id"] if isinstance(message, dict) else message)]
        found = self._reaction_key(emoji)
        if found is None:
            raise ValueError(f"unknown emoji {emoji!r}")
        key, custom = found
        user_id = self._user_id(user)
        with self._cond:
            added = self._add_reaction(stored, key, custom, user_id)
        if added and self._bot_present(int(stored["channel_id"])):
            event = self._reaction_event(stored, key, custom, user_id)
            event["message_author_id"] = stored["author"]["id"]
            self.dispatch("MESSAGE_REACTION_ADD", event, timeout=timeout)

    def reactions_on(self, message_id: int | str) -> list[str]:
        """The bot's reactions now on a message, in the order it added them ("👍", or "name:id")."""
        with self._cond:
            return [e for _, m, e in self.reactions if m == int(message_id)]

    def wait_for_reaction(self, message_id: int | str, timeout: float = 20) -> str:
        """Block until the bot has a reaction on a message; return the first ("👍" or "name:id")."""
        return self.wait_for(
            lambda: (self.reactions_on(message_id) or [None])[0], timeout, f"a reaction of the bot on {message_id}"
        )

    # ---------------------------------------------------------------- the image index: world changes

    def _maybe_dispatch(self, event: str, data: dict, timeout: float = 20, *, offline: bool = False) -> None:
        """Dispatch when a bot has ever identified (it may be reconnecting); otherwise only the
        stored world changes (the next READY/GUILD_CREATE shows it).  Nothing about a guild the bot
        is not in (``foreign_guilds``) is dispatched.  ``offline``: the bot is stopped, so no session
        will resume and Discord sends the event to nobody; a bot started later only sees the new world."""
        if offline or self._guild_of_event(event, data) in self.foreign_guilds:
            return
        private = int(data.get("channel_id") or 0) if isinstance(data, dict) else 0
        if private in self.private_channels and not self._bot_present(private):
            return
        if self._loop is not None and self._session_states:
            self.dispatch(event, data, timeout=timeout)

    def add_user(self, username: str, *, roles: Iterable[int] = (), guild_id: int | None = None) -> dict:
        """A new member of every guild (``users[username]``; ``interact(user=username)``,
        ``post_message(author=username)``), with these roles in ``guild_id`` (default: the first).
        Not dispatched (GUILD_MEMBER_ADD needs the privileged members intent): the member is in the
        next GUILD_CREATE and, with its roles, in every interaction payload."""
        user = make_user(self.new_id(), username)
        self.users[username] = user
        if roles:
            self.member_roles[(int(guild_id or self.guild_id), int(user["id"]))] = [int(r) for r in roles]
        return user

    def set_member_roles(self, user: str | dict | int, roles: Iterable[int], *, guild_id: int | None = None) -> None:
        """Give a member exactly these roles (besides @everyone) in a guild; used by later
        interactions, posts and GUILD_CREATEs (not dispatched: GUILD_MEMBER_UPDATE needs the members intent)."""
        self.member_roles[(int(guild_id or self.guild_id), self._user_id(user))] = [int(r) for r in roles]

    def add_role(self, guild_id: int | None, name: str, permissions: int, *, position: int | None = None) -> int:
        """Create a role (GUILD_ROLE_CREATE when a bot is connected); return its id."""
        guild_id = int(guild_id or self.guild_id)
        extra = self.extra_roles.setdefault(guild_id, [])
        role = _role(
            self.new_id(), name, permissions, position if position is not None else len(self.roles) + len(extra)
        )
        extra.append(role)
        self._maybe_dispatch("GUILD_ROLE_CREATE", {"guild_id": str(guild_id), "role": role})
        return int(role["id"])

    def add_channel(
        self,
        guild_id: int | None = None,
        name: str = "チャンネル",
        *,
        type: int = 0,
        overwrites: Iterable[dict] = (),
        parent_id: int | None = None,
        nsfw: bool = False,
        tags: Iterable[str | dict] | None = None,
        flags: int = 0,
    ) -> int:
        """Create a guild channel (0 text, 4 category, 15 forum, 16 media) with these
        ``permission_overwrites`` (see :func:`overwrite`); CHANNEL_CREATE when a bot is connected.

        A forum/media channel takes ``tags`` (its ``available_tags``): names, or dicts ``{name,
        emoji_name?, emoji_id?, moderated?}``; each gets a snowflake id and Discord's shape ``{id, name,
        moderated, emoji_id, emoji_name}`` (at most 20, names 1-20 characters: ValueError otherwise).
        ``flags``: channel flags, e.g. ``REQUIRE_TAG`` (posts need a tag)."""
        guild_id = int(guild_id or self.guild_id)
        if guild_id not in self.guilds and guild_id not in self.foreign_guilds:
            raise KeyError(f"unknown guild {guild_id}")
        if tags is not None and type not in (15, 16):
            raise ValueError(f"only forum (15) and media (16) channels have tags, not type {type}")
        channel_id = self.new_id()
        position = sum(1 for c in self.channels.values() if c["guild_id"] == str(guild_id))
        channel = _channel_of_type(channel_id, guild_id, name, position, type, parent_id)
        channel["permission_overwrites"] = [dict(o) for o in overwrites]
        channel["flags"] = int(flags)
        if tags is not None:
            channel["available_tags"] = self._new_tags(tags)
        if "nsfw" in channel:
            channel["nsfw"] = nsfw
        self.channels[channel_id] = channel
        self._maybe_dispatch("CHANNEL_CREATE", channel)
        return channel_id

    def set_overwrites(self, channel_id: int, overwrites: Iterable[dict]) -> None:
        """Replace a channel's permission overwrites (CHANNEL_UPDATE with the whole channel)."""
        channel = self.channels[channel_id]
        channel["permission_overwrites"] = [dict(o) for o in overwrites]
        self._maybe_dispatch("CHANNEL_UPDATE", channel)

    def add_thread(
        self,
        parent_id: int,
        name: str = "スレッド",
        *,
        private: bool = False,
        members: Iterable[str | dict | int] = (),
        owner: str | dict | int = "member",
        archived: bool = False,
    ) -> int:
        """Create a thread in ``parent_id`` (type 11, or 12 when ``private``; a forum/media post is a
        public thread) whose members are the owner and ``members`` (names, users or ids; add "bot"
        for the bot).  When the bot can see it (public, or it is a member, or has Manage Threads) and
        it is not ``archived``, THREAD_CREATE is dispatched and the thread is in GUILD_CREATE;
        otherwise the bot only learns of it from an interaction or ``GET /channels/{id}``."""
        parent = self.channels[parent_id]
        if parent["type"] not in (0, 5, 15, 16):
            raise ValueError(f"channel {parent_id} of type {parent['type']} cannot have threads")
        thread_id = self.new_id()
        owner_id = self._user_id(owner)
        thread = _thread(thread_id, int(parent["guild_id"]), parent_id, owner_id, name, private=private)
        thread["thread_metadata"]["archived"] = archived
        now = _now_iso()
        thread["thread_metadata"]["create_timestamp"] = now
        if parent["type"] in (15, 16):
            thread["applied_tags"] = []
        self.threads[thread_id] = thread
        self.thread_members[thread_id] = {owner_id: now, **{self._user_id(u): now for u in members}}
        thread["member_count"] = len(self.thread_members[thread_id])
        if archived:
            self.archived_threads.add(thread_id)
        elif self._bot_sees(thread_id):
            self._maybe_dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return thread_id

    def add_thread_member(self, thread_id: int, user: str | dict | int) -> None:
        """Add a member to a thread (stored; ``GET /channels/{thread}/thread-members/{user}`` finds it)."""
        self.thread_members.setdefault(thread_id, {})[self._user_id(user)] = _now_iso()
        self.threads[thread_id]["member_count"] = len(self.thread_members[thread_id])

    def seed_history(
        self,
        channel_id: int | None = None,
        messages: Iterable[tuple | dict] = (),
    ) -> list[dict]:
        """Store past messages without dispatching anything (the bot finds them through
        ``GET /channels/{id}/messages``); return their payloads, in the order given.

        Each message is ``(author, filename, data, when)`` (``filename``/``data`` None for a text-only
        message; ``when`` a datetime, a POSIX timestamp or an ISO string, or left out for now) or a dict
        ``{"author", "content", "attachments": [(filename, data, content_type)], "timestamp"}``.
        Ids are snowflakes of their timestamps (``snowflake_at``), so ``before``/``after`` work both by
        id and by time."""
        channel_id = channel_id or self.channel_id
        guild_id = self._guild_id_of(channel_id)
        out = []
        for spec in messages:
            if isinstance(spec, dict):
                author, content = spec.get("author", "member"), spec.get("content", "")
                files = list(spec.get("attachments") or [])
                when = spec.get("timestamp")
            else:
                author, filename, blob, *rest = spec
                when, content = (rest[0] if rest else None), ""
                files = [] if filename is None else [(filename, blob, mimetypes.guess_type(filename)[0])]
            at = _as_datetime(when)
            message_id = snowflake_at(at, next(self._seed_ids))
            user = dict(self._user(author))
            message = {
                "id": str(message_id),
                "channel_id": str(channel_id),
                **self._guild_fields(channel_id),
                "author": user,
                "content": content,
                "timestamp": at.isoformat(),
                "edited_timestamp": None,
                "tts": False,
                "mention_everyone": False,
                "mentions": [],
                "mention_roles": [],
                "attachments": [
                    self._store_attachment(channel_id, n, d, t, att_id=snowflake_at(at, next(self._seed_ids)))
                    for n, d, t in files
                ],
                "embeds": [],
                "reactions": [],
                "pinned": False,
                "type": 0,
                "flags": 0,
                "components": [],
            }
            if guild_id is not None:
                roles = self.roles_of(int(user["id"]), guild_id)
                message["member"] = {k: v for k, v in make_member(user, roles=roles).items() if k != "user"}
            self.channel_messages[message_id] = message
            out.append(message)
        return out

    def history_rate_limit(self, per_second: float | None, *, per: float = 1.0) -> None:
        """Limit ``GET /channels/{id}/messages`` to ``per_second × per`` requests per ``per``
        seconds per channel (None: no limit).  Answers carry the ``X-RateLimit-*`` headers that
        discord.py follows (it waits when ``Remaining`` reaches 0); a request over the limit gets 429
        with ``retry_after`` (and ``Via``), like Discord."""
        if per_second is None:
            self._history_limit = None
        else:
            self._history_limit = (max(1, round(per_second * per)), per)
        self._history_windows.clear()

    def request_count(self, route: str, *, path: str | None = None) -> int:
        """How many requests reached a route, e.g. ``"GET /channels/{channel}/messages"`` (see
        ``route_counts``); with ``path``, only those to that exact path (``/channels/123/messages``)."""
        with self._cond:
            if path is None:
                return self.route_counts.get(route, 0)
            return sum(1 for r in self.requests if r.get("route") == route and r["path"] == path)

    def _drop_message(self, message_id: int) -> dict | None:
        message = self.channel_messages.pop(int(message_id), None)
        if message is not None:
            self._forget_attachments(message)
        return message

    def delete_message(self, channel_id: int, message_id: int | str) -> None:
        """Someone deleted a message: MESSAGE_DELETE ``{id, channel_id, guild_id}``; GET answers 404 (10008)."""
        self._drop_message(int(message_id))
        self._maybe_dispatch(
            "MESSAGE_DELETE",
            {"id": str(message_id), "channel_id": str(channel_id), **self._guild_fields(channel_id)},
        )

    def bulk_delete(self, channel_id: int, message_ids: Iterable[int | str]) -> None:
        """A moderator purged messages: MESSAGE_DELETE_BULK ``{ids, channel_id, guild_id}``."""
        ids = [str(i) for i in message_ids]
        for i in ids:
            self._drop_message(int(i))
        self._maybe_dispatch(
            "MESSAGE_DELETE_BULK",
            {"ids": ids, "channel_id": str(channel_id), **self._guild_fields(channel_id)},
        )

    def edit_message(
        self,
        channel_id: int,
        message_id: int | str,
        *,
        content: str | None = None,
        attachments: Iterable[int | str | dict] | None = None,
    ) -> dict:
        """The author edited a message: MESSAGE_UPDATE with the whole message (``edited_timestamp``
        set).  ``attachments``: the ones kept (ids, filenames or attachment dicts), e.g. ``[]`` when
        every image was removed; removed ones stop being served."""
        message = self.channel_messages[int(message_id)]
        if int(message["channel_id"]) != channel_id:
            raise KeyError(f"message {message_id} is not in channel {channel_id}")
        if content is not None:
            message["content"] = content
        if attachments is not None:
            keep = {str(a["id"]) if isinstance(a, dict) else str(a) for a in attachments}
            kept = [a for a in message["attachments"] if a["id"] in keep or a["filename"] in keep]
            self._forget_attachments({"attachments": [a for a in message["attachments"] if a not in kept]})
            message["attachments"] = kept
        message["edited_timestamp"] = _now_iso()
        self._maybe_dispatch("MESSAGE_UPDATE", copy.deepcopy(message))
        return message

    def delete_channel(self, channel_id: int, *, offline: bool = False) -> None:
        """A channel or thread was deleted: CHANNEL_DELETE (the channel object) or THREAD_DELETE
        ``{id, guild_id, parent_id, type}``.  Its messages (and a channel's threads) go too.
        ``offline=True``: while the bot is stopped (no event; see ``_maybe_dispatch``)."""
        doomed = [channel_id]
        if channel_id in self.threads:
            thread = self.threads.pop(channel_id)
            event, data = (
                "THREAD_DELETE",
                {k: thread[k] for k in ("id", "guild_id", "parent_id", "type")},
            )
        else:
            channel = self.channels.pop(channel_id)
            event, data = "CHANNEL_DELETE", channel
            for tid in [t for t, th in self.threads.items() if th["parent_id"] == str(channel_id)]:
                del self.threads[tid]
                doomed.append(tid)
        for mid in [m for m, msg in self.channel_messages.items() if int(msg["channel_id"]) in doomed]:
            self._drop_message(mid)
        self._maybe_dispatch(event, data, offline=offline)

    def remove_from_guild(self, guild_id: int, *, offline: bool = False) -> None:
        """The bot was kicked or the guild deleted: GUILD_DELETE ``{id}`` (no ``unavailable``; discord.py
        calls ``on_guild_remove``).  Its channels, threads and messages are gone: channel routes then
        answer 403 "Missing Access" (50001), as Discord does for a guild the bot is not in; a new
        IDENTIFY no longer lists it."""
        guild_id = int(guild_id)
        if guild_id not in self.guilds:
            raise KeyError(f"unknown guild {guild_id}")
        del self.guilds[guild_id]
        self.removed_guilds.add(guild_id)
        for store in (self.channels, self.threads):
            for cid in [c for c, ch in store.items() if int(ch["guild_id"]) == guild_id]:
                del store[cid]
                self._gone_channels[cid] = guild_id
        for mid in [m for m, msg in self.channel_messages.items() if int(msg["channel_id"]) in self._gone_channels]:
            self._drop_message(mid)
        if self._loop is not None and self._session_states and not offline:
            self.dispatch("GUILD_DELETE", {"id": str(guild_id)}, guild_id=guild_id)

    def edits_of(self, message_id: int | str) -> list[dict]:
        """The bot's edits of one message, in order: ``PATCH /channels/{c}/messages/{m}``, PATCH of a
        webhook message (@original or a followup) and UPDATE_MESSAGE (7) callbacks.  Entries are
        shaped like ``sent_messages`` entries (what the edit sent) plus ``message`` (the result)."""
        with self._cond:
            return list(self.message_edits.get(int(message_id), []))

    def wait_for_edits(self, message_id: int | str, count: int = 1, timeout: float = 20) -> list[dict]:
        """Block until the bot has edited a message ``count`` times; return ``edits_of`` it."""
        return self.wait_for(
            lambda: self.edits_of(message_id) if len(self.edits_of(message_id)) >= count else None,
            timeout,
            f"{count} edits of message {message_id}",
        )

    def _record_edit(self, message: dict, entry: dict) -> None:
        """(under ``_cond``) one edit of a message, for ``edits_of``."""
        entry = dict(entry, message=copy.deepcopy(message))
        self.message_edits.setdefault(int(message["id"]), []).append(entry)

    def click(
        self,
        message: dict | int | str,
        custom_id: str,
        *,
        user: str | dict | None = None,
        roles: list[int] | None = None,
        permissions: int | None = None,
        values: list[str] | None = None,
        locale: str = "ja",
        timeout: float = 20,
    ) -> FakeInteraction:
        """A user clicks a button (or picks ``values`` in a select menu) of a message the bot sent:
        INTERACTION_CREATE type 3 (MESSAGE_COMPONENT) with ``data {custom_id, component_type,
        values}`` and the ``message`` as it is now.  ``message``: a message payload, a
        ``sent_messages``/``FakeInteraction`` entry (an interaction's callback or followup message,
        ephemeral ones included: see ``FakeInteraction.messages``), or an id.

        Raises (a user cannot do it) when the component is not on the message or is disabled, when
        ``values`` are given to a button, when a select's ``values`` are not among its options or
        their number is outside ``min_values``..``max_values`` (1..1 unless set), and when someone
        other than the interaction's user clicks an ephemeral message (only they see it).

        ``user`` defaults to "member", or to the user of the interaction whose answer the message
        is.  A click on a message answering an interaction in a DM, a group DM or a guild the bot is
        not in has that interaction's context and ``authorizing_integration_owners``."""
        if isinstance(message, dict):
            message_id = int((message.get("message") or message)["id"]) if "kind" in message else int(message["id"])
        else:
            message_id = int(message)
        stored = self.channel_messages.get(message_id)
        if stored is None:
            raise KeyError(f"unknown message {message_id}")
        component = _find_component(stored.get("components") or [], custom_id)
        if component is None:
            raise LookupError(f"no component {custom_id!r} on message {message_id}: {stored.get('components')}")
        if component.get("disabled"):
            raise LookupError(f"component {custom_id!r} on message {message_id} is disabled")
        origin = self._interaction_of_message(message_id)
        if user is None:
            user = "member" if origin is None else self._user(origin.user_id)
        if origin is not None and int(stored.get("flags") or 0) & 64 and self._user_id(user) != origin.user_id:
            raise LookupError(f"message {message_id} is ephemeral: only user {origin.user_id} sees it")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component["type"]}
        if component["type"] == 2:
            if values is not None:
                raise ValueError(f"{custom_id!r} is a button: it takes no values")
        else:
            data["values"] = list(values or [])
            if (why := _select_value_errors(component, data["values"])) is not None:
                raise ValueError(f"a user cannot pick that in {custom_id!r}: {why}")
        channel_id = int(stored["channel_id"])
        context, installed = 0, True
        if origin is not None:
            context = int(origin.payload.get("context") or 0)
            installed = "0" in origin.payload.get("authorizing_integration_owners", {})
        elif channel_id in self.private_channels:
            context = 1 if self._bot_present(channel_id) else 2
        self.wait_ready(timeout, guild_id=self._guild_id_of(channel_id))
        shown = copy.deepcopy(self._refresh_attachments(stored))
        return self._send_interaction(
            3,
            data,
            user,
            roles,
            permissions,
            channel_id,
            locale,
            None,
            timeout,
            context=context,
            installed_in_guild=installed,
            message=shown,
        )

    @staticmethod
    def modal_inputs(opened: FakeInteraction) -> list[str]:
        """The custom ids of the text inputs of the modal ``opened`` was answered with, in order."""
        modal = next((r["modal"] for r in reversed(opened.responses) if r.get("type") == 9), None)
        if modal is None:
            raise LookupError(f"interaction {opened.id} was not answered with a modal: {opened.responses}")
        rows = modal.get("components") or []
        return [c["custom_id"] for row in rows for c in (row.get("components") or [row.get("component")])]

    def submit_modal(self, opened: FakeInteraction, values: dict[str, str], *, timeout: float = 20) -> FakeInteraction:
        """The user fills in and submits the modal the bot answered ``opened`` with (callback type 9):
        INTERACTION_CREATE type 5 (MODAL_SUBMIT) with ``data {custom_id, components}``, each text input
        (type 4) carrying its ``value``, in the modal's own layout (action rows, or labels: type 18), by the
        same user in the same channel, with the ``message`` the component was on when it opened from one.
        ``values``: text input custom_id → text. Raises (a user cannot submit it) for an unknown input, a
        required input left empty, or a text outside its min_length..max_length."""
        modal = next((r["modal"] for r in reversed(opened.responses) if r.get("type") == 9), None)
        if modal is None:
            raise LookupError(f"interaction {opened.id} was not answered with a modal: {opened.responses}")
        inputs: dict[str, dict] = {}

        def fill(component: dict) -> dict:
            if component.get("type") == 4:
                inputs[component["custom_id"]] = component
                return {"type": 4, "custom_id": component["custom_id"], "value": values.get(component["custom_id"], "")}
            if component.get("type") == 18:  # a label around one input
                return {"type": 18, "component": fill(component["component"])}
            return {"type": component.get("type"), "components": [fill(c) for c in component.get("components") or []]}

        components = [fill(c) for c in modal.get("components") or []]
        for custom_id, text in values.items():
            spec = inputs.get(custom_id)
            if spec is None:
                raise LookupError(f"no text input {custom_id!r} in the modal: {modal}")
            low, high = int(spec.get("min_length") or 0), int(spec.get("max_length") or 4000)
            if not low <= len(text) <= high:
                raise ValueError(f"{custom_id!r} takes {low}..{high} characters, not {len(text)}")
        for custom_id, spec in inputs.items():
            if spec.get("required", True) and not values.get(custom_id):
                raise ValueError(f"the text input {custom_id!r} is required")
        payload = opened.payload
        data = {"custom_id": modal["custom_id"], "components": components}
        extra: dict[str, Any] = {"message": payload["message"]} if "message" in payload else {}
        return self._send_interaction(
            5,
            data,
            self._user(opened.user_id),
            None,
            None,
            int(payload["channel_id"]),
            str(payload.get("locale") or "ja"),
            None,
            timeout,
            context=int(payload.get("context") or 0),
            installed_in_guild="0" in payload.get("authorizing_integration_owners", {}),
            **extra,
        )

    def _interaction_of_message(self, message_id: int) -> FakeInteraction | None:
        """The interaction whose callback or followup created this message, if any."""
        with self._cond:
            for rec in list(self.interactions.values()):
                if any(int(m["id"]) == message_id for m in rec.messages):
                    return rec
        return None

    # ---------------------------------------------------------------- interactions

    def attachment_option(
        self,
        name: str,
        filename: str,
        data: bytes,
        content_type: str | None = "image/png",
        *,
        channel_id: int | None = None,
    ) -> dict:
        """An attachment option (type 11) for ``interact(options=...)``; resolved automatically."""
        att = self._store_attachment(channel_id or self.channel_id, filename, data, content_type)
        return {"type": 11, "name": name, "value": att["id"], "_attachment": att}

    def interact(
        self,
        name: str,
        *,
        type: int | None = None,
        options: list[dict] | None = None,
        user: str | dict = "member",
        permissions: int | None = None,
        roles: list[int] | None = None,
        channel_id: int | None = None,
        locale: str = "ja",
        guild_locale: str | None = None,
        attachments: dict[str, tuple[str, bytes, str | None]] | None = None,
        target_message: dict | None = None,
        command_id: int | None = None,
        command_guild_id: int | str | None = "auto",
        context: int = 0,
        installed_in_guild: bool = True,
        _interaction_type: int = 2,
        timeout: float = 20,
    ) -> FakeInteraction:
        """Dispatch an INTERACTION_CREATE for a slash command (``type=CHAT_INPUT``, 2) or a message
        context menu (``type=MESSAGE_CONTEXT``, 3; the default when ``target_message`` is given).

        ``context`` (Discord's interaction context): 0 a guild channel; 1 the bot's DM with the user,
        2 a DM between users or a group DM (``channel_id`` from ``add_private_channel``: with the bot
        for 1, without it for 2).  Contexts 1 and 2 carry no ``guild_id``/``member`` but a ``user``, a
        ``channel {id, type 1|3, recipients}``, ``app_permissions`` Attach Files | Embed Links | Mention
        Everyone (| Use External Emojis in the bot's DM) and ``authorizing_integration_owners {"1":
        user id}``.  In context 0, ``installed_in_guild=False`` is the member using the app installed on
        their account (the way into a guild the bot is not in: ``add_guild(bot_member=False)``):
        ``{"1": user id}`` without "0", ``guild_id`` and ``member`` still there, and there
        ``app_permissions`` are the member's own.  Without "0" a sixth followup gets 400 (40094).

        A command synced globally is checked like Discord: its ``contexts`` (when not null) must hold
        ``context``, and its ``integration_types`` must hold 1 for a user install (contexts 1/2, or
        ``installed_in_guild=False``) or 0 for a guild install; a command synced only to guilds cannot
        be used outside them.  ValueError otherwise (the user would not see it)."""
        channel_id = channel_id or self.channel_id
        guild_id = self._guild_id_of(channel_id)
        user_install = context != 0 or not installed_in_guild
        # before building: the 3 s deadline starts when the bot (the shard of this guild) can see it
        self.wait_ready(timeout, guild_id=guild_id)
        if type is None:
            type = MESSAGE_CONTEXT if target_message is not None else CHAT_INPUT
        data_type = 3 if type == MESSAGE_CONTEXT else 1
        self._check_command_use(name, data_type, context, user_install)
        options = copy.deepcopy(options or [])
        if attachments:
            # Put new attachment options beside the innermost subcommand's options.
            level = options
            while level and level[0].get("type") in (1, 2):
                level = level[0].setdefault("options", [])
            for opt_name, (filename, blob, ctype) in attachments.items():
                level.append(self.attachment_option(opt_name, filename, blob, ctype, channel_id=channel_id))
        resolved: dict[str, dict] = {}

        def resolve(opts: list[dict]) -> None:
            for o in opts:
                if o.get("type") == 11:
                    att = o.pop("_attachment", None) or self._resolved_attachment(o["value"])
                    resolved.setdefault("attachments", {})[str(o["value"])] = att
                elif o.get("type") == 6:  # user: resolved.users and, in a guild, resolved.members
                    user_id = int(o["value"])
                    known = {int(u["id"]): u for u in [self.bot_user, *self.users.values()]}
                    if user_id in known:
                        resolved.setdefault("users", {})[str(user_id)] = known[user_id]
                        if guild_id is None:
                            continue
                        member = make_member(known[user_id], roles=self.roles_of(user_id, guild_id))
                        member = {k: v for k, v in member.items() if k != "user"}
                        resolved.setdefault("members", {})[str(user_id)] = member
                elif o.get("type") == 7:  # channel: a partial channel with the member's permissions
                    channel = self._channel(int(o["value"]))
                    partial = {k: channel[k] for k in ("id", "name", "type", "parent_id") if k in channel}
                    partial["permissions"] = str(self.channel_permissions(user, int(o["value"])))
                    resolved.setdefault("channels", {})[str(o["value"])] = partial
                resolve(o.get("options") or [])

        resolve(options)
        if command_guild_id == "auto":
            # Registered globally → no data.guild_id; otherwise the guild (discord.py falls back to global).
            globally = any(c.get("name") == name for c in self.synced_commands.get(None, []))
            in_guild = any(c.get("name") == name for c in self.synced_commands.get(guild_id, []))
            command_guild_id = guild_id if (in_guild or not globally) and not user_install else None
        data: dict[str, Any] = {
            "id": str(command_id or self._command_id(name, data_type)),
            "name": name,
            "type": data_type,
        }
        if command_guild_id:
            data["guild_id"] = str(command_guild_id)
        if data_type == 1:
            data["options"] = options
        if target_message is not None:
            # The message as it is now (edits, fresh attachment URLs), as Discord resolves it.
            stored = self.channel_messages.get(int(target_message["id"]))
            target = copy.deepcopy(self._refresh_attachments(stored)) if stored is not None else target_message
            data["target_id"] = target["id"]
            resolved.setdefault("messages", {})[target["id"]] = target
        if resolved:
            data["resolved"] = resolved
        return self._send_interaction(
            _interaction_type,
            data,
            user,
            roles,
            permissions,
            channel_id,
            locale,
            guild_locale,
            timeout,
            context=context,
            installed_in_guild=installed_in_guild,
        )

    def _check_command_use(self, name: str, data_type: int, context: int, user_install: bool) -> None:
        """Raise when Discord would not offer this command here (see ``interact``)."""
        if context not in (0, 1, 2):
            raise ValueError(f"context must be 0 (guild), 1 (bot DM) or 2 (private channel), not {context}")
        synced = [c for c in self.synced_commands.get(None, []) if c["name"] == name and c.get("type", 1) == data_type]
        in_guilds = any(
            c["name"] == name and c.get("type", 1) == data_type
            for g, cmds in self.synced_commands.items()
            if g is not None
            for c in cmds
        )
        if not synced:
            if user_install and in_guilds:
                raise ValueError(f"{name!r} is only synced to guilds: it cannot be used as a user-installed app")
            return
        command = synced[0]
        contexts = command.get("contexts")
        if contexts is not None and context not in contexts:
            raise ValueError(f"{name!r} is not available in context {context} (contexts {contexts})")
        install = 1 if user_install else 0
        integration_types = command.get("integration_types")
        if integration_types is not None and install not in integration_types:
            kind = "a user install" if user_install else "a guild install"
            raise ValueError(f"{name!r} is not available through {kind} (integration_types {integration_types})")

    def _send_interaction(
        self,
        interaction_type: int,
        data: dict,
        user: str | dict,
        roles: list[int] | None,
        permissions: int | None,
        channel_id: int,
        locale: str,
        guild_locale: str | None,
        timeout: float,
        *,
        context: int = 0,
        installed_in_guild: bool = True,
        **extra: Any,
    ) -> FakeInteraction:
        guild_id = self._guild_id_of(channel_id)
        payload: dict[str, Any] = {
            "id": str(self.new_id()),
            "application_id": str(self.application_id),
            "type": interaction_type,
            "token": f"itoken-{self.new_id()}",
            "version": 1,
        }
        if context == 0:
            if guild_id is None:
                raise ValueError(f"channel {channel_id} is a DM or group DM: use context=1 or 2")
            foreign = guild_id in self.foreign_guilds
            if foreign and installed_in_guild:
                raise ValueError(f"the bot is not in guild {guild_id}: only installed_in_guild=False reaches it")
            member = self._member_for(user, roles, permissions, channel_id)
            # Where the app is not in the guild it acts with the member's permissions.
            app_perms = (
                int(member["permissions"]) if foreign else self.channel_permissions(self.application_id, channel_id)
            )
            locale_of_guild = self.guild_locale if guild_id == self.guild_id else self._guild_record(guild_id).locale
            owners = {"0": str(guild_id)} if installed_in_guild else {"1": member["user"]["id"]}
            payload.update(
                guild_id=str(guild_id),
                guild={"id": str(guild_id), "locale": guild_locale or locale_of_guild, "features": []},
                channel={**self._channel(channel_id), "permissions": member["permissions"]},
                channel_id=str(channel_id),
                member=member,
                locale=locale,
                guild_locale=guild_locale or locale_of_guild,
            )
        else:
            channel = self.private_channels.get(channel_id)
            if channel is None:
                raise ValueError(f"context {context} needs a DM or group DM (add_private_channel), not {channel_id}")
            with_bot = self._bot_present(channel_id)
            if context == 1 and not (with_bot and channel["type"] == 1):
                raise ValueError(f"context 1 is the bot's DM with the user; channel {channel_id} is not that")
            if context == 2 and with_bot:
                raise ValueError(f"channel {channel_id} is the bot's DM: that is context 1")
            invoker = copy.deepcopy(self._user(user))
            if int(invoker["id"]) not in self.private_members[channel_id]:
                raise ValueError(f"user {invoker['id']} is not in channel {channel_id}")
            app_perms = Perm.ATTACH_FILES | Perm.EMBED_LINKS | Perm.MENTION_EVERYONE
            if context == 1:
                app_perms |= Perm.USE_EXTERNAL_EMOJIS
            shown = copy.deepcopy(channel)
            if channel["type"] == 1 and not with_bot:  # the other user, as the invoking user sees the DM
                shown["recipients"] = [u for u in shown["recipients"] if u["id"] != invoker["id"]]
            owners = {"1": invoker["id"]}
            payload.update(channel=shown, channel_id=str(channel_id), user=invoker, locale=locale)
        payload.update(
            {
                "app_permissions": str(app_perms),
                "entitlements": [],
                "authorizing_integration_owners": owners,
                "context": context,
                "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
                "data": data,
                **extra,
            }
        )
        record = FakeInteraction(self, payload)
        with self._cond:
            self.interactions[record.id] = record
            self._interactions_by_token[record.token] = record
        self.dispatch("INTERACTION_CREATE", payload, guild_id=guild_id, timeout=timeout)
        return record

    def autocomplete(
        self, name: str, options: list[dict], *, user: str | dict = "member", timeout: float = 20, **kwargs: Any
    ) -> list[dict]:
        """Send an autocomplete interaction (one option has ``"focused": True``); return the choices."""
        record = self.interact(name, options=options, user=user, _interaction_type=4, timeout=timeout, **kwargs)
        response = record.wait_response(timeout)
        if response["type"] != 8:
            raise AssertionError(f"autocomplete answered with callback type {response['type']}: {response}")
        return response["choices"]

    def _resolved_attachment(self, att_id: Any) -> dict:
        return self._attachments[int(att_id)].payload

    def _command_id(self, name: str, data_type: int) -> int:
        for cmds in self.synced_commands.values():
            for c in cmds:
                if c.get("name") == name and c.get("type", 1) == data_type:
                    return int(c["id"])
        return self._command_ids.setdefault(f"{data_type}:{name}", self.new_id())

    # ---------------------------------------------------------------- REST

    _ROUTES: list[tuple[str, str, str]] = [
        ("GET", r"users/@me", "_r_users_me"),
        ("GET", r"oauth2/applications/@me", "_r_application"),
        ("GET", r"gateway(?:/bot)?", "_r_gateway"),
        ("GET", r"guilds/(?P<guild>\d+)", "_r_guild"),
        ("GET", r"guilds/(?P<guild>\d+)/channels", "_r_guild"),
        ("GET", r"guilds/(?P<guild>\d+)/members/(?P<user>\d+)", "_r_guild"),
        ("GET|PATCH", r"channels/(?P<channel>\d+)", "_r_channel"),
        ("POST", r"channels/(?P<channel>\d+)/messages", "_r_create_message"),
        ("GET", r"channels/(?P<channel>\d+)/messages", "_r_history"),
        ("POST", r"channels/(?P<channel>\d+)/messages/bulk-delete", "_r_bulk_delete"),
        ("GET", r"channels/(?P<channel>\d+)/thread-members(?:/(?P<user>\d+))?", "_r_thread_members"),
        ("POST", r"channels/(?P<channel>\d+)/typing", "_r_typing"),
        ("GET|PATCH|DELETE", r"channels/(?P<channel>\d+)/messages/(?P<message>\d+)", "_r_message"),
        (
            "PUT|DELETE",
            r"channels/(?P<channel>\d+)/messages/(?P<message>\d+)/reactions/(?P<emoji>[^/]+)/@me",
            "_r_reaction",
        ),
        ("POST", r"interactions/(?P<iid>\d+)/(?P<token>[^/]+)/callback", "_r_callback"),
        ("POST", r"webhooks/(?P<app>\d+)/(?P<token>[^/]+)", "_r_followup"),
        (
            "GET|PATCH|DELETE",
            r"webhooks/(?P<app>\d+)/(?P<token>[^/]+)/messages/(?P<message>@original|\d+)",
            "_r_webhook_message",
        ),
        ("GET|PUT", r"applications/(?P<app>\d+)(?:/guilds/(?P<guild>\d+))?/commands", "_r_commands"),
    ]

    async def _api(self, request: web.Request) -> web.Response:
        tail = request.match_info["tail"]
        record = {"method": request.method, "path": "/" + tail, "query": dict(request.query), "time": time.monotonic()}
        try:
            response = await self._route(request, tail, record)
        except Exception as exc:  # a bug in the fake: make it loud, not a hang
            response = _error(500, f"fake Discord error: {exc!r}")
        record["status"] = response.status
        with self._cond:
            self.requests.append(record)
            if response.status == 400 and not record.get("injected"):
                self.invalid_requests.append(record)
            if response.status >= 400 and tail.startswith(("interactions/", "webhooks/")):
                parts = tail.split("/")
                rec = self._interactions_by_token.get(parts[2]) if len(parts) > 2 else None
                if rec is not None:
                    rec.failed.append(record)
            self._cond.notify_all()
        return response

    async def _route(self, request: web.Request, tail: str, record: dict) -> web.Response:
        for methods, pattern, handler in self._ROUTES:
            m = re.fullmatch(pattern, tail)
            if m and request.method in methods.split("|"):
                break
        else:
            with self._cond:
                self.unknown_requests.append(record)
            return _error(404, "Unknown route")
        spans = sorted(((m.span(k), k) for k, v in m.groupdict().items() if v is not None), reverse=True)
        template = tail
        for (a, b), k in spans:
            template = template[:a] + "{" + k + "}" + template[b:]
        record["route"] = route = f"{request.method} /{template}"
        with self._cond:
            self.route_counts[route] = self.route_counts.get(route, 0) + 1
        # Interaction callbacks and webhooks authenticate by their token; the rest by the bot token.
        record["token"] = self._bot_token(request)
        if not tail.startswith(("interactions/", "webhooks/")) and tail != "gateway" and record["token"] is None:
            return _error(401, "401: Unauthorized")
        payload, files = await self._read_body(request)
        record["json"] = payload
        groups = m.groupdict()
        if (groups.get("channel") and int(groups["channel"]) in self._gone_channels) or (
            groups.get("guild") and int(groups["guild"]) in self.removed_guilds
        ):
            return _error(403, "Missing Access", 50001)  # a guild the bot is no longer in
        if (groups.get("guild") and int(groups["guild"]) in self.foreign_guilds) or (
            groups.get("channel") and self._unreachable(int(groups["channel"]))
        ):
            return _error(403, "Missing Access", 50001)  # a guild the bot is not in, a DM without it
        fault = self._take_fault(request.method, tail)
        if fault is not None and not fault[0].processed:
            return self._fault_response(*fault, record, None)
        response = await getattr(self, handler)(request, m.groupdict(), payload, files)
        if fault is not None:
            if (entry := request.get(_ENTRY_KEY)) is not None:
                entry["answered_status"] = fault[1]
            return self._fault_response(*fault, record, response)
        return response

    def _unreachable(self, channel_id: int) -> bool:
        """A channel that exists but is not where the bot is (foreign guild, DM without the bot)."""
        try:
            return not self._bot_present(channel_id)
        except KeyError:
            return False  # unknown: the handler answers 404

    # ---------------------------------------------------------------- REST faults

    def inject_rest_faults(
        self,
        method: str,
        path_regex: str,
        statuses: Iterable[int],
        *,
        processed: bool = False,
        retry_after: float = 0.3,
    ) -> None:
        """Answer the next ``len(statuses)`` matching REST requests with these statuses, in order.

        A request matches when its method is in ``method`` ("POST", "GET|PATCH", "*") and its path
        after ``/api/v10/`` (e.g. ``channels/123/messages``; a leading "/" in the regex is fine)
        fully matches ``path_regex``.  Rules are consumed in the order they were injected.

        ``processed=False``: the request is not handled at all (nothing created or recorded besides
        ``requests``).  ``processed=True``: it is first handled normally (the message IS created and
        recorded; its ``sent_messages`` entry gets ``answered_status``) and the status is returned
        anyway, like Discord doing the work while its edge answers 502.

        Answers (all JSON with ``Content-Type: application/json`` exactly, plus ``Via``):
        429 → ``{"message": "You are being rate limited.", "retry_after": retry_after, "global": false,
        "code": 0}`` with ``Retry-After``, ``X-RateLimit-Limit``, ``X-RateLimit-Remaining: 0``,
        ``X-RateLimit-Reset``, ``X-RateLimit-Reset-After``, ``X-RateLimit-Bucket``,
        ``X-RateLimit-Scope: user`` (discord.py sleeps ``retry_after`` and retries; without ``Via`` it
        would raise, taking it for a Cloudflare ban); anything else → ``{"message": "502: Bad
        Gateway", "code": 0}`` and so on.  Each answer is recorded in ``injected_faults`` and its
        ``requests`` record gets ``"injected": True``."""
        rule = _FaultRule(
            {m.strip().upper() for m in method.split("|")},
            re.compile(path_regex),
            deque(int(x) for x in statuses),
            processed,
            float(retry_after),
        )
        with self._cond:
            self._faults.append(rule)

    def clear_rest_faults(self) -> int:
        """Drop the injected answers not used yet; return how many there were."""
        with self._cond:
            left = sum(len(r.statuses) for r in self._faults)
            self._faults.clear()
            return left

    def _take_fault(self, method: str, tail: str) -> tuple[_FaultRule, int] | None:
        """The first rule matching this request and the status it answers (consumed)."""
        with self._cond:
            for rule in self._faults:
                if rule.matches(method, tail):
                    status = rule.statuses.popleft()
                    if not rule.statuses:
                        self._faults.remove(rule)
                    return rule, status
        return None

    def _fault_response(
        self, rule: _FaultRule, status: int, record: dict, handled: web.Response | None
    ) -> web.Response:
        headers = {"Content-Type": "application/json", "Via": "1.1 google"}
        if status == 429:
            body: dict[str, Any] = {
                "message": "You are being rate limited.",
                "retry_after": rule.retry_after,
                "global": False,
                "code": 0,
            }
            bucket = hashlib.sha1(f"{sorted(rule.methods)}{rule.pattern.pattern}".encode()).hexdigest()[:32]
            headers.update(
                {
                    "Retry-After": str(max(1, math.ceil(rule.retry_after))),
                    "X-RateLimit-Limit": "5",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": f"{time.time() + rule.retry_after:.3f}",
                    "X-RateLimit-Reset-After": f"{rule.retry_after:.3f}",
                    "X-RateLimit-Bucket": bucket,
                    "X-RateLimit-Scope": "user",
                }
            )
        else:
            body = {"message": f"{status}: {web.Response(status=status).reason}", "code": 0}
        fault = {
            "method": record["method"],
            "path": record["path"],
            "status": status,
            "processed": handled is not None,
            "handled_status": handled.status if handled else None,
            "time": record["time"],
            "json": record.get("json"),
        }
        record["injected"] = True
        with self._cond:
            self.injected_faults.append(fault)
        return web.Response(status=status, body=json.dumps(body).encode(), headers=headers)

    @staticmethod
    async def _read_body(request: web.Request) -> tuple[Any, list[dict]]:
        """JSON body, or multipart with a ``payload_json`` part and ``files[n]`` parts."""
        files: list[dict] = []
        if request.content_type.startswith("multipart/"):
            payload: Any = {}
            reader = await request.multipart()
            async for part in reader:
                raw = await part.read()  # type: ignore[union-attr]
                if part.name == "payload_json":  # type: ignore[union-attr]
                    payload = json.loads(raw)
                else:
                    files.append(
                        {
                            "field": part.name,
                            "filename": part.filename,
                            "data": bytes(raw),  # type: ignore
                            "content_type": part.headers.get("Content-Type"),
                        }
                    )  # type: ignore
            return payload, files
        raw = await request.read()
        return (json.loads(raw) if raw else None), files

    def _entry(self, kind: str, channel_id: int, payload: dict, files: list[dict], message: dict | None) -> dict:
        """A recorded bot message in an easy-to-assert shape."""
        return {
            "kind": kind,
            "id": int(message["id"]) if message else None,
            "channel_id": channel_id,
            "content": payload.get("content"),
            "embeds": payload.get("embeds") or [],
            "allowed_mentions": payload.get("allowed_mentions"),
            "message_reference": payload.get("message_reference"),
            "flags": int(payload.get("flags") or 0),
            "ephemeral": bool(int(payload.get("flags") or 0) & 64),
            "components": payload.get("components") or [],
            "files": [{k: f[k] for k in ("filename", "content_type", "data")} for f in files],
            "payload": payload,
            "message": message,
            "time": time.monotonic(),
        }

    def _bot_message(self, channel_id: int, payload: dict, files: list[dict], *, webhook: bool = False) -> dict:
        """The message object Discord returns for something the bot sent."""
        message = {
            "id": str(self.new_id()),
            "channel_id": str(channel_id),
            **self._guild_fields(channel_id),
            "author": self.bot_user,
            "content": payload.get("content") or "",
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": bool(payload.get("tts")),
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "embeds": payload.get("embeds") or [],
            "attachments": [
                self._store_attachment(channel_id, f["filename"], f["data"], f["content_type"]) for f in files
            ],
            "components": payload.get("components") or [],
            "pinned": False,
            "type": 19 if payload.get("message_reference") else 0,
            "flags": int(payload.get("flags") or 0),
        }
        if payload.get("message_reference"):
            ref = dict(payload["message_reference"])
            ref.setdefault("channel_id", str(channel_id))
            if "guild_id" in message:
                ref.setdefault("guild_id", message["guild_id"])
            message["message_reference"] = ref
        if webhook:
            message["webhook_id"] = str(self.application_id)
            message["application_id"] = str(self.application_id)
            message["type"] = 20
        self._resolve_embed_attachments(message)
        self.channel_messages[int(message["id"])] = message
        return message

    def _invalid(self, errors: dict[str, str]) -> web.Response:
        return _error(400, "Invalid Form Body", 50035, errors)

    def _bot_token(self, request: web.Request) -> str | None:
        """The bot token the request authenticated with (one of ``tokens``), else None."""
        auth = request.headers.get("Authorization", "")
        token = auth[4:] if auth.startswith("Bot ") else None
        return token if token in self.tokens else None

    def add_token(self, token: str | None = None) -> str:
        """Accept another token for the same bot (and return it), so that a test running several
        bot processes can tell which one called (Discord gives a bot a single token)."""
        token = token or f"fake-token-{len(self.tokens) + 1}"
        with self._cond:
            if token not in self.tokens:
                self.tokens.append(token)
        return token

    async def _r_users_me(self, request, m, payload, files):
        return _json(self.bot_user)

    async def _r_application(self, request, m, payload, files):
        return _json(
            {
                "id": str(self.application_id),
                "name": "Wakeru",
                "icon": None,
                "description": "fake",
                "rpc_origins": [],
                "bot_public": False,
                "bot_require_code_grant": False,
                "bot": self.bot_user,
                "terms_of_service_url": None,
                "privacy_policy_url": None,
                "owner": self.users["owner"],
                "summary": "",
                "verify_key": "0" * 64,
                "team": None,
                "guild_id": None,
                "flags": 1 << 19,
                "interactions_endpoint_url": None,
                "tags": [],
                "install_params": None,
                "custom_install_url": None,
                "redirect_uris": [],
                "approximate_guild_count": 1,
            }
        )

    async def _r_gateway(self, request, m, payload, files):
        if not request.path.endswith("/bot"):
            return _json({"url": self.gateway_url})  # GET /gateway: no auth, only the URL
        remaining = max(0, self.session_start_total - self.identify_count())
        return _json(
            {
                "url": self.gateway_url,
                "shards": self.recommended_shards,
                "session_start_limit": {
                    "total": self.session_start_total,
                    "remaining": remaining,
                    "reset_after": 86_400_000,
                    "max_concurrency": 1,
                },
            }
        )

    async def _r_guild(self, request, m, payload, files):
        if int(m["guild"]) not in self.guilds:
            return _error(404, "Unknown Guild", 10004)
        guild = self.guild_payload(int(m["guild"]))
        if request.path.endswith("/channels"):
            return _json(guild["channels"])
        if m.get("user"):
            member = next((x for x in guild["members"] if x["user"]["id"] == m["user"]), None)
            return _json(member) if member else _error(404, "Unknown Member", 10007)
        return _json({k: v for k, v in guild.items() if k not in ("channels", "threads", "members")})

    async def _r_channel(self, request, m, payload, files):
        try:
            channel = self._channel(int(m["channel"]))
        except KeyError:
            return _error(404, "Unknown Channel", 10003)
        if not self._bot_sees(int(m["channel"])):
            return _error(403, "Missing Access", 50001)
        if request.method == "PATCH":
            if int(m["channel"]) in self.threads:
                return self._edit_thread(request, channel, payload or {})
            return self._edit_channel(request, channel, payload or {})
        return _json(channel)

    def _edit_thread(self, request: web.Request, thread: dict, payload: dict) -> web.Response:
        """PATCH /channels/{thread} (``Thread.edit``): ``name``, ``archived``, ``locked``,
        ``auto_archive_duration``, ``rate_limit_per_user``, ``applied_tags``.

        Discord's rules: a thread the bot does not own needs Manage Threads in its parent, and so do
        ``locked`` and adding or removing a ``moderated`` tag (403 50013); ``applied_tags`` only on a
        forum/media post, at most 5, each an id of the parent's ``available_tags`` (400 50035)."""
        thread_id = int(thread["id"])
        parent = self.channels[int(thread["parent_id"])]
        perms = self.channel_permissions(self.application_id, thread_id)
        manage = bool(perms & Perm.MANAGE_THREADS)
        if not manage and (int(thread["owner_id"]) != self.application_id or "locked" in payload or "flags" in payload):
            return _error(403, "Missing Permissions", 50013)
        errors: dict[str, str] = {}
        if "name" in payload and not 1 <= len(str(payload["name"] or "")) <= 100:
            errors["name"] = "Must be between 1 and 100 in length."
        for key in ("archived", "locked"):
            if key in payload and not isinstance(payload[key], bool):
                errors[key] = "Must be a boolean."
        if "auto_archive_duration" in payload and payload["auto_archive_duration"] not in (60, 1440, 4320, 10080):
            errors["auto_archive_duration"] = "Value must be one of (60, 1440, 4320, 10080)."
        new_tags: list[str] | None = None
        if "applied_tags" in payload:
            raw = payload["applied_tags"]
            available = {t["id"]: t for t in parent.get("available_tags") or []}
            if parent["type"] not in (15, 16):
                errors["applied_tags"] = "Tags can only be applied to a post in a forum or media channel."
            elif not isinstance(raw, list):
                errors["applied_tags"] = "Must be an array of snowflakes."
            else:
                new_tags = list(dict.fromkeys(str(t) for t in raw))
                if len(new_tags) > 5:
                    errors["applied_tags"] = "Must be 5 or fewer in length."
                for i, t in enumerate(new_tags):
                    if t not in available:
                        errors[f"applied_tags.{i}"] = f"Unknown tag {t} in channel {parent['id']}."
                changed = set(new_tags) ^ set(thread.get("applied_tags") or [])
                if not errors and not manage and any(available[t]["moderated"] for t in changed if t in available):
                    return _error(403, "Missing Permissions", 50013)  # a moderated tag needs Manage Threads
        if errors:
            return self._invalid(errors)
        meta = thread["thread_metadata"]
        if "name" in payload:
            thread["name"] = payload["name"]
        if new_tags is not None:
            thread["applied_tags"] = new_tags
        if "auto_archive_duration" in payload:
            meta["auto_archive_duration"] = payload["auto_archive_duration"]
        if "rate_limit_per_user" in payload:
            thread["rate_limit_per_user"] = int(payload["rate_limit_per_user"] or 0)
        if "flags" in payload:
            thread["flags"] = int(payload["flags"] or 0)
        if "locked" in payload:
            meta["locked"] = payload["locked"]
        if "archived" in payload and payload["archived"] != meta["archived"]:
            meta["archived"] = payload["archived"]
            meta["archive_timestamp"] = _now_iso()
            if payload["archived"]:
                self.archived_threads.add(thread_id)
            else:
                self.archived_threads.discard(thread_id)
        shown = copy.deepcopy(thread)
        entry = {
            "thread_id": thread_id,
            "parent_id": int(parent["id"]),
            "payload": payload,
            "applied_tags": [int(t) for t in thread.get("applied_tags") or []],
            "applied_tag_names": self.applied_tag_names(thread_id) if parent["type"] in (15, 16) else [],
            "thread": shown,
            "token": self._bot_token(request),
            "time": time.monotonic(),
        }
        with self._cond:
            self.thread_edits.append(entry)
            self._cond.notify_all()
        self._dispatch_from_handler("THREAD_UPDATE", shown)
        return _json(shown)

    def _edit_channel(self, request: web.Request, channel: dict, payload: dict) -> web.Response:
        """PATCH /channels/{id} of a guild channel: needs Manage Channels (403 50013); applies
        ``name``, ``topic``, ``nsfw``, ``rate_limit_per_user``, ``flags``, ``available_tags`` (tags
        with an ``id`` keep it, new ones get one); CHANNEL_UPDATE."""
        channel_id = int(channel["id"])
        if channel["type"] in (1, 3):
            return _error(403, "Missing Permissions", 50013)  # a bot cannot edit a DM
        if not self.channel_permissions(self.application_id, channel_id) & Perm.MANAGE_CHANNELS:
            return _error(403, "Missing Permissions", 50013)
        errors: dict[str, str] = {}
        if "name" in payload and not 1 <= len(str(payload["name"] or "")) <= 100:
            errors["name"] = "Must be between 1 and 100 in length."
        topic_limit = 4096 if channel["type"] in (15, 16) else 1024
        if "topic" in payload and len(payload["topic"] or "") > topic_limit:
            errors["topic"] = f"Must be {topic_limit} or fewer in length."
        tags = None
        if "available_tags" in payload:
            if channel["type"] not in (15, 16):
                errors["available_tags"] = "Only forum and media channels have tags."
            else:
                known = {t["id"] for t in channel.get("available_tags") or []}
                tags = [
                    _tag({**t, "id": t["id"] if str(t.get("id")) in known else None}, self.new_id())
                    for t in payload["available_tags"] or []
                ]
                errors.update(_tag_errors(tags))
        if errors:
            return self._invalid(errors)
        for key in ("name", "topic", "nsfw", "rate_limit_per_user", "flags"):
            if key in payload and key in channel:
                channel[key] = payload[key]
        if tags is not None:
            channel["available_tags"] = tags
        shown = copy.deepcopy(channel)
        with self._cond:
            self.channel_edits.append(
                {
                    "channel_id": channel_id,
                    "payload": payload,
                    "channel": shown,
                    "token": self._bot_token(request),
                    "time": time.monotonic(),
                }
            )
            self._cond.notify_all()
        self._dispatch_from_handler("CHANNEL_UPDATE", shown)
        return _json(shown)

    def _readable(self, channel_id: int) -> web.Response | int:
        """The bot's permissions in a channel, or the error Discord answers for it."""
        try:
            self._channel(channel_id)
        except KeyError:
            return _error(404, "Unknown Channel", 10003)
        perms = self.channel_permissions(self.application_id, channel_id)
        return perms if perms & Perm.VIEW_CHANNEL else _error(403, "Missing Access", 50001)

    def _history_throttle(self, channel_id: int) -> tuple[web.Response | None, dict[str, str]]:
        """Apply ``history_rate_limit``: a 429 when over it, else the rate-limit headers to send."""
        if self._history_limit is None:
            return None, {}
        limit, per = self._history_limit
        now = time.monotonic()
        with self._cond:
            window = self._history_windows.setdefault(channel_id, [now, 0])
            if now - window[0] >= per:
                window[0], window[1] = now, 0
            reset_after = max(0.001, window[0] + per - now)
            over = window[1] >= limit
            if not over:
                window[1] += 1
            remaining = limit - window[1]
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": hashlib.sha1(b"GET channels/messages").hexdigest()[:32],
        }
        if not over:
            return None, headers
        body = {
            "message": "You are being rate limited.",
            "retry_after": round(reset_after, 3),
            "global": False,
            "code": 0,
        }
        headers.update(
            {
                "Content-Type": "application/json",
                "Via": "1.1 google",
                "Retry-After": str(max(1, math.ceil(reset_after))),
                "X-RateLimit-Scope": "user",
            }
        )
        return web.Response(status=429, body=json.dumps(body).encode(), headers=headers), headers

    async def _r_history(self, request, m, payload, files):
        """GET /channels/{id}/messages: ``limit`` 1-100 (50), one of ``before``/``after``/``around``;
        newest first always (discord.py reverses for ``after``).  Needs View Channel (else 403 50001);
        without Read Message History the answer is an empty list, as on Discord."""
        channel_id = int(m["channel"])
        perms = self._readable(channel_id)
        if isinstance(perms, web.Response):
            return perms
        q = request.query
        try:
            limit = int(q.get("limit", 50))
            anchors = {k: int(q[k]) for k in ("before", "after", "around") if k in q}
        except ValueError:
            return self._invalid({"limit": "Value is not int."})
        if not 1 <= limit <= 100:
            return self._invalid({"limit": "Int value should be less than or equal to 100 and greater than 0."})
        if len(anchors) > 1:
            return self._invalid({"around": "Only one of before, after and around may be given."})
        throttled, headers = self._history_throttle(channel_id)
        if throttled is not None:
            return throttled
        if not perms & Perm.READ_MESSAGE_HISTORY:
            page: list[dict] = []
        else:
            with self._cond:
                ids = sorted(  # ephemeral messages are not in a channel's history
                    i
                    for i, msg in list(self.channel_messages.items())
                    if int(msg["channel_id"]) == channel_id and not int(msg.get("flags") or 0) & 64
                )
            if "before" in anchors:
                chosen = [i for i in ids if i < anchors["before"]][-limit:]
            elif "after" in anchors:
                chosen = [i for i in ids if i > anchors["after"]][:limit]
            elif "around" in anchors:
                at = next((k for k, i in enumerate(ids) if i >= anchors["around"]), len(ids))
                start = max(0, min(at - limit // 2, len(ids) - limit))
                chosen = ids[start : start + limit]
            else:
                chosen = ids[-limit:]
            page = [self._refresh_attachments(self.channel_messages[i]) for i in reversed(chosen)]
        response = _json(page)
        response.headers.update(headers)
        return response

    async def _r_thread_members(self, request, m, payload, files):
        """GET /channels/{thread}/thread-members[/{user}]: thread member objects
        ``{id, user_id, join_timestamp, flags}`` (+ ``member`` with ``with_member=true``);
        404 "Unknown Member" (10007) for a user who is not in the thread."""
        thread_id = int(m["channel"])
        if thread_id not in self.threads:
            return (
                _error(404, "Unknown Channel", 10003)
                if thread_id not in self.channels
                else self._invalid({"channel_id": "Not a thread."})
            )
        if not self._bot_sees(thread_id):
            return _error(403, "Missing Access", 50001)
        with_member = request.query.get("with_member", "").lower() in ("1", "true")
        guild_id = self.guild_of(thread_id)

        def shape(user_id: int, joined: str) -> dict:
            item = {"id": str(thread_id), "user_id": str(user_id), "join_timestamp": joined, "flags": 0}
            if with_member:
                item["member"] = make_member(self._user(user_id), roles=self.roles_of(user_id, guild_id))
            return item

        members = self.thread_members.get(thread_id, {})
        if m.get("user"):
            joined = members.get(int(m["user"]))
            return _json(shape(int(m["user"]), joined)) if joined else _error(404, "Unknown Member", 10007)
        return _json([shape(u, j) for u, j in members.items()])

    async def _r_bulk_delete(self, request, m, payload, files):
        """POST /channels/{id}/messages/bulk-delete ``{messages: [2-100 ids]}``: 204 and
        MESSAGE_DELETE_BULK; ids older than two weeks get 400 (50034)."""
        channel_id = int(m["channel"])
        ids = [str(i) for i in (payload or {}).get("messages") or []]
        if not 2 <= len(ids) <= 100:
            return self._invalid({"messages": "Must be between 2 and 100 in length."})
        two_weeks_ago = datetime.now(timezone.utc).timestamp() - 14 * 86400
        if any(snowflake_time(i).timestamp() < two_weeks_ago for i in ids):
            return _error(400, "You can only bulk delete messages that are under 14 days old.", 50034)
        for i in ids:
            self._drop_message(int(i))
        with self._cond:
            self.deleted_messages.extend((channel_id, int(i)) for i in ids)
        self._dispatch_from_handler(
            "MESSAGE_DELETE_BULK",
            {"ids": ids, "channel_id": str(channel_id), **self._guild_fields(channel_id)},
        )
        return web.Response(status=204)

    def _apply_edit(self, message: dict, payload: dict, files: list[dict]) -> None:
        """Edit a stored message as Discord does: given fields replace the old ones; ``attachments``
        lists the ones kept (by id) and describes the new ``files[n]``; without it, new files are added."""
        for key in ("content", "embeds", "components"):
            if key in payload:
                message[key] = payload[key] if payload[key] is not None else ("" if key == "content" else [])
        if "attachments" in payload or files:
            current = message.get("attachments") or []
            if "attachments" in payload:
                keep = {str(a.get("id")) for a in payload.get("attachments") or []}
                kept = [a for a in current if a["id"] in keep]
                self._forget_attachments({"attachments": [a for a in current if a["id"] not in keep]})
            else:
                kept = list(current)
            channel_id = int(message["channel_id"])
            new = [self._store_attachment(channel_id, f["filename"], f["data"], f["content_type"]) for f in files]
            message["attachments"] = kept + new
        self._resolve_embed_attachments(message)
        message["edited_timestamp"] = _now_iso()

    @staticmethod
    def _resolve_embed_attachments(message: dict) -> None:
        """``attachment://name`` in an embed's image/thumbnail becomes that attachment's URL, as
        Discord shows it (the recorded entry keeps what was sent)."""
        by_name = {a["filename"]: a for a in message.get("attachments") or []}
        embeds = []
        for e in message.get("embeds") or []:
            e = dict(e)
            for key in ("image", "thumbnail"):
                url = str((e.get(key) or {}).get("url") or "")
                if url.startswith("attachment://") and url[len("attachment://") :] in by_name:
                    a = by_name[url[len("attachment://") :]]
                    e[key] = {**e[key], "url": a["url"], "proxy_url": a["proxy_url"]}
                    if "width" in a:
                        e[key].update(width=a["width"], height=a["height"])
            embeds.append(e)
        message["embeds"] = embeds

    async def _r_create_message(self, request, m, payload, files):
        channel_id = int(m["channel"])
        if (
            channel_id not in self.channels
            and channel_id not in self.threads
            and channel_id not in self.private_channels
        ):
            return _error(404, "Unknown Channel", 10003)
        payload = payload or {}
        nonce = payload.get("nonce")
        errors = _message_errors(payload, files)
        if isinstance(nonce, str) and len(nonce) > 25:
            errors["nonce"] = "Must be 25 or fewer in length."
        if errors:
            return self._invalid(errors)
        key = (channel_id, str(nonce))
        if nonce is not None and payload.get("enforce_nonce"):
            # Discord: with enforce_nonce, a nonce seen in this channel in the last few minutes
            # answers the message it created (or 404 when that message was deleted since).
            seen = self._nonces.get(key)
            if seen is not None and time.monotonic() - seen[0] <= self.nonce_window:
                first = self.channel_messages.get(seen[1])
                with self._cond:
                    self.deduplicated_messages.append(
                        {"channel_id": channel_id, "nonce": str(nonce), "id": seen[1], "deleted": first is None}
                    )
                    self._cond.notify_all()
                return _json(first) if first is not None else _error(404, "Unknown Message", 10008)
        message = self._bot_message(channel_id, payload, files)
        if nonce is not None:
            message["nonce"] = nonce
            self._nonces[key] = (time.monotonic(), int(message["id"]))
        entry = self._entry("channel", channel_id, payload, files, message)
        entry["token"] = self._bot_token(request)
        request[_ENTRY_KEY] = entry
        with self._cond:
            self.sent_messages.append(entry)
        return _json(message)

    async def _r_typing(self, request, m, payload, files):
        with self._cond:
            self.typing.append(int(m["channel"]))
        return web.Response(status=204)

    async def _r_message(self, request, m, payload, files):
        channel_id, message_id = int(m["channel"]), int(m["message"])
        perms = self._readable(channel_id)
        if isinstance(perms, web.Response):
            return perms
        message = self.channel_messages.get(message_id)
        if request.method == "GET" and not perms & Perm.READ_MESSAGE_HISTORY:
            return _error(403, "Missing Permissions", 50013)
        if message is None or int(message["channel_id"]) != channel_id:
            return _error(404, "Unknown Message", 10008)
        if request.method == "GET":
            return _json(self._refresh_attachments(message))  # freshly signed URLs, as Discord hands out
        if request.method == "DELETE":
            with self._cond:
                self.deleted_messages.append((channel_id, message_id))
            self._drop_message(message_id)
            self._dispatch_from_handler(
                "MESSAGE_DELETE",
                {"id": str(message_id), "channel_id": str(channel_id), **self._guild_fields(channel_id)},
            )
            return web.Response(status=204)
        if message["author"]["id"] != self.bot_user["id"]:
            return _error(403, "Cannot edit a message authored by another user", 50005)
        payload = payload or {}
        if errors := _message_errors(payload, files, partial=True):
            return self._invalid(errors)
        self._apply_edit(message, payload, files)
        if "flags" in payload:
            message["flags"] = int(payload["flags"] or 0)
        with self._cond:
            entry = self._entry("edit", channel_id, payload, files, message)
            self.edited_messages.append(entry)
            self._record_edit(message, entry)
            self._cond.notify_all()
        return _json(message)

    async def _r_reaction(self, request, m, payload, files):
        """PUT/DELETE /channels/{c}/messages/{m}/reactions/{emoji}/@me: the bot's reaction, 204.

        As on Discord: unknown channel 404 10003, no View Channel 403 50001, unknown message 404
        10008; PUT needs Read Message History, and Add Reactions unless someone already reacted with
        that emoji (403 50013); an emoji that is neither Unicode nor a custom emoji of a guild the bot
        is in: 400 10014; a 21st distinct emoji on a message: 400 30010.  A new reaction is stored on
        the message (``reactions``), added to ``FakeDiscord.reactions`` and dispatched as
        MESSAGE_REACTION_ADD; DELETE takes it off (MESSAGE_REACTION_REMOVE)."""
        channel_id, message_id = int(m["channel"]), int(m["message"])
        perms = self._readable(channel_id)
        if isinstance(perms, web.Response):
            return perms
        message = self.channel_messages.get(message_id)
        if message is None or int(message["channel_id"]) != channel_id or int(message.get("flags") or 0) & 64:
            return _error(404, "Unknown Message", 10008)  # ephemeral messages cannot carry reactions
        found = self._reaction_key(m["emoji"])
        if found is None:
            return _error(400, "Unknown Emoji", 10014)
        key, custom = found
        bot_id = self.application_id
        if request.method == "DELETE":
            with self._cond:
                removed = self._remove_reaction(message, key, bot_id)
                if removed and (channel_id, message_id, key) in self.reactions:
                    self.reactions.remove((channel_id, message_id, key))
                self._cond.notify_all()
            if removed:
                self._dispatch_from_handler(
                    "MESSAGE_REACTION_REMOVE",
                    {k: v for k, v in self._reaction_event(message, key, custom, bot_id).items() if k != "member"},
                )
            return web.Response(status=204)
        if not perms & Perm.READ_MESSAGE_HISTORY:
            return _error(403, "Missing Permissions", 50013)
        present = self._reactors.get(message_id, {}).get(key)
        if not present and not perms & Perm.ADD_REACTIONS:
            return _error(403, "Missing Permissions", 50013)
        if not present and len(message.get("reactions") or []) >= 20:
            return _error(400, "Maximum number of reactions reached (20)", 30010)
        with self._cond:
            added = self._add_reaction(message, key, custom, bot_id)
            if added:
                self.reactions.append((channel_id, message_id, key))
            self._cond.notify_all()
        if added:
            event = self._reaction_event(message, key, custom, bot_id)
            event["message_author_id"] = message["author"]["id"]
            self._dispatch_from_handler("MESSAGE_REACTION_ADD", event)
        return web.Response(status=204)

    def _interaction_by_token(self, token: str) -> FakeInteraction | None:
        return self._interactions_by_token.get(token)

    def _token_expired(self, rec: FakeInteraction) -> bool:
        return rec.token in self._expired_tokens or (
            self.interaction_token_lifetime is not None
            and time.monotonic() - rec.created > self.interaction_token_lifetime
        )

    def expire_interactions(self) -> int:
        """Make every interaction token issued so far invalid, as 15 minutes after the interaction
        on Discord (``interaction_token_lifetime`` does that by itself).  Then a callback answers
        404 ``{"message": "Unknown interaction", "code": 10062}``; a followup, and any
        GET/PATCH/DELETE of @original or of a followup, answers 401 ``{"message": "Invalid Webhook
        Token", "code": 50027}``.  The refused requests land in ``FakeInteraction.failed``."""
        with self._cond:
            before = len(self._expired_tokens)
            self._expired_tokens.update(self._interactions_by_token)
            return len(self._expired_tokens) - before

    async def _r_callback(self, request, m, payload, files):
        rec = self.interactions.get(int(m["iid"]))
        if rec is None or rec.token != m["token"] or self._token_expired(rec):
            return _error(404, "Unknown interaction", 10062)
        if rec.responses:
            return _error(400, "Interaction has already been acknowledged.", 40060)
        if self.interaction_deadline is not None and time.monotonic() - rec.created > self.interaction_deadline:
            rec.late = True
            self._notify()
            return _error(404, "Unknown interaction", 10062)
        rtype, data = payload.get("type"), payload.get("data") or {}
        if rtype in (6, 7) and rec.type != 3:
            return self._invalid({"type": "Interaction response type is not valid for this interaction type."})
        if rtype not in (1, 4, 5, 6, 7, 8, 9, 10, 12):
            return self._invalid({"type": f"Value must be one of (4, 5, 6, 7, 8, 9, 12); got {rtype}."})
        if rtype in (4, 7) and (errors := _message_errors(data, files, partial=rtype == 7)):
            return self._invalid(errors)
        if rtype == 8:
            choices = data.get("choices") or []
            if len(choices) > 25 or any(not 1 <= len(c.get("name", "")) <= 100 for c in choices):
                return self._invalid({"data.choices": "At most 25 choices, names 1-100 characters."})
        channel_id = int(rec.payload["channel_id"])
        interaction = {
            "id": str(rec.id),
            "type": rec.type,
            "response_message_loading": rtype == 5,
            "response_message_ephemeral": bool(int(data.get("flags") or 0) & 64),
        }
        body: dict[str, Any] = {"interaction": interaction}
        message = None
        if rtype in (4, 5):
            shown = dict(data, flags=int(data.get("flags") or 0) | (128 if rtype == 5 else 0))  # 128: loading
            message = self._bot_message(channel_id, shown, files, webhook=True)
            message["interaction_metadata"] = self._interaction_metadata(rec)
            interaction["response_message_id"] = message["id"]
            body["resource"] = {"type": rtype, "message": message}
        elif rtype in (6, 7):  # the component's message is the response ("@original")
            message = self.channel_messages.get(int(rec.payload["message"]["id"]))
            if message is None:
                return _error(404, "Unknown Message", 10008)
            if rtype == 7:
                self._apply_edit(message, data, files)
                if "flags" in data:
                    message["flags"] = int(data["flags"] or 0)
            interaction["response_message_id"] = message["id"]
            if rtype == 7:
                body["resource"] = {"type": rtype, "message": message}
        entry = dict(self._entry("callback", channel_id, data, files, message), type=rtype)
        if rtype == 8:
            entry["choices"] = data.get("choices") or []
        if rtype == 9:
            entry["modal"] = data
        with self._cond:
            rec.responses.append(entry)
            rec.original = message
            if rtype == 7 and message is not None:
                self._record_edit(message, entry)
            self._cond.notify_all()
        return _json(body)

    def _interaction_metadata(self, rec: FakeInteraction, *, followup: bool = False) -> dict:
        """A message's ``interaction_metadata``: the interaction it answers."""
        user = rec.payload["member"]["user"] if "member" in rec.payload else rec.payload["user"]
        meta: dict[str, Any] = {
            "id": str(rec.id),
            "type": rec.type,
            "user": user,
            "authorizing_integration_owners": rec.payload.get("authorizing_integration_owners", {}),
        }
        if rec.type == 2:
            meta["name"] = rec.name
        if rec.type == 3:
            meta["interacted_message_id"] = rec.payload["message"]["id"]
        if followup and rec.original is not None:
            meta["original_response_message_id"] = rec.original["id"]
        return meta

    async def _r_followup(self, request, m, payload, files):
        rec = self._interaction_by_token(m["token"])
        if rec is not None and self._token_expired(rec):
            return _error(401, "Invalid Webhook Token", 50027)
        if rec is None or int(m["app"]) != self.application_id or not rec.responses:
            return _error(404, "Unknown Webhook", 10015)
        payload = payload or {}
        if errors := _message_errors(payload, files):
            return self._invalid(errors)
        if "0" not in rec.payload.get("authorizing_integration_owners", {}) and len(rec.followups) >= 5:
            # not installed where it was used (a user install): at most 5 followups
            return _error(400, "This interaction has hit the maximum number of follow up messages", 40094)
        channel_id = int(rec.payload["channel_id"])
        deferral = rec.responses[0]
        answers_deferral = deferral["type"] == 5 and not rec.timeline  # still "thinking…"
        if answers_deferral and rec.original_deleted:
            return _error(404, "Unknown Message", 10008)
        if answers_deferral:  # it becomes the deferred response, which fixed the ephemerality
            flags = (int(payload.get("flags") or 0) & ~64) | (deferral["flags"] & 64)
            payload = {**payload, "flags": flags}
        message = self._bot_message(channel_id, payload, files, webhook=True)
        message["interaction_metadata"] = self._interaction_metadata(rec, followup=True)
        entry = self._entry("followup", channel_id, payload, files, message)
        request[_ENTRY_KEY] = entry
        with self._cond:
            rec.followups.append(entry)
            rec.timeline.append(entry)
            self._cond.notify_all()
        wait = request.query.get("wait", "").lower() in ("1", "true")
        return _json(message) if wait else web.Response(status=204)

    async def _r_webhook_message(self, request, m, payload, files):
        rec = self._interaction_by_token(m["token"])
        if rec is not None and self._token_expired(rec):
            return _error(401, "Invalid Webhook Token", 50027)
        if rec is None or int(m["app"]) != self.application_id:
            return _error(404, "Unknown Webhook", 10015)
        if m["message"] == "@original":
            message = rec.original
        else:
            message = next((f["message"] for f in rec.followups if f["id"] == int(m["message"])), None)
        if message is None:
            return _error(404, "Unknown Message", 10008)
        if request.method == "GET":
            return _json(self._refresh_attachments(message))
        if request.method == "DELETE":
            with self._cond:
                self.deleted_messages.append((int(message["channel_id"]), int(message["id"])))
                if m["message"] == "@original":
                    rec.original_deleted = True
                self._cond.notify_all()
            return web.Response(status=204)
        payload = payload or {}
        if errors := _message_errors(payload, files, partial=True):
            return self._invalid(errors)
        self._apply_edit(message, payload, files)
        message["flags"] = int(message.get("flags") or 0) & ~128  # no longer "thinking"
        entry = self._entry("edit", int(message["channel_id"]), payload, files, message)
        entry["flags"] = message["flags"]
        entry["ephemeral"] = bool(message["flags"] & 64)
        with self._cond:
            if m["message"] == "@original":
                rec.edits.append(entry)
                rec.timeline.append(entry)
            else:
                rec.followup_edits.append(entry)
            self._record_edit(message, entry)
            self._cond.notify_all()
        return _json(message)

    def synced_command(self, name: str, type: int | None = None) -> dict:
        """The command of this name (and type: 1 slash, 2 user, 3 message) as last synced, as Discord
        echoed it (``id``, ``integration_types``, ``contexts``...): the global one, else a guild's
        (KeyError when none)."""
        with self._cond:
            scopes = [None, *[g for g in self.synced_commands if g is not None]]
            for scope in scopes:
                for c in self.synced_commands.get(scope, []):
                    if c["name"] == name and (type is None or c.get("type", 1) == type):
                        return c
        raise KeyError(f"no synced command {name!r} (type {type}); synced: {self.synced_commands}")

    async def _r_commands(self, request, m, payload, files):
        if int(m["app"]) != self.application_id:
            return _error(403, "Missing Access", 50001)
        guild = int(m["guild"]) if m.get("guild") else None
        if request.method == "GET":
            return _json(self.synced_commands.get(guild, []))
        if errors := _command_errors(payload or []):
            return self._invalid(errors)
        echoed = []
        for c in payload:
            c = {"type": 1, "description": "", "options": [], "default_member_permissions": None, "nsfw": False, **c}
            # Kept as sent; left out (or null), Discord fills in the app's install setting.
            if c.get("integration_types") is None:
                c["integration_types"] = list(self.default_integration_types)
            c.setdefault("contexts", None)
            c.update(
                id=str(self._command_id(c["name"], c["type"])),
                application_id=str(self.application_id),
                version=str(self.new_id()),
            )
            if guild:
                c["guild_id"] = str(guild)
            echoed.append(c)
        with self._cond:
            self.synced_commands[guild] = echoed
            self._cond.notify_all()
        return _json(echoed)
