"""Inference policies: tiled == untiled where the network is local, CDSR's per-tile pooling
deviates and its whole-image mode does not, the x8 ensemble maps every view back."""
import numpy as np
import pytest
import torch
from torch import nn

import helpers
from data.images import centre_crop
from model.inference import iter_tiles, predict, tiled_apply, tiled_super_resolve

DASR_RADIUS = 9      # helpers.TINY's DASR: 8.75 LR px (7 LR convs, one at x2 and one at x4)


def lr_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


def tiny(name: str, scale: int = 4, gamma: float = 0.0) -> nn.Module:
    """A tiny model (CDSR with two blocks, so DQA pooling matters twice) with DQA gamma set."""
    model = helpers.tiny(name, scale, **({"n_blocks": 2} if name == "cdsr" else {})).eval()
    for module in model.modules():       # DQA's attention weight; 0 at init ignores the means
        if hasattr(module, "gamma"):
            module.gamma.data.fill_(gamma)
    return model


def test_tiles_cover_every_pixel_once():
    x = torch.zeros(1, 1, 23, 17)
    for t in iter_tiles(x, 5, 3):
        top, bottom, left, right = t.box
        x[..., top:bottom, left:right] += 1
        assert t.crop.shape[-2] <= 5 + 6 and t.crop.shape[-1] <= 5 + 6
    assert torch.equal(x, torch.ones_like(x))


def test_tiled_apply_of_a_local_network_is_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 5, padding=2))
    x = torch.randn(2, 3, 19, 26)
    with torch.no_grad():
        assert torch.allclose(tiled_apply(net, x, tile=6, halo=3), net(x), atol=1e-6)
        assert not torch.allclose(tiled_apply(net, x, tile=6, halo=1), net(x), atol=1e-3)


@torch.no_grad()
def test_dasr_tiled_equals_untiled_with_enough_overlap():
    model, x = tiny("dasr"), lr_image(30, 37)
    full = model(x)
    tiled = predict(model, x, tile=8, overlap=DASR_RADIUS)
    assert tiled.shape == full.shape == (1, 3, 120, 148)
    assert (tiled - full).abs().max() <= 1e-3
    assert (predict(model, x, tile=8, overlap=2) - full).abs().max() > 1e-3   # too little context


@torch.no_grad()
def test_cdsr_per_tile_pooling_deviates_and_whole_image_mode_is_exact():
    model, x = tiny("cdsr", gamma=1.0), lr_image(30, 37, seed=1)
    full = model(x)
    per_tile = predict(model, x, tile=8, overlap=40)        # every tile sees nearly the whole image
    small_tiles = predict(model, x, tile=8, overlap=3)
    faithful = predict(model, x, tile=8, overlap=0, global_stats=True)
    deviation = (small_tiles - full).abs().max().item()
    assert deviation > 0.05, f"per-tile DQA means should change the output, max |diff| {deviation}"
    assert (faithful - full).abs().max() <= 1e-3
    assert (per_tile - full).abs().max() <= 1e-3
    # The deviation comes from the pooled means: with DQA's attention off (gamma 0, its
    # initial value) per-tile pooling is exact once the overlap covers the receptive field.
    plain, x = tiny("cdsr", gamma=0.0), lr_image(20, 20, seed=2)
    radius = 1 + 2 * (4 + 15) + 2          # first conv, 2 blocks, body conv + upsampler conv
    assert (predict(plain, x, tile=8, overlap=radius) - plain(x)).abs().max() <= 1e-3


@torch.no_grad()
def test_cdsr_whole_image_mode_matches_for_every_block_and_scale():
    for scale in (2, 3):
        model, x = tiny("cdsr", scale=scale, gamma=0.5), lr_image(25, 14, seed=scale)
        embedding = model.embed(x)
        tiled = model.super_resolve_tiled(x, embedding, tile=7)
        assert (tiled - model.super_resolve(x, embedding)).abs().max() <= 1e-3


@torch.no_grad()
def test_embedding_comes_from_the_centred_crop():
    model, x = tiny("dasr"), lr_image(40, 30, seed=3)
    crop = centre_crop(x, 16)
    assert crop.shape[-2:] == (16, 16) and torch.equal(crop, x[..., 12:28, 7:23])
    expected = tiled_super_resolve(model, x, model.embed(crop), tile=12, overlap=4)
    assert torch.equal(predict(model, x, tile=12, overlap=4, embed_crop=16), expected)
    assert not torch.allclose(predict(model, x, tile=12, overlap=4), expected)


def test_centre_crop_of_arrays_and_tensors_agree():
    array = np.random.default_rng(0).integers(0, 256, (9, 14, 3), dtype=np.uint8)
    tensor = torch.from_numpy(array).permute(2, 0, 1)[None]
    for size in (4, 5, 20):
        assert torch.equal(torch.from_numpy(np.ascontiguousarray(centre_crop(array, size))).permute(2, 0, 1)[None],
                           centre_crop(tensor, size))
    assert centre_crop(array, 6).shape == (6, 6, 3) and centre_crop(array, 20).shape == (9, 14, 3)
    assert centre_crop(tensor, 0) is tensor and centre_crop(array, None) is array


class Identity(nn.Module):
    scale = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ColumnRamp(nn.Module):
    """x + column index: not flip-invariant, so the ensemble's mapping back shows."""
    scale = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.arange(x.shape[-1], dtype=x.dtype, device=x.device)


def test_x8_ensemble_of_identity_is_identity():
    x = lr_image(9, 13, seed=4)
    assert torch.allclose(predict(Identity(), x, ensemble=True), x, atol=1e-4)


def test_x8_ensemble_maps_each_view_back():
    x = lr_image(9, 13, seed=5)
    # Over the 8 views the ramp runs along columns, reversed columns, rows, reversed rows
    # twice each: its mean is the constant ((W-1) + (H-1)) / 4.
    expected = x + ((13 - 1) + (9 - 1)) / 4
    assert torch.allclose(predict(ColumnRamp(), x, ensemble=True), expected, atol=1e-4)


@torch.no_grad()
def test_ensemble_and_tiles_together_keep_the_shape():
    model, x = tiny("dasr", scale=2), lr_image(14, 18, seed=6)
    out = predict(model, x, ensemble=True, tile=8, overlap=DASR_RADIUS)
    assert out.shape == (1, 3, 28, 36)
    assert (out - predict(model, x, ensemble=True)).abs().max() <= 1e-3


def test_bad_tile_sizes_are_refused():
    with pytest.raises(ValueError, match="tile must be > 0"):
        list(iter_tiles(torch.zeros(1, 1, 4, 4), 0, 1))


class TF32Probe(nn.Module):
    """Identity that records whether TF32 was allowed while it ran."""
    scale = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        return x


def test_inference_runs_in_true_float32_and_restores_the_flags():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        probe = TF32Probe()
        predict(probe, lr_image(4, 4, seed=7))
        assert probe.seen == (False, False)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("name", ["dasr", "cdsr"])
def test_predict_keeps_a_float64_model_in_float64(name):
    model, x = tiny(name, scale=2).double(), lr_image(24, 26, seed=8).double()
    with torch.no_grad():
        reference = model(x)
    out = predict(model, x)
    assert out.dtype == torch.float64 and torch.equal(out, reference)
    assert predict(model.float(), x.float()).dtype == torch.float32


@pytest.mark.parametrize("name", ["dasr", "cdsr"])
def test_tiled_prediction_memory_is_bounded_by_the_tile_even_with_autograd_on(name):
    """test.py --input calls predict outside any no_grad: nothing of a tile may outlive it, so
    an image 8 tiles wide peaks about where one 2 tiles wide does (plus the larger input and
    output). With autograd on, every tile's activations stayed alive: 6x more here."""
    from scripts.measure import cpu_peak_bytes
    model = tiny(name, scale=2)

    def peak(width: int) -> float:
        x = lr_image(32, width, seed=9)
        with torch.enable_grad():
            out = predict(model, x, tile=32, overlap=8)
            assert out.grad_fn is None and not out.requires_grad
            return cpu_peak_bytes(lambda: predict(model, x, tile=32, overlap=8))

    narrow, wide = peak(64), peak(256)
    grown_images = (256 - 64) * 32 * 3 * 4 * (1 + 2 * 2)        # float32 input + x2 output
    assert wide - narrow <= 3 * grown_images, (narrow, wide)


def test_a_device_pool_gives_the_one_device_results_in_order():
    """test.py --n_GPUs N: a copy of the model per device, one image each at a time (two CPU
    'devices' here run the same threads and copies as two GPUs would)."""
    from model.inference import DevicePool
    model = tiny("dasr", scale=2)
    images = [lr_image(10 + i, 12, seed=i) for i in range(7)]

    def sr(net, device, x):
        return predict(net, x.to(device))

    one = list(DevicePool(model, [torch.device("cpu")]).map(sr, images))
    pool = DevicePool(model, [torch.device("cpu")] * 2)
    assert pool.models[0] is not model and pool.models[0] is not pool.models[1]
    two = list(pool.map(sr, images))
    assert [o.shape for o in two] == [(1, 3, 2 * (10 + i), 24) for i in range(7)]
    assert all(torch.equal(a, b) for a, b in zip(one, two))
