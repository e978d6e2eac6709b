"""Options parse like the authors' commands, presets resolve, nonsense is refused."""
import argparse
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import option
from trainer import build_phases

ROOT = Path(__file__).resolve().parents[1]

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
    (["--sync_bn", "--n_GPUs", "2"], "--sync_bn synchronises BatchNorm over torchrun's processes"),
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


# ----------------------------------------------------------------------------- every flag is read
READ = re.compile(r"\bargs\.(\w+)")


def project_sources():
    """Every .py file of the project outside option.py and the tests: the top-level modules and
    the data/, model/, loss/ and scripts/ packages (a virtual environment in the checkout is not
    the project)."""
    files = [p for p in ROOT.glob("*.py") if p.name != "option.py"]
    return files + [p for folder in ("data", "model", "loss", "scripts") for p in (ROOT / folder).rglob("*.py")]


def read_names(texts) -> set:
    return {name for text in texts for name in READ.findall(text)}


def unread_destinations(parser: argparse.ArgumentParser, texts) -> list:
    """Destinations a parse can set (not help, not accepted-only flags) never read as args.<dest>."""
    reads = read_names(texts)
    return [a.dest for a in parser._actions if a.default is not argparse.SUPPRESS and a.dest not in reads]


@pytest.mark.parametrize("build", [option.build_parser, option.build_test_parser])
def test_every_flag_is_read_outside_option_py(build):
    texts = [path.read_text() for path in project_sources()]
    assert unread_destinations(build(), texts) == []


def test_a_flag_nobody_reads_is_caught():
    parser = option.build_parser()
    parser.add_argument("--never_read", type=int, default=3)
    texts = [path.read_text() for path in project_sources()]
    assert unread_destinations(parser, texts) == ["never_read"]
    assert unread_destinations(parser, texts + ["x = args.never_read"]) == []


def test_test_py_parses_only_what_its_code_reads():
    """test.py's flags are read by test.py itself or by the builders and policy it calls."""
    import data
    import trainer
    functions = (data.eval_setting, data.test_root, data.hr_images, data.build_test_sets,
                 data.build_protocol_sets, trainer.inference_policy)
    texts = [(ROOT / "test.py").read_text()] + [inspect.getsource(f) for f in functions]
    assert unread_destinations(option.build_test_parser(), texts) == []
    assert {"lr_sr", "epochs_sr", "queue_size", "batch_size", "seed"}.isdisjoint(
        a.dest for a in option.build_test_parser()._actions)


def test_sv_mode_accepts_only_what_is_implemented(capsys):
    assert not hasattr(option.parse_args(["--sv_mode", "0"]), "sv_mode")
    with pytest.raises(SystemExit):
        option.parse_args(["--sv_mode", "1"])
    assert "invalid choice" in capsys.readouterr().err
