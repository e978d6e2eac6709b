"""One embedding analysis: embed the grid, decompose, probe, and write JSON, PNGs and a table.

``analyse`` takes any ``embed`` function (LR (B,3,h,w) 0..255 -> (B,E)), so a model's encoder and
a hand-built one are analysed the same way. The question it answers is CDSR's: is the embedding
degradation-oriented (its variance follows the degradation, a probe reads the kernel on unseen
images) or content-aware (it also varies with the image and identifies it on unseen
degradations)?
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

import utility
from model.codebook_health import codebook_usage

from .grid import GridDegradation, degrade_grid, embed_grid
from .plots import plot_codebook_usage, scatter_2d
from .stats import pca_2d, probe_accuracy, variance_shares

Embed = Callable[[Tensor], Tensor]


@dataclass
class Analysis:
    """``summary``: the JSON-ready numbers; ``embeddings`` (I,G,E); ``pca`` (I*G,2) their
    projection on the two leading principal axes; ``attention`` (I,G,K) codebook attention or
    None; the grid's ``image_names`` and ``degradations``."""
    summary: Dict[str, object]
    embeddings: Tensor
    pca: Tensor
    attention: Optional[Tensor]
    image_names: List[str]
    degradations: List[GridDegradation]


def analyse(embed: Embed, images: Dict[str, Tensor], degradations: Sequence[GridDegradation], *,
            convention: str, scale: int, seed: int = 0, n_folds: int = 5,
            attention: Optional[Embed] = None) -> Analysis:
    """Embed every (image, degradation) pair and measure what the embedding follows.

    images: name -> (3,H,W) 0..255 HR, all the same size; ``attention`` (optional): LR ->
    (B,K) codebook attention. The kernel probe is cross-validated over images (it must read the
    kernel on images it never saw), the image probe over degradations (it must recognise an
    image under degradations it never saw).
    """
    names = list(images)
    lr = degrade_grid([images[n] for n in names], degradations, convention=convention,
                      scale=scale, seed=seed)                            # (I,G,3,h,w)
    embeddings = embed_grid(embed, lr)                                   # (I,G,E)
    n_images, n_degradations = embeddings.shape[:2]
    flat = embeddings.reshape(n_images * n_degradations, -1)
    image_ids = torch.arange(n_images).repeat_interleave(n_degradations)
    degradation_ids = torch.arange(n_degradations).repeat(n_images)
    kernel_ids = torch.tensor([d.kernel_index for d in degradations]).repeat(n_images)
    summary: Dict[str, object] = {
        "grid": {"images": names, "degradations": [d.label for d in degradations],
                 "kernels": list(dict.fromkeys(d.kernel.label for d in degradations)),
                 "noise_levels": sorted({d.noise for d in degradations}),
                 "convention": convention, "scale": scale, "seed": seed,
                 "lr_size": list(lr.shape[-2:]), "pairs": n_images * n_degradations,
                 "embedding_dim": flat.shape[1]},
        "variance": variance_shares(embeddings),
        "probes": {
            "kernel": {**probe_accuracy(flat, kernel_ids, image_ids, n_folds=n_folds),
                       "held_out": "images"},
            "image": {**probe_accuracy(flat, image_ids, degradation_ids, n_folds=n_folds),
                      "held_out": "degradations"},
        },
    }
    points, summary["pca_explained"] = pca_2d(flat)
    codebook = None
    if attention is not None:
        codebook = embed_grid(attention, lr)                             # (I,G,K)
        summary["codebook"] = codebook_usage(codebook.reshape(len(flat), -1))
    return Analysis(summary, embeddings, points, codebook, names, list(degradations))


def table(summary: Dict[str, object]) -> str:
    """The headline numbers as a short plain-text table."""
    v, p = summary["variance"], summary["probes"]
    lines = [f"{'embedding variance (mean sq. distance to the mean)':<52}"
             f"{v['total_variance']:>8.3g}"]
    if v["degradation"] is None:
        lines.append("the embedding is constant over the grid: it carries no information")
    else:
        lines += [f"{'share explained by the degradation':<52}{v['degradation']:>8.1%}",
                  f"{'                  by the image':<52}{v['image']:>8.1%}",
                  f"{'                  by their interaction':<52}{v['interaction']:>8.1%}"]
    for what, held_out in (("kernel", "unseen images"), ("image", "unseen degradations")):
        probe = p[what]
        lines.append(f"{f'linear probe: {what} class on {held_out}':<52}{probe['accuracy']:>8.1%}"
                     f"   (chance {probe['chance']:.1%})")
    if "codebook" in summary:
        c = summary["codebook"]
        lines.append(f"{'codebook: rows carrying {:.0%} of the attention'.format(c['mass_share']):<52}"
                     f"{c['rows_for_mass']:>8d}   of {c['rows']}")
        lines.append(f"{'codebook: entropy of the mean attention (nats)':<52}{c['entropy']:>8.2f}"
                     f"   (max {c['max_entropy']:.2f}, perplexity {c['perplexity']:.1f})")
    return "\n".join(lines)


def write_outputs(analysis: Analysis, out_dir: Path, title: str) -> List[Path]:
    """embedding.json, embedding_by_degradation.png, embedding_by_image.png and (with a codebook)
    codebook_usage.png in ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = analysis.summary
    points = analysis.pca
    axes = [f"PC{i + 1}" + (f" ({share:.0%} of the variance)" if share is not None else "")
            for i, share in enumerate(summary["pca_explained"])]
    n_images, n_degradations = analysis.embeddings.shape[:2]
    degradations = analysis.degradations
    kernels = summary["grid"]["kernels"]
    noises = summary["grid"]["noise_levels"]
    v = summary["variance"]
    heading = (f"{title}: constant embedding" if v["degradation"] is None else
               f"{title}: degradation {v['degradation']:.0%}, image {v['image']:.0%}, "
               f"interaction {v['interaction']:.0%} of the variance")
    written = [out_dir / "embedding.json", out_dir / "embedding_by_degradation.png",
               out_dir / "embedding_by_image.png"]
    utility.write_json(written[0], summary)
    scatter_2d(written[1], points, [d.kernel_index for d in degradations] * n_images, kernels,
               marker_ids=[noises.index(d.noise) for d in degradations] * n_images,
               marker_names=[f"noise {n:g}" for n in noises], title=heading, axis_labels=axes)
    scatter_2d(written[2], points, [i for i in range(n_images) for _ in range(n_degradations)],
               analysis.image_names, title=heading, axis_labels=axes)
    if "codebook" in summary:
        c = summary["codebook"]
        path = out_dir / "codebook_usage.png"
        plot_codebook_usage(path, c["mass"], c["mass_share"], c["rows_for_mass"],
                            f"{title}: codebook attention over {summary['grid']['pairs']} pairs, "
                            f"perplexity {c['perplexity']:.1f} of {c['rows']} rows")
        written.append(path)
    return written
