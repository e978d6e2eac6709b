"""The (HR image x degradation) grid an embedding is analysed on, and its embeddings.

Images are float (3,H,W) tensors in 0..255, RGB. A degradation is a kernel class (isotropic
widths and anisotropic shapes, in the convention's units) with a noise level; the LR of pair
(image i, degradation g) is seeded by (seed, i, g), so a grid is the same on every run.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from data.degradation import FixedDegradation, make_fixed_degradation
from data.degradation_ops import add_noise, quantize
from data.images import centre_crop, list_images, read_image, to_tensor
from data.sample_photos import held_out_photos, training_photos

DEFAULT_NOISE = (0.0, 10.0, 20.0)   # 0..255 units
DEFAULT_LR_SIZE = 48                 # LR side of every grid image (centre crops)


@dataclass(frozen=True)
class Kernel:
    """A blur kernel class. iso: ``sigma`` (std-dev, HR pixels); aniso: std-devs ``lambda_1``
    (along x at theta 0) and ``lambda_2`` and the angle ``theta`` in degrees."""
    blur_type: str
    sigma: float = 0.0
    lambda_1: float = 0.0
    lambda_2: float = 0.0
    theta: float = 0.0

    @property
    def label(self) -> str:
        if self.blur_type == "iso":
            return f"iso {self.sigma:g}"
        return f"aniso {self.lambda_1:g}x{self.lambda_2:g} {self.theta:g}deg"


@dataclass(frozen=True)
class GridDegradation:
    """One column of the grid: ``kernel`` (class ``kernel_index``) and a noise level."""
    kernel: Kernel
    kernel_index: int
    noise: float

    @property
    def label(self) -> str:
        return f"{self.kernel.label}, noise {self.noise:g}"

    def blur_downsample(self, convention: str, scale: int) -> FixedDegradation:
        """The noise-free part (blur and downsampling) in ``convention``'s units (manet's aniso
        takes variances and radians); ``degrade_grid`` adds the seeded noise."""
        k = self.kernel
        if k.blur_type == "iso":
            return make_fixed_degradation(convention, scale, "iso", sig=k.sigma)
        if convention == "dasr":
            extra = dict(lambda_1=k.lambda_1, lambda_2=k.lambda_2, theta=k.theta)
        else:
            extra = dict(lambda_1=k.lambda_1 ** 2, lambda_2=k.lambda_2 ** 2,
                         theta=torch.deg2rad(torch.tensor(k.theta)).item())
        return make_fixed_degradation(convention, scale, "aniso", **extra)


def default_kernels(scale: int) -> List[Kernel]:
    """Four isotropic widths (s/4 .. s HR pixels: inside the demo's x2 training range [0.2, 2]
    and the papers' x4 range [0.2, 4]) and one anisotropic shape (std-devs s/4 and s) at four
    angles, so orientation is a kernel property an embedding may or may not read."""
    iso = [Kernel("iso", sigma=k * scale / 4) for k in (1, 2, 3, 4)]
    aniso = [Kernel("aniso", lambda_1=scale, lambda_2=scale / 4, theta=t) for t in (0, 45, 90, 135)]
    return iso + aniso


def grid_degradations(kernels: Sequence[Kernel], noise_levels: Sequence[float]) -> List[GridDegradation]:
    """Every kernel at every noise level, kernel-major."""
    return [GridDegradation(k, i, float(n)) for i, k in enumerate(kernels) for n in noise_levels]


def load_images(hr_dir: Optional[Path], hr_size: int) -> Dict[str, Tensor]:
    """name -> (3,hr_size,hr_size) float 0..255 centre crops of the images in ``hr_dir``, or
    of the photos bundled with scikit-image/matplotlib (training and held-out) without it.
    Images smaller than the crop are skipped; ValueError if fewer than two remain."""
    if hr_dir is None:
        arrays = {**training_photos(), **held_out_photos()}
    else:
        arrays = {path.stem: read_image(path) for path in list_images(hr_dir)}
    images = {}
    for name, array in arrays.items():
        if min(array.shape[:2]) >= hr_size:
            images[name] = centre_crop(to_tensor(array), hr_size)
    if len(images) < 2:
        raise ValueError(f"need at least two images of at least {hr_size}x{hr_size} pixels; "
                         f"found {len(images)} of {len(arrays)} (use a smaller --lr_size)")
    return images


def degrade_grid(images: Sequence[Tensor], degradations: Sequence[GridDegradation], *,
                 convention: str, scale: int, seed: int = 0) -> Tensor:
    """LR of every pair: images I x (3,H,W) 0..255 -> (I, G, 3, H/s, W/s) rounded 0..255.
    Blur and downsampling run batched over the images; the noise of pair (i, g) comes from a
    generator seeded with (seed, i, g)."""
    hr = torch.stack(list(images))                                       # (I,3,H,W)
    columns = []
    for g, degradation in enumerate(degradations):
        clean = degradation.blur_downsample(convention, scale).lr_float(hr)   # (I,3,h,w)
        if degradation.noise > 0:
            level = torch.tensor([degradation.noise], dtype=torch.float64)
            clean = torch.cat([add_noise(clean[i:i + 1], level, torch.Generator().manual_seed(
                (seed * 1009 + i) * 1009 + g)) for i in range(len(hr))])
        columns.append(quantize(clean))
    return torch.stack(columns, dim=1)                                   # (I,G,3,h,w)


@torch.no_grad()
def embed_grid(embed: Callable[[Tensor], Tensor], lr: Tensor, batch: int = 64) -> Tensor:
    """lr (I, G, 3, h, w) -> embed(lr) (I, G, E), in batches of ``batch`` pairs."""
    flat = lr.reshape(-1, *lr.shape[2:])
    out = torch.cat([embed(flat[i:i + batch]) for i in range(0, len(flat), batch)])
    return out.reshape(*lr.shape[:2], -1).float()
