"""Fixtures of the end-to-end modules here: each defines a module-scoped `world` (a FakeDiscord and the
`python -m bot` it runs); `fake` and `bot` are its two halves, `fake` checked after every test."""

from __future__ import annotations

import pytest

from tests.support import flows


@pytest.fixture
def fake(world):
    yield from flows.live_fake(world)


@pytest.fixture
def bot(world):
    return world[1]
