"""One evaluation degradation, ``Setting``: the degradation that makes its LR, parameters named
with their units, and its seeded LR.

A setting holds its degradation as an object (``FixedDegradation`` for the dasr and manet
conventions, the classes below for the protocols' other pipelines), made once with the setting;
its ``params`` describe it for tables and manifests and are never turned back into one. They use the field names of ``../shared/golden/degradation_index.json``, which
say their units: ``sigma_std`` (isotropic std-dev), ``lambda_1_std``/``lambda_2_std`` with
``theta_deg`` (DASR's anisotropic std-devs and degrees), ``sig1_variance``/``sig2_variance`` with
``theta_rad`` (MANet's covariance eigenvalues and radians), ``noise`` (std-dev in 0..255 units),
and ``convention`` (dasr, manet, manet-sv, ikc), ``scale``, ``blur`` (none, iso, aniso),
``kernel_size``, ``pad``, ``downsample``; MANet's test sets, computed on [0,1] HR, add
``domain: "unit"``. The published protocols' settings are listed by ``data/protocols.py``; the
fixed degradation of the command-line flags is ``fixed_setting``.

Noise is drawn from a generator seeded by ``noise_seed(seed, image name, setting label)``, so an
LR image is the same whatever the order or subset of images evaluated.
"""
import hashlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from data.degradation import FixedDegradation, make_fixed_degradation
from data.degradation_ops import PADDING, add_noise, blur, quantize
from data.images import to_image, to_tensor
from data.kernels import dasr_isotropic_kernel
from data.resize import bicubic_downsample, decimate
from data.spatially_variant import spatially_variant_blur, sv_kernels

KERNEL_SIZE = 21


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
    """(H,W,C) -> (H - H % scale, W - W % scale, C), cropping bottom/right."""
    h, w = image.shape[:2]
    return image[:h - h % scale, :w - w % scale]


def noise_seed(seed: int, image_name: str, label: str) -> int:
    """The seed of the noise (and random kernels) of one LR image: a hash of (seed, image, setting)."""
    digest = hashlib.sha256(f"{seed}|{image_name}|{label}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


# ----------------------------------------------------------------------------- degradations
# Each turns hr (1,3,H,W) float 0..255 into the rounded lr (1,3,H/s,W/s) float 0..255, drawing
# noise (and random kernels) from ``generator``. ``FixedDegradation`` (data/degradation.py) is the
# dasr and manet conventions in 0..255; the three below are the protocols' other pipelines.

@dataclass(frozen=True)
class UnitRangeDegradation:
    """MANet's test sets: ``blur_downsample`` (noise-free) on the HR scaled to [0,1], then
    noise * N(0,1) / 255, clip to [0,1], round(x*255)."""
    blur_downsample: FixedDegradation
    noise: float

    def __call__(self, hr: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return _unit_quantize(self.blur_downsample.lr_float(hr / 255.0), self.noise, generator)


@dataclass(frozen=True)
class SpatiallyVariantDegradation:
    """MANet's spatially variant test sets (mode 1-6, ``data.spatially_variant``): a kernel per
    ``block`` x ``block`` HR block on [0,1], decimation, then MANet's unit-range ending."""
    mode: int
    scale: int
    kernel_size: int
    block: int
    noise: float

    def __call__(self, hr: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        kernel_map = sv_kernels(self.mode, hr.shape[-2], hr.shape[-1], self.scale, generator,
                                size=self.kernel_size, block=self.block)
        x = decimate(spatially_variant_blur(hr / 255.0, kernel_map, self.block), self.scale)
        return _unit_quantize(x, self.noise, generator)


@dataclass(frozen=True)
class IKCDegradation:
    """IKC/DAN's Gaussian8 sets: a centred isotropic kernel (std-dev ``sigma``), reflection
    padding, MATLAB bicubic with MATLAB's mirrored borders, noise in 0..255, round and clamp."""
    sigma: float
    scale: int
    kernel_size: int
    noise: float

    def __call__(self, hr: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        kernel = dasr_isotropic_kernel(torch.tensor([self.sigma]), self.kernel_size)
        x = bicubic_downsample(blur(hr, kernel, "reflect"), self.scale, border="mirror")
        if self.noise > 0:
            x = add_noise(x, torch.tensor([self.noise]), generator)
        return quantize(x)


def _unit_quantize(x: torch.Tensor, noise: float, generator: torch.Generator) -> torch.Tensor:
    """MANet's ending on a [0,1] LR: noise*N(0,1)/255, clip to [0,1], round(x*255)."""
    if noise > 0:
        x = add_noise(x, torch.tensor([noise / 255.0]), generator).clamp(0, 1)
    return (x * 255.0).round()


Degradation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


# ----------------------------------------------------------------------------- the setting
@dataclass(frozen=True)
class Setting:
    """One evaluation degradation (a row of a results table).

    label: short unique name (table rows, noise seeds); params: JSON-serialisable, unit-named
    description (module docstring), made with the degradation; degradation: what makes the LR
    (None for a setting read from files, whose LR images exist already); folder: LR folder
    inside a test-set folder; suffix: an LR file is ``{image}_{suffix}.png`` (``{image}.png``
    when empty)."""
    label: str
    params: dict = field(hash=False)
    degradation: Optional[Degradation] = field(default=None, hash=False, compare=False)
    folder: str = "LR_mode0_noise0"
    suffix: str = ""

    @property
    def scale(self) -> int:
        return int(self.params["scale"])

    @property
    def noise(self) -> float:
        """Noise std-dev in 0..255 units."""
        return float(self.params.get("noise", 0.0))

    @property
    def hr_folder(self) -> str:
        return "HR_sv" if self.params.get("sv_mode") else "HR_si"

    def lr_name(self, image_name: str) -> str:
        return f"{image_name}_{self.suffix}.png" if self.suffix else f"{image_name}.png"

    def degrade(self, hr: np.ndarray, *, seed: int, image_name: str = "") -> np.ndarray:
        """hr uint8 (H, W, 3) RGB -> lr uint8 (H//s, W//s, 3) of ``modcrop(hr, s)`` (the HR to
        score against); random parts use ``noise_seed(seed, image_name, label)``."""
        if self.degradation is None:
            raise ValueError(f"setting '{self.label}' was read from a test-set folder and has no "
                             "degradation to make LR images with")
        if hr.dtype != np.uint8 or hr.ndim != 3 or hr.shape[2] != 3:
            raise ValueError(f"hr must be uint8 (H, W, 3), got {hr.dtype} {hr.shape}")
        generator = torch.Generator().manual_seed(noise_seed(seed, image_name, self.label))
        x = to_tensor(modcrop(hr, self.scale))[None]                      # (1, 3, H, W) 0..255
        return to_image(self.degradation(x, generator))


# ----------------------------------------------------------------------------- settings
def base_params(convention: str, scale: int, noise: float, pad: str, downsample: str) -> dict:
    return {"convention": convention, "scale": scale, "kernel_size": KERNEL_SIZE, "pad": pad,
            "downsample": downsample, "noise": noise}


def fixed_setting(convention: str, scale: int, blur_type: str, *, sig: float,
                  lambda_1: Optional[float], lambda_2: Optional[float], theta: float, noise: float,
                  kernel_size: int = KERNEL_SIZE, sample_mode: str = "bicubic") -> Setting:
    """The one fixed degradation of ``make_fixed_degradation``'s arguments (the command line's
    ``--degradation --blur_type --sig --lambda_1 --lambda_2 --theta --noise --blur_kernel
    --sample_mode``, in the convention's units: dasr std-devs and degrees, manet variances and
    radians) as a Setting with unit-named parameters. ValueError for impossible values."""
    degradation = make_fixed_degradation(convention, scale, blur_type, sig=sig, lambda_1=lambda_1,
                                         lambda_2=lambda_2, theta=theta, noise=noise,
                                         kernel_size=kernel_size, sample_mode=sample_mode)
    decimated = convention == "manet" or sample_mode == "s-fold"
    params = {**base_params(convention, scale, float(noise), PADDING[convention],
                            "decimate" if decimated else "matlab_bicubic"), "kernel_size": kernel_size}
    if degradation.blur_type == "iso":
        params.update(blur="iso" if sig > 0 else "none", sigma_std=float(sig))
        what = f"iso std {sig:g}"
    elif convention == "dasr":
        params.update(blur="aniso", lambda_1_std=float(lambda_1), lambda_2_std=float(lambda_2),
                      theta_deg=float(theta))
        what = f"aniso std {lambda_1:g}/{lambda_2:g} theta {theta:g} deg"
    else:
        params.update(blur="aniso", sig1_variance=float(lambda_1), sig2_variance=float(lambda_2),
                      theta_rad=float(theta))
        what = f"aniso var {lambda_1:g}/{lambda_2:g} theta {theta:g} rad"
    what += " s-fold" if convention == "dasr" and decimated else ""
    return Setting(f"{convention} {what}" + (f" noise {noise:g}" if noise else ""), params, degradation)
