"""Results as figures: curves over epochs or settings, and grids of image crops (matplotlib, Agg backend)."""
import contextlib
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

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


def smoothed(values: Sequence[float], window: int) -> np.ndarray:
    """The trailing mean of the last ``window`` values at each position (fewer at the start);
    NaN values (iterations without that value) are left out of the means and stay NaN."""
    y = np.asarray(values, dtype=np.float64)
    present = ~np.isnan(y)
    sums = np.concatenate([[0.0], np.cumsum(np.where(present, y, 0.0))])
    counts = np.concatenate([[0], np.cumsum(present)])
    ends = np.arange(1, len(y) + 1)
    starts = np.maximum(ends - window, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (sums[ends] - sums[starts]) / (counts[ends] - counts[starts])
    return np.where(present, means, np.nan)


def plot_losses(path: Union[str, Path], losses: Dict[str, Sequence[float]],
                phases: Sequence[tuple], *, title: str = "",
                accuracy: Optional[Sequence[float]] = None) -> None:
    """losses.png: each loss curve over the iterations 1..n of the run (NaN where a phase has no
    such term), smoothed over ``n // 50`` iterations, on a log axis, with a dashed line and the
    name at the first iteration of every phase (``phases``: (iteration, name), in order; the
    smoothing stays within a phase); with ``accuracy`` (fractions, NaN where absent) a second
    panel below shows it in %, smoothed the same way. Saved as PNG."""
    n = max(len(y) for y in losses.values())
    x = np.arange(1, n + 1)
    window = max(1, n // 50)
    bounds = [start - 1 for start, _ in phases if start > 1] + [n]
    points = dict(marker="o", markersize=2) if n <= 100 else {}     # a short run: each step seen

    def smooth(y: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
        """(x, y) smoothed within each phase, a NaN between phases (the line breaks there)."""
        y, first, parts = np.asarray(y, dtype=np.float64), 0, []
        for end in bounds:
            parts.append(smoothed(y[first:end], window))
            first = end
        cuts = [b for b in bounds[:-1] if b < len(y)]
        return (np.insert(x[:len(y)].astype(np.float64), cuts, np.nan),
                np.insert(np.concatenate(parts), cuts, np.nan))

    panels = 2 if accuracy is not None else 1
    with _figure(path, panels, 1, figsize=(7, 3 + 2 * panels), sharex=True, squeeze=False) as axes:
        top = axes[0][0]
        for name, y in losses.items():
            at, curve = smooth(y)
            curve[curve <= 0] = np.nan                       # not drawable on a log axis
            if not np.isnan(curve).all():
                top.plot(at, curve, label=name, linewidth=1.2, **points)
        top.set_yscale("log")
        top.set_ylabel(f"loss (mean of {window} it.)" if window > 1 else "loss")
        top.legend(fontsize=8)
        if title:
            top.set_title(title)
        if accuracy is not None:
            bottom = axes[1][0]
            at, curve = smooth(accuracy)
            bottom.plot(at, 100 * curve, color="tab:green", **points)
            bottom.set_ylabel("contrastive top-1 (%)")
            bottom.set_ylim(0, 100)
        for row in axes:
            ax = row[0]
            ax.grid(True, alpha=0.3)
            for start, name in phases:
                if start > 1:
                    ax.axvline(start - 0.5, color="grey", linestyle="--", linewidth=0.8)
        top.set_xlim(0.5, n + 0.5)
        for start, name in phases:
            label = top.annotate(name, (start - 0.5, 1), xycoords=("data", "axes fraction"),
                                 xytext=(3, -12), textcoords="offset points", fontsize=8,
                                 color="grey", bbox=dict(facecolor="white", edgecolor="none", pad=1))
            label.set_clip_on(True)           # inside the axes: a short phase's name is cut
            label.set_in_layout(False)
        axes[-1][0].set_xlabel("iteration")


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
