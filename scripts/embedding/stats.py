"""What an embedding grid says: variance decomposition, linear probes, PCA (codebook usage:
``model.codebook_health``, which training also reports).

Everything takes float tensors on the CPU and returns plain Python numbers (JSON-ready). The grid
is balanced: every image is seen under every degradation, ``embeddings`` (I, G, E) for I images,
G degradations and E embedding dimensions.
"""
from typing import Dict, List, Optional

import torch
from torch import Tensor


def variance_shares(embeddings: Tensor) -> Dict[str, float]:
    """Two-way decomposition of the embedding's total variance over the (image x degradation)
    grid (a balanced two-way ANOVA without replication, summed over the E dimensions).

    embeddings (I, G, E), I, G >= 2. With m the grand mean, a_i = mean_g y[i,g] - m (image
    effect) and b_g = mean_i y[i,g] - m (degradation effect),
    ``sum ||y - m||^2 = G sum_i ||a_i||^2 + I sum_g ||b_g||^2 + sum ||y - m - a_i - b_g||^2``
    exactly. Returns the three parts as shares of the total (they sum to 1): ``degradation``,
    ``image`` and ``interaction`` (what neither explains alone: how the degradation's effect
    depends on the image), and ``total_variance`` (mean squared distance to m). Shares are None
    for an embedding that is constant over the grid (nothing to share out).
    """
    if embeddings.dim() != 3 or min(embeddings.shape[:2]) < 2:
        raise ValueError(f"embeddings must be (images >= 2, degradations >= 2, E), got "
                         f"{tuple(embeddings.shape)}")
    y = embeddings.double()
    n_images, n_degradations = y.shape[:2]
    grand = y.mean(dim=(0, 1))                                           # (E,)
    image_effect = y.mean(dim=1) - grand                                 # (I,E)
    degradation_effect = y.mean(dim=0) - grand                           # (G,E)
    residual = y - grand - image_effect[:, None] - degradation_effect[None]
    total = ((y - grand) ** 2).sum()
    parts = {"degradation": n_images * (degradation_effect ** 2).sum(),
             "image": n_degradations * (image_effect ** 2).sum(),
             "interaction": (residual ** 2).sum()}
    shares = {k: float(v / total) if total > 0 else None for k, v in parts.items()}
    shares["total_variance"] = float(total / (n_images * n_degradations))
    return shares


def _fit_lda_probe(x: Tensor, labels: Tensor, n_classes: int,
                   shrinkage: float) -> tuple[Tensor, Tensor]:
    """Linear discriminant analysis, closed form: x (N,E) float64, labels (N,) -> (weight (E,C),
    bias (C,)); the class scores ``x @ weight + bias`` are linear in x. The pooled within-class
    covariance S is shrunk towards a multiple of the identity, (1 - a) S + a tr(S)/E I, so it
    stays invertible with more dimensions than samples."""
    dim = x.shape[1]
    onehot = torch.nn.functional.one_hot(labels, n_classes).to(x.dtype)      # (N,C)
    counts = onehot.sum(0)                                                   # (C,)
    means = (onehot.T @ x) / counts.clamp_min(1)[:, None]                    # (C,E)
    within = x - means[labels]                                               # (N,E)
    covariance = within.T @ within / max(len(x) - n_classes, 1)              # (E,E)
    scale = torch.trace(covariance) / dim
    if scale <= 0:
        scale = torch.ones((), dtype=x.dtype)
    covariance = (1 - shrinkage) * covariance + shrinkage * scale * torch.eye(dim, dtype=x.dtype)
    weight = torch.linalg.solve(covariance, means.T)                         # (E,C)
    prior = torch.log(counts.clamp_min(1) / counts.sum())
    bias = -0.5 * (means * weight.T).sum(1) + prior
    return weight, bias


def group_folds(groups: Tensor, n_folds: int) -> List[Tensor]:
    """Boolean test masks (N,) of ``min(n_folds, #groups)`` folds; whole groups go to one fold,
    group rank r (sorted group ids) to fold r mod k. Deterministic."""
    unique = torch.unique(groups)
    k = min(n_folds, len(unique))
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 groups, got {len(unique)}")
    rank = torch.searchsorted(unique, groups)
    return [rank % k == fold for fold in range(k)]


def probe_accuracy(features: Tensor, labels: Tensor, groups: Tensor, *, n_folds: int = 5,
                   shrinkage: float = 0.2) -> Dict[str, object]:
    """Cross-validated accuracy of a linear probe predicting ``labels`` from features: linear
    discriminant analysis with a shrunk covariance (``_fit_lda_probe``), the class with the
    largest score wins.

    features (N,E), labels (N,) int class ids, groups (N,) int: whole groups are held out
    together (e.g. all pairs of one image when predicting the kernel, so the probe must
    generalise to unseen content). Features are standardised with the training fold's mean and
    std. Returns ``accuracy`` (over all held-out predictions), ``chance`` (the largest class
    frequency), ``per_fold`` accuracies and ``folds``.
    """
    x = features.double()
    labels = labels.long()
    n_classes = int(labels.max()) + 1
    correct = torch.zeros(len(labels), dtype=torch.bool)
    per_fold = []
    for test in group_folds(groups, n_folds):
        train = ~test
        mean, std = x[train].mean(0), x[train].std(0)
        std = torch.where(std > 1e-12 * (1 + mean.abs()), std, torch.ones_like(std))
        weight, bias = _fit_lda_probe((x[train] - mean) / std, labels[train], n_classes, shrinkage)
        predicted = (((x[test] - mean) / std) @ weight + bias).argmax(dim=1)
        correct[test] = predicted == labels[test]
        per_fold.append(float(correct[test].double().mean()))
    chance = float(torch.bincount(labels).max()) / len(labels)
    return {"accuracy": float(correct.double().mean()), "chance": chance,
            "per_fold": per_fold, "folds": len(per_fold)}


def pca_2d(features: Tensor) -> tuple[Tensor, List[Optional[float]]]:
    """features (N,E) -> (coordinates (N,2) on the two leading principal axes of the centred
    features, [share of the total variance each axis explains], None for constant features)."""
    x = features.double() - features.double().mean(dim=0)
    _, singular, vh = torch.linalg.svd(x, full_matrices=False)
    coordinates = x @ vh[:2].T
    total = float((singular ** 2).sum())
    explained = [float(s ** 2) / total if total > 0 else None for s in singular[:2]]
    if coordinates.shape[1] < 2:            # a one-dimensional embedding
        coordinates = torch.cat([coordinates, torch.zeros_like(coordinates)], dim=1)
        explained.append(0.0)
    return coordinates.float(), explained
