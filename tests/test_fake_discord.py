"""Self-test of tests/support/fake_discord.py: a minimal REAL discord.py bot driven through it."""

from __future__ import annotations

import asyncio
import io
import threading
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

from tests.support.fake_discord import FakeDiscord

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
    bot = commands.Bot(command_prefix="!", intents=intents, allowed_mentions=discord.AllowedMentions.none(),
                       chunk_guilds_at_startup=False)

    @bot.event
    async def on_message(message: discord.Message) -> None:
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
            f"{labels}|{image.filename}|{len(data)}|{perms}|{interaction.channel_id}|{image.url}", ephemeral=True)

    bot.tree.add_command(labels)

    async def classify(interaction: discord.Interaction, message: discord.Message) -> None:
        names = ",".join(a.filename for a in message.attachments)
        report = discord.File(io.BytesIO(names.encode()), "report.txt")
        await interaction.response.send_message(f"targets:{names}", ephemeral=True, file=report)

    bot.tree.add_command(app_commands.ContextMenu(name="分類する", callback=classify))

    @bot.tree.command(name="pick", description="pick a fruit")
    async def pick(interaction: discord.Interaction, fruit: str) -> None:
        await interaction.response.send_message(fruit)

    @pick.autocomplete("fruit")
    async def pick_autocomplete(interaction: discord.Interaction, current: str):
        return [app_commands.Choice(name=f, value=f) for f in FRUITS if current in f][:25]

    return bot


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


def test_subcommand_with_attachment(fake, bot):
    png = _png((20, 10))
    rec = fake.interact(
        "labels", user="moderator", channel_id=fake.thread_id,
        options=[{"type": 1, "name": "set", "options": [{"type": 3, "name": "labels", "value": "赤い丸,青い四角"}]}],
        attachments={"image": ("shape.png", png, "image/png")})
    final = rec.wait_final(timeout=10)
    labels, filename, size, manage_guild, channel, url = final["content"].split("|")
    assert (labels, filename, int(size), manage_guild, int(channel)) == (
        "赤い丸,青い四角", "shape.png", len(png), "True", fake.thread_id)
    assert final["ephemeral"] and not rec.deferred
    assert _get(url) == png
    # A plain member lacks Manage Server in the computed permissions.
    rec = fake.interact("labels", options=[{"type": 1, "name": "set", "options": [
        {"type": 3, "name": "labels", "value": "a"},
        fake.attachment_option("image", "x.png", png, "image/png")]}])
    assert rec.wait_final(timeout=10)["content"].split("|")[3] == "False"


def test_message_context_menu(fake, bot):
    target = fake.post_message(author="member", bot=True, attachments=[
        ("a.png", _png(), "image/png"), ("b.jpg", _jpeg(), None)])
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
    names = {"ping", "long", "slow", "labels", "pick", "分類する"}
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
    posted = fake.post_message(bot=True, attachments=[("w.png", png, "image/png"), ("t.jpg", jpeg, "image/jpeg"),
                                                      ("n.bin", b"not an image", None)])
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


def test_resume_after_disconnect(fake, bot):
    assert fake.disconnect_all(4000) == 1
    fake.wait_ready(timeout=15)
    mark = fake.mark()
    fake.post_message(attachments=[("again.png", _png(), "image/png")])
    assert fake.wait_for_message(since=mark, timeout=10)["embeds"][0]["title"] == "分類"
    assert len(fake.identify_payloads) == 1  # resumed, not re-identified


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


def test_no_unknown_or_invalid_requests(fake, bot):
    assert fake.unknown_requests == []
    assert fake.invalid_requests == []
    # Only the deliberate failures: the wrong token, the over-long reply, the late callback.
    failures = sorted((r["path"].split("/")[1], r["status"]) for r in fake.requests if r["status"] >= 400)
    assert set(failures) <= {("interactions", 400), ("interactions", 404), ("users", 401)}, fake.describe()
