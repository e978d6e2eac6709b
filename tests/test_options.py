"""Options parse like the authors' commands, presets resolve, nonsense is refused."""
import subprocess
import sys

import pytest

import option
from trainer import build_phases

AUTHORS_CDSR_COMMAND = (
    "--dir_data=/root/DF2k/HR --model=CDSR --scale=2 --blur_type=aniso_gaussian --noise=0 "
    "--sig_min=0.35 --sig_max=5 --batch_size=32 --save=cdsr --epochs_encoder=-1 --n_GPUs=1 "
    "--freeze_epoch 600 --sv_mode 0").split()


def test_importing_option_parses_nothing():
    code = "import sys; sys.argv = ['x', '--bogus']; import option; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=".")
    assert out.stdout.strip() == "ok"


def test_authors_readme_command_parses_into_their_recipe():
    args = option.parse_args(AUTHORS_CDSR_COMMAND)
    assert args.preset == "cdsr" and args.degradation == "manet"
    assert (args.scale, args.batch_size, args.patch_size, args.lr_sr) == (2, 32, 48, 1e-4)
    assert (args.sig_min, args.sig_max, args.epochs_sr, args.freeze_epoch) == (0.35, 5.0, 500, 600)
    phases = build_phases(args)
    assert [p.name for p in phases] == ["joint"] and (phases[0].first, phases[0].last) == (1, 500)


def test_no_arguments_is_the_demo():
    args = option.parse_args([])
    assert args.preset == "demo" and args.dir_data is None and args.model == "CDSR"
    assert [p.name for p in build_phases(args)] == ["encoder", "joint", "freeze"]


def test_cpu_is_a_real_switch():
    assert option.parse_args(["--cpu"]).cpu is True
    assert option.parse_args([]).cpu is False
    with pytest.raises(SystemExit):
        option.parse_args(["--cpu", "False"])


def test_explicit_flags_beat_the_preset():
    args = option.parse_args(["--preset", "dasr", "--lr_sr", "3e-4", "--batch_size", "16"])
    assert (args.lr_sr, args.batch_size, args.epochs_encoder) == (3e-4, 16, 100)
    assert option.parse_args(["--data_test", "Set5+B100", "--test_path", "/b"]).data_test == "Set5+B100"
    assert option.parse_args(["--preset", "dasr"]).model == "DASR"  # a preset names its model ...
    assert option.parse_args(["--preset", "dasr", "--model", "CDSR"]).model == "CDSR"  # ... unless told


@pytest.mark.parametrize("argv, message", [
    (["--patch_size", "0"], "--patch_size must be positive"),
    (["--sig_min", "3", "--sig_max", "1"], "--sig_min 3.0 is larger"),
    (["--noise", "-1"], "--noise must be >= 0"),
    (["--queue_size", "12", "--batch_size", "8"], "not a multiple of --batch_size"),
    (["--blur_kernel", "20"], "must be odd"),
    (["--scale", "5"], "invalid choice"),
    (["--data_test=Set14"], "--data_test Set14: say where its images are with --test_path"),
])
def test_nonsense_values_exit_with_one_clear_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        option.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_phase_layout_of_the_smoke_run():
    args = option.parse_args("--epochs_encoder 1 --epochs_sr 3 --freeze_epoch 3".split())
    phases = {p.name: (p.first, p.last) for p in build_phases(args)}
    assert phases == {"encoder": (1, 1), "joint": (2, 2), "freeze": (3, 4)}


def test_learning_rate_schedule_follows_the_authors_steps():
    args = option.parse_args("--preset dasr".split())
    encoder, joint = build_phases(args)
    assert encoder.lr_at(1) == 1e-3 and encoder.lr_at(60) == pytest.approx(1e-4)
    assert joint.lr_at(101) == 1e-4 and joint.lr_at(224) == 1e-4
    assert joint.lr_at(225) == pytest.approx(5e-5)


@pytest.mark.parametrize("argv, message", [
    ("--epochs_encoder 0 --epochs_sr 0", "nothing to train"),
    ("--epochs_encoder 5 --epochs_sr 3 --freeze_epoch 2", "falls inside encoder pre-training"),
    ("--epochs_sr -2", "--epochs_sr must be >= 0"),
])
def test_schedules_that_make_no_sense_are_refused(argv, message):
    with pytest.raises(ValueError, match=message):
        build_phases(option.parse_args(argv.split()))


def test_every_flag_appears_in_help():
    text = option.build_parser().format_help()
    for flag in ("--dir_data", "--data_train", "--data_test", "--scale", "--patch_size", "--batch_size",
                 "--model", "--blur_type", "--sig", "--sig_min", "--sig_max", "--lambda_1", "--lambda_2",
                 "--theta", "--lambda_min", "--lambda_max", "--noise", "--sample_mode", "--sv_mode",
                 "--blur_kernel", "--epochs_encoder", "--epochs_sr", "--freeze_epoch", "--lr_encoder",
                 "--lr_sr", "--lr_decay_encoder", "--lr_decay_sr", "--gamma_encoder", "--gamma_sr",
                 "--c_weight", "--n_GPUs", "--cpu", "--seed", "--n_threads", "--pre_train", "--resume",
                 "--save", "--test_only", "--test_every", "--print_every", "--save_results",
                 "--self_ensemble", "--chop"):
        assert flag + " " in text, flag
