"""One evaluation degradation, ``Setting``: parameters named with their units, and its seeded LR.

A setting's ``params`` use the field names of ``../shared/golden/degradation_index.json``, which
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
from typing import Optional

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


@dataclass(frozen=True)
class Setting:
    """One evaluation degradation (a row of a results table).

    label: short unique name (table rows, noise seeds); params: JSON-serialisable, unit-named
    (module docstring); folder: LR folder inside a test-set folder; suffix: an LR file is
    ``{image}_{suffix}.png`` (``{image}.png`` when empty)."""
    label: str
    params: dict = field(hash=False)
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
        if hr.dtype != np.uint8 or hr.ndim != 3 or hr.shape[2] != 3:
            raise ValueError(f"hr must be uint8 (H, W, 3), got {hr.dtype} {hr.shape}")
        generator = torch.Generator().manual_seed(noise_seed(seed, image_name, self.label))
        x = to_tensor(modcrop(hr, self.scale))[None]                      # (1, 3, H, W) 0..255
        return to_image(_lr(x, self.params, generator))


# ----------------------------------------------------------------------------- pipelines
def fixed_degradation(params: dict) -> FixedDegradation:
    """The ``FixedDegradation`` of unit-named ``params`` (convention dasr or manet; blur none,
    iso or aniso; kernel_size and downsample optional)."""
    convention, blur_type = params["convention"], params.get("blur", "none")
    sample_mode = "s-fold" if (convention == "dasr" and params.get("downsample") == "decimate") else "bicubic"
    common = dict(noise=float(params.get("noise", 0.0)), kernel_size=int(params.get("kernel_size", KERNEL_SIZE)),
                  sample_mode=sample_mode)
    if blur_type in ("none", "iso"):
        return make_fixed_degradation(convention, int(params["scale"]), "iso",
                                      sig=float(params.get("sigma_std", 0.0)), **common)
    if convention == "dasr":
        return make_fixed_degradation("dasr", int(params["scale"]), "aniso", lambda_1=params["lambda_1_std"],
                                      lambda_2=params["lambda_2_std"], theta=params["theta_deg"], **common)
    return make_fixed_degradation("manet", int(params["scale"]), "aniso", lambda_1=params["sig1_variance"],
                                  lambda_2=params["sig2_variance"], theta=params["theta_rad"], **common)


def _lr(hr: torch.Tensor, params: dict, generator: torch.Generator) -> torch.Tensor:
    """hr (1,3,H,W) float 0..255 -> lr (1,3,H/s,W/s) float 0..255, rounded."""
    convention = params["convention"]
    if convention == "manet-sv":
        kernel_map = sv_kernels(params["sv_mode"], hr.shape[-2], hr.shape[-1], params["scale"], generator,
                                size=params["kernel_size"], block=params["block"])
        x = decimate(spatially_variant_blur(hr / 255.0, kernel_map, params["block"]), params["scale"])
        return _unit_quantize(x, params, generator)
    if convention == "manet" and params.get("domain") == "unit":   # MANet's test sets, on [0,1]
        degradation = fixed_degradation({**params, "noise": 0.0})
        return _unit_quantize(degradation.lr_float(hr / 255.0), params, generator)
    if convention == "ikc":      # centred iso kernel, reflect padding, MATLAB bicubic (mirror borders)
        kernel = dasr_isotropic_kernel(torch.tensor([params["sigma_std"]]), params["kernel_size"])
        x = bicubic_downsample(blur(hr, kernel, "reflect"), params["scale"], border="mirror")
        if params["noise"] > 0:
            x = add_noise(x, torch.tensor([params["noise"]]), generator)
        return quantize(x)
    return fixed_degradation(params)(hr, generator)


def _unit_quantize(x: torch.Tensor, params: dict, generator: torch.Generator) -> torch.Tensor:
    """MANet's ending on a [0,1] LR: noise*N(0,1)/255, clip to [0,1], round(x*255)."""
    if params["noise"] > 0:
        x = add_noise(x, torch.tensor([params["noise"] / 255.0]), generator).clamp(0, 1)
    return (x * 255.0).round()


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
    return Setting(f"{convention} {what}" + (f" noise {noise:g}" if noise else ""), params)
