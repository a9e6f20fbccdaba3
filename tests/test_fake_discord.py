"""Self-test of tests/support/fake_discord.py: a minimal REAL discord.py bot driven through it."""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
import urllib.error
import urllib.request

import discord
import discord.gateway
import discord.http
import pytest
import yarl
from discord import app_commands
from discord.ext import commands
from PIL import Image

from tests.support.fake_discord import FakeDiscord, shard_of

FRUITS = ["りんご", "みかん", "ぶどう", "さくらんぼ"]


def _png(size=(64, 32), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(size=(40, 80)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def make_bot() -> commands.Bot:
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.message_content = True
    intents.emojis_and_stickers = True  # GUILD_EMOJIS_UPDATE, and the emoji cache
    intents.guild_reactions = True  # MESSAGE_REACTION_ADD / _REMOVE
    bot = commands.Bot(
        command_prefix="!",
        intents=intents,
        allowed_mentions=discord.AllowedMentions.none(),
        chunk_guilds_at_startup=False,
    )
    bot.seen_interactions = []  # type: ignore[attr-defined]

    @bot.listen("on_interaction")
    async def remember(interaction: discord.Interaction) -> None:
        bot.seen_interactions.append(interaction)  # type: ignore[attr-defined]

    @bot.event
    async def on_message(message: discord.Message) -> None:
        if message.content == "repost?":
            await message.channel.send("repost of an earlier image", view=RepostView())
            return
        if message.content == "file":
            sent = await message.channel.send("with file", file=discord.File(io.BytesIO(b"hello"), "hello.txt"))
            await message.channel.send(f"echo {await sent.attachments[0].read()!r}")
            return
        if message.author.bot or not message.attachments:
            return
        data = await message.attachments[0].read()
        embed = discord.Embed(title="分類", description=f"{message.attachments[0].filename}: {len(data)} bytes")
        await message.reply(embed=embed, mention_author=False)

    @bot.tree.command(name="ping", description="deferred reply")
    async def ping(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True, ephemeral=True)
        await interaction.followup.send(f"pong {interaction.locale.value}")

    @bot.tree.command(name="privacy", description="followups after a private deferral")
    async def privacy(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True, ephemeral=True)
        await interaction.followup.send("first", ephemeral=False)  # becomes the deferred response: private
        await interaction.followup.send("second", ephemeral=False)  # a followup of its own: public

    @bot.tree.command(name="announce", description="a private deferral turned into a channel message")
    async def announce(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True, ephemeral=True)
        await interaction.channel.send(f"{interaction.user.mention} changed something")
        await interaction.delete_original_response()
        try:
            await interaction.followup.send("too late")
        except discord.NotFound as e:  # the deferred response it would have become is gone
            await interaction.channel.send(f"followup refused {e.code}")

    @bot.tree.command(name="long", description="a reply over Discord's limit")
    async def long(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("x" * 2001)

    @bot.tree.command(name="slow", description="answers too late")
    async def slow(interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.4)
        await interaction.response.send_message("late")

    labels = app_commands.Group(name="labels", description="labels of this channel")

    @labels.command(name="set", description="set labels")
    async def labels_set(interaction: discord.Interaction, labels: str, image: discord.Attachment) -> None:
        data = await image.read()
        perms = interaction.permissions.manage_guild
        await interaction.response.send_message(
            f"{labels}|{image.filename}|{len(data)}|{perms}|{interaction.channel_id}|{image.url}", ephemeral=True
        )

    bot.tree.add_command(labels)

    async def classify(interaction: discord.Interaction, message: discord.Message) -> None:
        names = ",".join(a.filename for a in message.attachments)
        report = discord.File(io.BytesIO(names.encode()), "report.txt")
        await interaction.response.send_message(f"targets:{names}", ephemeral=True, file=report)

    bot.tree.add_command(app_commands.ContextMenu(name="分類する", callback=classify))

    @bot.tree.command(name="perm", description="permissions here, from the payload and from the cache")
    async def perm(interaction: discord.Interaction) -> None:
        channel = interaction.channel
        cached = channel.permissions_for(interaction.user).value if hasattr(channel, "permissions_for") else -1
        kind = type(channel).__name__
        await interaction.response.send_message(f"{interaction.permissions.value}|{cached}|{kind}", ephemeral=True)

    @bot.tree.command(name="chart", description="a PNG in a followup, then progress edits")
    async def chart(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        embed = discord.Embed(title="グラフ").set_image(url="attachment://chart.png")
        sent = await interaction.followup.send(
            embed=embed, file=discord.File(io.BytesIO(_png((30, 20))), "chart.png"), wait=True
        )
        for pct in (25, 50, 100):
            await sent.edit(content=f"{pct}%")
        thumb = discord.Embed(title="似た画像").set_thumbnail(url=sent.attachments[0].url)
        progress = await interaction.channel.send("backfill 0%")
        for pct in (40, 80):
            await progress.edit(content=f"backfill {pct}%")
        await progress.edit(
            content="backfill done", embed=thumb, attachments=[discord.File(io.BytesIO(b"x"), "log.txt")]
        )

    @bot.tree.command(name="choose", description="an ephemeral select, then an ephemeral followup with a button")
    async def choose(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("果物を選んで", view=FruitView(), ephemeral=True)
        await interaction.followup.send("確認", view=ConfirmView(), ephemeral=True, wait=True)

    class NameModal(discord.ui.Modal, title="名前"):
        name: discord.ui.TextInput = discord.ui.TextInput(label="名前", max_length=10)
        note: discord.ui.TextInput = discord.ui.TextInput(label="メモ", required=False)

        async def on_submit(self, interaction: discord.Interaction) -> None:
            await interaction.response.send_message(f"こんにちは {self.name.value}|{self.note.value}", ephemeral=True)

    @bot.tree.command(name="ask", description="a modal, then a private answer from what was typed")
    async def ask(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(NameModal())

    @bot.tree.context_menu(name="画像を見る")
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def look(interaction: discord.Interaction, message: discord.Message) -> None:
        names = ",".join(a.filename for a in message.attachments)
        ctx = ",".join(n for n in ("guild", "dm_channel", "private_channel") if getattr(interaction.context, n))
        await interaction.response.send_message(
            f"{names}|{interaction.guild is None}|{type(interaction.user).__name__}|{ctx}|"
            f"{interaction.is_user_integration()}|{interaction.is_guild_integration()}|"
            f"{type(interaction.channel).__name__}",
            ephemeral=True,
        )

    bot.raw_events = []  # type: ignore[attr-defined]

    def record(name: str):
        async def listener(*args) -> None:
            bot.raw_events.append((name, args))  # type: ignore[attr-defined]

        bot.add_listener(listener, name)

    for name in (
        "on_raw_message_delete",
        "on_raw_bulk_message_delete",
        "on_raw_message_edit",
        "on_guild_channel_create",
        "on_guild_channel_delete",
        "on_guild_channel_update",
        "on_raw_thread_delete",
        "on_thread_create",
        "on_guild_remove",
        "on_guild_role_create",
        "on_raw_reaction_add",
        "on_raw_reaction_remove",
        "on_raw_thread_update",
        "on_guild_emojis_update",
    ):
        record(name)

    async def setup_hook() -> None:
        bot.add_view(RepostView())

    bot.setup_hook = setup_hook  # type: ignore[method-assign]

    @bot.tree.command(name="pick", description="pick a fruit")
    async def pick(interaction: discord.Interaction, fruit: str) -> None:
        await interaction.response.send_message(fruit)

    @pick.autocomplete("fruit")
    async def pick_autocomplete(interaction: discord.Interaction, current: str):
        return [app_commands.Choice(name=f, value=f) for f in FRUITS if current in f][:25]

    return bot


class RepostView(discord.ui.View):
    """A persistent view like the bot's repost reply: fixed custom ids, no timeout."""

    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="リポストではない", custom_id="repost:not", style=discord.ButtonStyle.secondary)
    async def not_repost(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.edit_message(content=f"not a repost ({interaction.user.id})", view=None)

    @discord.ui.button(label="後で", custom_id="repost:later")
    async def later(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(content="deferred edit")

    @discord.ui.select(custom_id="repost:pick", options=[discord.SelectOption(label=x) for x in FRUITS])
    async def pick(self, interaction: discord.Interaction, select: discord.ui.Select) -> None:
        await interaction.response.edit_message(content=f"picked {','.join(select.values)}")


class FruitView(discord.ui.View):
    """A select sent in an ephemeral interaction response: picking edits that ephemeral message."""

    def __init__(self) -> None:
        super().__init__(timeout=60)

    @discord.ui.select(
        custom_id="choose:fruit", options=[discord.SelectOption(label=x) for x in FRUITS], min_values=1, max_values=2
    )
    async def fruit(self, interaction: discord.Interaction, select: discord.ui.Select) -> None:
        await interaction.response.edit_message(content=f"選んだ: {','.join(select.values)}", view=None)


class ConfirmView(discord.ui.View):
    """A button in an ephemeral followup: a deferred update, then an edit of @original."""

    def __init__(self) -> None:
        super().__init__(timeout=60)

    @discord.ui.button(label="確定", custom_id="choose:ok")
    async def ok(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(content=f"確定 {interaction.user.id}", view=None)


class BotThread:
    """Runs a bot in its own thread and loop, like the real bot runs in its own process."""

    def __init__(self, bot: commands.Bot, token: str):
        self.bot, self.token = bot, token
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-bot", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._started.set()
            async with self.bot:
                await self.bot.start(self.token)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            self._started.set()

    def start(self) -> BotThread:
        self.thread.start()
        self._started.wait(10)
        return self

    def call(self, coro, timeout: float = 10):
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop is not None and self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.bot.close(), self.loop).result(10)
        self.thread.join(10)
        assert not self.thread.is_alive(), "bot thread did not stop"


@pytest.fixture(scope="module")
def fake():
    old_base, old_gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    with FakeDiscord() as fake:
        discord.http.Route.BASE = fake.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
        try:
            yield fake
        finally:
            discord.http.Route.BASE = old_base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


@pytest.fixture(scope="module")
def bot(fake):
    runner = BotThread(make_bot(), fake.token).start()
    try:
        fake.wait_ready(timeout=15)
        yield runner
    finally:
        runner.stop()
    assert runner.error is None, runner.error


def test_handshake(fake, bot):
    identify = fake.identify_payloads[0]
    assert identify["token"] == fake.token
    assert identify["intents"] & (1 << 15)  # message content
    assert fake.connected_sessions == 1
    paths = [r["path"] for r in fake.requests]
    assert "/users/@me" in paths and "/oauth2/applications/@me" in paths
    guild = bot.call(_guild(bot.bot, fake.guild_id))
    assert guild == ("分けるテスト", fake.thread_id, fake.channel_id, True)


async def _guild(client: discord.Client, guild_id: int):
    # The fake reports ready once GUILD_CREATE is sent; the client may still be parsing it.
    for _ in range(100):
        guild = client.get_guild(guild_id)
        if guild is not None and not guild.unavailable:
            break
        await asyncio.sleep(0.05)
    thread = guild.get_thread(FakeDiscord.thread_id)
    return guild.name, thread.id, thread.parent_id, guild.me.guild_permissions.manage_messages


def test_reply_to_image_with_embed(fake, bot):
    png = _png()
    for channel in (fake.channel_id, fake.thread_id):
        mark = fake.mark()
        posted = fake.post_message(channel, content="見て", attachments=[("cat.png", png, "image/png")])
        sent = fake.wait_for_message(since=mark, timeout=10)
        assert sent["channel_id"] == channel
        assert sent["embeds"][0]["title"] == "分類"
        assert sent["embeds"][0]["description"] == f"cat.png: {len(png)} bytes"
        assert int(sent["message_reference"]["message_id"]) == int(posted["id"])
        assert sent["allowed_mentions"]["parse"] == []
        assert sent["allowed_mentions"]["replied_user"] is False
    assert any(r["kind"] == "cdn" and r["status"] == 200 for r in fake.attachment_requests)


def test_deferred_slash_command(fake, bot):
    rec = fake.interact("ping", locale="en-US")
    final = rec.wait_final(timeout=10)
    assert rec.deferred and rec.ephemeral
    assert final["kind"] == "followup"
    assert final["content"] == "pong en-US"
    assert final["ephemeral"] is True


def test_the_first_followup_after_a_deferral_keeps_its_privacy_and_later_ones_their_own(fake, bot):
    rec = fake.interact("privacy", locale="en-US")
    fake.wait_for(lambda: len(rec.followups) == 2, what="two followups")
    first, second = rec.followups
    assert (first["content"], first["ephemeral"]) == ("first", True)  # asked public; the deferral was private
    assert (second["content"], second["ephemeral"]) == ("second", False)
    assert rec.wait_final()["content"] == "first"


def test_a_deleted_deferral_and_a_channel_announcement(fake, bot):
    mark = fake.mark()
    rec = fake.interact("announce", user="moderator")
    final = rec.wait_final()
    assert rec.original_deleted and final["kind"] == "channel" and not final["ephemeral"]
    assert final["content"] == f"<@{fake.moderator_id}> changed something"
    refused = fake.wait_for_message(lambda m: m["content"].startswith("followup refused"), since=mark)
    assert refused["content"] == "followup refused 10008"  # Unknown Message, as on Discord


def test_without_the_message_content_intent_only_mentions_carry_content_and_attachments():
    """Discord's rules: without the intent, content, attachments and embeds of guild messages arrive
    empty, except in messages that mention the bot."""
    import aiohttp

    async def main(other: FakeDiscord) -> list[dict]:
        seen = []
        async with aiohttp.ClientSession() as http, http.ws_connect(other.gateway_url + "?v=10") as ws:
            await ws.receive_json()  # HELLO
            await ws.send_json({"op": 2, "d": {"token": other.token, "intents": 1 | 512, "properties": {}}})
            while len(seen) < 2:
                event = await ws.receive_json()
                if event.get("t") == "GUILD_CREATE":
                    await asyncio.to_thread(post, other)
                if event.get("t") == "MESSAGE_CREATE":
                    seen.append(event["d"])
        return seen

    def post(other: FakeDiscord) -> None:
        other.post_message(content="見て", attachments=[("a.png", _png(), "image/png")])
        other.post_message(content=f"<@{other.bot_user['id']}> 見て", attachments=[("b.png", _png(), "image/png")])

    with FakeDiscord() as other:
        plain, mention = asyncio.run(main(other))
    assert (plain["content"], plain["attachments"], plain["embeds"]) == ("", [], [])
    assert mention["content"].endswith("見て") and [a["filename"] for a in mention["attachments"]] == ["b.png"]


def test_subcommand_with_attachment(fake, bot):
    png = _png((20, 10))
    rec = fake.interact(
        "labels",
        user="moderator",
        channel_id=fake.thread_id,
        options=[{"type": 1, "name": "set", "options": [{"type": 3, "name": "labels", "value": "赤い丸,青い四角"}]}],
        attachments={"image": ("shape.png", png, "image/png")},
    )
    final = rec.wait_final(timeout=10)
    labels, filename, size, manage_guild, channel, url = final["content"].split("|")
    assert (labels, filename, int(size), manage_guild, int(channel)) == (
        "赤い丸,青い四角",
        "shape.png",
        len(png),
        "True",
        fake.thread_id,
    )
    assert final["ephemeral"] and not rec.deferred
    assert _get(url) == png
    # A plain member lacks Manage Server in the computed permissions.
    rec = fake.interact(
        "labels",
        options=[
            {
                "type": 1,
                "name": "set",
                "options": [
                    {"type": 3, "name": "labels", "value": "a"},
                    fake.attachment_option("image", "x.png", png, "image/png"),
                ],
            }
        ],
    )
    assert rec.wait_final(timeout=10)["content"].split("|")[3] == "False"


def test_message_context_menu(fake, bot):
    target = fake.post_message(
        author="member", bot=True, attachments=[("a.png", _png(), "image/png"), ("b.jpg", _jpeg(), None)]
    )
    assert "content_type" not in target["attachments"][1]
    rec = fake.interact("分類する", target_message=target)
    final = rec.wait_final(timeout=10)
    assert final["content"] == "targets:a.png,b.jpg"
    assert final["files"][0]["filename"] == "report.txt" and final["files"][0]["data"] == b"a.png,b.jpg"


def test_multipart_channel_message(fake, bot):
    mark = fake.mark()
    fake.post_message(content="file")
    first = fake.wait_for_message(since=mark, timeout=10)
    assert first["content"] == "with file" and first["files"][0]["data"] == b"hello"
    echo = fake.wait_for_message(lambda m: m["content"].startswith("echo"), since=mark, timeout=10)
    assert echo["content"] == "echo b'hello'"  # the returned message's attachment URL works


def test_autocomplete(fake, bot):
    choices = fake.autocomplete("pick", [{"type": 3, "name": "fruit", "value": "ん", "focused": True}])
    assert [c["name"] for c in choices] == ["りんご", "みかん", "さくらんぼ"]


def test_limits_and_deadline_are_enforced(fake, bot):
    rec = fake.interact("long")
    fake.wait_for(lambda: fake.invalid_requests, 10, "the over-long reply to be refused")
    assert fake.invalid_requests.pop()["json"]["type"] == 4
    assert rec.responses == []

    fake.interaction_deadline = 0.1
    try:
        rec = fake.interact("slow")
        fake.wait_for(lambda: rec.late, 10, "the late callback")
        assert rec.responses == []
    finally:
        fake.interaction_deadline = 3.0


def test_sync_is_recorded(fake, bot):
    async def sync():
        bot.bot.tree.copy_global_to(guild=discord.Object(fake.guild_id))
        return await bot.bot.tree.sync(guild=discord.Object(fake.guild_id)), await bot.bot.tree.sync()

    in_guild, global_ = bot.call(sync())
    names = {"ping", "privacy", "announce", "long", "slow", "labels", "pick", "分類する", "perm", "chart"}
    names |= {"choose", "画像を見る", "ask"}
    assert {c["name"] for c in fake.synced_commands[fake.guild_id]} == names
    assert {c["name"] for c in fake.synced_commands[None]} == names
    assert {c.name for c in in_guild} == names and all(c.id for c in global_)
    labels = next(c for c in fake.synced_commands[None] if c["name"] == "labels")
    assert labels["options"][0]["options"][1]["type"] == 11  # the attachment option
    # Guild-synced commands now arrive with data.guild_id and still work.
    rec = fake.interact("pick", options=[{"type": 3, "name": "fruit", "value": "ぶどう"}])
    assert rec.payload["data"]["guild_id"] == str(fake.guild_id)
    assert rec.wait_final(timeout=10)["content"] == "ぶどう"


def test_media_proxy_resizes(fake, bot):
    png, jpeg = _png((64, 32)), _jpeg((40, 80))
    posted = fake.post_message(
        bot=True,
        attachments=[("w.png", png, "image/png"), ("t.jpg", jpeg, "image/jpeg"), ("n.bin", b"not an image", None)],
    )
    p, j, n = posted["attachments"]
    assert (p["width"], p["height"]) == (64, 32) and "width" not in n
    assert _get(p["url"]) == png
    assert Image.open(io.BytesIO(_get(p["proxy_url"] + "width=16&height=16"))).size == (16, 8)
    small = Image.open(io.BytesIO(_get(j["proxy_url"] + "width=100&height=20")))
    assert (small.format, small.size) == ("JPEG", (10, 20))
    assert _get(n["proxy_url"] + "width=5&height=5") == b"not an image"
    assert fake.attachment_requests[-1]["query"]["width"] == "5"
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(p["url"].replace("hm=", "hm=0"))
    assert err.value.code == 404


@pytest.fixture
def fast_reidentify(bot):
    """discord.py sleeps 5 s (``before_identify_hook``) before every IDENTIFY but the first."""

    async def quick(shard_id, *, initial=False):
        await asyncio.sleep(0.05)

    bot.bot.before_identify_hook = quick
    try:
        yield
    finally:
        del bot.bot.before_identify_hook


def _reply_still_works(fake, name: str) -> None:
    mark = fake.mark()
    first = fake.post_message(attachments=[(name, _png(), "image/png")])
    assert fake.wait_for_message(since=mark, timeout=10)["embeds"][0]["title"] == "分類"
    # the sentinel: a later post's reply; a replayed duplicate of the first would come before it
    sentinel = fake.post_message(attachments=[("sentinel.png", _png(), "image/png")])
    fake.wait_for_message(lambda m: int(m["message_reference"]["message_id"]) == int(sentinel["id"]), since=mark)
    replied_to = [int(m["message_reference"]["message_id"]) for m in fake.sent_messages[mark:]]
    assert replied_to == [int(first["id"]), int(sentinel["id"])]


def test_resume_after_disconnect(fake, bot):
    identifies, resumes, t0 = fake.identify_count(), fake.resume_count(), time.monotonic()
    assert fake.disconnect_all(4000) == 1
    took = fake.wait_reconnected(t0, timeout=15)
    assert 0 < took < 5
    assert (fake.identify_count(), fake.resume_count()) == (identifies, resumes + 1)  # resumed, not re-identified
    assert fake.resume_payloads[-1]["session_id"] == fake.gateway_events[-1][2]
    assert [e[0] for e in fake.gateway_events[-3:]] == ["disconnect", "resume", "ready"]
    _reply_still_works(fake, "again.png")


def test_invalid_session_reidentifies(fake, bot, fast_reidentify):
    identifies, resumes, t0 = fake.identify_count(), fake.resume_count(), time.monotonic()
    assert fake.invalidate_sessions() == 1
    took = fake.wait_reconnected(t0, timeout=15)
    assert (fake.identify_count(), fake.resume_count()) == (identifies + 1, resumes)
    assert took < 5  # the hook is patched; by default discord.py waits 5 s first
    assert [e[0] for e in fake.gateway_events[-3:]] == ["invalidated", "identify", "ready"]
    _reply_still_works(fake, "reidentified.png")

    # d=true: discord.py reconnects and RESUMEs the same session.
    session_id, t0 = fake.gateway_events[-1][2], time.monotonic()
    assert fake.invalidate_sessions(resumable=True) == 1
    fake.wait_reconnected(t0, timeout=15)
    assert (fake.identify_count(), fake.resume_count()) == (identifies + 1, resumes + 1)
    assert fake.gateway_events[-1][0::2] == ("ready", session_id)
    _reply_still_works(fake, "resumed.png")


def test_forgotten_session_resume_is_refused(fake, bot, fast_reidentify):
    identifies, resumes, t0 = fake.identify_count(), fake.resume_count(), time.monotonic()
    old = fake.gateway_events[-1][2]
    assert fake.forget_sessions() >= 1
    fake.disconnect_all(4000)
    fake.wait_reconnected(t0, timeout=15)
    assert (fake.identify_count(), fake.resume_count()) == (identifies + 1, resumes + 1)
    kinds = [(k, sid == old) for k, t, sid in fake.gateway_events if t >= t0]
    assert kinds == [
        ("disconnect", True),
        ("resume", True),
        ("invalidated", True),
        ("identify", False),
        ("ready", False),
    ]
    _reply_still_works(fake, "fresh.png")


def test_wrong_token_is_login_failure(fake, bot):
    async def main():
        async with make_bot() as other:
            await other.start("not-the-token")

    with pytest.raises(discord.LoginFailure):
        asyncio.run(main())


def test_refused_message_content_intent(fake, bot):
    async def main():
        async with make_bot() as other:
            await other.start(fake.token)

    fake.refuse_message_content = True
    try:
        with pytest.raises(discord.PrivilegedIntentsRequired):
            asyncio.run(main())
    finally:
        fake.refuse_message_content = False
    assert fake.identify_payloads[-1]["intents"] & (1 << 15)


def test_timeout_message_lists_what_was_received(fake, bot):
    with pytest.raises(TimeoutError, match="sent messages"):
        fake.wait_for_message(lambda m: m["content"] == "never", timeout=0.2)


def test_raw_protocol_on_a_separate_instance():
    """Headers, auth and gateway close codes as seen by a plain aiohttp client."""
    import aiohttp

    async def main(other: FakeDiscord):
        async with aiohttp.ClientSession() as http:
            async with http.get(other.api_base + "/users/@me", headers={"Authorization": "Bot fake-token"}) as r:
                assert r.status == 200 and r.headers["Content-Type"] == "application/json"
                assert (await r.json())["id"] == str(other.application_id)
            async with http.get(other.api_base + "/users/@me", headers={"Authorization": "Bot nope"}) as r:
                assert r.status == 401 and await r.json() == {"message": "401: Unauthorized", "code": 0}
            async with http.get(other.api_base + "/nowhere", headers={"Authorization": "Bot fake-token"}) as r:
                assert r.status == 404 and r.headers["Content-Type"] == "application/json"
            async with http.ws_connect(other.gateway_url + "?v=10&encoding=json") as ws:
                hello = await ws.receive_json()
                assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] == 41250
                await ws.send_json({"op": 1, "d": None})
                assert (await ws.receive_json())["op"] == 11
                await ws.send_json({"op": 2, "d": {"token": "wrong", "intents": 0, "properties": {}}})
                closing = await ws.receive()
                assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 4004

    with FakeDiscord() as other:
        asyncio.run(main(other))
        assert [r["path"] for r in other.unknown_requests] == ["/nowhere"]
        assert other.identify_payloads[0]["token"] == "wrong"


def test_rate_limit_is_waited_out(fake, bot):
    messages = rf"channels/{fake.channel_id}/messages"
    fake.inject_rest_faults("POST", messages, [429], retry_after=0.3)
    mark, t0 = fake.mark(), time.monotonic()
    fake.post_message(attachments=[("limited.png", _png(), "image/png")])
    assert fake.wait_for_message(since=mark, timeout=10)["embeds"][0]["title"] == "分類"
    assert len(fake.sent_messages[mark:]) == 1
    posts = sorted(
        (
            r
            for r in fake.requests
            if r["time"] >= t0 and r["method"] == "POST" and re.fullmatch("/" + messages, r["path"])
        ),
        key=lambda r: r["time"],
    )
    assert [(r["status"], bool(r.get("injected"))) for r in posts] == [(429, True), (200, False)]
    assert 0.29 <= posts[1]["time"] - posts[0]["time"] < 1.5  # waited retry_after, then retried
    assert fake.injected_faults[-1]["status"] == 429 and not fake.injected_faults[-1]["processed"]

    # The webhook adapter (followups) retries a 429 the same way.
    fake.inject_rest_faults("POST", r"/webhooks/\d+/[^/]+", [429], retry_after=0.2)
    rec = fake.interact("ping")
    assert rec.wait_final(timeout=10)["content"] == "pong ja"
    assert len(rec.followups) == 1 and fake.injected_faults[-1]["path"].startswith("/webhooks/")
    assert fake.clear_rest_faults() == 0


def test_processed_502_duplicates_only_without_nonce(fake, bot):
    """Discord did the work but the edge answered 502; discord.py retries 502 after 1 s."""
    from discord.http import handle_message_parameters

    channel = bot.bot.get_channel(fake.channel_id)
    messages = rf"channels/{fake.channel_id}/messages"

    async def raw_send(content: str):  # what a client without nonces would do
        with handle_message_parameters(content=content) as params:
            return await bot.bot.http.send_message(fake.channel_id, params=params)

    for content, send, copies in [
        ("explicit nonce", lambda: channel.send("explicit nonce", nonce="n-502"), 1),
        ("auto nonce", lambda: channel.send("auto nonce"), 1),
        ("no nonce", lambda: raw_send("no nonce"), 2),
    ]:
        fake.inject_rest_faults("POST", messages, [502], processed=True)
        mark = fake.mark()
        returned = bot.call(send())
        stored = fake.sent_messages[mark:]
        assert [m["content"] for m in stored] == [content] * copies, content
        assert stored[0]["answered_status"] == 502  # created, yet the client was told 502
        fault = fake.injected_faults[-1]
        assert (fault["status"], fault["processed"], fault["handled_status"]) == (502, True, 200)
        returned_id = returned.id if isinstance(returned, discord.Message) else int(returned["id"])
        assert returned_id == stored[-1]["id"]
        if copies == 1:
            assert fake.deduplicated_messages[-1]["id"] == stored[0]["id"]
            assert stored[0]["payload"]["enforce_nonce"] is True

    # 503 is not in discord.py's retry set {500, 502, 504, 524}: it raises at once.
    fake.inject_rest_faults("GET", rf"channels/{fake.channel_id}", [503])
    with pytest.raises(discord.DiscordServerError) as err:
        bot.call(bot.bot.http.get_channel(fake.channel_id))
    assert err.value.status == 503 and err.value.response.headers["Content-Type"] == "application/json"


def test_enforce_nonce_dedupes(fake, bot):
    channel = bot.bot.get_channel(fake.other_channel_id)
    mark = fake.mark()
    first = bot.call(channel.send("once", nonce="same-nonce"))
    again = bot.call(channel.send("twice?", nonce="same-nonce"))
    assert again.id == first.id and again.content == "once"
    assert [m["content"] for m in fake.sent_messages[mark:]] == ["once"]
    # Another channel is another scope; a deleted original answers 404.
    bot.call(bot.bot.get_channel(fake.channel_id).send("elsewhere", nonce="same-nonce"))
    assert len(fake.sent_messages[mark:]) == 2
    bot.call(first.delete())
    with pytest.raises(discord.NotFound):
        bot.call(channel.send("after delete", nonce="same-nonce"))
    with pytest.raises(discord.HTTPException) as err:
        bot.call(channel.send("long nonce", nonce="x" * 26))
    assert err.value.status == 400 and fake.invalid_requests.pop()["json"]["nonce"] == "x" * 26


def test_expired_interaction_token(fake, bot):
    rec = fake.interact("ping")
    rec.wait_final(timeout=10)
    interaction = next(i for i in bot.bot.seen_interactions if i.id == rec.id)
    assert fake.expire_interactions() >= 1 and rec.expired
    with pytest.raises(discord.HTTPException) as err:
        bot.call(interaction.followup.send("too late"))
    assert (err.value.status, err.value.code, err.value.text) == (401, 50027, "Invalid Webhook Token")
    with pytest.raises(discord.HTTPException) as err:
        bot.call(interaction.edit_original_response(content="too late"))
    assert (err.value.status, err.value.code) == (401, 50027)
    assert [(r["method"], r["status"]) for r in rec.failed] == [("POST", 401), ("PATCH", 401)]
    assert len(rec.followups) == 1 and rec.edits == []

    slow = fake.interact("slow")  # answers after 0.4 s: by then its token has expired
    fake.expire_interactions()
    fake.wait_for(lambda: slow.failed, 10, "the expired callback")
    assert slow.failed[0]["status"] == 404 and slow.responses == []
    # Tokens issued afterwards work.
    assert (
        fake.interact("pick", options=[{"type": 3, "name": "fruit", "value": "みかん"}]).wait_final(timeout=10)[
            "content"
        ]
        == "みかん"
    )


def test_raw_resume_replays_only_missed_dispatches():
    import aiohttp

    async def main(other: FakeDiscord):
        url = other.gateway_url + "?v=10&encoding=json"
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(url) as ws:
                assert (await ws.receive_json())["op"] == 10
                await ws.send_json({"op": 2, "d": {"token": other.token, "intents": 0, "properties": {}}})
                ready, guild = await ws.receive_json(), await ws.receive_json()
                assert [(p["t"], p["s"]) for p in (ready, guild)] == [("READY", 1), ("GUILD_CREATE", 2)]
                session_id = ready["d"]["session_id"]
                await asyncio.to_thread(other.dispatch, "TYPING_START", {"channel_id": "1"})
                # ...which this client "misses": it hangs up having seen only s=2.
            async with http.ws_connect(url) as ws:
                await ws.receive_json()
                await ws.send_json({"op": 6, "d": {"token": other.token, "session_id": session_id, "seq": 2}})
                replayed, resumed = await ws.receive_json(), await ws.receive_json()
                assert (replayed["t"], replayed["s"], resumed["t"], resumed["s"]) == ("TYPING_START", 3, "RESUMED", 4)
            async with http.ws_connect(url) as ws:  # up to date: nothing replayed
                await ws.receive_json()
                await ws.send_json({"op": 6, "d": {"token": other.token, "session_id": session_id, "seq": 4}})
                assert (await ws.receive_json())["t"] == "RESUMED"
            await asyncio.to_thread(other.forget_sessions)
            async with http.ws_connect(url) as ws:
                await ws.receive_json()
                await ws.send_json({"op": 6, "d": {"token": other.token, "session_id": session_id, "seq": 5}})
                assert await ws.receive_json() == {"op": 9, "d": False, "s": None, "t": None}

    with FakeDiscord() as other:
        asyncio.run(main(other))
        assert (other.identify_count(), other.resume_count()) == (1, 3)
        assert [e[0] for e in other.gateway_events] == [
            "identify",
            "ready",
            "resume",
            "ready",
            "resume",
            "ready",
            "resume",
            "invalidated",
        ]


def test_no_unknown_or_invalid_requests(fake, bot):
    assert fake.unknown_requests == []
    assert fake.invalid_requests == []
    # Only the deliberate failures: the wrong token, the over-long reply, the late callback, the
    # expired interaction tokens, the followup to a deleted deferral, the nonce of a deleted message, the
    # over-long nonce; injected faults aside.
    failures = sorted(
        (r["path"].split("/")[1], r["status"]) for r in fake.requests if r["status"] >= 400 and not r.get("injected")
    )
    assert set(failures) <= {
        ("interactions", 400),
        ("interactions", 404),
        ("users", 401),
        ("webhooks", 401),
        ("webhooks", 404),
        ("channels", 404),
        ("channels", 400),
    }, fake.describe()


# ---------------------------------------------------------------- sharding


def test_new_guild_ids_land_on_the_asked_shard():
    other = FakeDiscord()  # never started: ids and guilds need no server
    for count in (1, 2, 3, 16):
        for shard in range(count):
            gid = other.new_guild_id(shard, count)
            assert shard_of(gid, count) == shard and abs((gid >> 22) - (other.new_id() >> 22)) < 1000
    g = other.add_guild(shard=1, shard_count=4)
    assert g.shard(4) == 1 and other.guild_of(g.channel_id) == other.guild_of(g.thread_id) == g.id
    assert other.guild_of(other.channel_id) == other.guild_id
    assert {c["id"] for c in other.guild_payload(g.id)["channels"]} == {str(g.channel_id), str(g.other_channel_id)}
    assert [r["id"] for r in other.guild_payload(g.id)["roles"]][0] == str(g.id)  # @everyone
    with pytest.raises(ValueError):
        other.add_guild(guild_id=other.new_guild_id(0, 2), shard=1, shard_count=2)


def test_raw_sharded_identify_routes_guilds_and_refuses_bad_shards():
    """What a sharded client sees, as a plain aiohttp client: /gateway/bot, READY per shard, routing."""
    import aiohttp

    async def connect(http, other, shard):
        ws = await http.ws_connect(other.gateway_url + "?v=10&encoding=json")
        assert (await ws.receive_json())["op"] == 10
        d = {"token": other.token, "intents": 0, "properties": {}}
        if shard is not None:
            d["shard"] = shard
        await ws.send_json({"op": 2, "d": d})
        return ws

    async def ready(ws) -> tuple[dict, list[str]]:
        first = await ws.receive_json()
        assert first["t"] == "READY", first
        guilds = [(await ws.receive_json()) for _ in first["d"]["guilds"]]
        assert all(g["t"] == "GUILD_CREATE" for g in guilds)
        return first["d"], [g["d"]["id"] for g in guilds]

    async def closed_with(ws) -> int:
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        return msg.data

    async def main(other: FakeDiscord, g0, g1):
        async with aiohttp.ClientSession() as http:
            async with http.get(other.api_base + "/gateway/bot", headers={"Authorization": "Bot fake-token"}) as r:
                info = await r.json()
            assert info["shards"] == 2 and info["url"] == other.gateway_url
            assert info["session_start_limit"]["max_concurrency"] == 1
            assert 0 < info["session_start_limit"]["remaining"] <= info["session_start_limit"]["total"]
            async with http.get(other.api_base + "/gateway") as r:  # no auth, only the URL
                assert r.status == 200 and await r.json() == {"url": other.gateway_url}

            # Sharding required: an unsharded (or 1-shard) IDENTIFY is refused with 4011.
            other.require_sharding = True
            ws = await connect(http, other, None)
            assert await closed_with(ws) == 4011
            ws = await connect(http, other, [0, 1])
            assert await closed_with(ws) == 4011

            ws0, ws1 = await connect(http, other, [0, 2]), None
            d0, guilds0 = await ready(ws0)
            assert d0["shard"] == [0, 2] and guilds0 == [str(g0.id)]
            assert [g["id"] for g in d0["guilds"]] == [str(g0.id)]
            ws1 = await connect(http, other, [1, 2])
            d1, guilds1 = await ready(ws1)
            assert d1["shard"] == [1, 2] and sorted(guilds1) == sorted([str(g1.id), str(other.guild_id)])
            await asyncio.to_thread(other.wait_shards_ready, 2)
            assert other.ready_shards(2) == {0, 1}

            # 4010: a shard id out of range, a count other than the live sessions', a malformed shard.
            for bad in ([2, 2], [0, 3], [-1, 2], ["0", 2], [0]):
                ws = await connect(http, other, bad)
                assert await closed_with(ws) == 4010, bad
            assert [r["code"] for r in other.refused_identifies] == [4011, 4011] + [4010] * 5

            # Each guild's events reach only the session owning its shard; DMs go to shard 0.
            for guild, mine, others in ((g0, ws0, ws1), (g1, ws1, ws0)):
                posted = await asyncio.to_thread(other.post_message, guild.channel_id, content="hi")
                got = await mine.receive_json()
                assert (got["t"], got["d"]["id"], got["d"]["guild_id"]) == (
                    "MESSAGE_CREATE",
                    posted["id"],
                    str(guild.id),
                )
                rec = await asyncio.to_thread(other.interact, "ping", channel_id=guild.thread_id)
                got = await mine.receive_json()
                assert (got["t"], got["d"]["id"], got["d"]["guild_id"]) == (
                    "INTERACTION_CREATE",
                    str(rec.id),
                    str(guild.id),
                )
                assert [(d["shard"], d["event"]) for d in other.delivered(rec.id)] == [
                    ((guild.shard(2), 2), "INTERACTION_CREATE")
                ]
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(others.receive_json(), 0.2)
            await asyncio.to_thread(other.dispatch, "TYPING_START", {"channel_id": "1", "user_id": "2"})
            assert (await ws0.receive_json())["t"] == "TYPING_START"
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ws1.receive_json(), 0.2)

            # A guild joined later arrives (GUILD_CREATE) on its shard only.
            late = await asyncio.to_thread(other.add_guild, shard=0, shard_count=2)
            got = await ws0.receive_json()
            assert (got["t"], got["d"]["id"]) == ("GUILD_CREATE", str(late.id))

            # A RESUME keeps the session's shard.
            session_id = d1["session_id"]
            await ws1.close()
            ws1 = await http.ws_connect(other.gateway_url + "?v=10&encoding=json")
            await ws1.receive_json()
            last = other.sessions()
            await ws1.send_json({"op": 6, "d": {"token": other.token, "session_id": session_id, "seq": 100}})
            assert await ws1.receive_json() == {"op": 9, "d": False, "s": None, "t": None}  # seq from the future
            await ws1.close()
            ws1 = await http.ws_connect(other.gateway_url + "?v=10&encoding=json")
            await ws1.receive_json()
            await ws1.send_json(
                {"op": 6, "d": {"token": other.token, "session_id": session_id, "seq": len(guilds1) + 1 + 2}}
            )  # READY, GUILD_CREATEs, 2 events
            assert (await ws1.receive_json())["t"] == "RESUMED"
            expected = {(d0["session_id"], (0, 2)), (session_id, (1, 2))}
            for _ in range(100):  # the fake marks the session ready just after sending RESUMED
                live = {(s["session_id"], s["shard"]) for s in other.sessions() if s["ready"]}
                if live == expected:
                    break
                await asyncio.sleep(0.02)
            assert live == expected, (last, other.sessions())
            posted = await asyncio.to_thread(other.post_message, g1.channel_id, content="after resume")
            assert (await ws1.receive_json())["d"]["id"] == posted["id"]
            for ws in (ws0, ws1):
                await ws.close()

    with FakeDiscord() as other:
        other.recommended_shards = 2
        g0, g1 = other.add_guild(shard=0, shard_count=2), other.add_guild(shard=1, shard_count=2)
        assert shard_of(other.guild_id, 2) == 1  # the first guild is on shard 1 of 2 as well
        asyncio.run(main(other, g0, g1))
        assert other.unknown_requests == [] and other.invalid_requests == []


@pytest.fixture
def sharded_fake():
    """A second fake the class-wide discord.py endpoints point at for one test (the module's bot idles)."""
    old_base, old_gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    with FakeDiscord() as other:
        discord.http.Route.BASE = other.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(other.gateway_url)
        try:
            yield other
        finally:
            discord.http.Route.BASE = old_base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


def _sharded_bot(**options) -> commands.AutoShardedBot:
    intents = discord.Intents.none()
    intents.guilds = intents.guild_messages = intents.message_content = True
    bot = commands.AutoShardedBot(command_prefix="!", intents=intents, chunk_guilds_at_startup=False, **options)

    @bot.event
    async def on_message(message: discord.Message) -> None:
        if not message.author.bot:
            await message.channel.send(f"shard {message.guild.shard_id} saw {message.id}")

    return bot


def test_two_sharded_discord_py_bots_split_the_guilds(sharded_fake):
    fake = sharded_fake
    guilds = [fake.add_guild(shard=k % 2, shard_count=2) for k in range(4)]
    tokens = {0: fake.add_token(), 1: fake.add_token()}
    runners = {k: BotThread(_sharded_bot(shard_count=2, shard_ids=[k]), tokens[k]).start() for k in (0, 1)}
    try:
        fake.wait_shards_ready(2, timeout=15)
        identifies = {tuple(d["shard"]): d["token"] for d in fake.identify_payloads}
        assert identifies == {(0, 2): tokens[0], (1, 2): tokens[1]}
        for guild in [*guilds, fake.guilds[fake.guild_id]]:
            mark = fake.mark()
            posted = fake.post_message(guild.channel_id, content="hello")
            reply = fake.wait_for_message(since=mark, timeout=10)
            shard = guild.shard(2)
            assert reply["content"] == f"shard {shard} saw {posted['id']}"
            assert reply["token"] == tokens[shard]  # answered by the process owning the shard
            assert [d["token"] for d in fake.delivered(posted["id"])] == [tokens[shard]]
        for guild in [*guilds, fake.guilds[fake.guild_id]]:  # sentinels: duplicates would come before these
            mark = fake.mark()
            posted = fake.post_message(guild.channel_id, content="sentinel")
            fake.wait_for_message(lambda m: m["content"].endswith(f"saw {posted['id']}"), since=mark, timeout=10)
        assert len({m["content"] for m in fake.sent_messages}) == len(fake.sent_messages) == 2 * (len(guilds) + 1)
        counts = {k: len(runners[k].call(_wait_guilds(runners[k].bot, 3 if k else 2))) for k in (0, 1)}
        assert counts == {0: 2, 1: 3}  # shard 1 also has the first guild
    finally:
        for runner in runners.values():
            runner.stop()
    assert all(r.error is None for r in runners.values()), [r.error for r in runners.values()]
    assert fake.unknown_requests == [] and fake.invalid_requests == []


async def _wait_guilds(client: discord.Client, n: int):
    for _ in range(100):
        if len(client.guilds) >= n and client.is_ready():
            break
        await asyncio.sleep(0.05)
    return client.guilds


# ---------------------------------------------------------------- the image index surfaces


def _events(bot, name: str) -> list:
    return [args for n, args in list(bot.bot.raw_events) if n == name]


def _wait_event(fake, bot, name: str, check=lambda args: True):
    return fake.wait_for(lambda: next((a for a in _events(bot, name) if check(a)), None), 10, f"the bot's {name}")


def _api(fake, method: str, path: str, **kwargs):
    """A raw REST call with the bot token: (status, headers, JSON body)."""
    import aiohttp

    async def call():
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bot {fake.token}"}
            async with http.request(method, fake.api_base + path, headers=headers, **kwargs) as r:
                return r.status, dict(r.headers), (await r.json() if r.content_type == "application/json" else None)

    return asyncio.run(call())


def test_history_pages_newest_first_by_id_and_time_within_the_rate_limit(fake, bot):
    from datetime import datetime, timedelta, timezone

    from tests.support.fake_discord import snowflake_at, snowflake_time

    channel_id = fake.add_channel(name="履歴")
    _wait_event(fake, bot, "on_guild_channel_create", lambda a: a[0].id == channel_id)
    base = datetime(2025, 1, 1, tzinfo=timezone.utc)
    png = _png((8, 8))
    seeded = fake.seed_history(
        channel_id,
        [("member" if i % 2 else "moderator", f"{i}.png", png, base + timedelta(minutes=i)) for i in range(250)],
    )
    assert all(snowflake_time(m["id"]) == base + timedelta(minutes=i) for i, m in enumerate(seeded))
    assert int(seeded[0]["id"]) >> 22 == snowflake_at(base) >> 22
    channel = bot.bot.get_channel(channel_id)

    async def walk(**kwargs):
        return [(m.id, m.created_at, m.attachments[0].filename) async for m in channel.history(**kwargs)]

    fake.history_rate_limit(per_second=2)
    try:
        path = f"/channels/{channel_id}/messages"
        route = "GET /channels/{channel}/messages"
        before = fake.request_count(route, path=path)
        everything = bot.call(walk(limit=None), timeout=30)
        assert [m[2] for m in everything] == [f"{i}.png" for i in reversed(range(250))]  # newest first
        assert everything[0][1] == base + timedelta(minutes=249)
        assert fake.request_count(route, path=path) - before == 3  # 100 + 100 + 50
        pages = [r for r in fake.requests if r["path"] == path][-3:]
        assert [r["status"] for r in pages] == [200, 200, 200]  # discord.py waited: no 429
        assert pages[2]["time"] - pages[0]["time"] >= 0.9  # at most 2 requests a second
        assert fake.route_counts[route] >= 3

        # By time and by id: after/before exclude the anchor; discord.py gives "after" oldest first.
        after = bot.call(walk(limit=3, after=base + timedelta(minutes=100)))
        assert [m[2] for m in after] == ["101.png", "102.png", "103.png"]
        by_id = bot.call(walk(limit=2, before=discord.Object(int(seeded[10]["id"]))))
        assert [m[2] for m in by_id] == ["9.png", "8.png"]
        around = bot.call(walk(limit=5, around=discord.Object(int(seeded[50]["id"]))))
        assert sorted(m[2] for m in around) == [f"{i}.png" for i in range(48, 53)]
    finally:
        fake.history_rate_limit(None)

    # A client that ignores the headers gets 429 with retry_after and the headers discord.py follows.
    fake.history_rate_limit(per_second=0.2, per=5.0)  # one request per 5 s
    try:
        results = [_api(fake, "GET", f"/channels/{channel_id}/messages?limit=1") for _ in range(2)]
    finally:
        fake.history_rate_limit(None)
    (ok, ok_headers, page), (limited, headers, body) = results
    assert ok == 200 and len(page) == 1 and ok_headers["X-RateLimit-Remaining"] == "0"
    assert limited == 429 and body["retry_after"] > 0 and body["global"] is False
    assert headers["Via"] and headers["X-RateLimit-Bucket"] and float(headers["X-RateLimit-Reset-After"]) > 0
    status, _, body = _api(fake, "GET", f"/channels/{channel_id}/messages?limit=101")
    assert status == 400 and body["code"] == 50035
    status, _, page = _api(fake, "GET", f"/channels/{channel_id}/messages")
    assert status == 200 and len(page) == 50  # the default limit


def test_history_needs_view_channel_and_read_message_history(fake, bot):
    from tests.support.fake_discord import Perm, overwrite

    hidden = fake.add_channel(name="見えない", overwrites=[overwrite(fake.bot_role_id, deny=Perm.VIEW_CHANNEL)])
    no_history = fake.add_channel(
        name="履歴なし", overwrites=[overwrite(fake.application_id, deny=Perm.READ_MESSAGE_HISTORY, member=True)]
    )
    for cid in (hidden, no_history):
        fake.seed_history(cid, [("member", "a.png", _png(), None)])
    status, _, body = _api(fake, "GET", f"/channels/{hidden}/messages")
    assert (status, body["code"]) == (403, 50001)
    status, _, body = _api(fake, "GET", f"/channels/{no_history}/messages")
    assert (status, body) == (200, [])  # Discord answers an empty list without Read Message History


def test_fetched_message_has_fresh_attachment_urls_and_a_deleted_one_is_404(fake, bot):
    png = _png((12, 12))
    posted = fake.post_message(fake.other_channel_id, content="古い", attachments=[("old.png", png, "image/png")])
    old_url = posted["attachments"][0]["url"]
    assert _get(old_url) == png and fake.attachment_url_works(old_url)
    fake.expire_attachments()
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(old_url)
    assert err.value.code == 404
    channel = bot.bot.get_channel(fake.other_channel_id)

    async def fetch_and_read():
        message = await channel.fetch_message(int(posted["id"]))
        return message.attachments[0].url, await message.attachments[0].read()

    fresh_url, data = bot.call(fetch_and_read())
    assert fresh_url != old_url and data == png and "hm=" in fresh_url and "ex=" in fresh_url
    # A message context menu on it resolves the message with working URLs too.
    rec = fake.interact("分類する", target_message=posted)
    assert rec.wait_final(timeout=10)["content"] == "targets:old.png"
    resolved = rec.payload["data"]["resolved"]["messages"][posted["id"]]
    assert fake.attachment_url_works(resolved["attachments"][0]["url"])

    fake.delete_message(fake.other_channel_id, posted["id"])
    event = _wait_event(fake, bot, "on_raw_message_delete", lambda a: a[0].message_id == int(posted["id"]))[0]
    assert (event.channel_id, event.guild_id) == (fake.other_channel_id, fake.guild_id)
    with pytest.raises(discord.NotFound) as err:
        bot.call(channel.fetch_message(int(posted["id"])))
    assert err.value.code == 10008
    assert not fake.attachment_url_works(fresh_url)


def test_deletions_edits_and_removals_are_dispatched(fake, bot):
    channel_id = fake.add_channel(name="消える")
    _wait_event(fake, bot, "on_guild_channel_create", lambda a: a[0].id == channel_id)
    posts = [
        fake.post_message(channel_id, content=f"p{i}", attachments=[(f"{i}.png", _png(), "image/png")])
        for i in range(4)
    ]

    fake.bulk_delete(channel_id, [posts[0]["id"], posts[1]["id"]])
    bulk = _wait_event(fake, bot, "on_raw_bulk_message_delete")[0]
    assert bulk.message_ids == {int(posts[0]["id"]), int(posts[1]["id"])} and bulk.channel_id == channel_id
    assert bulk.guild_id == fake.guild_id

    fake.edit_message(channel_id, posts[2]["id"], attachments=[])  # every image removed
    edit = _wait_event(fake, bot, "on_raw_message_edit", lambda a: a[0].message_id == int(posts[2]["id"]))[0]
    assert edit.data["attachments"] == [] and edit.data["edited_timestamp"] and edit.data["content"] == "p2"

    thread_id = fake.add_thread(channel_id, "消えるスレッド")
    _wait_event(fake, bot, "on_thread_create", lambda a: a[0].id == thread_id)
    fake.delete_channel(thread_id)
    gone = _wait_event(fake, bot, "on_raw_thread_delete", lambda a: a[0].thread_id == thread_id)[0]
    assert (gone.parent_id, gone.guild_id, gone.thread_type) == (
        channel_id,
        fake.guild_id,
        discord.ChannelType.public_thread,
    )

    fake.delete_channel(channel_id)
    _wait_event(fake, bot, "on_guild_channel_delete", lambda a: a[0].id == channel_id)
    status, _, body = _api(fake, "GET", f"/channels/{channel_id}/messages/{posts[3]['id']}")
    assert (status, body["code"]) == (404, 10003)

    guild = fake.add_guild(name="去るサーバー")
    fake.wait_for(lambda: bot.bot.get_guild(guild.id), 10, "the new guild in the cache")
    fake.post_message(guild.channel_id, content="x", attachments=[("g.png", _png(), "image/png")])
    fake.remove_from_guild(guild.id)
    removed = _wait_event(fake, bot, "on_guild_remove", lambda a: a[0].id == guild.id)[0]
    assert bot.bot.get_guild(guild.id) is None and removed.id == guild.id
    assert fake.deliveries[-1]["event"] == "GUILD_DELETE"
    status, _, body = _api(fake, "GET", f"/channels/{guild.channel_id}/messages")
    assert (status, body["code"]) == (403, 50001)


def test_changes_made_while_the_bot_is_offline_send_no_event_and_a_new_identify_shows_them(fake, bot):
    channel_id = fake.add_channel(name="留守中")
    _wait_event(fake, bot, "on_guild_channel_create", lambda a: a[0].id == channel_id)
    guild = fake.add_guild(name="留守中のサーバー")
    fake.wait_for(lambda: bot.bot.get_guild(guild.id), 10, "the new guild in the cache")
    seen = len(fake.deliveries)
    fake.delete_channel(channel_id, offline=True)
    fake.remove_from_guild(guild.id, offline=True)
    sentinel = fake.add_channel(name="合図")  # the next event: anything sent before it would show first
    _wait_event(fake, bot, "on_guild_channel_create", lambda a: a[0].id == sentinel)
    assert [d["event"] for d in fake.deliveries[seen:]] == ["CHANNEL_CREATE"]
    status, _, body = _api(fake, "GET", f"/channels/{channel_id}/messages")
    assert (status, body["code"]) == (404, 10003)
    assert guild.id not in fake.guilds and fake.guild_id in fake.guilds  # what the next READY lists
    assert channel_id not in {int(c["id"]) for c in fake.guild_payload(fake.guild_id)["channels"]}


def test_channel_permissions_follow_role_and_member_overwrites(fake, bot):
    from tests.support.fake_discord import Perm, overwrite

    role = fake.add_role(None, "閲覧者", 0)
    _wait_event(fake, bot, "on_guild_role_create", lambda a: a[0].id == role)
    jiro = fake.add_user("jiro", roles=[role])
    secret = fake.add_channel(
        name="秘密",
        overwrites=[
            overwrite(fake.guild_id, deny=Perm.VIEW_CHANNEL),
            overwrite(role, allow=Perm.VIEW_CHANNEL),
            overwrite(int(jiro["id"]), deny=Perm.ATTACH_FILES, member=True),
            overwrite(fake.bot_role_id, allow=Perm.VIEW_CHANNEL),
        ],
    )
    _wait_event(fake, bot, "on_guild_channel_create", lambda a: a[0].id == secret)
    expected = fake.channel_permissions("jiro", secret)
    assert expected & Perm.VIEW_CHANNEL and not expected & Perm.ATTACH_FILES
    assert fake.channel_permissions("member", secret) == 0
    for who, perms in [("jiro", expected), ("member", 0), ("owner", Perm.ALL)]:
        rec = fake.interact("perm", user=who, channel_id=secret)
        payload_perms, cached, _ = rec.wait_final(timeout=10)["content"].split("|")
        assert int(rec.payload["member"]["permissions"]) == perms
        assert int(payload_perms) == perms
        if who != "owner":  # discord.py gives the owner Permissions.all() (fewer bits than the fake's ALL)
            assert int(cached) == perms, who  # discord.py's permissions_for agrees from the cache
    # Roles given per interaction, and a role revoked by an overwrite change.
    rec = fake.interact("perm", user="member", roles=[role], channel_id=secret)
    assert int(rec.wait_final(timeout=10)["content"].split("|")[1]) & Perm.VIEW_CHANNEL
    fake.set_overwrites(
        secret, [overwrite(fake.guild_id, deny=Perm.VIEW_CHANNEL), overwrite(role, deny=Perm.VIEW_CHANNEL)]
    )
    _wait_event(fake, bot, "on_guild_channel_update", lambda a: a[1].id == secret)
    assert fake.channel_permissions("jiro", secret) == 0


def test_private_threads_thread_members_and_uncached_threads(fake, bot):
    from tests.support.fake_discord import Perm

    private = fake.add_thread(fake.channel_id, "内緒", private=True, owner="moderator", members=["bot"])
    _wait_event(fake, bot, "on_thread_create", lambda a: a[0].id == private)
    thread = bot.bot.get_channel(private)
    assert thread.type is discord.ChannelType.private_thread and thread.parent_id == fake.channel_id
    member = bot.call(thread.fetch_member(fake.moderator_id))
    assert member.id == fake.moderator_id and member.thread_id == private
    with pytest.raises(discord.NotFound) as err:
        bot.call(thread.fetch_member(fake.member_id))
    assert err.value.code == 10007
    assert fake.channel_permissions("member", private) == 0  # not in it, no Manage Threads
    assert fake.channel_permissions("moderator", private) & Perm.VIEW_CHANNEL

    rec = fake.interact("perm", user="moderator", channel_id=private)
    assert rec.payload["channel"]["parent_id"] == str(fake.channel_id) and rec.payload["channel"]["type"] == 12
    assert rec.wait_final(timeout=10)["content"].endswith("|Thread")

    # A private thread without the bot: not dispatched, not fetchable.
    hidden = fake.add_thread(fake.channel_id, "秘密の話", private=True, members=["member"])
    with pytest.raises(discord.Forbidden) as err:
        bot.call(bot.bot.fetch_channel(hidden))
    assert err.value.code == 50001
    # An archived thread is not in the cache, yet GET /channels/{id} finds it.
    archived = fake.add_thread(fake.channel_id, "古いスレッド", archived=True)
    assert bot.bot.get_channel(archived) is None
    fetched = bot.call(bot.bot.fetch_channel(archived))
    assert isinstance(fetched, discord.Thread) and fetched.parent_id == fake.channel_id and fetched.archived
    assert not [a for a in _events(bot, "on_thread_create") if a[0].id in (hidden, archived)]


def test_components_clicks_and_update_message(fake, bot):
    mark = fake.mark()
    fake.post_message(content="repost?")
    sent = fake.wait_for_message(lambda m: m["components"], since=mark, timeout=10)
    rows = sent["components"]
    button = rows[0]["components"][0]
    assert (button["custom_id"], button["style"], button["label"]) == ("repost:not", 2, "リポストではない")

    rec = fake.click(sent, "repost:later", user="moderator")
    edit = fake.wait_for_edits(sent["id"], 1)[-1]
    assert rec.responses[0]["type"] == 6 and rec.deferred
    assert rec.payload["type"] == 3 and rec.payload["data"] == {"custom_id": "repost:later", "component_type": 2}
    assert rec.payload["message"]["id"] == str(sent["id"])
    assert edit["content"] == "deferred edit" and edit["kind"] == "edit"

    rec = fake.click(sent, "repost:pick", values=["みかん"])
    assert rec.wait_response()["type"] == 7 and rec.payload["data"]["values"] == ["みかん"]
    assert rec.payload["data"]["component_type"] == 3
    assert fake.wait_for_edits(sent["id"], 2)[-1]["content"] == "picked みかん"

    rec = fake.click(sent["id"], "repost:not")
    response = rec.wait_response()
    assert response["type"] == 7 and response["content"] == f"not a repost ({fake.member_id})"
    assert fake.channel_messages[sent["id"]]["components"] == []  # view=None removed them
    assert [e["content"] for e in fake.edits_of(sent["id"])] == [
        "deferred edit",
        "picked みかん",
        f"not a repost ({fake.member_id})",
    ]
    with pytest.raises(LookupError):
        fake.click(sent, "repost:not")  # no longer on the message


def test_components_are_validated_like_discord(fake, bot):
    def button(custom_id, label="ok"):
        return {"type": 2, "style": 1, "custom_id": custom_id, "label": label}

    def post(components):
        return _api(
            fake, "POST", f"/channels/{fake.other_channel_id}/messages", json={"content": "c", "components": components}
        )

    assert post([{"type": 1, "components": [button("a"), button("b")]}])[0] == 200
    for components, key in [
        ([{"type": 1, "components": [button("x" * 101)]}], "components.0.components.0.custom_id"),
        ([{"type": 1, "components": [button("")]}], "components.0.components.0.custom_id"),
        ([{"type": 1, "components": [button(f"b{i}") for i in range(6)]}], "components.0.components"),
        ([{"type": 1, "components": [button(f"r{i}")]} for i in range(6)], "components"),
        ([{"type": 1, "components": [button("a", "l" * 81)]}], "components.0.components.0.label"),
        ([{"type": 1, "components": [button("same"), button("same")]}], "components.0.components.1.custom_id"),
    ]:
        status, _, body = post(components)
        assert status == 400 and body["code"] == 50035 and key in body["errors"], (key, body)
    fake.invalid_requests.clear()


def test_followup_files_embeds_and_repeated_edits_are_recorded(fake, bot):
    rec = fake.interact("chart")
    fake.wait_for(lambda: rec.followups, 10, "the chart followup")
    followup = rec.followups[0]
    assert followup["files"][0]["filename"] == "chart.png"
    assert Image.open(io.BytesIO(followup["files"][0]["data"])).size == (30, 20)
    assert followup["embeds"][0]["image"]["url"] == "attachment://chart.png"  # recorded as sent
    shown = followup["message"]["embeds"][0]["image"]
    assert shown["url"] == followup["message"]["attachments"][0]["url"] and shown["width"] == 30
    edits = fake.wait_for_edits(followup["id"], 3)
    assert [e["content"] for e in edits] == ["25%", "50%", "100%"]
    assert [e["content"] for e in rec.followup_edits] == ["25%", "50%", "100%"]

    progress = fake.wait_for_message(lambda m: m["content"] == "backfill 0%", timeout=10)
    edits = fake.wait_for_edits(progress["id"], 3)
    assert [e["content"] for e in edits] == ["backfill 40%", "backfill 80%", "backfill done"]
    assert edits[-1]["embeds"][0]["thumbnail"]["url"] == followup["message"]["attachments"][0]["url"]
    assert (edits[-1]["files"][0]["filename"], edits[-1]["files"][0]["data"]) == ("log.txt", b"x")
    assert [a["filename"] for a in edits[-1]["message"]["attachments"]] == ["log.txt"]

    status, _, body = _api(
        fake,
        "POST",
        f"/channels/{fake.other_channel_id}/messages",
        json={"embeds": [{"title": "t", "thumbnail": {"url": "ftp://example.com/a.png"}}]},
    )
    assert status == 400 and "embeds.0.thumbnail.url" in body["errors"]
    fake.invalid_requests.clear()


# ---------------------------------------------------------------- forums, reactions, components, user installs


def test_forum_tags_posts_and_thread_edits(fake, bot):
    from tests.support.fake_discord import REQUIRE_TAG, Perm, overwrite

    for bad in ([f"t{i}" for i in range(21)], [""], ["x" * 21]):
        with pytest.raises(ValueError):
            fake.add_channel(name="だめ", type=15, tags=bad)
    with pytest.raises(ValueError):
        fake.add_channel(name="テキスト", tags=["犬"])  # only forum/media channels have tags
    forum = fake.add_channel(
        name="写真投稿",
        type=15,
        tags=["犬", {"name": "猫", "emoji_name": "🐱"}, {"name": "要確認", "moderated": True}],
        flags=REQUIRE_TAG,
    )
    _wait_event(fake, bot, "on_guild_channel_create", lambda a: a[0].id == forum)
    cat_id = fake.tag_id(forum, "猫")
    assert fake.channels[forum]["available_tags"][1] == {
        "id": str(cat_id),
        "name": "猫",
        "moderated": False,
        "emoji_id": None,
        "emoji_name": "🐱",
    }
    with pytest.raises(KeyError):
        fake.tag_id(forum, "鳥")
    cached = bot.bot.get_channel(forum)
    assert isinstance(cached, discord.ForumChannel) and cached.flags.require_tag
    assert [t.name for t in cached.available_tags] == ["犬", "猫", "要確認"] and cached.get_tag(
        cat_id
    ).moderated is False

    with pytest.raises(ValueError):
        fake.create_post(forum, content="タグなし")  # REQUIRE_TAG (Discord's 40067)
    with pytest.raises(KeyError):
        fake.create_post(forum, content="x", tags=["鳥"])
    mark = fake.mark()
    png = _png((16, 16))
    thread_id, starter = fake.create_post(
        forum, title="柴犬", content="見て", attachments=[("dog.png", png, "image/png")], tags=["犬"]
    )
    assert (starter["id"], starter["channel_id"]) == (str(thread_id), str(thread_id))
    assert starter["attachments"][0]["filename"] == "dog.png" and _get(starter["attachments"][0]["url"]) == png
    thread = fake.threads[thread_id]
    assert (thread["type"], thread["parent_id"], thread["owner_id"], thread["name"]) == (
        11,
        str(forum),
        str(fake.member_id),
        "柴犬",
    )
    assert thread["applied_tags"] == [str(fake.tag_id(forum, "犬"))] and thread["message_count"] == 0
    assert [d["event"] for d in fake.delivered(thread_id)] == ["THREAD_CREATE", "MESSAGE_CREATE"]
    created = _wait_event(fake, bot, "on_thread_create", lambda a: a[0].id == thread_id)[0]
    assert created.parent_id == forum and [t.name for t in created.applied_tags] == ["犬"]
    reply = fake.wait_for_message(channel_id=thread_id, since=mark, timeout=10)  # on_message saw the starter
    assert reply["embeds"][0]["description"] == f"dog.png: {len(png)} bytes"

    async def retag(names: list[str]) -> list[str]:
        parent = bot.bot.get_channel(forum)
        post = parent.guild.get_thread(thread_id)
        edited = await post.edit(applied_tags=[parent.get_tag(fake.tag_id(forum, n)) for n in names])
        return [t.name for t in edited.applied_tags]

    with pytest.raises(discord.Forbidden) as err:  # a member's post, no Manage Threads
        bot.call(retag(["猫"]))
    assert err.value.code == 50013
    # The bot's own post: its owner may retag it, but not with a moderated tag, nor lock it.
    own, _ = fake.create_post(forum, title="自分の", content="bot", author="bot", tags=["犬"])
    status, _, body = _api(fake, "PATCH", f"/channels/{own}", json={"applied_tags": [str(cat_id)]})
    assert status == 200 and body["applied_tags"] == [str(cat_id)] and body["id"] == str(own)
    for change in ({"applied_tags": [str(fake.tag_id(forum, "要確認"))]}, {"locked": True}):
        status, _, body = _api(fake, "PATCH", f"/channels/{own}", json=change)
        assert (status, body["code"]) == (403, 50013), change
    assert fake.applied_tag_names(own) == ["猫"]

    fake.set_overwrites(forum, [overwrite(fake.bot_role_id, allow=Perm.MANAGE_THREADS)])
    _wait_event(fake, bot, "on_guild_channel_update", lambda a: a[1].id == forum)
    since = len(fake.thread_edits)
    assert bot.call(retag(["猫", "要確認"])) == ["猫", "要確認"]
    edit = fake.wait_for_thread_edit(thread_id, since=since)
    assert edit["applied_tag_names"] == ["猫", "要確認"] and edit["parent_id"] == forum
    assert edit["payload"]["applied_tags"] == [str(cat_id), str(fake.tag_id(forum, "要確認"))]
    assert fake.applied_tag_names(thread_id) == ["猫", "要確認"]
    status, _, body = _api(fake, "GET", f"/channels/{thread_id}")
    assert status == 200 and body["applied_tags"] == edit["thread"]["applied_tags"]
    updated = _wait_event(fake, bot, "on_raw_thread_update", lambda a: a[0].thread_id == thread_id)[0]
    assert updated.data["applied_tags"] == body["applied_tags"]

    # Replacing the tags keeps the ids of the names kept; then the limits of applied_tags.
    dog_id = fake.tag_id(forum, "犬")
    fake.set_available_tags(forum, ["犬", "猫", {"name": "要確認", "moderated": True}, "鳥", "魚", "虫"])
    _wait_event(fake, bot, "on_guild_channel_update", lambda a: a[1].id == forum and len(a[1].available_tags) == 6)
    assert fake.tag_id(forum, "犬") == dog_id and fake.tag_id(forum, "猫") == cat_id
    all_six = [t["id"] for t in fake.channels[forum]["available_tags"]]
    text_thread = fake.add_thread(fake.other_channel_id, "雑談スレ", owner="bot")
    for path, change, key in [
        (f"/channels/{thread_id}", {"applied_tags": all_six}, "applied_tags"),
        (f"/channels/{thread_id}", {"applied_tags": ["123"]}, "applied_tags.0"),
        (f"/channels/{text_thread}", {"applied_tags": [str(dog_id)]}, "applied_tags"),  # not a forum post
    ]:
        status, _, body = _api(fake, "PATCH", path, json=change)
        assert (status, body["code"]) == (400, 50035) and key in body["errors"], (change, body)
    with pytest.raises(ValueError):
        fake.create_post(forum, content="多すぎ", tags=["犬", "猫", "鳥", "魚", "虫", "要確認"])
    status, _, body = _api(fake, "PATCH", f"/channels/{forum}", json={"name": "改名"})
    assert (status, body["code"]) == (403, 50013)  # no Manage Channels

    media = fake.add_channel(name="メディア", type=16, tags=["写真"])
    post, first = fake.create_post(media, title="一枚", attachments=[("m.png", png, "image/png")], tags=["写真"])
    assert fake.threads[post]["parent_id"] == str(media) and first["id"] == str(post)
    assert fake.applied_tag_names(post) == ["写真"]
    fake.invalid_requests.clear()


def test_reactions_custom_emojis_and_their_errors(fake, bot):
    from urllib.parse import quote

    from tests.support.fake_discord import Perm, overwrite

    emoji_id = fake.add_emoji(name="neko")
    fake.wait_for(lambda: bot.bot.get_emoji(emoji_id), 10, "the new emoji in the cache")
    assert fake.guild_payload()["emojis"][-1] == {
        "id": str(emoji_id),
        "name": "neko",
        "animated": False,
        "available": True,
        "managed": False,
        "require_colons": True,
        "roles": [],
    }
    posted = fake.post_message(content="かわいい")
    mid = int(posted["id"])
    channel = bot.bot.get_channel(fake.channel_id)

    async def react(*emojis) -> None:
        message = channel.get_partial_message(mid)
        for e in emojis:
            await message.add_reaction(e)

    bot.call(react("👍", bot.bot.get_emoji(emoji_id)))
    assert fake.wait_for_reaction(mid) == "👍"
    assert fake.reactions_on(mid) == ["👍", f"neko:{emoji_id}"]
    assert (fake.channel_id, mid, "👍") in fake.reactions
    raw = _wait_event(fake, bot, "on_raw_reaction_add", lambda a: a[0].message_id == mid and str(a[0].emoji) == "👍")
    assert (raw[0].user_id, raw[0].channel_id, raw[0].guild_id) == (fake.application_id, fake.channel_id, fake.guild_id)
    status, _, shown = _api(fake, "GET", f"/channels/{fake.channel_id}/messages/{mid}")
    assert status == 200
    assert [(r["count"], r["me"], r["emoji"]) for r in shown["reactions"]] == [
        (1, True, {"id": None, "name": "👍"}),
        (1, True, {"id": str(emoji_id), "name": "neko", "animated": False}),
    ]

    def put(channel_id, message_id, emoji: str, method: str = "PUT"):
        path = f"/channels/{channel_id}/messages/{message_id}/reactions/{quote(emoji)}/@me"
        return _api(fake, method, path)

    foreign = fake.add_guild(name="よその鯖", bot_member=False)
    elsewhere = fake.add_emoji(foreign.id, "gaikoku")
    for args, expected in [
        ((1, mid, "👍"), (404, 10003)),
        ((fake.channel_id, 1, "👍"), (404, 10008)),
        ((fake.channel_id, mid, "notanemoji"), (400, 10014)),
        ((fake.channel_id, mid, "neko:123"), (400, 10014)),
        ((fake.channel_id, mid, f"gaikoku:{elsewhere}"), (400, 10014)),  # not a guild the bot is in
    ]:
        status, _, body = put(*args)
        assert (status, body["code"]) == expected, (args, body)

    no_add = fake.add_channel(
        name="リアクション禁止", overwrites=[overwrite(fake.bot_role_id, deny=Perm.ADD_REACTIONS)]
    )
    no_history = fake.add_channel(
        name="履歴禁止", overwrites=[overwrite(fake.bot_role_id, deny=Perm.READ_MESSAGE_HISTORY)]
    )
    for cid in (no_add, no_history):
        _wait_event(fake, bot, "on_guild_channel_create", lambda a, cid=cid: a[0].id == cid)
    quiet = fake.post_message(no_add, content="静か")
    assert put(no_add, quiet["id"], "👍")[0] == 403
    fake.react(quiet, "👍", user="member")  # already there: no Add Reactions needed to join in
    assert put(no_add, quiet["id"], "👍")[0] == 204
    status, _, body = put(no_add, quiet["id"], "😀")
    assert (status, body["code"]) == (403, 50013)
    assert fake.channel_messages[int(quiet["id"])]["reactions"][0]["count"] == 2
    hidden = fake.post_message(no_history, content="見えない")
    status, _, body = put(no_history, hidden["id"], "👍")
    assert (status, body["code"]) == (403, 50013)

    many = fake.post_message(content="多すぎ")
    twenty = list("😀😃😄😁😆😅😂🤣😊😇🙂🙃😉😌😍🥰😘😗😙😚")
    assert [put(fake.channel_id, many["id"], e)[0] for e in twenty] == [204] * 20
    status, _, body = put(fake.channel_id, many["id"], "🐶")
    assert (status, body["code"]) == (400, 30010)
    assert put(fake.channel_id, many["id"], "😀")[0] == 204  # already there: still 20

    assert put(fake.channel_id, mid, "👍", "DELETE")[0] == 204
    assert fake.reactions_on(mid) == [f"neko:{emoji_id}"]
    _wait_event(fake, bot, "on_raw_reaction_remove", lambda a: a[0].message_id == mid)
    status, _, shown = _api(fake, "GET", f"/channels/{fake.channel_id}/messages/{mid}")
    assert [r["emoji"]["name"] for r in shown["reactions"]] == ["neko"]
    fake.invalid_requests.clear()


def test_components_on_ephemeral_answers_select_values_and_updates(fake, bot):
    rec = fake.interact("choose")
    fake.wait_for(lambda: len(rec.followups) == 1, 10, "the ephemeral followup")
    first, followup = rec.messages
    assert first["flags"] & 64 and followup["flags"] & 64
    select = first["components"][0]["components"][0]
    assert (select["type"], select["min_values"], select["max_values"]) == (3, 1, 2)
    for bad in (["バナナ"], FRUITS[:3], [], ["りんご", "りんご"]):
        with pytest.raises(ValueError):
            fake.click(first, "choose:fruit", values=bad)
    with pytest.raises(ValueError):
        fake.click(followup, "choose:ok", values=["x"])  # a button takes no values
    with pytest.raises(LookupError):
        fake.click(first, "choose:fruit", values=["りんご"], user="moderator")  # only its user sees it

    picked = fake.click(rec.responses[0], "choose:fruit", values=["りんご", "ぶどう"])
    assert picked.wait_response()["type"] == 7
    assert picked.payload["data"] == {"custom_id": "choose:fruit", "component_type": 3, "values": ["りんご", "ぶどう"]}
    assert picked.payload["message"]["flags"] & 64 and picked.payload["message"]["id"] == first["id"]
    assert picked.payload["message"]["interaction_metadata"]["id"] == str(rec.id)
    edit = fake.wait_for_edits(first["id"], 1)[-1]
    assert edit["content"] == "選んだ: りんご,ぶどう" and edit["message"]["components"] == []
    assert edit["message"]["flags"] & 64
    assert fake.channel_messages[int(first["id"])]["content"] == "選んだ: りんご,ぶどう"

    ok = fake.click(followup["id"], "choose:ok")
    assert ok.wait_response()["type"] == 6
    edit = fake.wait_for_edits(followup["id"], 1)[-1]
    assert edit["content"] == f"確定 {fake.member_id}" and edit["ephemeral"]
    assert fake.channel_messages[int(followup["id"])]["components"] == []


def test_a_modal_is_answered_with_what_the_user_typed(fake, bot):
    rec = fake.interact("ask")
    assert rec.wait_response()["type"] == 9
    modal = rec.responses[0]["modal"]
    assert modal["title"] == "名前" and len(modal["components"]) == 2
    name_id, note_id = fake.modal_inputs(rec)
    with pytest.raises(ValueError):
        fake.submit_modal(rec, {note_id: "x"})  # the name is required
    with pytest.raises(ValueError):
        fake.submit_modal(rec, {name_id: "長" * 11})  # over max_length
    submitted = fake.submit_modal(rec, {name_id: "ゆき"})
    answer = submitted.wait_final()
    assert submitted.payload["type"] == 5 and submitted.payload["data"]["custom_id"] == modal["custom_id"]
    assert answer["ephemeral"] and answer["content"] == "こんにちは ゆき|"


def test_user_installed_context_menu_in_dms_group_dms_and_foreign_guilds(fake, bot):
    from tests.support.fake_discord import Perm

    bot.call(bot.bot.tree.sync())
    look = fake.synced_command("画像を見る", type=3)
    assert (look["integration_types"], look["contexts"]) == ([0, 1], [0, 1, 2])
    assert fake.synced_command("ping")["integration_types"] == [0]  # none sent: the app's default
    with pytest.raises(KeyError):
        fake.synced_command("画像を見る", type=1)

    dm = fake.add_private_channel("member", "moderator")  # a DM between two users: no bot
    target = fake.post_message(dm, author="moderator", content="見て", attachments=[("cat.png", _png(), "image/png")])
    assert "guild_id" not in target and "member" not in target
    rec = fake.interact("画像を見る", target_message=target, channel_id=dm, context=2)
    final = rec.wait_final(timeout=10)
    assert final["ephemeral"] and final["content"] == "cat.png|True|User|private_channel|True|False|DMChannel"
    payload = rec.payload
    assert "guild_id" not in payload and "member" not in payload and payload["user"]["id"] == str(fake.member_id)
    assert (payload["channel"]["id"], payload["channel"]["type"], payload["context"]) == (str(dm), 1, 2)
    assert payload["authorizing_integration_owners"] == {"1": str(fake.member_id)}
    assert int(payload["app_permissions"]) == Perm.ATTACH_FILES | Perm.EMBED_LINKS | Perm.MENTION_EVERYONE
    assert payload["data"]["resolved"]["messages"][target["id"]]["attachments"][0]["filename"] == "cat.png"
    assert fake.delivered(rec.id) and fake.delivered(target["id"]) == []  # the bot is not in that DM
    for path in (f"/channels/{dm}", f"/channels/{dm}/messages/{target['id']}"):
        status, _, body = _api(fake, "GET", path)
        assert (status, body["code"]) == (403, 50001), path

    # Not installed where it is used: five followups, then 40094.  Guild installs have no such limit.
    results = [
        _api(fake, "POST", f"/webhooks/{fake.application_id}/{rec.token}?wait=true", json={"content": f"f{i}"})
        for i in range(6)
    ]
    assert [r[0] for r in results[:5]] == [200] * 5 and (results[5][0], results[5][2]["code"]) == (400, 40094)
    guild_rec = fake.interact("ping")
    guild_rec.wait_final(timeout=10)
    more = [
        _api(fake, "POST", f"/webhooks/{fake.application_id}/{guild_rec.token}?wait=true", json={"content": "x"})[0]
        for _ in range(6)
    ]
    assert more == [200] * 6 and len(guild_rec.followups) == 7

    group = fake.add_private_channel("member", "moderator", "owner", group=True, name="友達")
    shared = fake.post_message(group, author="owner", attachments=[("g.png", _png(), "image/png")])
    rec = fake.interact("画像を見る", target_message=shared, channel_id=group, context=2)
    assert rec.wait_final(timeout=10)["content"] == "g.png|True|User|private_channel|True|False|GroupChannel"
    assert rec.payload["channel"]["type"] == 3 and rec.payload["channel"]["name"] == "友達"

    bot_dm = fake.add_private_channel("member", "bot")
    mark = fake.mark()
    mine = fake.post_message(bot_dm, content="これ", attachments=[("d.png", _png(), "image/png")])
    assert fake.delivered(mine["id"])  # the bot is in its own DM, and answers there
    answer = fake.wait_for_message(channel_id=bot_dm, since=mark, timeout=10)
    assert answer["embeds"][0]["title"] == "分類" and "guild_id" not in answer["message"]
    rec = fake.interact("画像を見る", target_message=mine, channel_id=bot_dm, context=1)
    assert rec.wait_final(timeout=10)["content"] == "d.png|True|User|dm_channel|True|False|DMChannel"
    assert int(rec.payload["app_permissions"]) & Perm.USE_EXTERNAL_EMOJIS

    foreign = fake.add_guild(name="よそ", bot_member=False)
    out = fake.post_message(foreign.channel_id, attachments=[("f.png", _png(), "image/png")])
    rec = fake.interact("画像を見る", target_message=out, channel_id=foreign.channel_id, installed_in_guild=False)
    assert rec.wait_final(timeout=10)["content"] == "f.png|False|Member|guild|True|False|TextChannel"
    payload = rec.payload
    assert payload["guild_id"] == str(foreign.id) and payload["member"]["user"]["id"] == str(fake.member_id)
    assert payload["authorizing_integration_owners"] == {"1": str(fake.member_id)}
    assert payload["app_permissions"] == payload["member"]["permissions"]
    assert int(payload["app_permissions"]) == fake.channel_permissions("member", foreign.channel_id)
    assert fake.delivered(out["id"]) == [] and bot.bot.get_guild(foreign.id) is None
    for method, path in [
        ("GET", f"/channels/{foreign.channel_id}"),
        ("GET", f"/channels/{foreign.channel_id}/messages"),
        ("GET", f"/guilds/{foreign.id}"),
    ]:
        status, _, body = _api(fake, method, path)
        assert (status, body["code"]) == (403, 50001), path
    status, _, body = _api(fake, "POST", f"/channels/{foreign.channel_id}/messages", json={"content": "x"})
    assert (status, body["code"]) == (403, 50001)

    with pytest.raises(ValueError):
        fake.interact("ping", channel_id=dm, context=2)  # guild install only
    with pytest.raises(ValueError):
        fake.interact("画像を見る", target_message=out, channel_id=foreign.channel_id)  # the bot is not there
    with pytest.raises(ValueError):
        fake.interact("画像を見る", target_message=target, channel_id=dm, context=1)  # not the bot's DM
    fake.invalid_requests.clear()
