"""Spatially variant blur of CDSR's B100 test sets (``stable_batch_kernel_SV_mode``).

The HR image is split into 40x40 blocks (the last row/column of blocks may be partial); block
(h, w) of an H x W grid of blocks gets its own MANet anisotropic kernel (variances sig1/sig2,
theta radians, top-left (k-s+1) grid), with ``a = (2.5 - 0.175) s`` and ``b = 0.175 s``:

* mode 1: sig1 = a + b,          sig2 = a h/H + b, theta = 0
* mode 2: sig1 = a w/W + b,      sig2 = a h/H + b, theta = 0
* mode 3: sig1 = a + b,          sig2 = b,         theta = pi h/H
* mode 4: mode 2's sig1, sig2,                     theta = pi h/H
* mode 5: sig1, sig2 ~ U(b, a + b), theta ~ U(0, pi), independently per block
* mode 6: sig1 = a + b,          sig2 = b,         theta = pi/4 or 3pi/4 in a checkerboard

Every pixel is blurred with its block's kernel (replication padding at the image border, as
for the spatially invariant sets), then the caller decimates.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from data.kernels import manet_anisotropic_kernel

SV_MODES = (1, 2, 3, 4, 5, 6)
BLOCK = 40


def sv_kernel_params(mode: int, rows: int, cols: int, scale: int,
                     generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
    """Per-block parameters -> {'sig1', 'sig2', 'theta'}, each (rows, cols) float64 CPU.

    Mode 5 draws sig1, sig2, then theta (each rows*cols values) from ``generator``."""
    if mode not in SV_MODES:
        raise ValueError(f"unknown spatially variant mode {mode}; choose one of: {', '.join(map(str, SV_MODES))}")
    a, b = (2.5 - 0.175) * scale, 0.175 * scale
    h = torch.arange(rows, dtype=torch.float64).view(-1, 1).expand(rows, cols)
    w = torch.arange(cols, dtype=torch.float64).view(1, -1).expand(rows, cols)
    full = torch.full((rows, cols), a + b, dtype=torch.float64)
    if mode == 5:
        if generator is None:
            raise ValueError("spatially variant mode 5 is random and needs a torch.Generator")
        u = torch.rand(3, rows, cols, generator=generator, device=generator.device, dtype=torch.float64).cpu()
        return {"sig1": b + a * u[0], "sig2": b + a * u[1], "theta": math.pi * u[2]}
    if mode == 6:
        theta = torch.where((h + w) % 2 == 0, math.pi / 4, 3 * math.pi / 4)
        return {"sig1": full, "sig2": torch.full_like(full, b), "theta": theta}
    sig1 = a * w / cols + b if mode in (2, 4) else full
    sig2 = torch.full_like(full, b) if mode == 3 else a * h / rows + b
    theta = math.pi * h / rows if mode in (3, 4) else torch.zeros_like(full)
    return {"sig1": sig1, "sig2": sig2, "theta": theta}


def sv_kernels(mode: int, height: int, width: int, scale: int, generator: Optional[torch.Generator] = None,
               size: int = 21, block: int = BLOCK) -> Tensor:
    """Kernel map of an H x W image -> (ceil(H/block), ceil(W/block), size, size) float64."""
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    p = sv_kernel_params(mode, rows, cols, scale, generator)
    flat = manet_anisotropic_kernel(p["sig1"].reshape(-1), p["sig2"].reshape(-1), p["theta"].reshape(-1),
                                    scale, size)
    return flat.view(rows, cols, size, size)


def spatially_variant_blur(x: Tensor, kernel_map: Tensor, block: int = BLOCK,
                           pad_mode: str = "replicate") -> Tensor:
    """Blur each block x block region of x with its own kernel (correlation, like F.conv2d).

    x (..., H, W) float; kernel_map (ceil(H/block), ceil(W/block), k, k), k odd
    -> same shape, dtype and device as x."""
    height, width = x.shape[-2:]
    rows, cols, size = kernel_map.shape[0], kernel_map.shape[1], kernel_map.shape[-1]
    if (rows, cols) != (math.ceil(height / block), math.ceil(width / block)):
        raise ValueError(f"kernel map {rows}x{cols} does not tile a {height}x{width} image in {block}px blocks")
    pad, tile = size // 2, block + 2 * (size // 2)
    planes = x.reshape(1, -1, height, width)
    n = planes.shape[1]
    # replicate-padding past the bottom/right edge gives the same values a pad of k//2 would
    padded = F.pad(planes, (pad, pad + cols * block - width, pad, pad + rows * block - height), mode=pad_mode)
    tiles = padded[0].unfold(1, tile, block).unfold(2, tile, block)          # (n, rows, cols, t, t)
    tiles = tiles.permute(1, 2, 0, 3, 4).reshape(1, rows * cols * n, tile, tile)
    weight = kernel_map.to(device=x.device, dtype=x.dtype).reshape(rows * cols, 1, size, size)
    out = F.conv2d(tiles, weight.repeat_interleave(n, dim=0), groups=rows * cols * n)
    out = out.view(rows, cols, n, block, block).permute(2, 0, 3, 1, 4).reshape(n, rows * block, cols * block)
    return out[:, :height, :width].reshape(x.shape)
