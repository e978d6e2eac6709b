"""Options parse like the authors' commands, presets resolve, nonsense is refused."""
import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import option
from model.training import build_phases

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
    (["--tb_image_every", "-1"], "--tb_image_every must be >= 0"),
    (["--use_tb_logger", "maybe"], "expected true or false"),
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
def test_schedules_that_make_no_sense_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        option.parse_args(argv.split())
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------- every flag is read
def _module_file(name: str):
    """The project file of module ``name`` ('data.images' -> data/images.py), or None."""
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path, tree: ast.AST) -> set:
    """Project files ``path``'s code imports, at module level or inside functions."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".strip(".")
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    files = set()
    for name in names:
        parts = name.split(".")            # a package's __init__ runs for each of its modules
        files.update(f for i in range(1, len(parts) + 1) if (f := _module_file(".".join(parts[:i]))))
    return files


def reachable_sources(*entry_points: str) -> list:
    """The project files the entry points import, directly or through each other."""
    todo, seen = [ROOT / name for name in entry_points], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(_imported(path, ast.parse(path.read_text())))
    return sorted(seen)


def options_read(sources) -> set:
    """Attribute names read from a parsed-options object in the code (not in strings): the
    ``X`` of ``args.X``, ``self.args.X``, ``trainer.args.X``."""
    read = set()
    for text in sources:
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                owner = node.value
                if (isinstance(owner, ast.Name) and owner.id == "args") or (
                        isinstance(owner, ast.Attribute) and owner.attr == "args"):
                    read.add(node.attr)
    return read


def unread_destinations(parser: argparse.ArgumentParser, sources) -> list:
    """Destinations a parse can set (not help, not accepted-only flags) that the code never reads."""
    reads = options_read(sources)
    return [a.dest for a in parser._actions if a.default is not argparse.SUPPRESS and a.dest not in reads]


def entry_point_sources(entry_point: str) -> list:
    return [p.read_text() for p in reachable_sources(entry_point) if p.name != "option.py"]


@pytest.mark.parametrize("build, entry_point", [(option.build_parser, "main.py"),
                                                (option.build_test_parser, "test.py")])
def test_every_flag_is_read_by_the_code_of_its_entry_point(build, entry_point):
    assert unread_destinations(build(), entry_point_sources(entry_point)) == []


def test_a_flag_nobody_reads_is_caught():
    parser = option.build_parser()
    parser.add_argument("--never_read", type=int, default=3)
    sources = entry_point_sources("main.py")
    assert unread_destinations(parser, sources) == ["never_read"]
    assert unread_destinations(parser, sources + ['"""Docstring: args.never_read."""\n']) == ["never_read"]
    assert unread_destinations(parser, sources + ["x = self.args.never_read"]) == []


def test_reachable_code_is_what_the_entry_points_import():
    main, test = reachable_sources("main.py"), reachable_sources("test.py")
    names = {str(p.relative_to(ROOT)) for p in main}
    assert {"trainer.py", "model/training.py", "data/patch_pairs.py", "loss/__init__.py"} <= names
    assert not any(n.startswith(("scripts/", "tests/")) for n in names)
    assert ROOT / "trainer.py" not in test and ROOT / "model/evaluation.py" in test


def test_test_py_parses_only_what_its_code_reads():
    assert {"lr_sr", "epochs_sr", "queue_size", "batch_size", "seed"}.isdisjoint(
        a.dest for a in option.build_test_parser()._actions)


def test_sv_mode_accepts_only_what_is_implemented(capsys):
    assert not hasattr(option.parse_args(["--sv_mode", "0"]), "sv_mode")
    with pytest.raises(SystemExit):
        option.parse_args(["--sv_mode", "1"])
    assert "invalid choice" in capsys.readouterr().err


def test_test_only_drops_a_training_switch_with_or_without_its_value():
    kept, dropped = option.test_command(["--pre_train", "x.pt", "--use_tb_logger", "false", "--cpu",
                                         "--epochs_sr", "3", "--use_tb_logger", "--save", "a"])
    assert kept == ["--pre_train", "x.pt", "--cpu", "--save", "a"]
    assert dropped == ["--use_tb_logger", "--epochs_sr", "--use_tb_logger"]
