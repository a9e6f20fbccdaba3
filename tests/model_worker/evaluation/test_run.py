"""The template variants and the progress line."""

from __future__ import annotations

import io
import sys

from model_worker.cli import _progress_line
from model_worker.evaluation.run import template_variants

CONFIGURED = ("{}の写真", "{}の画像")


def test_variants_without_named_sets():
    assert template_variants(CONFIGURED, {}) == [
        ("configured ensemble", CONFIGURED),
        ("alone {}の写真", ("{}の写真",)),
        ("alone {}の画像", ("{}の画像",)),
        ("bare label", ("{}",)),
    ]
    # one configured template: its "alone" variant would be the ensemble again
    assert [name for name, _ in template_variants(("{}",), {})] == ["configured ensemble", "bare label"]


def test_the_shipped_named_sets_are_variants():
    from wakeru.templates import TEMPLATE_SETS

    variants = dict(template_variants(CONFIGURED))
    assert variants["set standard"] == TEMPLATE_SETS["standard"]
    assert len(variants["set openai-ja"]) == 37 and "{}の悪い写真" in variants["set openai-ja"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert _progress_line("m") is None
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    show = _progress_line("m")
    assert show is not None
    show(1, 2)
    show(2, 2)
    assert terminal.getvalue() == "\rm: 1/2 images\rm: 2/2 images\n"
