"""Label resolution (thread → parent → server → config default) and the auto-classify decision."""

from __future__ import annotations

import pytest

from bot.services.labelsets import auto_classify_enabled, inherited, resolve
from bot.store import SQLiteLabelStore
from tests.conftest import make_config

G, CHANNEL, THREAD, OTHER = 1, 10, 11, 20


@pytest.fixture
async def store(tmp_path):
    s = await SQLiteLabelStore.open(f"sqlite:///{tmp_path}/labels.db")
    yield s
    await s.close()


async def test_resolution_order(store):
    config = make_config()
    source = await resolve(store, config, G, THREAD, CHANNEL)
    assert source.kind == "default" and source.labels == config.labels.default
    await store.write(G, None, ("山", "海"), user_id=5, action="set")
    assert (await resolve(store, config, G, THREAD, CHANNEL)).kind == "server"
    await store.write(G, CHANNEL, ("犬", "猫"), user_id=5, action="set")
    parent = await resolve(store, config, G, THREAD, CHANNEL)
    assert (parent.kind, parent.labels, parent.channel_id, parent.version) == ("parent", ("犬", "猫"), CHANNEL, 1)
    assert (await resolve(store, config, G, CHANNEL, None)).kind == "channel"
    await store.write(G, THREAD, ("赤", "青"), user_id=5, action="set")
    assert (await resolve(store, config, G, THREAD, CHANNEL)).labels == ("赤", "青")
    assert (await resolve(store, config, G, OTHER, None)).labels == ("山", "海")
    assert (await resolve(store, config, 2, CHANNEL, None)).kind == "default"  # another server
    assert (await resolve(store, config, None, None, None)).kind == "default"  # a DM
    assert (await inherited(store, config, G, THREAD, CHANNEL)).labels == ("犬", "猫")
    assert (await inherited(store, config, G, CHANNEL, None)).labels == ("山", "海")
    assert (await inherited(store, config, G, None, None)).kind == "default"


@pytest.mark.parametrize(
    "mode, bare, labelled", [("labeled_channels", False, True), ("all", True, True), ("off", False, False)]
)
async def test_auto_classify_modes(store, mode, bare, labelled):
    config = make_config(discord={"auto_classify": mode})
    await store.write(G, None, ("山", "海"), user_id=5, action="set")  # a server set does not switch channels on
    assert await auto_classify_enabled(store, config, G, OTHER, None) is bare
    await store.write(G, CHANNEL, ("犬", "猫"), user_id=5, action="set")
    assert await auto_classify_enabled(store, config, G, CHANNEL, None) is labelled
    assert await auto_classify_enabled(store, config, G, THREAD, CHANNEL) is labelled  # threads follow the parent


async def test_channel_switch_overrides_the_mode(store):
    config = make_config(discord={"auto_classify": "labeled_channels"})
    await store.set_auto(G, OTHER, True, user_id=5)
    assert await auto_classify_enabled(store, config, G, OTHER, None)
    await store.write(G, CHANNEL, ("犬", "猫"), user_id=5, action="set")
    await store.set_auto(G, CHANNEL, False, user_id=5)
    assert not await auto_classify_enabled(store, config, G, CHANNEL, None)
    assert not await auto_classify_enabled(store, config, G, THREAD, CHANNEL)
    await store.set_auto(G, THREAD, True, user_id=5)
    assert await auto_classify_enabled(store, config, G, THREAD, CHANNEL)
