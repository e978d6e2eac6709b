"""Published blind-SR test protocols as data: lists of ``data.setting.Setting``s (their test-set
folders: ``data/testsets.py``).

Protocols (``protocol_settings(name, scale)`` lists their settings):

* ``cdsr`` -- CDSR Table 2, which uses MANet's test sets (``codes/prepare_testset.py``): 9
  anisotropic kernels per image, ``for sig1 in [1, 1+s, 1+2s]: for sig2 in range(1, 1+sig1, s):
  for theta in [0, pi/4]`` (skipping theta > 0 when sig1 == sig2); sig1/sig2 are variances. MANet
  convention (top-left (21-s+1) grid, replication padding, decimation) computed on [0,1] float32
  HR and quantised ``round(x*255)``. x2/x3/x4 noise 0, x4 also noise 15. Files
  ``{image}_{sig1:.1f}_{sig2:.1f}_{theta:.1f}.png``. Noise-free sets equal MANet's pixel for pixel;
  noisy ones use this project's own seeded noise, because MANet draws ``numpy.random.normal`` from
  one global sequence whose state depends on its loop order. Spatially variant modes 1-6
  (``data/spatially_variant.py``; the paper uses 1-5 on B100) go to ``HR_sv``/``LR_mode<k>_noise0``.
* ``dasr-iso`` -- DASR Table 2: isotropic std-devs x2 {0, .6, 1.2, 1.8}, x3 {0, .8, 1.6, 2.4},
  x4 {0, 1.2, 2.4, 3.6}, noise 0, DASR convention (reflect padding, bicubic with DASR's clamped
  borders, noise before rounding).
* ``dasr-aniso`` -- DASR Table 3 (x4): nine (lambda_1, lambda_2 std-devs, theta degrees)
  kernels, noise 0, 5 and 10, DASR convention.
* ``gaussian8`` -- IKC/DAN/DCLS/KDSR: 8 isotropic widths evenly spaced in [0.80, 1.60] (x2),
  [1.35, 2.40] (x3), [1.80, 3.20] (x4), noise 0. Convention ``ikc``: a centred 21x21 kernel with
  reflection padding (IKC's ``isotropic_gaussian_kernel`` and ``BatchBlur``, the same kernel as
  DASR's) then MATLAB bicubic with MATLAB's own mirrored borders (IKC/DAN generate these sets with
  MATLAB-exact ``imresize``; DASR's clamped variant would change the border rows by a few grey
  levels).

Noise is seeded from (seed, image name, setting label) (``data.setting.noise_seed``), so every
LR image is reproducible whatever the order or subset.
"""
import math
from typing import Optional, Sequence

import numpy as np

from data.degradation import make_fixed_degradation
from data.setting import (KERNEL_SIZE, IKCDegradation, Setting, SpatiallyVariantDegradation,
                          UnitRangeDegradation, base_params)
from data.spatially_variant import BLOCK, SV_MODES

__all__ = ["PROTOCOLS", "protocol_settings", "cdsr_setting"]

PROTOCOLS = ("cdsr", "dasr-iso", "dasr-aniso", "gaussian8")
SCALES = {"cdsr": (2, 3, 4), "dasr-iso": (2, 3, 4), "dasr-aniso": (4,), "gaussian8": (2, 3, 4)}
NOISE = {"cdsr": {2: (0.0,), 3: (0.0,), 4: (0.0, 15.0)}, "dasr-iso": {s: (0.0,) for s in (2, 3, 4)},
         "dasr-aniso": {4: (0.0, 5.0, 10.0)}, "gaussian8": {s: (0.0,) for s in (2, 3, 4)}}
DASR_ISO_SIGMAS = {2: (0.0, 0.6, 1.2, 1.8), 3: (0.0, 0.8, 1.6, 2.4), 4: (0.0, 1.2, 2.4, 3.6)}
DASR_ANISO_KERNELS = ((2.0, 0.2, 0.0), (2.0, 1.0, 10.0), (3.5, 1.5, 30.0), (3.5, 2.0, 45.0), (3.5, 2.0, 90.0),
                      (4.0, 1.5, 120.0), (4.0, 2.0, 135.0), (4.0, 3.0, 165.0), (4.0, 4.0, 180.0))
GAUSSIAN8_RANGE = {2: (0.80, 1.60), 3: (1.35, 2.40), 4: (1.80, 3.20)}
NOTES = {
    "cdsr": "MANet/CDSR convention on [0,1] float32 HR, quantised round(x*255); sig1/sig2 are "
            "variances, theta radians (file names print it with one decimal, pi/4 -> 0.8). Noise-free "
            "sets reproduce MANet's prepare_testset.py pixel for pixel. MANet's noisy sets draw "
            "numpy.random.normal from one global RNG sequence (seed 0) whose state depends on its loop "
            "order, so they cannot be reproduced: noise here is this project's own, N(0,1)*noise/255 "
            "in [0,1], seeded from (seed, image, setting), then clipped to [0,1].",
    "dasr-iso": "DASR convention: centred 21x21 kernel (std-dev), reflect padding, MATLAB bicubic with "
                "DASR's clamped borders, noise N(0,1)*noise added in 0..255 before round and clamp.",
    "dasr-aniso": "DASR convention: lambda_1/lambda_2 std-devs, theta degrees, centred 21x21 kernel, "
                  "reflect padding, MATLAB bicubic with DASR's clamped borders, noise N(0,1)*noise added in "
                  "0..255 before round and clamp, seeded from (seed, image, setting).",
    "gaussian8": "IKC convention: centred 21x21 isotropic kernel (std-dev), reflect padding, MATLAB "
                 "bicubic with MATLAB's mirrored borders, round and clamp.",
}


# ----------------------------------------------------------------------------- settings
def noise_tag(noise: float) -> str:
    return f"_n{noise:g}" if noise > 0 else ""


def _cdsr_kernels(scale: int) -> list[tuple[float, float, float]]:
    """MANet's 9 (sig1, sig2, theta radians) test kernels for ``scale``, in its loop order."""
    out = []
    for sig1 in (1, 1 + scale, 1 + 2 * scale):
        for sig2 in range(1, 1 + sig1, scale):
            for theta in (0.0, math.pi / 4):
                if not (theta > 0 and sig1 == sig2):
                    out.append((float(sig1), float(sig2), theta))
    return out


def cdsr_setting(sig1: float, sig2: float, theta: float, scale: int, noise: float) -> Setting:
    """MANet's test kernel (``sig1``, ``sig2`` variances, ``theta`` radians) at ``scale`` and
    ``noise``: label and file suffix ``{sig1:.1f}_{sig2:.1f}_{theta:.1f}`` (pi/4 prints 0.8)."""
    suffix = f"{sig1:.1f}_{sig2:.1f}_{theta:.1f}"
    params = {**base_params("manet", scale, noise, "replicate", "decimate"), "blur": "aniso",
              "sig1_variance": sig1, "sig2_variance": sig2, "theta_rad": theta, "domain": "unit"}
    kernel = make_fixed_degradation("manet", scale, "aniso", lambda_1=sig1, lambda_2=sig2, theta=theta,
                                    kernel_size=KERNEL_SIZE)
    return Setting(suffix + noise_tag(noise), params, UnitRangeDegradation(kernel, noise),
                   f"LR_mode0_noise{noise:g}", suffix)


def _settings_at(protocol: str, scale: int, noise: float) -> list[Setting]:
    folder, tag = f"LR_mode0_noise{noise:g}", noise_tag(noise)
    out = []
    if protocol == "cdsr":
        out = [cdsr_setting(sig1, sig2, theta, scale, noise) for sig1, sig2, theta in _cdsr_kernels(scale)]
    elif protocol == "dasr-iso":
        for sigma in DASR_ISO_SIGMAS[scale]:
            params = {**base_params("dasr", scale, noise, "reflect", "matlab_bicubic"),
                      "blur": "iso" if sigma > 0 else "none", "sigma_std": sigma}
            degradation = make_fixed_degradation("dasr", scale, "iso", sig=sigma, noise=noise,
                                                 kernel_size=KERNEL_SIZE)
            out.append(Setting(f"sig{sigma:.1f}{tag}", params, degradation, folder, f"sig{sigma:.1f}"))
    elif protocol == "dasr-aniso":
        for lambda_1, lambda_2, theta in DASR_ANISO_KERNELS:
            suffix = f"l{lambda_1:.1f}_l{lambda_2:.1f}_t{theta:.0f}"
            params = {**base_params("dasr", scale, noise, "reflect", "matlab_bicubic"), "blur": "aniso",
                      "lambda_1_std": lambda_1, "lambda_2_std": lambda_2, "theta_deg": theta}
            degradation = make_fixed_degradation("dasr", scale, "aniso", lambda_1=lambda_1,
                                                 lambda_2=lambda_2, theta=theta, noise=noise,
                                                 kernel_size=KERNEL_SIZE)
            out.append(Setting(suffix + tag, params, degradation, folder, suffix))
    else:
        for sigma in np.linspace(*GAUSSIAN8_RANGE[scale], 8):
            sigma = round(float(sigma), 10)  # 2.0, not 2.0000000000000004
            params = {**base_params("ikc", scale, noise, "reflect", "matlab_bicubic_mirror"), "blur": "iso",
                      "sigma_std": sigma}
            degradation = IKCDegradation(sigma, scale, KERNEL_SIZE, noise)
            out.append(Setting(f"sig{sigma:.2f}{tag}", params, degradation, folder, f"sig{sigma:.2f}"))
    return out


def _sv_setting(mode: int, scale: int, noise: float) -> Setting:
    params = {**base_params("manet-sv", scale, noise, "replicate", "decimate"), "blur": "aniso",
              "sv_mode": mode, "block": BLOCK, "domain": "unit"}
    degradation = SpatiallyVariantDegradation(mode, scale, KERNEL_SIZE, BLOCK, noise)
    return Setting(f"sv{mode}{noise_tag(noise)}", params, degradation, f"LR_mode{mode}_noise{noise:g}")


def _check_protocol(protocol: str, scale: int) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}'; choose one of: {', '.join(PROTOCOLS)}")
    if scale not in SCALES[protocol]:
        raise ValueError(f"protocol '{protocol}' is defined for scale {', '.join(map(str, SCALES[protocol]))}, "
                         f"not {scale}")


def protocol_settings(protocol: str, scale: int, noise: Optional[float] = None,
                      sv_modes: Sequence[int] = ()) -> list[Setting]:
    """The settings of ``protocol`` at ``scale``.

    noise None: every noise level the paper reports at that scale; a number: only that level
    (0..255 units, any value >= 0). sv_modes: spatially variant modes (cdsr only), noise 0
    unless ``noise`` is given."""
    _check_protocol(protocol, scale)
    if noise is not None and noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if sv_modes and protocol != "cdsr":
        raise ValueError(f"spatially variant modes exist only in the cdsr protocol, not '{protocol}'")
    for mode in sv_modes:
        if mode not in SV_MODES:
            raise ValueError(f"unknown spatially variant mode {mode}; choose from {', '.join(map(str, SV_MODES))}")
    levels = NOISE[protocol][scale] if noise is None else (float(noise),)
    settings = [s for level in levels for s in _settings_at(protocol, scale, level)]
    sv_noise = 0.0 if noise is None else float(noise)
    return settings + [_sv_setting(mode, scale, sv_noise) for mode in sv_modes]
