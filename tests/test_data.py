"""Training pairs, the bundled sample photos and the folder layouts users bring."""
import argparse

import numpy as np
import pytest
import torch

import option
from data import build_test_sets, build_train_loader, build_train_set, training_folders
from data.patch_pairs import PatchPairs, random_flip_rotate
from data.images import ImageError
from data.sample_photos import held_out_photos, training_photos
from helpers import write_noise_images


def test_pairs_are_two_patches_of_the_same_image():
    flat = [np.full((40, 50, 3), 10 * (i + 1), np.uint8) for i in range(3)]
    dataset = PatchPairs(flat, hr_patch_size=16, length=7)
    assert len(dataset) == 7
    item = dataset[4]["hr"]
    assert item.shape == (2, 3, 16, 16) and item.dtype == torch.uint8
    assert (item == 20).all()  # image 4 % 3 = 1 for both patches


def test_flip_rotate_covers_the_eight_symmetries():
    patch = torch.arange(9).reshape(1, 3, 3)
    seen = {tuple(random_flip_rotate(patch, torch.Generator().manual_seed(s)).flatten().tolist())
            for s in range(200)}
    assert len(seen) == 8


def test_an_image_smaller_than_the_patch_is_named(tmp_path):
    with pytest.raises(ImageError, match="image 1 is 10x40, smaller than the HR patch 16x16"):
        PatchPairs([np.zeros((20, 20, 3), np.uint8), np.zeros((10, 40, 3), np.uint8)], 16, 4)
    write_noise_images(tmp_path, [(40, 40), (12, 50)])
    from data.patch_pairs import folder_sources
    with pytest.raises(ImageError, match="img_001.png is 12x50"):
        PatchPairs(folder_sources([tmp_path]), 16, 4)


def test_a_corrupt_training_image_is_named(tmp_path):
    write_noise_images(tmp_path, [(40, 40)])
    (tmp_path / "img_009.png").write_bytes(b"junk")
    from data.patch_pairs import folder_sources
    with pytest.raises(ImageError, match="img_009.png"):
        PatchPairs(folder_sources([tmp_path]), 16, 4)


def test_training_folder_layouts(tmp_path):
    (tmp_path / "DF2K" / "HR").mkdir(parents=True)
    write_noise_images(tmp_path / "DF2K" / "HR", [(40, 40)])
    args = argparse.Namespace(dir_data=str(tmp_path), data_train="DF2K")
    assert training_folders(args) == [tmp_path / "DF2K" / "HR"]
    # The CDSR README points --dir_data straight at the HR folder.
    args = argparse.Namespace(dir_data=str(tmp_path / "DF2K" / "HR"), data_train="DF2K")
    assert training_folders(args) == [tmp_path / "DF2K" / "HR"]
    with pytest.raises(ImageError, match="training set 'DIV2K' not found"):
        training_folders(argparse.Namespace(dir_data=str(tmp_path), data_train="DIV2K"))


def test_loader_is_seeded(tmp_path):
    write_noise_images(tmp_path / "T", [(60, 60), (50, 70)])
    args = option.parse_args(f"--dir_data {tmp_path} --data_train T --model DASR --scale 2 --patch_size 8 "
                             "--batch_size 2 --test_every 3 --n_threads 0 --queue_size 8".split())
    dataset = build_train_set(args)
    first = [b["hr"] for b in build_train_loader(args, dataset, seed=1)]
    other = [b["hr"] for b in build_train_loader(args, dataset, seed=2)]
    again = [b["hr"] for b in build_train_loader(args, dataset, seed=1)]
    assert len(first) == 3 and first[0].shape == (2, 2, 3, 16, 16)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_more_workers_than_cpus_are_capped_and_said_once(tmp_path, caplog):
    """The authors' recipes ask for 4 workers; on a 2-CPU machine PyTorch warned twice per run."""
    import warnings
    import data
    write_noise_images(tmp_path / "T", [(60, 60)])
    many = data.available_cpus() + 3
    args = option.parse_args(f"--dir_data {tmp_path} --data_train T --model DASR --scale 2 --patch_size 8 "
                             f"--batch_size 2 --test_every 1 --n_threads {many} --queue_size 8".split())
    with caplog.at_level("INFO", logger="cdsr"):
        loader = build_train_loader(args, build_train_set(args), seed=1)
        build_train_loader(args, build_train_set(args), seed=2)
    assert loader.num_workers == data.available_cpus()
    assert caplog.text.count(f"--n_threads {many}: {data.available_cpus()} data-loading") == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader.check_worker_number_rationality()


def test_sample_photos_come_from_the_installed_packages():
    train, held_out = training_photos(), held_out_photos()
    assert len(train) >= 8 and len(held_out) == 2
    assert not set(train) & set(held_out)
    assert all(image.shape == (192, 192, 3) for image in held_out.values())


def test_test_sets_default_to_the_held_out_photos_and_make_seeded_lr():
    args = option.parse_args("--scale 2 --noise 5".split())
    (photos,) = build_test_sets(args)
    item = photos[0]
    assert photos.name == "photos" and item["lr"].shape == (3, 96, 96) and item["hr"].shape == (3, 192, 192)
    assert torch.equal(item["lr"], photos[0]["lr"])  # the noise is seeded by the image name
    assert photos.setting.label == "dasr iso std 1.2 noise 5" and photos.setting.params["sigma_std"] == 1.2


def test_validation_and_test_py_make_the_same_sets(tmp_path):
    write_noise_images(tmp_path / "Set5", [(30, 30)])
    flags = f"--test_path {tmp_path} --noise 10 --degradation manet --blur_type aniso_gaussian --theta 0.5"
    (validation,) = build_test_sets(option.parse_args(f"{flags} --scale 3".split()))
    (test,) = build_test_sets(option.parse_args(f"{flags} --pre_train x.pt".split(), test=True), scale=3)
    assert validation.setting == test.setting and validation.name == test.name == "Set5"
    params = validation.setting.params      # manet: --lambda_1/--lambda_2 are variances, --theta radians
    assert (params["sig1_variance"], params["sig2_variance"], params["theta_rad"]) == (0.2, 4.0, 0.5)
    assert torch.equal(validation[0]["lr"], test[0]["lr"])


@pytest.mark.parametrize("flags, units", [
    ("--blur_type aniso_gaussian --lambda_1 0.5 --lambda_2 3 --theta 30",
     {"lambda_1_std": 0.5, "lambda_2_std": 3.0, "theta_deg": 30.0}),
    ("--sig 0", {"sigma_std": 0.0, "blur": "none"}),
])
def test_fixed_flags_become_unit_named_parameters(flags, units):
    (photos,) = build_test_sets(option.parse_args(flags.split()))
    assert {key: photos.setting.params[key] for key in units} == units


def test_fixed_degradation_flags_that_make_no_sense_fail_before_anything_runs():
    with pytest.raises(ValueError, match="sample_mode 's-fold' is not available for the manet convention"):
        build_test_sets(option.parse_args("--degradation manet --sample_mode s-fold".split()))


def test_benchmark_layouts(tmp_path):
    write_noise_images(tmp_path / "Set5" / "HR", [(30, 30)])
    write_noise_images(tmp_path / "Set14", [(31, 33)])
    args = option.parse_args(f"--test_path {tmp_path} --data_test Set5+Set14 --scale 2".split())
    sets = build_test_sets(args)
    assert [s.name for s in sets] == ["Set5", "Set14"]
    assert sets[1][0]["hr"].shape == (3, 30, 32)  # cropped to a multiple of the scale
    args = option.parse_args(f"--test_path {tmp_path} --data_test Urban100".split())
    with pytest.raises(FileNotFoundError, match="Urban100"):
        build_test_sets(args)
