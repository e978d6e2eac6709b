"""Integer-factor resizing: MATLAB-style bicubic down- and upscaling, and direct decimation.

``bicubic_downsample`` is MATLAB ``imresize(x, 1/s, 'bicubic')`` (a = -0.5, kernel widened to
4*s taps for antialiasing, weights normalised), computed separably, rows first then columns, as
a weighted gather-and-sum in the input's dtype. Two border rules:

* ``'clamp'``: indices outside the image are clamped to the edge (edge replication). This is
  what DASR's ``utils/util.py`` ``bicubic`` does; it differs from MATLAB at the first/last LR
  row and column (two at x4) by a few grey levels.
* ``'mirror'``: MATLAB's own symmetric indices (``[0..n-1, n-1..0]`` repeated), as in MATLAB,
  IKC/DAN ``imresize`` and BasicSR ``imresize``.

LR pixel ``i`` is centred on HR coordinate ``s*i + (s-1)/2`` (0-based). Output size is
``floor(H/s) x floor(W/s)``.

``bicubic_upscale`` is MATLAB ``imresize(x, s, 'bicubic')``: the same cubic (a = -0.5) without
widening, 4 taps per output pixel, MATLAB's mirrored borders. It is the "Bicubic" row of the
SR papers (EDSR, RCAN, DASR Table 2 at sigma 0), and the baseline every result here is printed
beside.
"""
import torch
from torch import Tensor

BORDERS = ("clamp", "mirror")


def _cubic(t: Tensor) -> Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    a = t.abs()
    near = 1.5 * a ** 3 - 2.5 * a ** 2 + 1
    far = -0.5 * a ** 3 + 2.5 * a ** 2 - 4 * a + 2
    return torch.where(a <= 1, near, torch.where(a <= 2, far, torch.zeros_like(a)))


def bicubic_taps(in_size: int, scale: int, border: str = "clamp") -> tuple[Tensor, Tensor]:
    """Weights and source indices of a 1/scale antialiased bicubic resize along one axis.

    -> weights (out, P) float32 rows summing to 1, indices (out, P) int64 in [0, in_size),
    with ``out = in_size // scale``. Taps whose weight is 0 for every output are dropped.
    The weights follow MATLAB's formulas with the factor ``1/scale``, evaluated in float32 as
    DASR does: this reproduces DASR bit for bit at x3, where float64 weights would differ by up
    to 7e-8 (5e-5 grey levels in the output).
    """
    if border not in BORDERS:
        raise ValueError(f"unknown border '{border}'; choose one of: {', '.join(BORDERS)}")
    if scale < 1 or in_size < scale:
        raise ValueError(f"cannot downsample {in_size} pixels by {scale}")
    factor = 1 / scale
    position = torch.arange(1, in_size // scale + 1, dtype=torch.float32)          # 1-based LR
    centre = position / factor + 0.5 * (1 - 1 / factor)                            # 1-based HR
    first = torch.floor(centre - 2 * scale)
    indices = first[:, None] + torch.arange(4 * scale + 2, dtype=torch.float32)
    weights = factor * _cubic((centre[:, None] - indices) * factor)
    weights = weights / weights.sum(dim=1, keepdim=True)
    used = (weights != 0).any(dim=0)
    weights, indices = weights[:, used], indices[:, used].long() - 1                # 0-based
    if border == "clamp":
        indices = indices.clamp(0, in_size - 1)
    else:
        indices = _mirrored(indices, in_size)
    return weights, indices


def _mirrored(indices: Tensor, size: int) -> Tensor:
    """MATLAB's symmetric border: indices of ``[0..n-1, n-1..0]`` repeated."""
    period = torch.cat([torch.arange(size), torch.arange(size - 1, -1, -1)])
    return period[indices % (2 * size)]


def upscale_taps(in_size: int, scale: int) -> tuple[Tensor, Tensor]:
    """Weights and source indices of MATLAB's x``scale`` bicubic upscaling along one axis.

    -> weights (scale*in_size, P) float64 rows summing to 1, indices (scale*in_size, P) int64
    in [0, in_size), mirrored at the borders. HR pixel ``j`` (0-based) reads the LR around
    ``(j + 0.5) / scale - 0.5``.
    """
    if scale < 1 or in_size < 1:
        raise ValueError(f"cannot upscale {in_size} pixels by {scale}")
    position = torch.arange(1, in_size * scale + 1, dtype=torch.float64)          # 1-based HR
    centre = position / scale + 0.5 * (1 - 1 / scale)                              # 1-based LR
    indices = torch.floor(centre - 2)[:, None] + torch.arange(6, dtype=torch.float64)
    weights = _cubic(centre[:, None] - indices)
    weights = weights / weights.sum(dim=1, keepdim=True)
    used = (weights != 0).any(dim=0)
    return weights[:, used], _mirrored(indices[:, used].long() - 1, in_size)


def _resize_rows(x: Tensor, weights: Tensor, indices: Tensor) -> Tensor:
    """(..., H, W) -> (..., out, W): sum over taps of weight * gathered row."""
    gathered = x[..., indices.to(x.device), :]                      # (..., out, P, W)
    return (gathered * weights.to(x)[:, :, None]).sum(dim=-2)


def bicubic_downsample(x: Tensor, scale: int, border: str = "clamp") -> Tensor:
    """MATLAB-style bicubic downsampling by an integer factor.

    x (..., H, W) float, any range -> (..., H//scale, W//scale), same dtype and device, not
    rounded or clamped (bicubic overshoots slightly below 0 / above 255).
    """
    weights, indices = bicubic_taps(x.shape[-2], scale, border)
    x = _resize_rows(x, weights, indices)
    weights, indices = bicubic_taps(x.shape[-1], scale, border)
    return _resize_rows(x.transpose(-1, -2), weights, indices).transpose(-1, -2)


def bicubic_upscale(x: Tensor, scale: int) -> Tensor:
    """MATLAB ``imresize(x, scale, 'bicubic')``: x (..., h, w) float, any range ->
    (..., s*h, s*w), same dtype and device, not rounded or clamped."""
    weights, indices = upscale_taps(x.shape[-2], scale)
    x = _resize_rows(x, weights, indices)
    weights, indices = upscale_taps(x.shape[-1], scale)
    return _resize_rows(x.transpose(-1, -2), weights, indices).transpose(-1, -2)


def decimate(x: Tensor, scale: int) -> Tensor:
    """Keep pixel (0, 0) of every scale x scale block: x (..., H, W) -> (..., H//s, W//s).

    This is MANet/CDSR's downsampling (which CDSR calls 'bicubic') and DASR's 's-fold'."""
    h, w = x.shape[-2] // scale * scale, x.shape[-1] // scale * scale
    return x[..., :h:scale, :w:scale]
