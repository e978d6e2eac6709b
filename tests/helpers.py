"""Small models and inputs shared by several test files."""
import importlib.util
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import model
from data.images import write_png

ROOT = Path(__file__).resolve().parents[1]


def load_test_py():
    """The entry point test.py as a module, to call its ``main(argv)`` in this process (loaded
    from its path: the name ``test`` is also a standard-library package)."""
    spec = importlib.util.spec_from_file_location("test_py_entry_point", ROOT / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Tiny constructor arguments for every registered model (the paper sizes are the defaults):
# TINY for the contrastive (MoCo) models, TINY_KDSR for KDSR's teachers and students.
_TINY_CDSR = dict(n_feats=8, n_blocks=1, growth=4, embed_dim=16, codebook_size=8, queue_size=16)
TINY = {
    "cdsr": _TINY_CDSR,
    "cdsr-dasr-encoder": _TINY_CDSR,
    "cdsr-no-csc": _TINY_CDSR,
    "cdsr-no-dqa": _TINY_CDSR,
    "cdsr-no-patch": _TINY_CDSR,
    "cdsr-no-pixel": _TINY_CDSR,
    "dasr": dict(n_feats=16, n_groups=1, n_blocks=1, embed_dim=16, queue_size=16),
}
TINY_KDSR = {name: dict(n_feats=8, n_blocks=2, n_resblocks=1)
             for name in ("kdsr-s-l", "kdsr-s-m", "kdsr-t-l", "kdsr-t-m")}


def tiny(name: str, scale: int = 2, seed: int = 0, **overrides) -> nn.Module:
    """A tiny registered model with weights from ``seed``: ``TINY[name]`` (or
    ``TINY_KDSR[name]``) with ``overrides``."""
    torch.manual_seed(seed)
    return model.build_model(name, scale=scale, **{**{**TINY, **TINY_KDSR}[name], **overrides})


def tiny_pair(size: str = "m", scale: int = 2, seed: int = 0) -> nn.Module:
    """A tiny KDSR teacher and student of ``size`` (``TINY_KDSR`` widths) as the pair a
    student's run trains, with weights from ``seed``."""
    return model.KDSRDistillation(tiny(f"kdsr-t-{size}", scale, seed),
                                  tiny(f"kdsr-s-{size}", scale, seed + 1))


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    """Uniform random pixels in 0..255 of the given shape."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 255


def write_noise_images(folder: Path, sizes, seed: int = 0) -> None:
    """Random RGB PNGs ``img_000.png, img_001.png, ...`` of the given (height, width) sizes."""
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        write_png(folder / f"img_{i:03d}.png", rng.integers(0, 256, (h, w, 3)).astype(np.uint8))


def write_data_root(root: Path, train_sizes, test_sizes, seed: int = 0) -> Path:
    """``root/DF2K/HR`` (training) and ``root/benchmark/Set5/HR`` (validation) noise images of
    the given (height, width) sizes, where ``main.py --dir_data root`` finds them."""
    write_noise_images(root / "DF2K" / "HR", train_sizes, seed=seed)
    write_noise_images(root / "benchmark" / "Set5" / "HR", test_sizes, seed=seed + 1)
    return root


# The tiny run: a DASR of TINY_RUN_MODEL trained for 1 + 2 epochs of 4 iterations on conftest's
# data_root (every phase: encoder pre-training, joint, frozen encoder).
TINY_RUN_MODEL = dict(TINY["dasr"], n_feats=8, queue_size=8)
TINY_RUN = ("--model DASR --scale 2 --patch_size 8 --batch_size 2 --queue_size 8 --test_every 4 "
            "--n_threads 0 --epochs_encoder 1 --epochs_sr 2 --freeze_epoch 3 --data_test Set5 --cpu")


def tiny_run_args(data_root: Path, save: str, *extra: str):
    """The tiny run's parsed options on ``data_root``, run folder ``save``; ``extra`` flags win."""
    import option
    return option.parse_args(f"--dir_data {data_root} --save {save} {TINY_RUN}".split() + list(extra))


def tiny_trainer(args, run_dir: Path, name: str = "dasr", **overrides):
    """A Trainer of ``args`` on a tiny model ``name`` (``TINY[name]`` with ``overrides``; the
    tiny run passes ``TINY_RUN_MODEL``) on the CPU, resumed when ``args.resume`` asks for it."""
    from data import build_test_sets, build_train_set
    from loss import build_loss
    from trainer import Trainer

    trainer = Trainer(args, tiny(name, 2, **overrides), build_loss(args.loss, args.c_weight),
                      build_train_set(args), build_test_sets(args), torch.device("cpu"),
                      run_dir=run_dir)
    if args.resume:
        trainer.resume(args.resume)
    return trainer


# The tiny KDSR run: the tiny run's data and budget with a KDSR student, 1 teacher epoch, 1
# distillation-encoder epoch and 1 distillation epoch (trainers get tiny_pair()).
TINY_KDSR_RUN = ("--model KDSR-S-M --epochs_teacher 1 --epochs_encoder 1 --epochs_sr 1 "
                 "--test_every 2").split()


def tiny_kdsr_trainer(args, run_dir: Path, pair: nn.Module = None):
    """A Trainer of ``args`` (a KDSR student's run) on ``pair`` (default ``tiny_pair()``) on
    the CPU, with the criterion of a KDSR run, resumed when ``args.resume`` asks for it."""
    from data import build_test_sets, build_train_set
    from loss import make_loss
    from trainer import Trainer

    pair = tiny_pair() if pair is None else pair
    trainer = Trainer(args, pair, make_loss(args, pair), build_train_set(args),
                      build_test_sets(args), torch.device("cpu"), run_dir=run_dir)
    if args.resume:
        trainer.resume(args.resume)
    return trainer


@contextmanager
def small_filesystem(path: Path, size: str):
    """A tmpfs of ``size`` (mount's notation: '1m') mounted on ``path`` for the block: a real
    disk that fills up. Skips the test where mounting is not allowed (it needs root)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                 capture_output=True, text=True)
        reason = mounted.stderr.strip() if mounted.returncode else ""
    except OSError as error:
        reason = str(error)
    if reason:
        pytest.skip(f"a real full disk needs a small tmpfs, and mounting one failed ({reason}): "
                    "run the tests as root to include this case")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)


def collapsed_codebook(rows: int = 16, dim: int = 16, chosen: int = 3):
    """A CSC codebook (``model.lpe.DegradationCodebook``) collapsed by hand: every input's
    attention on row ``chosen`` (the keys are scaled unit vectors, the query ignores its input
    and points at the chosen row's key). Needs ``dim >= rows``."""
    from model.lpe import DegradationCodebook

    codebook = DegradationCodebook(dim, rows)
    with torch.no_grad():
        codebook.entries.copy_(10 * torch.eye(rows, dim))
        codebook.key_proj.weight.copy_(torch.eye(dim))
        codebook.key_proj.bias.zero_()
        codebook.query_proj.weight.zero_()
        codebook.query_proj.bias.copy_(5 * torch.eye(dim)[chosen])
    return codebook


def read_events(folder: Path) -> dict:
    """{tag: [(step, value)]} of every TensorBoard scalar in ``folder``, as TensorBoard reads
    them (a resumed run's purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
