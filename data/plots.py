"""Results as figures: curves over epochs or settings, and grids of image crops (matplotlib, Agg backend)."""
import contextlib
from pathlib import Path
from typing import Any, Dict, Iterator, Sequence, Union

import numpy as np


@contextlib.contextmanager
def _figure(path: Union[str, Path], n_rows: int = 1, n_cols: int = 1,
            **subplots: Any) -> Iterator[Any]:
    """The axes of ``plt.subplots(n_rows, n_cols, **subplots)`` on the Agg backend (no
    display needed); once the block has drawn, the figure is laid out tightly and saved as a PNG
    at 100 dpi to ``path`` (its folder made when missing). The figure is closed either way."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n_rows, n_cols, **subplots)
    try:
        yield axes
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def plot_curves(path: Union[str, Path], x: Sequence[float], curves: Dict[str, Sequence[float]],
                *, xlabel: str, ylabel: str, title: str = "") -> None:
    """Line plot of several named curves over a shared x axis, saved as PNG."""
    with _figure(path, figsize=(6, 4)) as ax:
        for label, y in curves.items():
            ax.plot(list(x)[:len(y)], list(y), marker="o", markersize=3, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()


def plot_metric_by_setting(path: Union[str, Path], labels: Sequence[str],
                           curves: Dict[str, Sequence[float]], *, x: Union[Sequence[float], None] = None,
                           xlabel: str, ylabel: str, title: str = "") -> None:
    """One curve per name over the settings ``labels``, saved as PNG. ``x``: numeric positions
    (e.g. kernel widths); None spaces the settings evenly and writes their labels as ticks."""
    positions = list(x) if x is not None else list(range(len(labels)))
    with _figure(path, figsize=(max(6.0, 0.6 * len(labels)), 4)) as ax:
        for name, y in curves.items():
            ax.plot(positions[:len(y)], list(y), marker="o", markersize=3, label=name)
        ax.set_xticks(positions)
        ax.set_xticklabels(list(labels), rotation=0 if x is not None else 45,
                           ha="center" if x is not None else "right", fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)


def plot_image_grid(path: Union[str, Path], images: Sequence[Sequence[np.ndarray]],
                    titles: Sequence[Sequence[str]], *, row_labels: Sequence[str] = ()) -> None:
    """A grid of uint8 (H,W,3) RGB images (rows x columns, e.g. bicubic | SR | HR crops per
    setting) with a title per image and a label per row, saved as PNG (nearest-neighbour
    display, so pixels stay visible)."""
    n_rows, n_cols = len(images), max(len(row) for row in images)
    with _figure(path, n_rows, n_cols, figsize=(2.4 * n_cols, 2.5 * n_rows), squeeze=False) as axes:
        for r, row in enumerate(images):
            for c in range(n_cols):
                ax = axes[r][c]
                ax.set_xticks([])
                ax.set_yticks([])
                if c < len(row):
                    ax.imshow(row[c], interpolation="nearest")
                    ax.set_title(titles[r][c], fontsize=8)
                else:
                    ax.axis("off")
            if r < len(row_labels):
                axes[r][0].set_ylabel(row_labels[r], fontsize=8)
