"""Behaviour of the degradation building blocks and of the two training/evaluation entry points."""
import math

import numpy as np
import pytest
import torch

from data import kernels as K
from data.degradation import make_fixed_degradation, make_training_degradation
from data.degradation_ops import blur
from data.resize import bicubic_downsample, bicubic_taps, bicubic_upscale, decimate
from data.spatially_variant import spatially_variant_blur, sv_kernel_params, sv_kernels

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _hr(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)).float()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("kernel", [
    K.dasr_isotropic_kernel(torch.tensor([0.0, 0.7, 2.6])),
    K.dasr_anisotropic_kernel(torch.tensor([0.2, 3.0]), torch.tensor([4.0, 1.0]), torch.tensor([0.3, 2.0])),
    K.manet_isotropic_kernel(torch.tensor([0.0, 1.2, 4.0]), scale=3),
    K.manet_anisotropic_kernel(torch.tensor([4.0, 9.0]), torch.tensor([1.0, 9.0]), torch.tensor([0.7, 0.0]), scale=2),
])
def test_kernels_sum_to_one_and_are_nonnegative(kernel):
    assert kernel.shape[-2:] == (21, 21) and kernel.dtype == torch.float64
    torch.testing.assert_close(kernel.sum(dim=(-2, -1)), torch.ones(len(kernel), dtype=torch.float64))
    assert (kernel >= 0).all()


def test_isotropic_kernels_are_symmetric():
    dasr = K.dasr_isotropic_kernel(torch.tensor([1.7]))[0]
    for k in (dasr, dasr.T, dasr.flip(0), dasr.flip(1)):
        torch.testing.assert_close(k, dasr)
    manet = K.manet_isotropic_kernel(torch.tensor([1.7]), scale=4)[0, :18, :18]   # the (21-4+1) grid
    for k in (manet.T, manet.flip(0), manet.flip(1)):
        torch.testing.assert_close(k, manet)


def _moments(kernel: torch.Tensor) -> tuple[float, float, float, float, float]:
    y, x = torch.meshgrid(torch.arange(21.0, dtype=torch.float64), torch.arange(21.0, dtype=torch.float64),
                          indexing="ij")
    cx, cy = (kernel * x).sum(), (kernel * y).sum()
    return (cx.item(), cy.item(), (kernel * (x - cx) ** 2).sum().item(), (kernel * (y - cy) ** 2).sum().item(),
            (kernel * (x - cx) * (y - cy)).sum().item())


def test_manet_kernel_units_and_top_left_placement():
    # sig1/sig2 are variances, x is the column: sig1=4, sig2=1, theta=pi/4 -> var_x = var_y = 2.5, cov 1.5
    cx, cy, vx, vy, cov = _moments(K.manet_anisotropic_kernel(4.0, 1.0, math.pi / 4, scale=4)[0])
    assert (cx, cy) == pytest.approx((8.5, 8.5))            # centre of the 18-wide grid, top-left
    assert (vx, vy, cov) == pytest.approx((2.5, 2.5, 1.5), abs=1e-4)
    iso = K.manet_isotropic_kernel(1.2, scale=2)[0]          # iso sigma is a std-dev
    assert _moments(iso)[:3] == pytest.approx((9.5, 9.5, 1.44), abs=1e-6)
    assert iso[20].abs().sum() == 0 and iso[:, 20].abs().sum() == 0
    assert K.manet_isotropic_kernel(0.0, scale=2)[0, 10, 10] == 1.0


def test_dasr_kernel_units_are_std_devs_with_lambda_1_along_x():
    _, _, vx, vy, _ = _moments(K.dasr_anisotropic_kernel(1.0, 2.0, 0.0)[0])
    assert (vx, vy) == pytest.approx((1.0, 4.0), abs=1e-3)
    cx, cy, *_ = _moments(K.dasr_anisotropic_kernel(0.5, 3.0, math.radians(30))[0])
    assert (cx, cy) == pytest.approx((10.0, 10.0))


@pytest.mark.parametrize("call", [
    lambda: K.dasr_isotropic_kernel(torch.tensor([-1.0])),
    lambda: K.dasr_anisotropic_kernel(0.0, 1.0, 0.0),
    lambda: K.manet_anisotropic_kernel(1.0, 1.0, 0.0, scale=5),
    lambda: K.dasr_isotropic_kernel(torch.tensor([1.0]), size=20),
])
def test_kernel_arguments_are_validated(call):
    with pytest.raises(ValueError):
        call()


# ----------------------------------------------------------------------------- resize and blur
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_keeps_constants_and_floors_odd_sizes(scale):
    x = torch.full((2, 3, 4 * scale + 1, 6 * scale - 1), 77.0)
    y = bicubic_downsample(x, scale)
    assert y.shape == (2, 3, 4, 5)
    torch.testing.assert_close(y, torch.full_like(y, 77.0))
    assert decimate(x, scale).shape == (2, 3, 4, 5)


def test_bicubic_mirror_differs_from_clamp_only_at_the_border():
    x = _hr(1, 3, 48, 48)
    clamp, mirror = bicubic_downsample(x, 4, "clamp"), bicubic_downsample(x, 4, "mirror")
    torch.testing.assert_close(clamp[..., 2:-2, 2:-2], mirror[..., 2:-2, 2:-2])
    assert not torch.equal(clamp, mirror)
    weights, indices = bicubic_taps(48, 3, "mirror")
    torch.testing.assert_close(weights.sum(1), torch.ones(16))
    assert indices.min() >= 0 and indices.max() < 48


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_upscale_is_matlabs(scale):
    """MATLAB imresize(x, s, 'bicubic'): inside, PIL's a = -0.5 bicubic (an independent
    implementation; its borders renormalise instead of mirroring); at the borders, the
    upscale of the image mirrored by 3 pixels (MATLAB's symmetric indices)."""
    from PIL import Image
    x = torch.rand(13, 17, generator=torch.Generator().manual_seed(scale), dtype=torch.float64) * 255
    y = bicubic_upscale(x[None, None], scale)[0, 0]
    assert y.shape == (13 * scale, 17 * scale) and y.dtype == torch.float64
    pil = torch.from_numpy(np.array(Image.fromarray(x.float().numpy(), mode="F").resize(
        (17 * scale, 13 * scale), Image.BICUBIC))).double()
    inner = slice(2 * scale, -2 * scale)
    assert (y - pil)[inner, inner].abs().max() < 1e-4
    assert (y - pil).abs().max() > 1                            # the borders do differ
    padded = torch.from_numpy(np.pad(x.numpy(), 3, mode="symmetric"))
    border = 3 * scale
    assert torch.allclose(bicubic_upscale(padded[None, None], scale)[0, 0, border:-border, border:-border], y)
    constant = torch.full((1, 3, 5, 7), 42.0)
    assert torch.allclose(bicubic_upscale(constant, scale), torch.full((1, 3, 5 * scale, 7 * scale), 42.0))


def test_blur_with_delta_is_identity_and_stride_equals_decimation():
    x = _hr(2, 2, 3, 24, 30)
    for pad in ("reflect", "replicate"):
        assert torch.equal(blur(x, K.delta_kernel(2), pad), x)
    kernels = K.manet_anisotropic_kernel(torch.tensor([4.0, 2.0]), torch.tensor([1.0, 2.0]),
                                         torch.tensor([0.5, 0.0]), scale=3).float()
    full = blur(x, kernels, "replicate")
    assert torch.equal(blur(x, kernels, "replicate", stride=3), full[..., ::3, ::3])


def test_spatially_variant_blur_with_one_kernel_equals_invariant_blur():
    x = _hr(3, 90, 85)
    kernel = K.manet_anisotropic_kernel(5.0, 2.0, 0.4, scale=2)
    kernel_map = kernel.expand(3, 3, 21, 21)                  # ceil(90/40) x ceil(85/40) blocks
    torch.testing.assert_close(spatially_variant_blur(x, kernel_map), blur(x[None], kernel.float(), "replicate")[0])


def test_spatially_variant_modes():
    p = sv_kernel_params(1, 4, 5, scale=4)                     # a = 9.3, b = 0.7
    assert p["sig1"].shape == (4, 5) and torch.all(p["sig1"] == 10.0) and torch.all(p["theta"] == 0)
    torch.testing.assert_close(p["sig2"][:, 0], 9.3 * torch.arange(4.0, dtype=torch.float64) / 4 + 0.7)
    m5 = sv_kernels(5, 100, 80, scale=2, generator=_gen(3))
    assert m5.shape == (3, 2, 21, 21) and torch.equal(m5, sv_kernels(5, 100, 80, scale=2, generator=_gen(3)))
    with pytest.raises(ValueError):
        sv_kernel_params(5, 2, 2, scale=2)                     # random mode without a generator


# ----------------------------------------------------------------------------- training entry point
TRAINING_CASES = [
    dict(convention="dasr", blur_type="iso_gaussian", sample_mode="bicubic"),
    dict(convention="dasr", blur_type="aniso_gaussian", sample_mode="s-fold"),
    dict(convention="manet", blur_type="iso_gaussian", sample_mode="bicubic"),
    dict(convention="manet", blur_type="aniso_gaussian", sample_mode="bicubic"),
]


def _training(case: dict, scale: int = 2, noise: float = 10.0):
    return make_training_degradation(case["convention"], scale, case["blur_type"], sig_min=0.35, sig_max=4.0,
                                     lambda_min=0.2, lambda_max=4.0, noise=noise, sample_mode=case["sample_mode"])


@pytest.mark.parametrize("case", TRAINING_CASES)
@pytest.mark.parametrize("device", DEVICES)
def test_training_degradation_shapes_range_device_and_seeding(case, device):
    hr = _hr(3, 2, 3, 36, 36).to(device)
    degrade = _training(case, scale=3)
    lr = degrade(hr, _gen(1))
    assert lr.shape == (3, 2, 3, 12, 12) and lr.device == hr.device and lr.dtype == torch.float32
    assert lr.min() >= 0 and lr.max() <= 255 and torch.equal(lr, lr.round())
    assert torch.equal(lr, degrade(hr, _gen(1)))
    assert not torch.equal(lr, degrade(hr, _gen(2)))


@pytest.mark.parametrize("case", TRAINING_CASES)
def test_one_degradation_per_image_shared_by_its_patches(case):
    patch = _hr(4, 1, 3, 40, 40)
    lr = _training(case, noise=0.0)(patch.expand(4, 2, 3, 40, 40), _gen(5))
    assert torch.equal(lr[:, 0], lr[:, 1])                     # same patch, same degradation
    assert not torch.equal(lr[0, 0], _training(case, noise=0.0)(patch[:1].expand(1, 2, 3, 40, 40), _gen(6))[0, 0])
    # with noise the N patches share one noise level (independent pixels): equal residual spread
    degrade = _training(case, noise=60.0)
    params = degrade.sample(4, _gen(5))
    hr = patch.expand(4, 2, 3, 40, 40) * 0.5 + 64                # keep clear of the clamp
    noise = degrade.noise_maps(params["noise"], (4, 2, 3, 20, 20), _gen(7))
    residual = degrade.apply(hr, params, noise) - degrade.apply(hr, params)
    spread = residual.std(dim=(2, 3, 4))                          # (B, N)
    assert not torch.equal(residual[:, 0], residual[:, 1])
    torch.testing.assert_close(spread[:, 0], spread[:, 1], rtol=0.15, atol=1.0)
    torch.testing.assert_close(spread[:, 0], params["noise"].float(), rtol=0.15, atol=1.0)


@pytest.mark.parametrize("case", TRAINING_CASES)
def test_per_image_draws_collate_into_what_apply_takes(case):
    """Each image's degradation drawn alone (in a loader worker) equals the same draw applied
    in a batch: an image's LR does not depend on which batch it lands in."""
    degrade = _training(case, noise=20.0)
    hr = _hr(3, 2, 3, 40, 40)
    draws = [degrade.draw(_gen(10 + b), (2, 3, 20, 20)) for b in range(3)]
    batch = torch.utils.data.default_collate(draws)
    assert all(v.shape == (3,) and v.dtype == torch.float64 for v in batch["params"].values())
    assert batch["noise"].shape == (3, 2, 3, 20, 20)
    lr = degrade.apply(hr, batch["params"], batch["noise"])
    for b in range(3):
        alone = degrade.apply(hr[b:b + 1], {k: v[b:b + 1] for k, v in batch["params"].items()},
                              batch["noise"][b:b + 1])
        assert torch.equal(lr[b], alone[0])
    assert "noise" not in _training(case, noise=0.0).draw(_gen(1), (2, 3, 20, 20))


def test_training_sampling_follows_each_convention():
    dasr = make_training_degradation("dasr", 4, "aniso_gaussian", sig_min=0.2, sig_max=4.0, lambda_min=0.5,
                                     lambda_max=3.0, noise=25.0).sample(4000, _gen(0))
    assert 0.5 <= dasr["lambda_1"].min() and dasr["lambda_2"].max() < 3.0
    assert (dasr["lambda_2"] > dasr["lambda_1"]).float().mean() == pytest.approx(0.5, abs=0.05)
    assert 0 <= dasr["theta"].min() and dasr["theta"].max() < math.pi and dasr["noise"].max() < 25.0
    manet = make_training_degradation("manet", 4, "aniso_gaussian", sig_min=0.35, sig_max=5.0, lambda_min=0.2,
                                      lambda_max=4.0, noise=25.0).sample(4000, _gen(0))
    assert manet["sig1"].min() >= 0.35 and manet["sig1"].max() < 5.0
    assert torch.all(manet["sig2"] >= 0.35) and torch.all(manet["sig2"] <= manet["sig1"])
    assert (manet["noise"] == 0).float().mean() == pytest.approx(0.2, abs=0.03)   # rate_cln = 0.2
    iso = make_training_degradation("dasr", 2, "iso", sig_min=1.0, sig_max=1.5, lambda_min=0.2, lambda_max=4.0,
                                    noise=0.0).sample(500, _gen(0))
    assert 1.0 <= iso["sigma"].min() and iso["sigma"].max() < 1.5


# ----------------------------------------------------------------------------- evaluation entry point
@pytest.mark.parametrize("device", DEVICES)
def test_fixed_degradation(device):
    hr = _hr(2, 3, 50, 50).to(device)                          # not a multiple of 4: floor
    dasr = make_fixed_degradation("dasr", 4, "aniso_gaussian", lambda_1=0.2, lambda_2=4.0, theta=45.0, noise=5.0)
    lr = dasr(hr, _gen(0))
    assert lr.shape == (2, 3, 12, 12) and lr.device == hr.device and torch.equal(lr, dasr(hr, _gen(0)))
    manet = make_fixed_degradation("manet", 2, "iso_gaussian", sig=0.0)
    assert torch.equal(manet(hr), hr[..., ::2, ::2])           # sigma 0: a delta, then decimation
    # theta in the convention's own unit: 90 degrees (dasr) swaps lambda_1 and lambda_2
    a = make_fixed_degradation("dasr", 2, "aniso", lambda_1=1.0, lambda_2=2.0, theta=90.0).kernel()
    b = make_fixed_degradation("dasr", 2, "aniso", lambda_1=2.0, lambda_2=1.0, theta=0.0).kernel()
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("call, match", [
    (lambda: make_training_degradation("edsr", 2, "iso", sig_min=0.2, sig_max=4, lambda_min=.2, lambda_max=4,
                                       noise=0), "unknown degradation convention"),
    (lambda: make_training_degradation("dasr", 2, "gauss", sig_min=0.2, sig_max=4, lambda_min=.2, lambda_max=4,
                                       noise=0), "unknown blur type"),
    (lambda: make_training_degradation("dasr", 2, "iso", sig_min=4, sig_max=1, lambda_min=.2, lambda_max=4,
                                       noise=0), "sig_min"),
    (lambda: make_training_degradation("dasr", 2, "aniso", sig_min=0.2, sig_max=4, lambda_min=5, lambda_max=4,
                                       noise=0), "lambda_min"),
    (lambda: make_training_degradation("dasr", 2, "iso", sig_min=0.2, sig_max=4, lambda_min=.2, lambda_max=4,
                                       noise=-1), "noise"),
    (lambda: make_training_degradation("manet", 5, "iso", sig_min=0.2, sig_max=4, lambda_min=.2, lambda_max=4,
                                       noise=0), "scale 2, 3 or 4"),
    (lambda: make_training_degradation("manet", 2, "iso", sig_min=0.2, sig_max=4, lambda_min=.2, lambda_max=4,
                                       noise=0, sample_mode="s-fold"), "sample_mode"),
    (lambda: make_fixed_degradation("dasr", 2, "iso", sig=1.0, kernel_size=20), "kernel_size"),
    (lambda: make_fixed_degradation("dasr", 2, "aniso"), "lambda_1 and lambda_2"),
    (lambda: make_fixed_degradation("dasr", 2, "iso", sig=1.0, noise=5)(_hr(1, 3, 24, 24)), "Generator"),
    (lambda: make_fixed_degradation("dasr", 2, "iso", sig=1.0)(_hr(1, 1, 3, 24, 24)), "B, C, H, W"),
    (lambda: make_fixed_degradation("dasr", 2, "iso", sig=1.0)(_hr(1, 3, 8, 8)), "too small"),
])
def test_arguments_are_validated(call, match):
    with pytest.raises(ValueError, match=match):
        call()
