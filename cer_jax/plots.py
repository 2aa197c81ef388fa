"""Matplotlib figures shared by the trainer (TensorBoard images) and the fusion report (PNGs).

Figures are built with matplotlib's object-oriented API on their own Agg canvas: no pyplot, no
global backend, so importing or calling this module never changes a notebook's matplotlib state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure on its own Agg canvas (renders to PNG or pixels without any backend)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


# Two lines: one line is taller than a figure of a few classes, which cut it at both ends.
COLOUR_LABEL = "colour: share of the true class (row-normalised)\ncells: counts"


def confusion_matrix_figure(
    confusion: np.ndarray, class_names: Sequence[str], title: str = ""
) -> Figure:
    """Confusion matrix, rows = true class: each cell's count, coloured by its share of the row.
    The colour bar says so: an unnamed 0..1 scale beside counts left the reader to guess."""
    confusion = np.asarray(confusion, dtype=np.int64)
    totals = np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    normalised = confusion / totals
    # The colour bar is as tall as the matrix, which the slanted class names below it shorten:
    # it must still hold its label (in a figure of few classes, or of long names, it was cut).
    longest = max((len(str(name)) for name in class_names), default=0)
    size = max(2.0 + 0.55 * len(class_names), 5.5 + 0.06 * longest)
    fig = new_figure((size + 1.5, size))
    ax = fig.subplots()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(confusion.shape[0]):
        for j in range(confusion.shape[1]):
            colour = "white" if normalised[i, j] > 0.5 else "black"
            ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7, color=colour)
    colour_bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colour_bar.set_label(COLOUR_LABEL)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """RGB uint8 [H, W, 3] pixels of a figure (for CLU's write_images)."""
    canvas = FigureCanvasAgg(fig) if not isinstance(fig.canvas, FigureCanvasAgg) else fig.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def confusion_matrix_image(
    confusion: np.ndarray, class_names: Sequence[str], title: str = ""
) -> np.ndarray:
    return figure_to_array(confusion_matrix_figure(confusion, class_names, title))
