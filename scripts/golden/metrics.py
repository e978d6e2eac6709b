"""``data.metrics.psnr`` / ``ssim`` against the authors' metric values (golden ``metrics.json``).

Each recorded value that our one metric convention can express is checked; the rest (DASR's
SSIM, whose Y is scaled by 256/255) are not ours to reproduce and are left out. Scale ``s`` is
read from the ``x<s>`` keys; "nobenchmark" means a border of ``s + 6``.
"""
import json
from pathlib import Path

import numpy as np
import torch

from data.metrics import psnr, ssim

from .common import GoldenResult, compare_abs

PSNR_TORCH_ATOL = 1e-4   # dB: the authors' calc_psnr is float32 torch
FLOAT64_ATOL = 1e-6      # dB / SSIM units: calc_psnr2 and calc_ssim are float64 numpy

# recorded key -> (our metric on (sr, hr, scale), tolerance, unit)
REPRODUCED = {
    "cdsr_calc_psnr_benchmark": (lambda sr, hr, s: psnr(sr, hr, crop_border=s), PSNR_TORCH_ATOL, "dB"),
    "dasr_calc_psnr_benchmark": (lambda sr, hr, s: psnr(sr, hr, crop_border=s), PSNR_TORCH_ATOL, "dB"),
    "cdsr_calc_psnr2_benchmark": (lambda sr, hr, s: psnr(sr, hr, crop_border=s), FLOAT64_ATOL, "dB"),
    "dasr_calc_psnr_nobenchmark": (lambda sr, hr, s: psnr(sr, hr, crop_border=s + 6, y_channel=False),
                                   PSNR_TORCH_ATOL, "dB"),
    "cdsr_calc_ssim_benchmark": (lambda sr, hr, s: ssim(sr, hr, crop_border=s), FLOAT64_ATOL, "SSIM"),
    "cdsr_calc_ssim_nobenchmark": (lambda sr, hr, s: ssim(sr, hr, crop_border=s + 6), FLOAT64_ATOL, "SSIM"),
}


def _image(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.load(path)).float()


def check_metric_goldens(golden_dir: Path) -> list[GoldenResult]:
    """Every pair, scale and reproducible value of ``golden_dir/metrics.json``."""
    golden_dir = Path(golden_dir)
    info = json.loads((golden_dir / "metrics.json").read_text())
    hr = _image(golden_dir / info["hr_file"])
    results = []
    for pair, entry in info["pairs"].items():
        sr = _image(golden_dir / entry["sr_file"])
        for scale_key, values in entry["values"].items():
            scale = int(scale_key.lstrip("x"))
            for key, reference in values.items():
                if key in REPRODUCED:
                    metric, tolerance, unit = REPRODUCED[key]
                    result = compare_abs(f"{pair}/{scale_key}/{key}", metric(sr, hr, scale),
                                         reference, tolerance)
                    results.append(result._replace(unit=unit))
    return results
