"""--plot: the confusion matrix as a heat map (PNG), one panel per model.

matplotlib's object-oriented API (no pyplot: no global figure state, no GUI backend) with IPAexGothic from
matplotlib-fontja so Japanese labels are drawn as text, as bot/services/stats.py does. Imported only with --plot:
matplotlib costs a second to import and is needed for nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

MAX_ANNOTATED = 30  # more labels than this: the cells are too small for their counts


def confusion_figure(labels: Sequence[str], panels: Sequence[tuple[str, list[list[int]]]]) -> Any:
    """A Figure with one heat map per (title, matrix); cells coloured by the share of their row (the true label),
    so a rare label's mistakes show as clearly as a common one's, and written with their counts."""
    import matplotlib_fontja  # type: ignore[import-untyped]  # registers IPAexGothic with matplotlib
    from matplotlib.figure import Figure

    font = matplotlib_fontja.matplotlib_fontja.FONT_NAME
    n = len(labels)
    side = max(3.5, 0.45 * n + 2)
    figure = Figure(figsize=(side * len(panels), side + 0.6), dpi=100, layout="constrained")
    names = [label if len(label) <= 20 else label[:19] + "…" for label in labels]
    for index, (title, matrix) in enumerate(panels, 1):
        ax = figure.add_subplot(1, len(panels), index)
        shares = [[count / (sum(row) or 1) for count in row] for row in matrix]
        image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontfamily=font)
        ax.set_yticks(range(n), names, fontfamily=font)
        ax.set_xlabel("予測 (predicted)", fontfamily=font)
        ax.set_ylabel("正解 (true)", fontfamily=font)
        ax.set_title(title if len(title) <= 60 else "…" + title[-59:], fontfamily=font, fontsize=9)
        if n <= MAX_ANNOTATED:
            for r, row in enumerate(matrix):
                for c, count in enumerate(row):
                    if count:
                        colour = "white" if shares[r][c] > 0.5 else "black"
                        ax.text(c, r, str(count), ha="center", va="center", color=colour, fontsize=8)
        figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    return figure


def write_plot(path: str | Path, labels: Sequence[str], panels: Sequence[tuple[str, list[list[int]]]]) -> None:
    """The heat maps as a PNG at `path`; OSError when it cannot be written."""
    confusion_figure(labels, panels).savefig(path, format="png")
