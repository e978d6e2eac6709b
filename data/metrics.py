"""Results: PSNR and SSIM of an SR image against its HR image, on the Y channel, the one
metric implementation, used by training validation, test.py and the reports.

Metric convention (CDSR's and DASR's test loops, stated once): both images are quantised
(clamped to 0..255 and rounded), converted to BT.601 luma ``Y = 16 + (65.481 R + 128.553 G +
24.966 B) / 255`` in float64, ``crop_border`` pixels are shaved from every side (the papers use
``crop_border = scale``), then PSNR is ``20 log10(255 / RMSE)`` and SSIM is the MATLAB-style
Gaussian SSIM (11x11 window, sigma 1.5, valid region, C1 = (0.01*255)^2, C2 = (0.03*255)^2).
"""
import math
from typing import Iterable, Union

import cv2
import numpy as np
import torch

Image = Union[torch.Tensor, np.ndarray]


def _as_hwc(image: Image, data_range: float) -> np.ndarray:
    """(3,H,W) / (1,3,H,W) tensor or (H,W,3) array in 0..data_range -> quantised float64
    (H,W,3) in 0..255."""
    if isinstance(image, torch.Tensor):
        if image.dim() == 4:
            if image.shape[0] != 1:
                raise ValueError(f"metrics take one image at a time, got a batch of {image.shape[0]}")
            image = image[0]
        image = image.detach().to("cpu", torch.float64).permute(1, 2, 0).numpy()
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"metrics expect RGB images, got shape {image.shape}")
    if data_range != 255:
        image = image * (255.0 / data_range)
    return np.round(np.clip(image, 0, 255))


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """(H,W,3) RGB in 0..255 -> (H,W) BT.601 luma in 16..235, float64."""
    return 16.0 + image @ np.array([65.481, 128.553, 24.966]) / 255.0


def _prepare(sr: Image, hr: Image, crop_border: int, y_channel: bool, data_range: float):
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    sr, hr = _as_hwc(sr, data_range), _as_hwc(hr, data_range)
    if sr.shape != hr.shape:
        raise ValueError(f"SR {sr.shape} and HR {hr.shape} differ in size")
    if y_channel:
        sr, hr = rgb_to_y(sr), rgb_to_y(hr)
    if crop_border > 0:
        sr = sr[crop_border:-crop_border, crop_border:-crop_border]
        hr = hr[crop_border:-crop_border, crop_border:-crop_border]
    if sr.size == 0:
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {hr.shape} image")
    return sr, hr


def psnr(sr: Image, hr: Image, *, crop_border: int, y_channel: bool = True,
         data_range: float = 255.0) -> float:
    """PSNR in dB (module docstring convention) of images in 0..``data_range`` (rescaled to
    0..255 first, so the value does not depend on the range). Identical images give ``inf``."""
    sr, hr = _prepare(sr, hr, crop_border, y_channel, data_range)
    mse = np.mean((sr - hr) ** 2)
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def _gaussian_window() -> np.ndarray:
    kernel = cv2.getGaussianKernel(11, 1.5)
    return kernel @ kernel.T


def _ssim_single(a: np.ndarray, b: np.ndarray) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    window = _gaussian_window()

    def filt(x: np.ndarray) -> np.ndarray:
        return cv2.filter2D(x, -1, window)[5:-5, 5:-5]

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a ** 2
    var_b = filt(b * b) - mu_b ** 2
    cov = filt(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim(sr: Image, hr: Image, *, crop_border: int, y_channel: bool = True,
         data_range: float = 255.0) -> float:
    """MATLAB-style SSIM (module docstring convention) of images in 0..``data_range`` (rescaled
    to 0..255 first); per-channel mean when not on Y."""
    sr, hr = _prepare(sr, hr, crop_border, y_channel, data_range)
    if min(sr.shape[:2]) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after cropping, got {sr.shape[:2]}")
    if y_channel:
        return _ssim_single(sr, hr)
    return float(np.mean([_ssim_single(sr[..., c], hr[..., c]) for c in range(3)]))


def mean_score(values: Iterable[float]) -> float:
    """Mean of per-image scores (NaN for none); an ``inf`` PSNR (an identical image) makes it ``inf``."""
    values = list(values)
    return float(np.mean(values)) if values else float("nan")
