"""PSNR/SSIM: the one convention, checked against the authors' code's numbers."""
import json
import math

import numpy as np
import pytest
import torch

from data.metrics import psnr, ssim


def test_identical_images_give_inf_not_a_crash():
    image = torch.randint(0, 256, (3, 32, 32)).float()
    assert psnr(image, image, crop_border=2) == math.inf
    assert ssim(image, image, crop_border=2) == pytest.approx(1.0)


def test_uniform_error_of_one_grey_level():
    hr = torch.full((3, 40, 40), 100.0)
    assert psnr(hr + 1, hr, crop_border=4, y_channel=False) == pytest.approx(48.1308, abs=1e-4)
    # On Y a +1 step in R, G and B is a (65.481 + 128.553 + 24.966) / 255 step in luma.
    assert psnr(hr + 1, hr, crop_border=4) == pytest.approx(20 * math.log10(255 * 255 / 219), abs=1e-9)


def test_inputs_are_quantised_and_layouts_agree():
    hr = np.random.default_rng(0).integers(0, 256, (30, 30, 3)).astype(np.uint8)
    sr = hr.astype(np.float64) + 0.3  # rounds back to hr
    assert psnr(sr, hr, crop_border=2) == math.inf
    as_tensor = torch.from_numpy(hr).permute(2, 0, 1).float()
    noisy = as_tensor + torch.randn_like(as_tensor) * 5
    assert psnr(noisy[None], as_tensor, crop_border=2) == psnr(
        noisy.permute(1, 2, 0).numpy(), hr, crop_border=2)


def test_data_range_rescales_to_the_same_values():
    hr = torch.randint(0, 256, (3, 30, 30)).float()
    sr = (hr + torch.randn_like(hr) * 6).clamp(0, 255)
    for metric in (psnr, ssim):
        on_255 = metric(sr, hr, crop_border=2)
        assert metric(sr / 255, hr / 255, crop_border=2, data_range=1) == pytest.approx(on_255, abs=1e-12)
        assert metric(sr * 4, hr * 4, crop_border=2, data_range=1020) == pytest.approx(on_255, abs=1e-12)
    assert abs(psnr(sr / 255, hr / 255, crop_border=2) - psnr(sr, hr, crop_border=2)) > 10  # it matters
    with pytest.raises(ValueError, match="data_range must be positive"):
        psnr(sr, hr, crop_border=2, data_range=0)


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match="differ in size"):
        psnr(torch.zeros(3, 10, 10), torch.zeros(3, 12, 12), crop_border=0)
    with pytest.raises(ValueError, match="one image at a time"):
        psnr(torch.zeros(2, 3, 10, 10), torch.zeros(2, 3, 10, 10), crop_border=0)
    with pytest.raises(ValueError, match="leaves nothing"):
        psnr(torch.zeros(3, 4, 4), torch.zeros(3, 4, 4), crop_border=2)


def _golden_pairs(golden_dir):
    info = json.loads((golden_dir / "metrics.json").read_text())
    hr = torch.from_numpy(np.load(golden_dir / info["hr_file"])).float()
    for name, pair in info["pairs"].items():
        sr = torch.from_numpy(np.load(golden_dir / pair["sr_file"])).float()
        for key, values in pair["values"].items():
            yield name, int(key[1:]), sr, hr, values


def test_metrics_reproduce_the_authors_code(golden_dir):
    count = 0
    for name, scale, sr, hr, ref in _golden_pairs(golden_dir):
        ours_psnr = psnr(sr, hr, crop_border=scale)
        assert ours_psnr == pytest.approx(ref["cdsr_calc_psnr_benchmark"], abs=1e-4), (name, scale)
        assert ours_psnr == pytest.approx(ref["cdsr_calc_psnr2_benchmark"], abs=1e-6), (name, scale)
        assert ssim(sr, hr, crop_border=scale) == pytest.approx(ref["cdsr_calc_ssim_benchmark"], abs=1e-6)
        # DASR's non-benchmark PSNR is on RGB with a border of scale + 6.
        assert psnr(sr, hr, crop_border=scale + 6, y_channel=False) == pytest.approx(
            ref["dasr_calc_psnr_nobenchmark"], abs=1e-4)
        count += 1
    assert count == 12


def test_non_square_images(golden_dir):
    # The golden pairs are 72x96; a transposed pair scores the same PSNR.
    for _, scale, sr, hr, ref in _golden_pairs(golden_dir):
        assert psnr(sr.transpose(-1, -2), hr.transpose(-1, -2), crop_border=scale) == pytest.approx(
            ref["cdsr_calc_psnr2_benchmark"], abs=1e-6)
