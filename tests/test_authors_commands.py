"""The authors' own command lines run here with only the data folder changed (README, "The
authors' commands"): CDSR's README train and test lines, DASR's main.sh and test.sh, and EDSR's
``main.py --test_only`` habit, through the real entry points (subprocesses), on authors'-format
checkpoints of the paper-size networks at the paths the commands name.

The training lines are the verbatim commands followed by a few flags that shrink the budget to
seconds (argparse lets the last value of a flag win, so the authors' part is parsed unchanged).
"""
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import write_noise_images
from model import build_model
from model.checkpoint import ours_to_authors, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CDSR_TEST = ("test.py --dir_data=DIR --model=CDSR --scale=2 --blur_type=aniso_gaussian --noise=0 "
             "--pre_train experiment/cdsr_x2_bicubic_aniso/model/model_492_psnr_36.17.pt --sv_mode 0 "
             "--n_GPUs=1")
CDSR_TRAIN = ("main.py --dir_data=DIR/DF2K/HR --model=CDSR --scale=2 --blur_type=aniso_gaussian "
              "--noise=0 --sig_min=0.35 --sig_max=5 --batch_size=32 --save=cdsr --epochs_encoder=-1 "
              "--n_GPUs=1 --freeze_epoch 600 --sv_mode 0")
DASR_MAIN = ("main.py --dir_data='DIR' --model='blindsr' --scale='2' --blur_type='iso_gaussian' "
             "--noise=0.0 --sig_min=0.2 --sig_max=4.0")
DASR_TEST_ISO = ("test.py --test_only --dir_data='DIR' --data_test='Set14' --model='blindsr' --scale='2' "
                 "--resume=600 --blur_type='iso_gaussian' --noise=0.0 --sig=1.2")
DASR_TEST_ANISO = ("test.py --test_only --dir_data='DIR' --data_test='Set14' --model='blindsr' "
                   "--scale='4' --resume=600 --blur_type='aniso_gaussian' --noise=10.0 --theta=0.0 "
                   "--lambda_1=0.2 --lambda_2=4.0")
SMALL_BUDGET = "--epochs_sr 1 --test_every 1 --batch_size 2 --queue_size 4 --patch_size 12"
AUTHORS_FILES = {  # (model, scale) of the checkpoints the commands load
    "experiment/cdsr_x2_bicubic_aniso/model/model_492_psnr_36.17.pt": ("cdsr", 2),
    "experiment/blindsr_x2_bicubic_iso/model/model_600.pt": ("dasr", 2),
    "experiment/blindsr_x4_bicubic_aniso/model/model_600.pt": ("dasr", 4),
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """DIR/DF2K/HR (training) and DIR/benchmark/{Set5,Set14} (tiny images), and the authors'
    checkpoints where the commands expect them (paper-size networks, their keys)."""
    root = tmp_path_factory.mktemp("authors")
    write_noise_images(root / "DIR" / "DF2K" / "HR", [(64, 64), (56, 72)])
    for name in ("Set5", "Set14"):
        write_noise_images(root / "DIR" / "benchmark" / name, [(48, 48), (40, 44)], seed=3)
    torch.manual_seed(0)
    for path, (name, scale) in AUTHORS_FILES.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(ours_to_authors(build_model(name, scale=scale).state_dict(), name), root / path)
    return root


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python <command>`` with the authors' quoting, DIR replaced by the data folder."""
    argv = shlex.split(command.replace("DIR", str(cwd / "DIR")))
    result = subprocess.run([sys.executable, str(ROOT / argv[0]), *argv[1:]], cwd=cwd,
                            capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    return result


def test_cdsr_readme_test_line_scores_its_checkpoint(workspace):
    out = run(CDSR_TEST, workspace)
    assert "# CDSR x2 on a fixed degradation" in out.stdout and "| Set5 |" in out.stdout
    assert "model_492_psnr_36.17.pt" in (workspace / "experiment/test/results.md").read_text()


@pytest.mark.parametrize("command, folder", [(DASR_TEST_ISO, "blindsr_x2_bicubic_iso"),
                                             (DASR_TEST_ANISO, "blindsr_x4_bicubic_aniso")])
def test_dasr_test_sh_loads_model_600_by_resume(workspace, command, folder):
    out = run(command, workspace)
    assert f"--resume 600: scoring experiment/{folder}/model/model_600.pt" in out.stderr
    assert "# DASR" in out.stdout and "| Set14 |" in out.stdout
    assert (workspace / "experiment" / folder / "test" / "results.md").is_file()
    assert (workspace / "experiment" / folder / "model" / "model_600.pt").is_file()    # untouched


def test_edsr_habit_main_test_only_scores_as_test_py(workspace):
    command = DASR_TEST_ISO.replace("test.py", "main.py") + " --epochs_sr 5 --lr_sr=1e-4"
    out = run(command, workspace)
    assert "--test_only: ignoring the training flags --epochs_sr --lr_sr" in out.stderr
    assert "| dasr iso std 1.2 |" in out.stdout


def test_dasr_main_sh_trains_blindsr_with_dasrs_recipe(workspace):
    out = run(f"{DASR_MAIN} --epochs_encoder 1 {SMALL_BUDGET}", workspace)
    assert "DASR x2" in out.stderr and "preset dasr" in out.stderr
    last = read_checkpoint(workspace / "experiment/blindsr/checkpoint/last.pt")
    assert last["model_name"] == "dasr" and last["epoch"] == 2
    assert last["config"]["sig_max"] == 4.0 and last["config"]["lr_encoder"] == 1e-3   # DASR's recipe
    assert "Set14: PSNR" in out.stdout


def test_cdsr_readme_train_line_trains(workspace):
    out = run(f"{CDSR_TRAIN} {SMALL_BUDGET}", workspace)
    last = read_checkpoint(workspace / "experiment/cdsr/checkpoint/last.pt")
    assert last["model_name"] == "cdsr" and last["scale"] == 2 and last["phase"] == "joint"
    assert "Set5: PSNR" in out.stdout
