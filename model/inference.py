"""Inference policies: pure functions that take a blind-SR model and an LR batch.

The model contract (see ``model/__init__.py``): ``model.embed(lr) -> (B, D)`` and
``model.super_resolve(lr, embedding) -> (B, 3, s*h, s*w)``, LR in 0..255, SR in 0..255 units
(not clamped). Everything here runs on the input's device.
"""
from typing import Callable, Optional

import torch
from torch import nn

Forward = Callable[[torch.Tensor], torch.Tensor]


def self_ensemble(forward: Forward, lr: torch.Tensor) -> torch.Tensor:
    """x8 geometric self-ensemble: the mean of ``forward`` over the 8 flips/transposes of
    ``lr`` (B,3,h,w), each result mapped back. Each view runs the whole model, so the
    degradation embedding is re-estimated for the rotated blur, as in the authors' code."""
    outputs = []
    for transpose in (False, True):
        for flip_dims in ((), (-1,), (-2,), (-2, -1)):
            view = lr.transpose(-1, -2) if transpose else lr
            view = view.flip(flip_dims) if flip_dims else view
            out = forward(view)
            out = out.flip(flip_dims) if flip_dims else out
            outputs.append(out.transpose(-1, -2) if transpose else out)
    return torch.stack(outputs).mean(dim=0)


def tiled_super_resolve(model: nn.Module, lr: torch.Tensor, embedding: torch.Tensor, *,
                        tile: int, overlap: int) -> torch.Tensor:
    """Run only the SR network tile by tile with a fixed embedding; LR (B,3,h,w) -> SR.

    Each ``tile`` x ``tile`` LR tile is processed with ``overlap`` pixels of context on every side
    (clipped at the image border) and only its centre is kept, so a network whose receptive
    field is within ``overlap`` gives exactly the untiled result. Peak memory grows with
    ``(tile + 2 * overlap)^2`` instead of the image size.
    """
    if tile <= 0 or overlap < 0:
        raise ValueError(f"tile must be > 0 and overlap >= 0, got tile={tile}, overlap={overlap}")
    _, _, h, w = lr.shape
    scale = model.scale
    out = None
    for top in range(0, h, tile):
        for left in range(0, w, tile):
            y0, x0 = max(top - overlap, 0), max(left - overlap, 0)
            y1, x1 = min(top + tile + overlap, h), min(left + tile + overlap, w)
            sr = model.super_resolve(lr[:, :, y0:y1, x0:x1], embedding)
            if out is None:
                out = sr.new_empty(lr.shape[0], sr.shape[1], h * scale, w * scale)
            bottom, right = min(top + tile, h), min(left + tile, w)
            out[:, :, top * scale:bottom * scale, left * scale:right * scale] = sr[
                :, :, (top - y0) * scale:(bottom - y0) * scale, (left - x0) * scale:(right - x0) * scale]
    return out


def predict(model: nn.Module, lr: torch.Tensor, *, ensemble: bool = False,
            tile: Optional[int] = None, overlap: int = 32) -> torch.Tensor:
    """SR of ``lr`` (B,3,h,w) in 0..255 under the chosen policies (model in eval mode).

    With ``tile``, the embedding is estimated once on the whole image and only the SR network
    is tiled. With ``ensemble``, the x8 self-ensemble wraps whichever forward is used.
    """
    def forward(x: torch.Tensor) -> torch.Tensor:
        if tile is None or max(x.shape[-2:]) <= tile:
            return model(x)
        return tiled_super_resolve(model, x, model.embed(x), tile=tile, overlap=overlap)

    return self_ensemble(forward, lr) if ensemble else forward(lr)
