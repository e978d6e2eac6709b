"""The decoded store (--data_cache) and the start-up checks of training images: the same items as
the PNG folder, rebuilt when damaged or stale, and one error line naming a bad file."""
import builtins
import errno
import json
import logging
import os
import re
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import option
import utility
from data import build_train_loader, build_train_set
from data.images import ImageError, read_image, write_png
from data.patch_pairs import PatchPairs
from data import store
from data.store import StoreError, store_folder, store_sources
from helpers import write_noise_images
from scripts import bench_data, prepare_data


def prepare_data_command(*argv: str) -> subprocess.CompletedProcess:
    script = Path(__file__).resolve().parents[1] / "scripts" / "prepare_data.py"
    return subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True)


def training_args(root: Path, *extra: str):
    return option.parse_args(["--dir_data", str(root), "--data_train", "T", "--preset", "cdsr",
                              "--model", "DASR", "--scale", "2", "--patch_size", "8", "--batch_size", "4",
                              "--test_every", "3", "--noise", "10", "--n_threads", "0",
                              "--queue_size", "8", *extra])


def write_mixed_images(folder: Path) -> None:
    """RGB, grayscale, RGBA and 16-bit PNGs: every conversion of read_image."""
    write_noise_images(folder, [(40, 50), (33, 61)])
    rng = np.random.default_rng(1)
    cv2.imwrite(str(folder / "gray.png"), rng.integers(0, 256, (36, 30), dtype=np.uint8))
    cv2.imwrite(str(folder / "rgba.png"), rng.integers(0, 256, (30, 44, 4), dtype=np.uint8))
    cv2.imwrite(str(folder / "deep.png"), rng.integers(0, 65536, (45, 32, 3), dtype=np.uint16))


@pytest.fixture
def store_log():
    """(level, message) of everything data.store logs (whatever the run logger's set-up)."""
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append((record.levelno, record.getMessage()))
    logger = logging.getLogger("cdsr.data")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def batches(args, dataset, seed: int = 5):
    return [batch for batch in build_train_loader(args, dataset, seed)]


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return torch.equal(a, b)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def entries(cache: Path):
    return sorted(cache.glob("*/*.npy"))


def test_store_and_png_folder_give_bit_identical_batches(tmp_path):
    write_mixed_images(tmp_path / "T")
    png_args = training_args(tmp_path)
    png = build_train_set(png_args)
    store_args = training_args(tmp_path, "--data_cache", str(tmp_path / "cache"), "--n_threads", "2")
    stored = build_train_set(store_args)
    assert [type(s).__name__ for s in stored.sources] == ["StoredImage"] * 5
    assert len(entries(tmp_path / "cache")) == 5
    from_png, from_store = batches(png_args, png), batches(store_args, stored)  # 0 and 2 workers
    assert len(from_png) == 3 and set(from_png[0]) == {"hr", "params", "noise"}
    assert all(same(a, b) for a, b in zip(from_png, from_store))
    # ... and the same as the decoded images held in memory.
    arrays = [read_image(s.path) for s in png.sources]
    in_memory = PatchPairs(arrays, png.patch, png.length, degradation=png.degradation,
                           lr_patch_size=png.lr_patch)
    assert all(same(a, b) for a, b in zip(from_png, batches(png_args, in_memory)))
    assert not same(from_png[0], batches(png_args, png, seed=6)[0])


def test_a_fresh_store_is_read_without_decoding(tmp_path, monkeypatch):
    write_noise_images(tmp_path / "T", [(40, 50), (33, 61)])
    cache = tmp_path / "cache"
    first = store_sources([tmp_path / "T"], cache)
    written = {p: p.stat().st_mtime_ns for p in entries(cache)}

    def no_decoding(path):
        raise AssertionError(f"decoded {path}")
    monkeypatch.setattr("data.store.read_image", no_decoding)
    monkeypatch.setattr("data.patch_pairs.read_image", no_decoding)
    again = store_sources([tmp_path / "T"], cache)
    assert {p: p.stat().st_mtime_ns for p in entries(cache)} == written
    corners = [(0, 0), (5, 9)]
    assert all(np.array_equal(a, b) for x, y in zip(first, again)
               for a, b in zip(x.windows(corners, 16), y.windows(corners, 16)))


def test_a_damaged_store_entry_is_rebuilt_with_a_warning_naming_it(tmp_path, store_log):
    write_noise_images(tmp_path / "T", [(40, 50), (33, 61), (30, 30)])
    cache = tmp_path / "cache"
    args = training_args(tmp_path, "--data_cache", str(cache))
    expected = batches(args, build_train_set(args))
    first, second, third = entries(cache)
    truncate(first)
    second.write_bytes(b"junk" + second.read_bytes()[4:])
    os.remove(third)
    dataset = build_train_set(args)
    warnings = [message for level, message in store_log if level == logging.WARNING]
    assert len(warnings) == 3
    assert f"decoded store entry {first} is truncated or damaged" in warnings[0]
    assert f"{second} has a damaged header" in warnings[1]
    assert f"{third} cannot be read" in warnings[2]
    assert all(same(a, b) for a, b in zip(expected, batches(args, dataset)))


def test_changed_new_and_removed_images_update_the_store(tmp_path, store_log):
    folder, cache = tmp_path / "T", tmp_path / "cache"
    write_noise_images(folder, [(40, 50), (33, 61), (30, 30)])
    store_sources([folder], cache)
    untouched = entries(cache)[1].stat().st_mtime_ns
    write_png(folder / "img_000.png", np.full((20, 24, 3), 7, np.uint8))  # same name, new image
    write_png(folder / "new.png", np.full((18, 18, 3), 9, np.uint8))
    (folder / "img_002.png").unlink()
    images = store_sources([folder], cache)
    assert [(Path(i.name).name, i.shape) for i in images] == [
        ("img_000.png", (20, 24)), ("img_001.png", (33, 61)), ("new.png", (18, 18))]
    assert (images[0].windows([(2, 3)], 8)[0] == 7).all()
    assert f"{folder / 'img_000.png'} changed since it was decoded into the store" in store_log[-2][1]
    assert "3 images, " in store_log[-1][1] and "decoded 2 in" in store_log[-1][1]
    assert [p.name for p in entries(cache)] == ["img_000.png.npy", "img_001.png.npy", "new.png.npy"]
    assert entries(cache)[1].stat().st_mtime_ns == untouched
    assert store_folder(cache, folder).name.startswith("T-")


@pytest.mark.parametrize("cache", [False, True], ids=["png", "store"])
def test_truncated_images_are_named_before_training(tmp_path, cache):
    write_noise_images(tmp_path / "T", [(40, 50), (33, 61), (30, 30), (30, 30)])
    truncate(tmp_path / "T" / "img_001.png")  # its header is still readable
    (tmp_path / "T" / "img_003.png").write_bytes(b"")
    extra = ["--n_threads", "2"] + (["--data_cache", str(tmp_path / "c")] if cache else [])
    with pytest.raises(ImageError) as caught:
        build_train_set(training_args(tmp_path, *extra))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot decode image {tmp_path / 'T' / 'img_001.png'}: ")
    assert message.endswith("(also unusable: img_003.png)")
    if cache:  # the good images stay decoded: fixing the folder decodes only the bad ones
        assert [p.name for p in entries(tmp_path / "c")] == ["img_000.png.npy", "img_002.png.npy"]


def test_a_store_image_smaller_than_the_patch_is_named(tmp_path):
    write_noise_images(tmp_path / "T", [(40, 50), (12, 50)])
    with pytest.raises(ImageError, match="img_001.png is 12x50, smaller than the HR patch 16x16"):
        build_train_set(training_args(tmp_path, "--data_cache", str(tmp_path / "c")))


@pytest.mark.parametrize("damage", ["image", "entry"])
def test_a_worker_error_reaches_the_user_as_one_line(tmp_path, capfd, damage):
    write_noise_images(tmp_path / "T", [(40, 50)])
    extra = ["--n_threads", "2"] + (["--data_cache", str(tmp_path / "c")] if damage == "entry" else [])
    args = training_args(tmp_path, *extra)
    dataset = build_train_set(args)
    damaged = tmp_path / "T" / "img_000.png" if damage == "image" else entries(tmp_path / "c")[0]
    truncate(damaged)  # after the start-up check, e.g. the disk under a long run

    def consume():
        try:
            batches(args, dataset)
        except ImageError as error:
            # Free the loader now: a reference cycle of torch's re-raise keeps it alive until
            # a later garbage collection, which then waits 5 s per worker to shut them down.
            traceback.clear_frames(error.__traceback__)
            raise

    assert utility.run_cli(consume) == 2
    lines = capfd.readouterr().err.strip().splitlines()  # the workers' output too
    assert lines[-1].startswith("error: ") and str(damaged) in lines[-1]
    assert [line for line in lines if not line.startswith("[ WARN:")] == lines[-1:]  # OpenCV's


def test_an_unwritable_store_is_one_error_naming_it(tmp_path, monkeypatch):
    write_noise_images(tmp_path / "T", [(40, 50), (33, 61)])
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreError, match=f"cannot write the decoded store {tmp_path / 'file'}/T-"):
        store_sources([tmp_path / "T"], tmp_path / "file")

    def disk_full(file, array):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(np, "save", disk_full)
    with pytest.raises(StoreError, match=r"cannot write .*img_000.png.npy \(No space left on device\)"):
        store_sources([tmp_path / "T"], tmp_path / "cache")
    left = [p.name for p in (tmp_path / "cache").glob("*/*") if p.name != ".lock"]
    assert left == ["index.json"]  # and no partial entry


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP])
def test_a_filesystem_without_file_locks_takes_turns_through_a_lock_file(code, tmp_path, monkeypatch,
                                                                          store_log):
    write_noise_images(tmp_path / "T", [(40, 50), (33, 61)])

    def refused(handle, operation):                       # some NFS and Lustre mounts
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(store.fcntl, "flock", refused)
    root = store_folder(tmp_path / "cache", tmp_path / "T")
    root.mkdir(parents=True)
    gone = subprocess.Popen(["true"])                     # a build that crashed left its file
    gone.wait()
    (root / ".lock.held").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    images = store_sources([tmp_path / "T"], tmp_path / "cache")
    assert [image.shape for image in images] == [(40, 50), (33, 61)]
    assert not (root / ".lock.held").exists()
    warnings = [message for level, message in store_log if level == logging.WARNING]
    assert warnings == [f"the filesystem of {root} refuses file locks ({os.strerror(code)}); "
                        f"processes take turns through {root / '.lock.held'} instead",
                        f"taking over {root / '.lock.held'}, left by pid {gone.pid}, which is gone"]


def test_a_complete_store_on_a_read_only_disk_is_used(tmp_path, monkeypatch):
    write_noise_images(tmp_path / "T", [(40, 50)])
    cache = tmp_path / "cache"
    expected = store_sources([tmp_path / "T"], cache)[0].windows([(1, 2)], 16)

    def read_only(path, mode="r", *args, **kwargs):
        if any(m in mode for m in "wax"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return builtins.open(path, mode, *args, **kwargs)
    monkeypatch.setattr("data.store.open", read_only, raising=False)
    (image,) = store_sources([tmp_path / "T"], cache)
    assert np.array_equal(image.windows([(1, 2)], 16)[0], expected[0])
    write_png(tmp_path / "T" / "new.png", np.zeros((30, 30, 3), np.uint8))
    with pytest.raises(StoreError, match=f"cannot write the decoded store {cache}/T-.* "
                                         r"\(Read-only file system\) and 1 images need decoding"):
        store_sources([tmp_path / "T"], cache)


def test_prepare_data_builds_the_store_main_py_reads(tmp_path, monkeypatch):
    write_noise_images(tmp_path / "DF2K" / "HR", [(40, 50), (33, 61)])
    cache = tmp_path / "cache"
    done = prepare_data_command("--dir_data", str(tmp_path), "--data_cache", str(cache))
    assert done.returncode == 0 and "decoded store" in done.stderr
    assert done.stdout.startswith(f"decoded store under {cache}: 2 images, 0.00 GB on disk")
    monkeypatch.setattr("data.store.read_image", None)  # main.py does not decode again
    args = option.parse_args(["--dir_data", str(tmp_path), "--data_cache", str(cache), "--model", "DASR",
                              "--patch_size", "8", "--n_threads", "0"])
    assert len(build_train_set(args).sources) == 2


def test_prepare_data_errors_are_one_line(tmp_path, capsys):
    assert prepare_data.main(["--dir_data", str(tmp_path), "--data_cache", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.startswith("error: training set 'DF2K' not found: tried ")
    assert prepare_data.main(["--dir_data", "anywhere"]) == 2
    assert capsys.readouterr().err == ("error: the following arguments are required: --data_cache "
                                       "(see --help)\n")


def test_bench_data_prints_its_table_and_the_ratio_last(tmp_path, capsys, monkeypatch):
    write_noise_images(tmp_path / "mine", [(200, 210), (200, 200)])
    monkeypatch.setattr(utility, "setup_logging", lambda **kwargs: None)  # leave the run logger
    argv = ["--hr_dir", str(tmp_path / "mine"), "--work", str(tmp_path / "w"), "--images", "2",
            "--workers", "1", "--batch_size", "2", "--seconds", "0.01"]
    assert bench_data.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-4].split() == ["mode", "png", "items/s", "store", "items/s", "store/png",
                                 "png/worker", "store/worker"]
    assert lines[-3].startswith("in-process") and lines[-2].startswith("1 worker")
    assert re.fullmatch(r"store/png items/s per worker: \d+x", lines[-1])
    assert sorted(p.name for p in (tmp_path / "w" / "HR").iterdir()) == ["img_000.png", "img_001.png"]
