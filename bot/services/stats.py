"""/labels stats: how often each label came first, as counts and a bar chart (PNG).

matplotlib's object-oriented API (no pyplot: no global figure state, safe in a worker thread) with
IPAexGothic from matplotlib-fontja, so Japanese labels are drawn as text rather than empty boxes.
Rendering takes tens of milliseconds: callers run it with asyncio.to_thread.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping, Sequence

MAX_BARS = 25  # more labels than this: the rarest are summed into one "other" bar


def ordered_counts(
    counts: Mapping[str, int], labels: Sequence[str], other: str, max_bars: int = MAX_BARS
) -> list[tuple[str, int]]:
    """The set's labels (zero counts included) and any other label that came first (an older set's),
    most frequent first; past `max_bars`, the rest summed as `other`."""
    rows = {label: counts.get(label, 0) for label in labels}
    for label, count in counts.items():
        rows.setdefault(label, count)
    ranked = sorted(rows.items(), key=lambda row: (-row[1], list(rows).index(row[0])))
    if len(ranked) <= max_bars:
        return ranked
    kept, rest = ranked[: max_bars - 1], ranked[max_bars - 1 :]
    return [*kept, (other, sum(count for _, count in rest))]


_RENDERING = threading.Lock()  # matplotlib's font and text caches are not safe across threads


def render_chart(rows: Sequence[tuple[str, int]], title: str, axis: str) -> bytes:
    """A horizontal bar chart of (label, count), the count written at each bar's end; PNG bytes."""
    with _RENDERING:
        return _render(rows, title, axis)


def _render(rows: Sequence[tuple[str, int]], title: str, axis: str) -> bytes:
    import matplotlib_fontja  # type: ignore[import-untyped]  # registers IPAexGothic with matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    font = matplotlib_fontja.matplotlib_fontja.FONT_NAME
    height = 1.2 + 0.38 * max(len(rows), 1)
    figure = Figure(figsize=(7.5, height), dpi=110, layout="constrained")
    ax = figure.add_subplot()
    names = [name if len(name) <= 30 else name[:29] + "…" for name, _ in rows]
    values = [count for _, count in rows]
    positions = list(range(len(rows)))
    bars = ax.barh(positions, values, color="#5865F2")
    ax.set_yticks(positions, names, fontfamily=font)
    ax.invert_yaxis()  # most frequent on top
    ax.bar_label(bars, labels=[str(v) for v in values], padding=3, fontfamily=font)
    ax.set_title(title, fontfamily=font, loc="left")
    ax.set_xlabel(axis, fontfamily=font)
    ax.set_xlim(0, max(values + [1]) * 1.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()
