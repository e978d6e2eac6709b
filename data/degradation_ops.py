"""Batched degradation operations of the two conventions (``dasr``, ``manet``).

Per-image kernels from a convention's parameters (``build_kernels``), blur, blur + the
convention's downsampling, Gaussian noise and rounding, applied batched on the images' device
(float tensors in 0..255, RGB; one kernel and noise level per image ``b``). The conventions'
units and sampling rules are described in ``data/degradation.py``, which composes these
operations into the training and evaluation degradations.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from data import kernels as K
from data.resize import bicubic_downsample, decimate

CONVENTIONS = ("dasr", "manet")
BLUR_TYPES = {"iso_gaussian": "iso", "iso": "iso", "aniso_gaussian": "aniso", "aniso": "aniso"}
SAMPLE_MODES = {"dasr": ("bicubic", "s-fold"), "manet": ("bicubic",)}
PADDING = {"dasr": "reflect", "manet": "replicate"}

Params = dict[str, Tensor]  # name -> (B,) float64 CPU tensor; theta in radians


def blur(x: Tensor, kernels: Tensor, pad_mode: str, stride: int = 1) -> Tensor:
    """Correlate every channel of image b (and of all its patches) with kernel b.

    x (B, C, H, W) or (B, N, C, H, W) float; kernels (B, k, k), k odd; pad_mode 'reflect' or
    'replicate' (k//2 on each side) -> same shape, dtype and device as x. ``stride`` s computes
    only pixel (0, 0) of every s x s block: (..., ceil(H/s), ceil(W/s)), the same values.
    """
    batch, size = x.shape[0], kernels.shape[-1]
    planes = x.reshape(1, -1, *x.shape[-2:])                        # (1, B*N*C, H, W)
    if pad_mode == "reflect" and min(x.shape[-2:]) <= size // 2:
        raise ValueError(f"image {tuple(x.shape[-2:])} is too small for reflection padding by {size // 2}")
    weight = kernels.to(device=x.device, dtype=x.dtype)
    weight = weight.repeat_interleave(planes.shape[1] // batch, dim=0).unsqueeze(1)
    padded = F.pad(planes, [size // 2] * 4, mode=pad_mode)
    out = F.conv2d(padded, weight, groups=planes.shape[1], stride=stride)
    return out.reshape(*x.shape[:-2], *out.shape[-2:])


def add_noise(x: Tensor, level: Tensor, generator: torch.Generator) -> Tensor:
    """x (B, ...) + level[b] * N(0, 1), the standard normals drawn on the generator's device.

    level (B,) in the units of x -> same shape/device as x (new tensor)."""
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    scale = level.to(device=x.device, dtype=x.dtype).view(-1, *[1] * (x.dim() - 1))
    return x + noise.to(x.device) * scale


def quantize(x: Tensor) -> Tensor:
    """Round half-to-even, then clamp to [0, 255] (float, same shape)."""
    return x.round().clamp(0, 255)


def blur_downsample(x: Tensor, kernels: Optional[Tensor], scale: int, convention: str,
                    sample_mode: str) -> Tensor:
    """Blur (unless kernels is None), then the convention's downsampling.

    x (B, [N,] C, H, W) float, kernels (B, k, k) -> (B, [N,] C, H//s, W//s). Decimation is done
    by a strided convolution (identical values, s^2 times less work)."""
    bicubic = convention == "dasr" and sample_mode == "bicubic"
    if kernels is None:
        return bicubic_downsample(x, scale, border="clamp") if bicubic else decimate(x, scale)
    if bicubic:
        return bicubic_downsample(blur(x, kernels, PADDING[convention]), scale, border="clamp")
    lr = blur(x, kernels, PADDING[convention], stride=scale)
    return lr[..., :x.shape[-2] // scale, :x.shape[-1] // scale]


def build_kernels(convention: str, blur_type: str, params: Params, scale: int, size: int = 21) -> Tensor:
    """Kernels of a convention from its parameters (units: see ``data/degradation.py``).

    params: dasr iso {'sigma'}, dasr aniso {'lambda_1', 'lambda_2', 'theta'}, manet iso
    {'sigma'}, manet aniso {'sig1', 'sig2', 'theta'}, each (B,), theta in radians
    -> (B, size, size) float64 summing to 1."""
    blur_type = canonical_blur_type(blur_type)
    if convention == "dasr":
        if blur_type == "iso":
            return K.dasr_isotropic_kernel(params["sigma"], size)
        return K.dasr_anisotropic_kernel(params["lambda_1"], params["lambda_2"], params["theta"], size)
    if blur_type == "iso":
        return K.manet_isotropic_kernel(params["sigma"], scale, size)
    return K.manet_anisotropic_kernel(params["sig1"], params["sig2"], params["theta"], scale, size)


def canonical_blur_type(blur_type: str) -> str:
    """'iso_gaussian'/'iso' -> 'iso', 'aniso_gaussian'/'aniso' -> 'aniso'; ValueError otherwise."""
    if blur_type not in BLUR_TYPES:
        raise ValueError(f"unknown blur type '{blur_type}'; choose one of: {', '.join(BLUR_TYPES)}")
    return BLUR_TYPES[blur_type]
