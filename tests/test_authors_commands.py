"""The authors' own command lines run here with only the data folder changed (README, "The
authors' commands"): CDSR's README train and test lines, DASR's main.sh and test.sh, KDSR's
test_*.sh and main_*_stage{3,4}.sh (their main_*_stage*.py becomes main.py), and EDSR's
``main.py --test_only`` habit, through the real entry points (subprocesses), on authors'-format
checkpoints of the paper-size networks at the paths the commands name.

The training lines are the verbatim commands followed by a few flags that shrink the budget to
seconds (argparse lets the last value of a flag win, so the authors' part is parsed unchanged).
"""
import json
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
# KDSR-classic's scripts, each joined into one line (main_*_stage*.py -> main.py).
KDSR_TEST_ISO_M = ("main.py --test_only --dir_data='DIR' --data_test='Set5+Set14+B100+Urban100+MANGA109' "
                   "--model='blindsr' --scale='4' --resume=0 --pre_train_ST 'experiment/KDSRsM_iso_x4.pt' "
                   "--n_GPUs=1 --save 'KDSRsM_iso_test' --blur_type='iso_gaussian' --noise 0 "
                   "--save_results False")
KDSR_TEST_ISO_L = ("main.py --test_only --dir_data='DIR' --data_test='Set5+Set14+B100+Urban100+MANGA109' "
                   "--model='blindsr' --scale='4' --resume=0 --pre_train_ST 'experiment/KDSRsL_iso_x4.pt' "
                   "--n_GPUs=1 --save 'KDSRsL_iso_test' --blur_type='iso_gaussian' --noise 0 "
                   "--save_results False --n_feats 128 --n_blocks 28 --n_resblocks 5")
KDSR_TEST_ANISO = ("main.py --dir_data='DIR' --model='blindsr' --scale='4' --blur_type='aniso_gaussian' "
                   "--lambda_1 3.5 --lambda_2 1.5 --theta 30 --n_GPUs=1 --data_test Set14 "
                   "--save 'KDSRsM_anisonoise_test' --pre_train_ST=\"./experiment/KDSRsM_anisonoise_x4.pt\" "
                   "--resume 0 --test_only --save_results False")
_KDSR_ISO = ("main.py --dir_data='DIR' --model='blindsr' --scale='4' --blur_type='iso_gaussian' --noise=0 "
             "--sig_min=0.2 --sig_max=4.0 --sig=3.6 --n_GPUs=4 --epochs_encoder 0")
KDSR_STAGE3_ISO_M = (f"{_KDSR_ISO} --epochs_sr 500 --data_test Set14 --st_save_epoch 495 --data_train DF2K "
                     "--save 'KDSRsMx4_iso_stage3' --patch_size 64 --batch_size 64")
KDSR_STAGE4_ISO_M = (f"{_KDSR_ISO} --epochs_sr 600 --lr_decay_sr 150 --data_test Set14 --st_save_epoch 0 "
                     "--data_train DF2K --save 'KDSRsMx4_iso_stage4' "
                     "--pre_train_TA=\"experiment/KDSRsMx4_iso_stage3_x4_bicubic_iso/model/model_TA_last.pt\" "
                     "--pre_train_ST=\"experiment/KDSRsMx4_iso_stage3_x4_bicubic_iso/model/model_TA_last.pt\" "
                     "--lr_encoder 2e-4 --patch_size 64 --batch_size 64 --resume 0")
KDSR_STAGE4_ANISO = ("main.py --dir_data='DIR' --model='blindsr' --scale='4' --blur_type='aniso_gaussian' "
                     "--noise=25.0 --lambda_min=0.2 --lambda_max=4.0 --lambda_1 4.0 --lambda_2 1.5 --theta 120 "
                     "--n_GPUs=4 --epochs_encoder 100 --epochs_sr 500 --data_test Set14 --st_save_epoch 495 "
                     "--data_train DF2K --save 'KDSRsMx4_anisonoise_stage4' "
                     "--pre_train_TA=\"./experiment/KDSRsMx4_anisonoise_stage3_x4_bicubic_aniso/model/"
                     "model_TA_last.pt\" "
                     "--pre_train_ST=\"./experiment/KDSRsMx4_anisonoise_stage3_x4_bicubic_aniso/model/"
                     "model_TA_last.pt\" "
                     "--resume 0 --lr_encoder 2e-4 --patch_size 64 --batch_size 64")
KDSR_BUDGET = "--epochs_teacher 1 --epochs_sr 1 --test_every 1 --batch_size 2 --patch_size 8"
AUTHORS_FILES = {  # (model, scale) of the checkpoints the commands load
    "experiment/cdsr_x2_bicubic_aniso/model/model_492_psnr_36.17.pt": ("cdsr", 2),
    "experiment/blindsr_x2_bicubic_iso/model/model_600.pt": ("dasr", 2),
    "experiment/blindsr_x4_bicubic_aniso/model/model_600.pt": ("dasr", 4),
    "experiment/KDSRsM_iso_x4.pt": ("kdsr-s-m", 4),                   # KDSR's published files
    "experiment/KDSRsL_iso_x4.pt": ("kdsr-s-l", 4),
    "experiment/KDSRsM_anisonoise_x4.pt": ("kdsr-s-m", 4),
    "experiment/KDSRsMx4_iso_stage3_x4_bicubic_iso/model/model_TA_last.pt": ("kdsr-t-m", 4),
    "experiment/KDSRsMx4_anisonoise_stage3_x4_bicubic_aniso/model/model_TA_last.pt": ("kdsr-t-m", 4),
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """DIR/DF2K/HR (training) and DIR/benchmark/{Set5,Set14} (tiny images), and the authors'
    checkpoints where the commands expect them (paper-size networks, their keys)."""
    root = tmp_path_factory.mktemp("authors")
    write_noise_images(root / "DIR" / "DF2K" / "HR", [(64, 64), (56, 72)])
    for name in ("Set5", "Set14", "B100", "Urban100", "MANGA109"):
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


# ----------------------------------------------------------------------------- KDSR
@pytest.mark.parametrize("command, save, published", [
    (KDSR_TEST_ISO_M, "KDSRsM_iso_test", "KDSRsM_iso_x4.pt"),
    (KDSR_TEST_ISO_L, "KDSRsL_iso_test", "KDSRsL_iso_x4.pt"),
    (KDSR_TEST_ANISO, "KDSRsM_anisonoise_test", "KDSRsM_anisonoise_x4.pt")])
def test_kdsr_test_scripts_score_the_published_students(workspace, command, save, published):
    """Their test_*.sh through main.py --test_only: --pre_train_ST is the checkpoint, their
    --model='blindsr' accepts it, the L widths are checked against it."""
    out = run(command, workspace)
    name = "KDSR-S-L" if "KDSRsL" in published else "KDSR-S-M"
    assert f"# {name} x4 on a fixed degradation" in out.stdout
    sets = ("Set14",) if "aniso" in save else ("Set5", "Set14", "B100", "Urban100", "MANGA109")
    assert all(f"| {s} " in out.stdout or f" {s} |" in out.stdout for s in sets), out.stdout
    assert "ignoring the training flags" not in out.stderr                  # every flag is used
    assert published in (workspace / "experiment" / save / "results.md").read_text()
    assert not (workspace / "experiment" / save / "results").exists()      # --save_results False


def test_kdsr_test_script_with_the_other_size_is_refused(workspace):
    command = KDSR_TEST_ISO_M + " --n_feats 128 --n_blocks 28 --n_resblocks 5"
    argv = shlex.split(command.replace("DIR", str(workspace / "DIR")))
    result = subprocess.run([sys.executable, str(ROOT / argv[0]), *argv[1:]], cwd=workspace,
                            capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: experiment/KDSRsM_iso_x4.pt holds KDSR-S-M (--n_feats 64 --n_blocks 53 "
        "--n_resblocks 9), not --n_feats 128 --n_blocks 28 --n_resblocks 5 as requested")


def test_kdsr_stage3_line_trains_the_teacher(workspace):
    out = run(f"{KDSR_STAGE3_ISO_M} {KDSR_BUDGET}", workspace)
    assert "KDSR-T-M x4" in out.stderr and "preset kdsr-iso" in out.stderr
    folder = workspace / "experiment/KDSRsMx4_iso_stage3/checkpoint"
    last = read_checkpoint(folder / "last.pt")
    assert (last["model_name"], last["phase"], last["epoch"]) == ("kdsr-t-m", "teacher", 1)
    assert last["config"]["sig_max"] == 4.0 and last["config"]["lr_decay_teacher"] == 125
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "last.pt"]   # 1 <= 495: not kept
    assert "Set14: PSNR" in out.stdout


@pytest.mark.parametrize("command, save, name, phases", [
    (KDSR_STAGE4_ISO_M, "KDSRsMx4_iso_stage4", "kdsr-s-m", ["distill"]),
    (f"{KDSR_STAGE4_ANISO} --epochs_encoder 1", "KDSRsMx4_anisonoise_stage4", "kdsr-s-m",
     ["kd_encoder", "distill"])])
def test_kdsr_stage4_lines_distil_the_teacher_they_name(workspace, command, save, name, phases):
    out = run(f"{command} {KDSR_BUDGET}", workspace)
    assert f"{name.upper()} x4" in out.stderr
    assert "--pre_train_TA: " in out.stderr and "the generator of the teacher" in out.stderr
    folder = workspace / "experiment" / save / "checkpoint"
    last = read_checkpoint(folder / "last.pt")
    assert (last["model_name"], last["teacher"]["model_name"]) == (name, name.replace("-s-", "-t-"))
    config = json.loads((workspace / "experiment" / save / "config.json").read_text())
    assert [p["name"] for p in config["phases"]] == phases               # no teacher stage
    if "_iso_" in save:                                # their --st_save_epoch 0 keeps every epoch
        assert (folder / "epoch_1.pt").is_file()
    teacher_file = command.split("--pre_train_TA=")[1].split()[0].strip('"')
    theirs = torch.load(workspace / teacher_file, weights_only=True)
    ours = ours_to_authors(last["teacher"]["model"], name.replace("-s-", "-t-"))
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)          # frozen: still theirs
