"""Seeded synthetic degradations for blind SR: blur -> downsample -> noise -> round and clamp.

Images are float tensors in 0..255, RGB, on any device; one degradation per image ``b`` is
shared by all of its ``N`` patches (the authors' contract). Random parameters are drawn from an
explicit ``torch.Generator`` (on the generator's device, normally the CPU) and applied batched on
the images' device. Kernel maths is float64, cast to the images' dtype for the convolution.
The batched operations (kernels, blur, downsampling, noise, rounding) are in
``data/degradation_ops.py``; this module draws their parameters and composes them.

Two conventions, named after the code they reproduce (see ``../shared/golden/README.md``):

* ``dasr`` (DASR ``utils/util.py``): std-dev parameters, centred k x k kernels, theta in
  **degrees** for fixed degradations (radians when sampled), reflection padding, MATLAB-style
  bicubic downsampling with DASR's clamped borders (``sample_mode='bicubic'``) or pixel 0 of each
  s x s block (``'s-fold'``). Training: iso sigma ~ U(sig_min, sig_max); aniso theta ~ U(0, pi),
  lambda_1, lambda_2 ~ U(lambda_min, lambda_max) independently. Noise level ~ U(0, noise) per
  image (exactly ``noise`` when fixed), Gaussian, added before rounding.
* ``manet`` (CDSR ``utils/util_ma.py``, MANet's kernels): iso sigma is a std-dev, aniso
  ``sig1``/``sig2`` are **variances**, theta in radians, kernels on a (k-s+1) grid in the top-left
  corner, replication padding, direct decimation ``x[..., ::s, ::s]`` (which CDSR's code calls
  'bicubic'; its 's-fold' is broken for 0..255 data and not offered). Training: iso sigma ~
  U[sig_min, sig_max); aniso sig1 ~ U[sig_min, sig_max), sig2 ~ U[sig_min, sig1), theta ~
  U[0, pi) (``lambda_*`` are ignored, as in CDSR). Noise level ~ U(0, noise) times a mask that
  is 0 for 20 % of the images.
"""
import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor

from data.degradation_ops import (CONVENTIONS, PADDING, SAMPLE_MODES, Params, add_noise, blur,
                                  blur_downsample, build_kernels, canonical_blur_type, quantize)

MANET_CLEAN_RATE = 0.2  # CDSR util_ma: fraction of training images left noise-free


# ----------------------------------------------------------------------------- validation
def _check(convention: str, scale: int, blur_type: str, noise: float, kernel_size: int,
           sample_mode: str) -> str:
    """Validate the arguments shared by both entry points; returns 'iso' or 'aniso'."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown degradation convention '{convention}'; choose one of: {', '.join(CONVENTIONS)}")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if convention == "manet" and scale not in (2, 3, 4):
        raise ValueError(f"the manet convention's kernels are defined for scale 2, 3 or 4, got {scale}")
    if sample_mode not in SAMPLE_MODES[convention]:
        raise ValueError(f"sample_mode '{sample_mode}' is not available for the {convention} convention; "
                         f"choose one of: {', '.join(SAMPLE_MODES[convention])}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    return canonical_blur_type(blur_type)


def _as_float(hr: Tensor) -> Tensor:
    """Integer images (e.g. uint8 from the loader) become float32; float ones are kept."""
    return hr if hr.is_floating_point() else hr.float()


def _uniform(batch: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    """(batch,) float64 CPU samples of U[low, high)."""
    u = torch.rand(batch, generator=generator, device=generator.device, dtype=torch.float64).cpu()
    return low + (high - low) * u


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainingDegradation:
    """Random degradation for training, one draw per image; see ``make_training_degradation``."""
    convention: str
    scale: int
    blur_type: str      # 'iso' or 'aniso'
    sig_min: float
    sig_max: float
    lambda_min: float
    lambda_max: float
    noise: float
    kernel_size: int = 21
    sample_mode: str = "bicubic"

    def sample(self, batch: int, generator: torch.Generator) -> Params:
        """Draw the parameters of ``batch`` images -> {name: (B,) float64 CPU}; theta in radians,
        'noise' is each image's noise std-dev in 0..255 units."""
        params: Params = {}
        if self.blur_type == "iso":
            params["sigma"] = _uniform(batch, self.sig_min, self.sig_max, generator)
        elif self.convention == "dasr":
            params["theta"] = _uniform(batch, 0.0, math.pi, generator)
            params["lambda_1"] = _uniform(batch, self.lambda_min, self.lambda_max, generator)
            params["lambda_2"] = _uniform(batch, self.lambda_min, self.lambda_max, generator)
        else:
            params["sig1"] = _uniform(batch, self.sig_min, self.sig_max, generator)
            params["sig2"] = self.sig_min + (params["sig1"] - self.sig_min) * _uniform(batch, 0.0, 1.0, generator)
            params["theta"] = _uniform(batch, 0.0, math.pi, generator)
        params["noise"] = _uniform(batch, 0.0, self.noise, generator)
        if self.convention == "manet":
            params["noise"] = params["noise"] * (_uniform(batch, 0.0, 1.0, generator) >= MANET_CLEAN_RATE)
        return params

    def noise_maps(self, level: Tensor, shape: tuple, generator: torch.Generator) -> Optional[Tensor]:
        """level (B,) -> level[b] * N(0, 1) of ``shape`` (B, ...) float32 on the generator's
        device, or None when the degradation adds no noise."""
        if self.noise == 0:
            return None
        normal = torch.randn(shape, generator=generator, device=generator.device)
        return normal * level.to(device=normal.device, dtype=normal.dtype).view(-1, *[1] * (len(shape) - 1))

    def draw(self, generator: torch.Generator, lr_shape: tuple) -> Dict[str, Tensor]:
        """One image's degradation, drawn on the CPU (e.g. in a data-loading worker):
        ``{"params": {name: 0-dim float64}, "noise": float32 lr_shape (N, 3, h, w)}`` ("noise"
        only when noise is added). Collated over a batch, it is what ``apply`` takes."""
        params = {name: value[0] for name, value in self.sample(1, generator).items()}
        draw = {"params": params}
        noise = self.noise_maps(params["noise"][None], (1, *lr_shape), generator)
        if noise is not None:
            draw["noise"] = noise[0]
        return draw

    def apply(self, hr: Tensor, params: Params, noise: Optional[Tensor] = None) -> Tensor:
        """hr (B, N, 3, H, W) float 0..255 on any device, params {name: (B,)}, noise (B, N, 3,
        H//s, W//s) float32 (already scaled by each image's level; any device) or None -> lr
        (B, N, 3, H//s, W//s) rounded and clamped to 0..255, on hr's device."""
        kernels = build_kernels(self.convention, self.blur_type, params, self.scale, self.kernel_size)
        x = blur_downsample(hr, kernels, self.scale, self.convention, self.sample_mode)
        if noise is not None:
            x = x + noise.to(device=x.device, dtype=x.dtype)
        return quantize(x)

    def __call__(self, hr: Tensor, generator: torch.Generator) -> Tensor:
        """hr (B, N, 3, H, W) float (or uint8) 0..255, any device -> lr (B, N, 3, H//s, W//s)
        float, rounded and clamped to 0..255, same device; the N patches of an image share its
        draw, all drawn from one generator (``draw`` draws per image instead)."""
        if hr.dim() != 5:
            raise ValueError(f"training hr must be (B, N, C, H, W), got shape {tuple(hr.shape)}")
        params = self.sample(hr.shape[0], generator)
        lr_shape = (*hr.shape[:-2], hr.shape[-2] // self.scale, hr.shape[-1] // self.scale)
        return self.apply(_as_float(hr), params, self.noise_maps(params["noise"], lr_shape, generator))


def make_training_degradation(convention: str, scale: int, blur_type: str, *, sig_min: float,
                              sig_max: float, lambda_min: float, lambda_max: float, noise: float,
                              kernel_size: int = 21, sample_mode: str = "bicubic") -> TrainingDegradation:
    """Random training degradation of the authors' code for ``convention`` ('dasr' or 'manet').

    blur_type: 'iso_gaussian'/'iso' or 'aniso_gaussian'/'aniso'. sig_* are std-devs for iso
    (both conventions) and variances for manet aniso; lambda_* are dasr aniso std-devs (ignored
    by manet); noise is the largest noise std-dev (0..255 units). Returns a callable
    ``(hr (B,N,3,H,W) float 0..255, generator) -> lr (B,N,3,H//s,W//s)`` rounded to 0..255.
    """
    blur_type = _check(convention, scale, blur_type, noise, kernel_size, sample_mode)
    if not 0 <= sig_min <= sig_max:
        raise ValueError(f"need 0 <= sig_min <= sig_max, got sig_min={sig_min}, sig_max={sig_max}")
    if lambda_min > lambda_max:
        raise ValueError(f"lambda_min {lambda_min} is larger than lambda_max {lambda_max}")
    if blur_type == "aniso" and convention == "dasr" and lambda_min <= 0:
        raise ValueError(f"dasr anisotropic training needs lambda_min > 0, got {lambda_min}")
    if blur_type == "aniso" and convention == "manet" and sig_min <= 0:
        raise ValueError(f"manet anisotropic training needs sig_min > 0 (a variance), got {sig_min}")
    return TrainingDegradation(convention, scale, blur_type, float(sig_min), float(sig_max),
                               float(lambda_min), float(lambda_max), float(noise), kernel_size, sample_mode)


# ----------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class FixedDegradation:
    """One fixed degradation for evaluation; see ``make_fixed_degradation``."""
    convention: str
    scale: int
    blur_type: str      # 'iso' or 'aniso'
    sig: float = 0.0
    lambda_1: Optional[float] = None
    lambda_2: Optional[float] = None
    theta: float = 0.0  # convention units: dasr degrees, manet radians
    noise: float = 0.0
    kernel_size: int = 21
    sample_mode: str = "bicubic"

    def params(self) -> Params:
        """The kernel parameters as (1,) tensors in ``build_kernels`` units (theta radians)."""
        if self.blur_type == "iso":
            return {"sigma": torch.tensor([self.sig], dtype=torch.float64)}
        theta = math.radians(self.theta) if self.convention == "dasr" else self.theta
        names = ("lambda_1", "lambda_2") if self.convention == "dasr" else ("sig1", "sig2")
        values = (self.lambda_1, self.lambda_2, theta)
        return {n: torch.tensor([v], dtype=torch.float64) for n, v in zip(names + ("theta",), values)}

    def kernel(self) -> Optional[Tensor]:
        """(1, k, k) float64, or None when there is no blur (iso with sig == 0)."""
        if self.blur_type == "iso" and self.sig == 0 and self.convention == "dasr":
            return None
        return build_kernels(self.convention, self.blur_type, self.params(), self.scale, self.kernel_size)

    def blurred(self, hr: Tensor) -> Tensor:
        """hr (B, [N,] C, H, W) float -> the blurred HR, same shape (no downsampling)."""
        kernel = self.kernel()
        if kernel is None:
            return hr
        return blur(hr, kernel.expand(hr.shape[0], -1, -1), PADDING[self.convention])

    def lr_float(self, hr: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """hr (B, [N,] C, H, W) float 0..255 -> LR before rounding and clamping (noise included)."""
        kernel = self.kernel()
        kernels = None if kernel is None else kernel.expand(hr.shape[0], -1, -1)
        x = blur_downsample(hr, kernels, self.scale, self.convention, self.sample_mode)
        if self.noise > 0:
            if generator is None:
                raise ValueError(f"noise {self.noise} needs a torch.Generator")
            x = add_noise(x, torch.full((x.shape[0],), self.noise, dtype=torch.float64), generator)
        return x

    def __call__(self, hr: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """hr (B, 3, H, W) float (or uint8) 0..255, any device -> lr (B, 3, H//s, W//s) float,
        rounded and clamped to 0..255, same device."""
        if hr.dim() != 4:
            raise ValueError(f"evaluation hr must be (B, C, H, W), got shape {tuple(hr.shape)}")
        return quantize(self.lr_float(_as_float(hr), generator))


def make_fixed_degradation(convention: str, scale: int, blur_type: str, *, sig: float = 0.0,
                           lambda_1: Optional[float] = None, lambda_2: Optional[float] = None,
                           theta: float = 0.0, noise: float = 0.0, kernel_size: int = 21,
                           sample_mode: str = "bicubic") -> FixedDegradation:
    """One fixed degradation for evaluation, parameters in the convention's own units.

    dasr: sig, lambda_1, lambda_2 std-devs, theta degrees; manet: sig std-dev, lambda_1/lambda_2
    the variances sig1/sig2, theta radians. Returns a callable ``(hr (B,3,H,W) float 0..255,
    generator or None) -> lr (B,3,H//s,W//s)`` rounded to 0..255; noise > 0 needs the generator.
    """
    blur_type = _check(convention, scale, blur_type, noise, kernel_size, sample_mode)
    if sig < 0:
        raise ValueError(f"sig must be >= 0, got {sig}")
    if blur_type == "aniso":
        if lambda_1 is None or lambda_2 is None:
            raise ValueError("an anisotropic degradation needs lambda_1 and lambda_2")
        if lambda_1 <= 0 or lambda_2 <= 0:
            raise ValueError(f"lambda_1 and lambda_2 must be > 0, got {lambda_1}, {lambda_2}")
        lambda_1, lambda_2 = float(lambda_1), float(lambda_2)
    return FixedDegradation(convention, scale, blur_type, float(sig), lambda_1, lambda_2,
                            float(theta), float(noise), kernel_size, sample_mode)
