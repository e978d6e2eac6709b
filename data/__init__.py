"""Data builders: the only place in ``data/`` that reads command-line options."""
import argparse
import logging
import os
import signal
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from data.degradation import TrainingDegradation, make_training_degradation
from data.eval_set import EvalSet, ImageSource
from data.patch_pairs import PatchPairs, folder_sources
from data.images import ImageError, list_images
from data.sampler import GlobalBatchSampler
from data.store import store_sources
from data.protocols import protocol_settings
from data.setting import Setting, fixed_setting
from data.testsets import find_hr_dir, read_protocol_sets
from data.sample_photos import held_out_photos, training_photos

log = logging.getLogger("cdsr.data")  # a child of the run's logger


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


def available_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_count(requested: int, *, say: bool = True) -> int:
    """``--n_threads`` capped to ``available_cpus()``: more worker processes than CPUs only
    compete (PyTorch's DataLoader warns), and the data stream does not depend on the count.
    With ``say``, the cap is said once per process (by the training loader, so that a check
    that fails before it stays one line)."""
    available = available_cpus()
    if requested <= available:
        return requested
    if say and requested not in _CAPPED:
        _CAPPED.add(requested)
        log.info(f"--n_threads {requested}: {available} data-loading worker processes, one per "
                 "available CPU (the batches do not depend on the count)")
    return available


_CAPPED: set = set()


def build_train_set(args: argparse.Namespace, full_check: bool = True) -> PatchPairs:
    """Pairs of HR patches (``patch_size * scale``) from ``--data_train`` or the sample photos,
    each with its own draw of the training degradation; ``test_every * batch_size`` items per
    epoch. Every image is checked here, before training: with ``--data_cache`` each new or
    changed image is decoded once into the decoded store (``data.store``), which the loader then
    reads without decoding; without it every image file is decoded in full at each start (in
    ``--n_threads`` processes; only the headers without ``full_check``). Both give the same
    items."""
    hr_patch = args.patch_size * args.scale
    common = dict(hr_patch_size=hr_patch, length=args.test_every * args.batch_size,
                  degradation=build_training_degradation(args), lr_patch_size=args.patch_size)
    if args.dir_data is None:
        if args.data_cache is not None:
            log.warning("--data_cache is not used without --dir_data: the sample photos are in memory")
        photos = training_photos()
        return PatchPairs(list(photos.values()), names=list(photos), **common)
    folders = training_folders(args)
    workers = worker_count(args.n_threads, say=False)
    if args.data_cache is None:
        return PatchPairs(folder_sources(folders, workers, full_check), **common)
    return PatchPairs(store_sources(folders, Path(args.data_cache), workers=workers), **common)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of everything random in one training epoch (data, degradations)."""
    return seed * 100_003 + epoch


def build_train_loader(args: argparse.Namespace, dataset: PatchPairs, seed: int, *, rank: int = 0,
                       world_size: int = 1, start: int = 0) -> DataLoader:
    """One epoch of batches ``{"hr": uint8 (b,2,3,P,P), "params": {name: (b,)}, "noise"?}``
    for process ``rank`` of ``world_size`` (b = batch_size / world_size), from iteration
    ``start`` on. Items and their order come from ``seed`` alone (``GlobalBatchSampler``), so
    the global stream is the same whatever the worker or process count, and a resumed run sees
    the same data."""
    dataset.set_seed(seed)
    sampler = GlobalBatchSampler(len(dataset), args.batch_size, seed, rank=rank,
                                 world_size=world_size, start=start)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=worker_count(args.n_threads),
                      pin_memory=torch.cuda.is_available() and not args.cpu,
                      worker_init_fn=_leave_stop_signals_to_the_trainer)


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """Loader workers ignore SIGTERM/SIGUSR1 (a scheduler signals the whole process group):
    the training process finishes its iteration, checkpoints, and ends them itself."""
    for number in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(number, signal.SIG_IGN)


def build_training_degradation(args: argparse.Namespace) -> TrainingDegradation:
    """The random training degradation of the options; its ``apply`` takes batched draws."""
    return make_training_degradation(
        args.degradation, args.scale, args.blur_type,
        sig_min=args.sig_min, sig_max=args.sig_max, lambda_min=args.lambda_min,
        lambda_max=args.lambda_max, noise=args.noise, kernel_size=args.blur_kernel,
        sample_mode=args.sample_mode)


def eval_setting(args: argparse.Namespace, scale: int) -> Setting:
    """The fixed evaluation degradation of ``--degradation --blur_type --sig --lambda_1
    --lambda_2 --theta --noise --blur_kernel --sample_mode`` (the convention's units) as a Setting
    whose parameters name their units; used by training validation and test.py."""
    return fixed_setting(args.degradation, scale, args.blur_type, sig=args.sig, lambda_1=args.lambda_1,
                         lambda_2=args.lambda_2, theta=args.theta, noise=args.noise,
                         kernel_size=args.blur_kernel, sample_mode=args.sample_mode)


def test_root(args: argparse.Namespace) -> Path:
    """``--test_path``, else ``DIR_DATA/benchmark``; when ``--dir_data`` is the training images'
    own folder (the CDSR README passes ``.../DF2K/HR``), the ``benchmark`` folder beside DF2K."""
    if args.test_path:
        return Path(args.test_path)
    root = Path(args.dir_data)
    candidates = [root / "benchmark", root.parent / "benchmark", root.parent.parent / "benchmark"]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def hr_images(args: argparse.Namespace, scale: int) -> Dict[str, List[Tuple[str, ImageSource]]]:
    """(name, path or array) HR images per ``--data_test`` set; the held-out sample photos
    (one set, 'photos') without ``--dir_data``/``--test_path``."""
    if args.dir_data is None and args.test_path is None:
        return {"photos": list(held_out_photos().items())}
    return {name: [(path.stem, path) for path in list_images(find_hr_dir(test_root(args), name, scale))]
            for name in args.data_test.split("+")}


def build_test_sets(args: argparse.Namespace, scale: Optional[int] = None) -> List[EvalSet]:
    """The ``--data_test`` sets under the fixed evaluation degradation (``eval_setting``), each
    named after its dataset: training validation, and test.py without ``--protocol``.
    ``scale`` defaults to ``--scale``."""
    scale = args.scale if scale is None else scale
    setting = eval_setting(args, scale)
    return [EvalSet(name, setting, images, name=name) for name, images in hr_images(args, scale).items()]


def build_protocol_sets(args: argparse.Namespace, scale: int) -> List[EvalSet]:
    """test.py's sets for ``--protocol`` (``--protocol_noise``) at ``scale``, setting by setting
    and each across the ``--data_test`` sets: read from ``--testsets`` or generated (seeded as
    scripts/make_testsets.py's files are). ``--sv_mode k`` > 0: the spatially variant setting of
    mode k alone."""
    if args.sv_mode:
        settings = [s for s in protocol_settings(args.protocol, scale, args.protocol_noise,
                                                 sv_modes=(args.sv_mode,))
                    if s.params.get("sv_mode") == args.sv_mode]
    else:
        settings = protocol_settings(args.protocol, scale, args.protocol_noise)
    if args.testsets:
        per_dataset = {name: read_protocol_sets(Path(args.testsets), args.protocol, name, settings)
                       for name in args.data_test.split("+")}
    else:
        per_dataset = {name: [EvalSet(name, s, images) for s in settings]
                       for name, images in hr_images(args, scale).items()}
    return [sets[i] for i in range(len(settings)) for sets in per_dataset.values()]
