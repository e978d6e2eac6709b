"""KDSR's flags: its presets and their schedules, the authors' 'blindsr' commands, widths that
select a size, and the combinations that make no sense (one error line each)."""
import pytest

import option
from model.training import DISTILL, KD_ENCODER, TEACHER, build_phases


def phases(argv: str):
    return [(p.name, p.first, p.last) for p in build_phases(option.parse_args(argv.split()))]


def test_the_demo_trains_a_kdsr_student_after_its_teacher():
    args = option.parse_args("--model KDSR-S-M".split())
    assert args.preset == "demo"
    assert phases("--model KDSR-S-M") == [(TEACHER, 1, 2), (KD_ENCODER, 3, 3), (DISTILL, 4, 7)]
    assert phases("--model kdsr_t_l") == [(TEACHER, 1, 2)]


def test_the_presets_are_the_authors_two_recipes():
    iso = build_phases(option.parse_args("--preset kdsr-iso".split()))
    assert [(p.name, p.first, p.last) for p in iso] == [(TEACHER, 1, 500), (DISTILL, 501, 1100)]
    teacher, student = iso
    assert (teacher.lr_at(124), teacher.lr_at(125)) == (1e-4, 5e-5)            # stage 3: x0.5 / 125
    assert (student.lr_at(649), student.lr_at(650)) == (1e-4, 5e-5)            # stage 4: x0.5 / 150
    aniso = option.parse_args("--preset kdsr-aniso".split())
    assert (aniso.blur_type, aniso.noise, aniso.lambda_1, aniso.lambda_2, aniso.theta) == (
        "aniso_gaussian", 25.0, 4.0, 1.5, 120.0)
    _, encoder, distill = build_phases(aniso)
    assert (encoder.first, encoder.last, encoder.lr_at(501), encoder.lr_at(560)) == (501, 600, 2e-4, 2e-4 * 0.1)
    assert (distill.first, distill.last, distill.lr_at(725)) == (601, 1000, 1e-4 * 0.5)   # their epoch 225
    # With --dir_data the recipe follows the blur, as for every model (README, Presets)
    assert option.parse_args("--model KDSR-S-L --dir_data /d".split()).preset == "kdsr-iso"
    aniso_blur = "--model KDSR-S-M --dir_data /d --blur_type aniso_gaussian".split()
    assert option.parse_args(aniso_blur).preset == "kdsr-aniso"


@pytest.mark.parametrize("argv, model, preset", [
    ("--model=blindsr --dir_data=/d --st_save_epoch 495 --epochs_encoder 0 --epochs_sr 500",
     "kdsr-t-m", "kdsr-iso"),
    ("--model=blindsr --dir_data=/d --pre_train_TA=t.pt --pre_train_ST=t.pt", "kdsr-s-m", "kdsr-iso"),
    ("--model=blindsr --dir_data=/d --blur_type=aniso_gaussian --pre_train_TA=t.pt", "kdsr-s-m", "kdsr-aniso"),
    ("--model=blindsr --dir_data=/d --st_save_epoch 0 --n_feats 128 --n_blocks 28 --n_resblocks 5",
     "kdsr-t-l", "kdsr-iso"),
    ("--model=blindsr --dir_data=/d", "blindsr", "dasr"),                     # DASR's main.sh
])
def test_blindsr_with_kdsr_flags_is_kdsr(argv, model, preset):
    args = option.parse_args(argv.split())
    assert (args.model, args.preset) == (model, preset)


@pytest.mark.parametrize("argv, message", [
    ("--model KDSR-S-M --n_feats 128", "the widths --n_feats 128 are KDSR's L size, but --model "
                                       "KDSR-S-M is its M size: use --model KDSR-S-L"),
    ("--model blindsr --n_blocks 30", "--n_blocks 30 is not a published KDSR size"),
    ("--model DASR --n_feats 64", "--n_feats 64 select a KDSR size; --model DASR is not a KDSR model"),
    ("--model CDSR --pre_train_TA t.pt", "--pre_train_TA is KDSR's; --model CDSR is not a KDSR model"),
    ("--model KDSR-T-M --pre_train_ST t.pt", "--pre_train_ST starts a student"),
    ("--model KDSR-T-M --epochs_teacher 0", "nothing to train: --epochs_teacher 0"),
    ("--model KDSR-S-M --epochs_teacher 0", "would distil an untrained teacher"),
    ("--model KDSR-S-M --kd_weight 0", "--kd_weight 0 leaves the 1 distillation-encoder epochs"),
    ("--model KDSR-S-M --temperature 0", "--temperature must be positive"),
    ("--model KDSR-S-M --kd_weight -1", "--kd_weight must be >= 0"),
    ("--model KDSR-S-M --st_save_epoch -1", "--st_save_epoch must be >= 0"),
    ("--model KDSR-S-M --pre_train a.pt --pre_train_TA t.pt", "use it or --pre_train_TA/--pre_train_ST"),
    ("--model KDSR-S-M --pre_train_TA t.pt --epochs_encoder 0 --epochs_sr 0", "nothing to train"),
])
def test_kdsr_nonsense_is_one_error_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        option.parse_args(argv.split())
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_a_kdsr_batch_need_not_divide_a_queue_it_does_not_have():
    assert option.parse_args("--model KDSR-S-M --batch_size 3 --queue_size 16".split()).batch_size == 3


def test_test_only_keeps_the_checkpoint_flag_of_kdsrs_scripts():
    kept, dropped = option.test_command("--test_only --model blindsr --pre_train_ST s.pt "
                                        "--pre_train_TA t.pt --st_save_epoch 0 --n_feats 128".split())
    assert kept == "--test_only --model blindsr --pre_train_ST s.pt --n_feats 128".split()
    assert dropped == ["--pre_train_TA", "--st_save_epoch"]
    assert option.parse_args("--pre_train_ST s.pt".split(), test=True).pre_train == "s.pt"
