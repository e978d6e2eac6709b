"""The embedding analysis itself: the decomposition, the probes and codebook usage on known
answers, hand-built encoders through the real degradation grid, and the script end to end."""
import json
import math

import numpy as np
import pytest
import torch

import model
from data.images import write_png
from helpers import TINY
from model.checkpoint import ours_to_authors, save_checkpoint
from model.codebook_health import codebook_usage
from scripts import analyze_embedding
from scripts.embedding.analysis import analyse, table, write_outputs
from scripts.embedding.grid import Kernel, default_kernels, degrade_grid, grid_degradations
from scripts.embedding.stats import pca_2d, probe_accuracy, variance_shares


def test_variance_shares_of_additive_effects_are_exact():
    g = torch.Generator().manual_seed(0)
    image_effect = torch.randn(5, 1, 3, generator=g, dtype=torch.float64)
    degradation_effect = torch.randn(1, 7, 3, generator=g, dtype=torch.float64)
    y = 10 + 2 * image_effect + degradation_effect
    shares = variance_shares(y)
    a = 2 * (image_effect - image_effect.mean(0))
    b = degradation_effect - degradation_effect.mean(1)
    expected_image = 7 * (a ** 2).sum() / (7 * (a ** 2).sum() + 5 * (b ** 2).sum())
    assert shares["image"] == pytest.approx(float(expected_image), abs=1e-9)
    assert shares["interaction"] == pytest.approx(0, abs=1e-9)
    assert shares["image"] + shares["degradation"] == pytest.approx(1, abs=1e-9)
    product = variance_shares(torch.randn(4, 1, 2, generator=g) * torch.randn(1, 6, 2, generator=g))
    assert product["interaction"] > 0.2                   # what neither factor explains alone
    assert sum(product[k] for k in ("image", "degradation", "interaction")) == pytest.approx(1)
    constant = variance_shares(torch.ones(3, 3, 2))
    assert constant["image"] is None and constant["total_variance"] == 0
    with pytest.raises(ValueError, match="images >= 2, degradations >= 2"):
        variance_shares(torch.ones(1, 3, 2))


def test_probe_reads_a_linear_signal_and_not_noise():
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(6).repeat(20)
    groups = torch.arange(20).repeat_interleave(6)
    signal = torch.nn.functional.one_hot(labels, 6).double() + 0.1 * torch.randn(120, 6, generator=g)
    noise = torch.randn(120, 6, generator=g)
    readable = probe_accuracy(torch.cat([signal, noise], 1), labels, groups)
    assert readable["accuracy"] == 1.0 and readable["chance"] == pytest.approx(1 / 6)
    assert readable["folds"] == 5 and len(readable["per_fold"]) == 5
    assert probe_accuracy(noise, labels, groups)["accuracy"] < 0.35
    wide = torch.randn(120, 300, generator=g)                       # more dimensions than samples
    assert probe_accuracy(wide, labels, groups)["accuracy"] < 0.35


def test_codebook_usage_counts_rows_and_entropy():
    uniform = codebook_usage(torch.full((4, 10), 0.1))
    assert uniform["rows_for_mass"] == 9 and uniform["entropy"] == pytest.approx(math.log(10))
    assert uniform["perplexity"] == pytest.approx(10)
    peaked = torch.zeros(6, 10)
    peaked[:3, 2] = peaked[3:, 7] = 0.95
    peaked += 0.05 / 10
    peaked /= peaked.sum(1, keepdim=True)
    usage = codebook_usage(peaked)
    assert usage["rows_for_mass"] == 2 and usage["rows"] == 10
    assert sorted(usage["mass"], reverse=True)[:2] == pytest.approx([0.48, 0.48], abs=1e-6)
    assert usage["sample_entropy"] < 0.5 and 2 < usage["perplexity"] < 3


def test_pca_finds_the_leading_axis():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 1, generator=g) * torch.tensor([[3.0, 0.0, 4.0]]) + 0.01 * torch.randn(50, 3, generator=g)
    points, explained = pca_2d(x)
    assert points.shape == (50, 2) and explained[0] > 0.99
    assert torch.corrcoef(torch.stack([points[:, 0], x[:, 0]]))[0, 1].abs() > 0.99


# ------------------------------------------------------------------ hand-built encoders
def same_structure_images(n: int = 6, size: int = 64) -> dict:
    """n HR images with one shared blocky pattern and different colours: a_i + c_i * pattern
    per channel, so blur changes every image's edges the same way."""
    rng = np.random.default_rng(0)
    pattern = np.kron(rng.random((size // 8, size // 8)), np.ones((8, 8)))          # (H,W) 0..1
    images = {}
    for i in range(n):
        offset, contrast = rng.uniform(20, 90, 3), rng.uniform(80, 150, 3)
        hr = offset[:, None, None] + contrast[:, None, None] * pattern[None]
        images[f"img{i}"] = torch.from_numpy(hr).float()
    return images


def blur_width_reader(lr: torch.Tensor) -> torch.Tensor:
    """(B,3,h,w) -> (B,2): edge strength along x and y over contrast (offset and scale free)."""
    std = lr.std(dim=(2, 3)) + 1e-6
    dx = (lr[..., :, 1:] - lr[..., :, :-1]).abs().mean(dim=(2, 3)) / std
    dy = (lr[..., 1:, :] - lr[..., :-1, :]).abs().mean(dim=(2, 3)) / std
    return torch.stack([dx.mean(1), dy.mean(1)], dim=1)


def mean_colour_reader(lr: torch.Tensor) -> torch.Tensor:
    """(B,3,h,w) -> (B,3) mean colour."""
    return lr.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def hand_built():
    images = same_structure_images()
    degradations = grid_degradations(default_kernels(2), [0.0])
    run = lambda embed: analyse(embed, images, degradations, convention="dasr", scale=2).summary
    return {"blur": run(blur_width_reader), "colour": run(mean_colour_reader)}


def test_an_encoder_reading_only_the_blur_is_degradation_oriented(hand_built):
    summary = hand_built["blur"]
    assert summary["variance"]["degradation"] > 0.95
    image = summary["probes"]["image"]
    assert image["chance"] == pytest.approx(1 / 6) and image["accuracy"] < image["chance"] + 0.15
    assert summary["probes"]["kernel"]["accuracy"] > 0.9    # and the kernel on unseen images


def test_an_encoder_reading_only_the_mean_colour_is_content_oriented(hand_built):
    summary = hand_built["colour"]
    assert summary["variance"]["image"] > 0.95
    kernel = summary["probes"]["kernel"]
    assert kernel["chance"] == pytest.approx(1 / 8) and kernel["accuracy"] < kernel["chance"] + 0.15
    assert summary["probes"]["image"]["accuracy"] == 1.0


def test_the_grid_is_seeded_and_kernel_major():
    images = list(same_structure_images(2, 32).values())
    degradations = grid_degradations([Kernel("iso", sigma=1.0), Kernel("aniso", lambda_1=2, lambda_2=0.5,
                                                                         theta=45)], [0.0, 10.0])
    assert [d.label for d in degradations] == ["iso 1, noise 0", "iso 1, noise 10",
                                               "aniso 2x0.5 45deg, noise 0", "aniso 2x0.5 45deg, noise 10"]
    for convention in ("dasr", "manet"):
        lr = degrade_grid(images, degradations, convention=convention, scale=2, seed=3)
        assert lr.shape == (2, 4, 3, 16, 16)
        assert torch.equal(lr, degrade_grid(images, degradations, convention=convention, scale=2, seed=3))
        assert not torch.equal(lr[:, 1], degrade_grid(images, degradations, convention=convention,
                                                       scale=2, seed=4)[:, 1])
        assert torch.equal(lr[:, 0], lr.round().clamp(0, 255)[:, 0])
        assert not torch.equal(lr[:, 0], lr[:, 2])          # the kernels differ


# ------------------------------------------------------------------ the script
@pytest.fixture(scope="module")
def hr_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(1)
    for i in range(4):
        write_png(folder / f"p{i}.png", rng.integers(0, 256, (66, 70, 3)).astype(np.uint8))
    return folder


def run_script(checkpoint, out, hr_dir, *extra):
    analyze_embedding.main([str(checkpoint), "--out", str(out), "--hr_dir", str(hr_dir),
                            "--lr_size", "16", "--noise", "0", "5", "--folds", "3", *extra])
    return json.loads((out / "embedding.json").read_text())


@pytest.mark.parametrize("name", ["cdsr", "cdsr-no-csc"])
def test_script_on_our_checkpoint_writes_json_figures_and_a_table(tmp_path, hr_dir, capsys, name):
    torch.manual_seed(0)
    net = model.build_model(name, scale=2, **TINY[name])
    checkpoint = tmp_path / "last.pt"
    save_checkpoint(checkpoint, model_name=name, scale=2, model=net.state_dict(),
                    model_kwargs=net.hparams, config={"degradation": "manet"})
    summary = run_script(checkpoint, tmp_path / "out", hr_dir)
    assert summary["model"] == name and summary["grid"]["convention"] == "manet"
    assert summary["grid"]["pairs"] == 4 * 16 and summary["grid"]["embedding_dim"] == 16
    assert set(summary["variance"]) == {"degradation", "image", "interaction", "total_variance"}
    assert summary["probes"]["kernel"]["folds"] == 3 and summary["probes"]["image"]["folds"] == 3
    for figure in ("embedding_by_degradation.png", "embedding_by_image.png"):
        assert (tmp_path / "out" / figure).stat().st_size > 1000
    has_codebook = name == "cdsr"
    assert ("codebook" in summary) == has_codebook
    assert (tmp_path / "out" / "codebook_usage.png").is_file() == has_codebook
    if has_codebook:
        assert len(summary["codebook"]["mass"]) == TINY["cdsr"]["codebook_size"]
        assert sum(summary["codebook"]["mass"]) == pytest.approx(1)
    printed = capsys.readouterr().out
    assert "share explained by the degradation" in printed and "linear probe: kernel" in printed
    untrained = run_script(checkpoint, tmp_path / "fresh", hr_dir, "--untrained", "--seed", "5")
    assert untrained["weights"].startswith("untrained")
    assert untrained["variance"] != summary["variance"]


def test_script_on_an_authors_checkpoint(tmp_path, hr_dir):
    torch.manual_seed(0)
    net = model.build_model("dasr", scale=2)               # the authors' files are paper size
    checkpoint = tmp_path / "authors.pt"
    torch.save(ours_to_authors(net.state_dict(), "dasr"), checkpoint)
    summary = run_script(checkpoint, tmp_path / "out", hr_dir, "--scale", "4")
    assert summary["model"] == "dasr" and summary["weights"] == "authors checkpoint"
    assert summary["grid"]["scale"] == 4 and summary["grid"]["convention"] == "dasr"
    assert summary["grid"]["embedding_dim"] == 256 and "codebook" not in summary


def test_a_constant_embedding_is_reported_as_carrying_nothing(tmp_path):
    """What a collapsed codebook gives: every pair embeds to the same vector."""
    images = same_structure_images(3, 32)
    degradations = grid_degradations(default_kernels(2)[:3], [0.0])
    result = analyse(lambda lr: torch.ones(len(lr), 4), images, degradations, convention="dasr",
                     scale=2, n_folds=3)
    assert result.summary["variance"]["degradation"] is None
    assert result.summary["probes"]["kernel"]["accuracy"] == pytest.approx(1 / 3)
    assert "constant over the grid" in table(result.summary)
    write_outputs(result, tmp_path, "constant")
    text = (tmp_path / "embedding.json").read_text()
    assert "NaN" not in text and json.loads(text)["pca_explained"] == [None, None]
