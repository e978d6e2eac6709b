"""Results as figures: curves over epochs or settings, and grids of image crops (matplotlib, Agg backend)."""
from pathlib import Path
from typing import Dict, Sequence, Union

import numpy as np


def plot_curves(path: Union[str, Path], x: Sequence[float], curves: Dict[str, Sequence[float]],
                *, xlabel: str, ylabel: str, title: str = "") -> None:
    """Line plot of several named curves over a shared x axis, saved as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, y in curves.items():
        ax.plot(list(x)[:len(y)], list(y), marker="o", markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_metric_by_setting(path: Union[str, Path], labels: Sequence[str],
                           curves: Dict[str, Sequence[float]], *, x: Union[Sequence[float], None] = None,
                           xlabel: str, ylabel: str, title: str = "") -> None:
    """One curve per name over the settings ``labels``, saved as PNG. ``x``: numeric positions
    (e.g. kernel widths); None spaces the settings evenly and writes their labels as ticks."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = list(x) if x is not None else list(range(len(labels)))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(labels)), 4))
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
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_image_grid(path: Union[str, Path], images: Sequence[Sequence[np.ndarray]],
                    titles: Sequence[Sequence[str]], *, row_labels: Sequence[str] = ()) -> None:
    """A grid of uint8 (H,W,3) RGB images (rows x columns, e.g. bicubic | SR | HR crops per
    setting) with a title per image and a label per row, saved as PNG (nearest-neighbour
    display, so pixels stay visible)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(images), max(len(row) for row in images)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.4 * n_cols, 2.5 * n_rows), squeeze=False)
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
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
