"""bot.services.styles: the style chain (thread → parent → server → the channel type's default) on a real SQLite
store, and the one reaction an answer gets."""

from __future__ import annotations

import pytest

from bot.services.classifying import ImageAnswer
from bot.services.styles import BEYOND_NUMBERED, FAILED, NUMBERED, UNSURE, reaction_for, resolve_style
from bot.store import open_store
from wakeru.protocol import ClassifyResult, ErrorCode, LabelScore

G = 1001


@pytest.fixture
async def store(tmp_path):
    opened = await open_store(f"sqlite:///{tmp_path}/wakeru.db")
    yield opened
    await opened.close()


async def test_defaults_follow_the_channel_type(store):
    assert (await resolve_style(store, G, 10, None, forum=False)).style == "embed"
    forum = await resolve_style(store, G, 20, None, forum=True)
    assert (forum.style, forum.kind) == ("tags", "default")
    post = await resolve_style(store, G, 21, 20, forum=True)  # a post in the forum
    assert post.style == "tags"


async def test_the_nearest_setting_wins(store):
    await store.write_style(G, None, "reaction", user_id=1)
    assert (await resolve_style(store, G, 10, None, forum=False)).kind == "server"
    assert (await resolve_style(store, G, 20, None, forum=True)).style == "reaction"  # the server's, in a forum too
    await store.write_style(G, 10, "none", user_id=1)
    thread = await resolve_style(store, G, 11, 10, forum=False)
    assert (thread.style, thread.kind, thread.channel_id) == ("none", "parent", 10)
    await store.write_style(G, 11, "embed", user_id=1)
    assert (await resolve_style(store, G, 11, 10, forum=False)).kind == "channel"
    assert (await resolve_style(store, G + 1, 10, None, forum=False)).style == "embed"  # another server: untouched


async def test_tags_outside_a_forum_answer_with_the_embed(store):
    await store.write_style(G, None, "tags", user_id=1)
    text_channel = await resolve_style(store, G, 10, None, forum=False)
    assert (text_channel.style, text_channel.kind) == ("embed", "server")
    assert (await resolve_style(store, G, 20, None, forum=True)).style == "tags"


def answer(*scores: tuple[str, float], fits: bool = True) -> ImageAnswer:
    top = tuple(LabelScore(label, score, 0.9 if fits else 0.001, fits) for label, score in scores)
    return ImageAnswer("x.png", ClassifyResult(id="r", top=top))


def test_reaction_is_the_labels_emoji_else_its_number():
    labels = ("犬=🐕", "猫", "鳥=<:tori:123>")
    assert reaction_for(answer(("犬", 0.9), ("猫", 0.1)), labels) == "🐕"
    assert reaction_for(answer(("猫", 0.9), ("犬", 0.1)), labels) == "2\ufe0f\u20e3"
    assert reaction_for(answer(("鳥", 0.9)), labels) == "<:tori:123>"
    many = tuple(f"l{i}" for i in range(40))
    assert reaction_for(answer(("l9", 0.5)), many) == "\U0001f51f" == NUMBERED[9]
    assert reaction_for(answer(("l10", 0.5)), many) == "\U0001f1e6"  # 🇦
    assert reaction_for(answer(("l39", 0.5)), many) == BEYOND_NUMBERED


def test_reaction_says_unsure_or_failed():
    assert reaction_for(answer(("犬", 0.9), fits=False), ("犬", "猫")) == UNSURE == "❓"
    assert reaction_for(answer(("象", 0.9)), ("犬", "猫")) == UNSURE  # the set changed meanwhile
    failed = ImageAnswer("x.png", ClassifyResult.failure("r", ErrorCode.CORRUPT, "corrupt"))
    assert reaction_for(failed, ("犬", "猫")) == FAILED
