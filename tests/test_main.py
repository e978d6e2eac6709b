"""main.py end to end in a subprocess: a tiny real run whose checkpoint test.py can use."""
import subprocess
import sys
from pathlib import Path

import pytest

from data.images import read_image
from model.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def run(script, *argv, cwd):
    return subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=cwd, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}, timeout=600)


@pytest.mark.parametrize("model", ["CDSR", "DASR"])
def test_short_run_all_phases_then_test_py_upscales_an_image(model, data_root, tmp_path):
    smoke = run("main.py", "--model", model, "--dir_data", str(data_root), "--scale", "2",
                "--patch_size", "12", "--batch_size", "2", "--queue_size", "8", "--epochs_encoder", "1",
                "--epochs_sr", "2", "--freeze_epoch", "3", "--test_every", "2", "--n_threads", "0",
                "--data_test", "Set5", "--save", "smoke", "--cpu", cwd=tmp_path)
    assert smoke.returncode == 0, smoke.stderr
    run_dir = tmp_path / "experiment" / "smoke"
    log = (run_dir / "log.txt").read_text()
    assert all(f"phase '{p}'" in log for p in ("encoder", "joint", "freeze"))
    assert "Set5: PSNR" in smoke.stdout and "bicubic" in smoke.stdout
    figure = smoke.stdout.strip().splitlines()[-1].split("bicubic | SR | HR crops: ")[1]
    assert figure == "experiment/smoke/figures/compare_Set5.png" and (tmp_path / figure).is_file()
    assert read_image(run_dir / "results" / "Set5" / "img_000.png").shape == (32, 36, 3)
    assert (run_dir / "config.json").is_file()
    assert read_checkpoint(run_dir / "checkpoint/last.pt")["model_kwargs"]["queue_size"] == 8

    lr = data_root / "benchmark/Set5/HR/img_000.png"
    sr = run("test.py", "--pre_train", str(run_dir / "checkpoint/last.pt"), "--input", str(lr),
             "--output", str(tmp_path / "sr"), "--cpu", cwd=tmp_path)
    assert sr.returncode == 0, sr.stderr
    assert read_image(tmp_path / "sr/img_000.png").shape == (64, 72, 3)


def test_bad_data_gives_one_error_line(data_root, tmp_path):
    missing = run("main.py", "--dir_data", str(tmp_path / "nowhere"), "--cpu", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: ") and "nowhere" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1

    (tmp_path / "bad/DF2K").mkdir(parents=True)
    (tmp_path / "bad/DF2K/broken.png").write_bytes(b"junk")
    corrupt = run("main.py", "--dir_data", str(tmp_path / "bad"), "--test_path",
                  str(data_root / "benchmark"), "--cpu", cwd=tmp_path)
    assert corrupt.returncode == 2 and "broken.png" in corrupt.stderr
    assert len(corrupt.stderr.strip().splitlines()) == 1
