"""Bad input, as a new user would give it: one ``error:`` line naming the thing, exit status 2,
no traceback, and nothing lost (an existing run folder untouched, no half-written file).

main.py and test.py run in this process through ``utility.run_cli`` (what their command lines
do), except where a signal or a full disk needs a real process or device.
"""
import csv
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import main as main_py
import utility
from helpers import TINY, load_test_py, tiny, write_noise_images
from model.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
test_py = load_test_py()


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Data folders, images and checkpoints of every kind, good and bad."""
    root = tmp_path_factory.mktemp("bad_input")
    write_noise_images(root / "data/DF2K/HR", [(40, 44)] * 2)
    write_noise_images(root / "data/benchmark/Set5/HR", [(32, 32)], seed=1)
    (root / "empty").mkdir()
    (root / "text").mkdir()
    (root / "text/notes.txt").write_text("not an image")
    write_noise_images(root / "corrupt", [(40, 44)])
    (root / "corrupt/broken.png").write_bytes(b"junk")
    write_noise_images(root / "truncated", [(40, 44)])
    whole = (root / "truncated/img_000.png").read_bytes()
    (root / "truncated/cut.png").write_bytes(whole[:len(whole) // 2])
    write_noise_images(root / "small", [(40, 44), (20, 44)])
    kinds = root / "kinds/DF2K/HR"
    kinds.mkdir(parents=True)
    gray = np.random.default_rng(0).integers(0, 256, (40, 44), dtype=np.uint8)
    cv2.imwrite(str(kinds / "gray.png"), gray)
    cv2.imwrite(str(kinds / "rgba.png"), np.dstack([gray] * 3 + [np.full_like(gray, 200)]))
    cv2.imwrite(str(kinds / "deep.png"), gray.astype(np.uint16)[..., None].repeat(3, 2) * 257)
    checkpoints = root / "ckpt"
    for name, model, scale, state in [("good", "dasr", 2, None), ("cdsr", "cdsr", 2, None),
                                      ("x4", "dasr", 4, None), ("missing_key", "dasr", 2, "drop"),
                                      ("diverged", "dasr", 2, "inf")]:
        weights = tiny(model, scale).state_dict()
        if state == "drop":
            weights.pop("generator.tail_conv.weight")
        if state == "inf":
            weights["generator.tail_conv.weight"].fill_(float("inf"))
        save_checkpoint(checkpoints / f"{name}.pt", model_name=model, scale=scale, model=weights,
                        model_kwargs=TINY[model])
    (checkpoints / "corrupt.pt").write_bytes(b"not a checkpoint")
    (checkpoints / "empty.pt").write_bytes(b"")
    inputs = root / "inputs"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "ok.png"), gray[:24, :24])
    (root / "mixed").mkdir()
    cv2.imwrite(str(root / "mixed/a.png"), gray[:24, :24])
    (root / "mixed/b.png").write_bytes(b"junk")
    (root / "tiny_input").mkdir()
    cv2.imwrite(str(root / "tiny_input/dot.png"), gray[:8, :8])
    return root


def call(entry, argv, cwd, monkeypatch, capsys):
    """(exit status, stderr lines) of an entry point run as its command line runs it."""
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    code = utility.run_cli(lambda: entry(argv))
    return code, capsys.readouterr().err.strip().splitlines()


def assert_one_error_line(code, lines, *names):
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not any("Traceback" in line for line in lines)
    for name in names:
        assert name in lines[0], (name, lines[0])


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


TRAIN = ["--model", "DASR", "--scale", "2", "--patch_size", "12", "--batch_size", "2",
         "--queue_size", "8", "--epochs_encoder", "1", "--epochs_sr", "0", "--test_every", "1",
         "--n_threads", "0", "--data_test", "Set5", "--save", "run", "--cpu"]

MAIN_CASES = {
    "missing data folder": (["--dir_data", "ROOT/nowhere"], ["nowhere"]),
    "empty training folder": (["--dir_data", "ROOT/empty", "--test_path", "ROOT/data/benchmark"],
                              ["empty", "not found"]),
    "folder of non-images": (["--dir_data", "ROOT/text", "--test_path", "ROOT/data/benchmark"],
                             ["text", "holds no images"]),
    "corrupt image": (["--dir_data", "ROOT/corrupt", "--test_path", "ROOT/data/benchmark"],
                      ["broken.png"]),
    "truncated image": (["--dir_data", "ROOT/truncated", "--test_path", "ROOT/data/benchmark"],
                        ["cut.png"]),
    "image smaller than a patch": (["--dir_data", "ROOT/small", "--test_path", "ROOT/data/benchmark",
                                    "--patch_size", "16"], ["img_001.png", "smaller than the HR patch"]),
    "missing benchmark set": (["--dir_data", "ROOT/data", "--data_test", "Set14"], ["Set14"]),
    "batch size 0": (["--dir_data", "ROOT/data", "--batch_size", "0"], ["--batch_size"]),
    "patch too small for the blur": (["--dir_data", "ROOT/data", "--patch_size", "1"],
                                     ["--patch_size 1", "blur"]),
    "patch too small for CDSR": (["--dir_data", "ROOT/data", "--model", "CDSR", "--patch_size", "8"],
                                 ["--patch_size 8", "CDSR"]),
    "scale 5": (["--dir_data", "ROOT/data", "--scale", "5"], ["--scale"]),
    "negative learning rate": (["--dir_data", "ROOT/data", "--lr_sr", "-1"], ["--lr_sr"]),
    "freeze inside pre-training": (["--dir_data", "ROOT/data", "--epochs_encoder", "3", "--epochs_sr",
                                    "1", "--freeze_epoch", "2"], ["--freeze_epoch 2"]),
    "queue not a multiple of the batch": (["--dir_data", "ROOT/data", "--queue_size", "7"], ["--queue_size 7"]),
    "unknown precision": (["--dir_data", "ROOT/data", "--precision", "fp8"], ["--precision"]),
    "unknown model": (["--dir_data", "ROOT/data", "--model", "CDRS"], ["CDRS", "cdsr"]),
    "missing pre_train": (["--dir_data", "ROOT/data", "--pre_train", "ROOT/ckpt/none.pt"], ["none.pt"]),
    "corrupt pre_train": (["--dir_data", "ROOT/data", "--pre_train", "ROOT/ckpt/corrupt.pt"], ["corrupt.pt"]),
    "pre_train of another model": (["--dir_data", "ROOT/data", "--pre_train", "ROOT/ckpt/cdsr.pt"],
                                   ["cdsr.pt", "CDSR x2", "DASR x2"]),
    "pre_train of another scale": (["--dir_data", "ROOT/data", "--pre_train", "ROOT/ckpt/x4.pt"],
                                   ["x4.pt", "DASR x4"]),
    "diverged pre_train": (["--dir_data", "ROOT/data", "--pre_train", "ROOT/ckpt/diverged.pt"],
                           ["diverged.pt", "non-finite"]),
    "resume without a checkpoint": (["--dir_data", "ROOT/data", "--save", "fresh", "--resume"],
                                    ["fresh", "cannot resume"]),
}


@pytest.mark.parametrize("case", sorted(MAIN_CASES))
def test_main_py(case, ws, tmp_path, monkeypatch, capsys):
    extra, names = MAIN_CASES[case]
    argv = [a.replace("ROOT", str(ws)) for a in TRAIN + extra]
    (tmp_path / "experiment/run/checkpoint").mkdir(parents=True)
    (tmp_path / "experiment/run/checkpoint/last.pt").write_bytes(b"an earlier run's checkpoint")
    before = snapshot(tmp_path)
    code, lines = call(main_py.main, argv, tmp_path, monkeypatch, capsys)
    assert_one_error_line(code, lines, *names)
    assert snapshot(tmp_path) == before and not (tmp_path / "experiment/fresh").exists()


def test_grayscale_rgba_and_16_bit_training_images_are_read(ws, tmp_path, monkeypatch, capsys):
    argv = TRAIN + ["--dir_data", str(ws / "kinds"), "--test_path", str(ws / "data/benchmark")]
    code, lines = call(main_py.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 0, lines
    assert (tmp_path / "experiment/run/checkpoint/last.pt").is_file()


TEST_CASES = {
    "missing checkpoint": (["--pre_train", "ROOT/ckpt/none.pt"], ["none.pt", "not found"]),
    "corrupt checkpoint": (["--pre_train", "ROOT/ckpt/corrupt.pt"], ["corrupt.pt"]),
    "empty checkpoint": (["--pre_train", "ROOT/ckpt/empty.pt"], ["empty.pt"]),
    "checkpoint of another model": (["--pre_train", "ROOT/ckpt/good.pt", "--model", "cdsr"],
                                    ["good.pt", "DASR x2", "CDSR x2"]),
    "checkpoint of another scale": (["--pre_train", "ROOT/ckpt/good.pt", "--scale", "4"], ["good.pt", "x4"]),
    "checkpoint with a missing key": (["--pre_train", "ROOT/ckpt/missing_key.pt"],
                                      ["missing_key.pt", "generator.tail_conv.weight"]),
    "diverged checkpoint": (["--pre_train", "ROOT/ckpt/diverged.pt"], ["diverged.pt", "non-finite"]),
    "missing input": (["--input", "ROOT/none.png"], ["none.png"]),
    "empty input folder": (["--input", "ROOT/empty"], ["empty", "holds no images"]),
    "corrupt image in the input folder": (["--input", "ROOT/mixed"], ["b.png"]),
    "input smaller than CDSR reads": (["--pre_train", "ROOT/ckpt/cdsr.pt", "--input", "ROOT/tiny_input"],
                                      ["dot.png", "12"]),
    "output that is a file": (["--input", "ROOT/inputs", "--output", "ROOT/inputs/ok.png"], ["ok.png"]),
    "nonsense tile": (["--input", "ROOT/inputs", "--chop", "--tile", "0"], ["--tile"]),
    "training flag": (["--input", "ROOT/inputs", "--lr_sr", "1"], ["--lr_sr"]),
    "missing benchmark set": (["--test_path", "ROOT/data/benchmark", "--data_test", "Set14"], ["Set14"]),
}


@pytest.mark.parametrize("case", sorted(TEST_CASES))
def test_test_py(case, ws, tmp_path, monkeypatch, capsys):
    extra, names = TEST_CASES[case]
    argv = ["--pre_train", str(ws / "ckpt/good.pt"), "--cpu", "--output", str(tmp_path / "out")]
    argv += [a.replace("ROOT", str(ws)) for a in extra]
    before = snapshot(ws)
    code, lines = call(test_py.main, argv, tmp_path, monkeypatch, capsys)
    assert_one_error_line(code, lines, *names)
    assert snapshot(ws) == before


def test_a_mixed_input_folder_writes_nothing_for_the_broken_file(ws, tmp_path, monkeypatch, capsys):
    argv = ["--pre_train", str(ws / "ckpt/good.pt"), "--cpu", "--input", str(ws / "mixed"),
            "--output", str(tmp_path / "out")]
    code, lines = call(test_py.main, argv, tmp_path, monkeypatch, capsys)
    assert code == 2 and "b.png" in lines[-1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]


# ----------------------------------------------------------------------------- faults
@pytest.mark.parametrize("target", ["log.txt", "losses.csv"])
def test_a_full_disk_under_a_run_file_is_one_line_and_keeps_the_checkpoint(target, ws, tmp_path,
                                                                            monkeypatch, capsys):
    argv = TRAIN + ["--dir_data", str(ws / "data")]
    first = call(main_py.main, argv, tmp_path, monkeypatch, capsys)
    assert first[0] == 0, first[1]
    run = tmp_path / "experiment/run"
    last = (run / "checkpoint/last.pt").read_bytes()
    if target == "log.txt":                     # /dev/full: every write fails with ENOSPC
        if not Path("/dev/full").exists():
            pytest.skip("needs /dev/full")
        (run / target).unlink()
        (run / target).symlink_to("/dev/full")
    else:                                       # the table is read too: fail its writes only
        def full(self, rows):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(csv.DictWriter, "writerows", full)
    code, lines = call(main_py.main, argv + ["--resume", "--epochs_encoder", "2"], tmp_path,
                       monkeypatch, capsys)
    assert code == 2 and lines[-1].startswith("error: cannot write") and target in lines[-1], lines
    assert "No space left on device" in lines[-1] and not any("Traceback" in line for line in lines)
    assert (run / "checkpoint/last.pt").read_bytes() == last
    assert not (tmp_path / "experiment/run.lock").exists()


def test_a_checkpoint_that_cannot_be_written_leaves_the_previous_one(ws, tmp_path, monkeypatch, capsys):
    argv = TRAIN + ["--dir_data", str(ws / "data")]
    assert call(main_py.main, argv, tmp_path, monkeypatch, capsys)[0] == 0
    checkpoints = tmp_path / "experiment/run/checkpoint"
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0\n"
                           "PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    code, lines = call(main_py.main, argv + ["--resume", "--epochs_encoder", "2"], tmp_path,
                       monkeypatch, capsys)
    assert code == 2 and lines[-1].startswith("error: cannot write checkpoint"), lines
    assert "checkpoint/" in lines[-1] and "file write failed" in lines[-1]
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before   # no temp file left


def test_ctrl_c_during_test_py(ws, tmp_path):
    folder = tmp_path / "many"
    write_noise_images(folder, [(64, 64)] * 400)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, str(ROOT / "test.py"), "--pre_train", str(ws / "ckpt/good.pt"),
                            "--input", str(folder), "--output", str(tmp_path / "out"), "--cpu"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any((tmp_path / "out").glob("*.png")):
        time.sleep(0.1)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130
    assert stderr.strip().splitlines()[-1] == "interrupted" and "Traceback" not in stderr
    for written in (tmp_path / "out").glob("*.png"):      # every file written is a whole image
        assert cv2.imread(str(written)).shape == (128, 128, 3)
