"""Data builders: the only place in ``data/`` that reads command-line options."""
import argparse
from pathlib import Path
from typing import Callable, List

import torch
from torch.utils.data import DataLoader

from data.benchmark import BenchmarkSet, named_files
from data.degradation import make_fixed_degradation, make_training_degradation
from data.hr_folder import PatchPairs, folder_sources
from data.images import ImageError, list_images
from data.protocols import find_hr_dir
from data.sample_photos import held_out_photos, training_photos

def training_folders(args: argparse.Namespace) -> List[Path]:
    """HR folders of ``--data_train`` under ``--dir_data``: NAME/HR, NAME, or DIR_DATA itself
    when it directly holds images (the CDSR README passes ``--dir_data=.../DF2K/HR``)."""
    root = Path(args.dir_data)
    folders = []
    for name in args.data_train.split("+"):
        tried = [root / name / "HR", root / name]
        found = next((f for f in tried if f.is_dir()), None)
        if found is None and root.is_dir() and any(p.is_file() for p in root.iterdir()):
            found = root
        if found is None:
            raise ImageError(f"training set '{name}' not found: tried "
                             f"{', '.join(str(t) for t in tried)} and {root}; check --dir_data/--data_train")
        folders.append(found)
    return folders


def build_train_set(args: argparse.Namespace) -> PatchPairs:
    """Pairs of HR patches (``patch_size * scale``) from ``--data_train`` or the sample photos;
    ``test_every * batch_size`` items per epoch. Every image is checked here, before training."""
    hr_patch = args.patch_size * args.scale
    length = args.test_every * args.batch_size
    if args.dir_data is None:
        photos = training_photos()
        return PatchPairs(list(photos.values()), hr_patch, length, names=list(photos))
    return PatchPairs(folder_sources(training_folders(args)), hr_patch, length)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of everything random in one training epoch (data, degradations)."""
    return seed * 100_003 + epoch


def build_train_loader(args: argparse.Namespace, dataset: PatchPairs, seed: int) -> DataLoader:
    """One epoch of ``{"hr": uint8 (B,2,3,P,P)}`` batches, shuffled and cropped with generators
    seeded by ``seed``, so a resumed run sees the same data whatever the worker count."""
    dataset.set_seed(seed)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                      num_workers=args.n_threads, generator=torch.Generator().manual_seed(seed))


def build_training_degradation(args: argparse.Namespace) -> Callable:
    """(hr (B,2,3,H,W) float 0..255, generator) -> lr (B,2,3,H/s,W/s), one random degradation per image."""
    return make_training_degradation(
        args.degradation, args.scale, args.blur_type,
        sig_min=args.sig_min, sig_max=args.sig_max, lambda_min=args.lambda_min,
        lambda_max=args.lambda_max, noise=args.noise, kernel_size=args.blur_kernel,
        sample_mode=args.sample_mode)


def build_eval_degradation(args: argparse.Namespace) -> Callable:
    """The fixed evaluation degradation of ``--sig``/``--lambda_1``/``--lambda_2``/``--theta``/``--noise``."""
    return make_fixed_degradation(
        args.degradation, args.scale, args.blur_type, sig=args.sig,
        lambda_1=args.lambda_1, lambda_2=args.lambda_2, theta=args.theta, noise=args.noise,
        kernel_size=args.blur_kernel, sample_mode=args.sample_mode)


def test_root(args: argparse.Namespace) -> Path:
    if args.test_path:
        return Path(args.test_path)
    return Path(args.dir_data) / "benchmark"


def build_test_sets(args: argparse.Namespace) -> List[BenchmarkSet]:
    """The ``--data_test`` sets (or the held-out sample photos without ``--dir_data``/``--test_path``)."""
    degrade = build_eval_degradation(args)
    if args.dir_data is None and args.test_path is None:
        photos = held_out_photos()
        return [BenchmarkSet("photos", list(photos.items()), args.scale, degrade, args.seed)]
    sets = []
    for name in args.data_test.split("+"):
        folder = find_hr_dir(test_root(args), name, args.scale)
        sets.append(BenchmarkSet(name, named_files(list_images(folder)), args.scale, degrade, args.seed))
    return sets
