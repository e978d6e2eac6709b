"""Figures of an embedding analysis: 2-D PCA scatter plots and codebook usage (PNG)."""
from pathlib import Path
from typing import Sequence

import numpy as np
from torch import Tensor

MARKERS = "osD^v<>ph*"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def scatter_2d(path: Path, points: Tensor, colour_ids: Sequence[int], colour_names: Sequence[str],
               *, marker_ids: Sequence[int] = (), marker_names: Sequence[str] = (),
               title: str, axis_labels: Sequence[str]) -> None:
    """points (N,2) coloured by ``colour_ids`` (legend ``colour_names``), optionally shaped by
    ``marker_ids`` (legend ``marker_names``), saved as PNG."""
    plt = _pyplot()
    xy = points.numpy()
    colours = np.asarray(colour_ids)
    markers = np.asarray(marker_ids) if len(marker_ids) else np.zeros(len(xy), dtype=int)
    cmap = plt.get_cmap("tab10" if len(colour_names) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for c, name in enumerate(colour_names):
        for m in np.unique(markers):
            chosen = (colours == c) & (markers == m)
            ax.scatter(xy[chosen, 0], xy[chosen, 1], s=18, color=cmap(c % cmap.N),
                       marker=MARKERS[m % len(MARKERS)], alpha=0.8, linewidths=0,
                       label=name if m == markers.min() else None)
    for m, name in enumerate(marker_names):    # shape legend in grey
        ax.scatter([], [], s=18, color="grey", marker=MARKERS[m % len(MARKERS)], label=name)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_codebook_usage(path: Path, mass: Sequence[float], mass_share: float, rows_for_mass: int,
                        title: str) -> None:
    """Attention mass per codebook row, sorted, with its cumulative sum and the rows carrying
    ``mass_share`` of it, saved as PNG."""
    plt = _pyplot()
    ordered = np.sort(np.asarray(mass))[::-1]
    ranks = np.arange(1, len(ordered) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(ranks, ordered, width=1.0, color="tab:blue")
    ax.set_xlabel("codebook row, by attention mass (rank)")
    ax.set_ylabel("mean attention mass")
    ax.set_xlim(0.5, len(ordered) + 0.5)
    twin = ax.twinx()
    twin.plot(ranks, np.cumsum(ordered), color="tab:red")
    twin.axhline(mass_share, color="tab:red", linestyle=":", linewidth=1)
    twin.axvline(rows_for_mass, color="tab:red", linestyle=":", linewidth=1)
    twin.set_ylim(0, 1.02)
    twin.set_ylabel(f"cumulative mass ({rows_for_mass} rows reach {mass_share:.0%})", color="tab:red")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
