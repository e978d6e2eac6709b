"""KDSR's training in the framework's machinery, on a tiny teacher and student (``tiny_pair``):
the phases and what each trains, the student started from the teacher, checkpoints holding
both, resume and preemption, the non-finite guard, precision, DataParallel, the KD ablation and
the start weights (--pre_train_TA / --pre_train_ST). The golden steps are in
test_golden_kdsr.py, torchrun in test_distributed.py, the authors' commands in
test_authors_commands.py."""
import csv

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import utility
from helpers import TINY_KDSR_RUN, images, tiny, tiny_kdsr_trainer, tiny_pair, tiny_run_args
from loss import build_loss, make_loss
from model.checkpoint import CheckpointError, load_model, load_start_weights, read_checkpoint, save_checkpoint
from model.run_checkpoints import RunCheckpoints
from model.training import (DISTILL, KD_ENCODER, TEACHER, Phase, build_phases, evaluated_model,
                            make_optimizer, set_trainable, training_step)
from test_distributed import HalvesParallel
from test_reliability import SignalAfter


def make_args(data_root, save, *extra):
    """The tiny KDSR run: teacher epoch 1, distillation-encoder epoch 2, distillation epoch 3,
    2 iterations each."""
    return tiny_run_args(data_root, save, *TINY_KDSR_RUN, *extra)


def part(state, prefix):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def losses_csv(run_dir):
    with open(run_dir / "losses.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_phases_from_the_flags():
    args = tiny_run_args("/nowhere", "x", *TINY_KDSR_RUN, "--epochs_teacher", "3", "--epochs_sr", "2")
    assert [(p.name, p.first, p.last, p.origin, p.stage_origin, p.init_student)
            for p in build_phases(args)] == [(TEACHER, 1, 3, 0, 0, False), (KD_ENCODER, 4, 4, 3, 3, True),
                                             (DISTILL, 5, 6, 4, 3, False)]
    given = tiny_run_args("/nowhere", "x", *TINY_KDSR_RUN, "--pre_train_TA", "t.pt", "--pre_train_ST", "t.pt")
    assert [(p.name, p.first, p.init_student) for p in build_phases(given)] == [(KD_ENCODER, 1, False),
                                                                              (DISTILL, 2, False)]
    resumed_pair = tiny_run_args("/nowhere", "x", *TINY_KDSR_RUN, "--pre_train", "run.pt")
    assert [(p.name, p.first, p.init_student) for p in build_phases(resumed_pair)] == [
        (KD_ENCODER, 1, False), (DISTILL, 2, False)]
    teacher = tiny_run_args("/nowhere", "x", *TINY_KDSR_RUN, "--model", "kdsr-t-l")
    assert [(p.name, p.first, p.last) for p in build_phases(teacher)] == [(TEACHER, 1, 1)]


def test_a_run_trains_the_teacher_then_distils_it_into_the_student(data_root, tmp_path):
    trainer = tiny_kdsr_trainer(make_args(data_root, "kd", "--save_models"), tmp_path)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    assert [p.name for p in trainer.phases] == [TEACHER, KD_ENCODER, DISTILL]
    epochs = [read_checkpoint(tmp_path / f"checkpoint/epoch_{e}.pt") for e in (1, 2, 3)]
    assert [(c["model_name"], c["teacher"]["model_name"], c["phase"]) for c in epochs] == [
        ("kdsr-s-m", "kdsr-t-m", TEACHER), ("kdsr-s-m", "kdsr-t-m", KD_ENCODER),
        ("kdsr-s-m", "kdsr-t-m", DISTILL)]
    teacher = [c["teacher"]["model"] for c in epochs]
    assert not same(teacher[0], part(start, "teacher."))                 # the teacher trained ...
    assert same(teacher[0], teacher[1]) and same(teacher[1], teacher[2])  # ... then stayed frozen
    assert same(part(epochs[0]["model"], "generator."), part(start, "student.generator."))
    # The student's stage started from the teacher's generator; the encoder-only epoch moved
    # its encoder but neither its generator nor the projection only the generator reads.
    assert same(part(epochs[1]["model"], "generator."), part(teacher[0], "generator."))
    assert same(part(epochs[1]["model"], "encoder.degradation_proj."),
                part(start, "student.encoder.degradation_proj."))
    assert not same(part(epochs[1]["model"], "encoder.feature_mlp."),
                    part(start, "student.encoder.feature_mlp."))
    assert not same(part(epochs[2]["model"], "generator."), part(epochs[1]["model"], "generator."))
    rows = losses_csv(tmp_path)
    assert [(r["phase"], bool(r["L1"]), bool(r["kd"])) for r in rows[::2]] == [
        (TEACHER, True, False), (KD_ENCODER, False, True), (DISTILL, True, True)]
    # validation scores the teacher (fed the HR) in its phase and the student after; best.pt
    # follows the student's epochs only
    psnr = list(csv.DictReader(open(tmp_path / "psnr.csv")))
    assert [r["phase"] for r in psnr] == [TEACHER, KD_ENCODER, DISTILL]
    assert read_checkpoint(tmp_path / "checkpoint/best.pt")["epoch"] in (2, 3)
    assert trainer.final_model is trainer.model.student
    assert evaluated_model(trainer.model, trainer.phases[0]) is trainer.model.teacher


def test_the_run_checkpoint_gives_the_student_or_the_teacher(data_root, tmp_path):
    trainer = tiny_kdsr_trainer(make_args(data_root, "kd", "--save_models"), tmp_path)
    trainer.fit()
    last = tmp_path / "checkpoint/last.pt"
    student, teacher = load_model(last), load_model(last, model_name="KDSR-T-M")
    assert (student.name, teacher.name) == ("kdsr-s-m", "kdsr-t-m")
    assert same(student.state_dict(), trainer.model.student.state_dict())
    assert same(teacher.state_dict(), trainer.model.teacher.state_dict())
    assert load_model(last, model_name="blindsr").name == "kdsr-s-m"         # the authors' name
    with pytest.raises(CheckpointError, match="teacher stage .* not trained yet; score its teacher "
                                              "with --model kdsr-t-m"):
        load_model(tmp_path / "checkpoint/epoch_1.pt")
    assert load_model(tmp_path / "checkpoint/epoch_1.pt", model_name="kdsr-t-m").name == "kdsr-t-m"
    with pytest.raises(CheckpointError, match="holds KDSR-S-M x2, not DASR x2"):
        load_model(last, model_name="dasr")


@pytest.mark.parametrize("epoch, iteration, schedule", [
    (2, 1, ("--epochs_encoder", "0", "--epochs_sr", "2")),  # first student epoch, distillation
    (3, 1, ()),                                              # distillation after the encoder epoch
    (1, 2, ())])                                             # the end of the teacher stage
def test_a_signal_mid_epoch_resumes_exactly(data_root, tmp_path, epoch, iteration, schedule):
    """In the first student epoch the resumed run must not start the student afresh from the
    teacher's generator (it has trained since)."""
    full = tiny_kdsr_trainer(make_args(data_root, "full", *schedule), tmp_path / "full")
    full.fit()
    cut = tiny_kdsr_trainer(make_args(data_root, "cut", *schedule), tmp_path / "cut")
    with pytest.raises(utility.Preempted, match="stopped by SIGUSR1"):
        cut.fit(SignalAfter(cut, epoch, iteration))
    resumed = tiny_kdsr_trainer(make_args(data_root, "cut", "--resume", *schedule), tmp_path / "cut")
    resumed.fit()
    assert (tmp_path / "cut/losses.csv").read_text() == (tmp_path / "full/losses.csv").read_text()
    assert (tmp_path / "cut/psnr.csv").read_text() == (tmp_path / "full/psnr.csv").read_text()
    a, b = (read_checkpoint(tmp_path / f"{run}/checkpoint/last.pt") for run in ("full", "cut"))
    assert same(a["model"], b["model"]) and same(a["teacher"]["model"], b["teacher"]["model"])


def test_the_moving_average_covers_both_networks_and_resumes_exactly(data_root, tmp_path):
    """--ema_decay on a pair: the teacher is averaged in its stage; the student's stage starts
    the average again from the weights the student starts from (the teacher's generator, not
    the untrained student's), so the frozen generator's average is the generator itself; a
    signal in the first student epoch resumes both averages exactly; a file gives the averaged
    student or teacher by default and the trained ones with ema=False."""
    ema = ("--ema_decay", "0.5", "--save_models")
    full = tiny_kdsr_trainer(make_args(data_root, "full", *ema, "--tb_image_every", "1"),
                             tmp_path / "full")
    full.fit()
    events = EventAccumulator(str(tmp_path / "full/tensorboard"))
    events.Reload()                            # the teacher's crops too (it is fed the HR)
    assert [c.step for c in events.Images("crops/Set5/img_000")] == [2, 4, 6]
    assert {"loss/kd", "loss/L1", "val/Set5/psnr"} <= set(events.Tags()["scalars"])
    first, second = (read_checkpoint(tmp_path / f"full/checkpoint/epoch_{e}.pt") for e in (1, 2))
    assert not same(first["teacher"]["model_ema"], first["teacher"]["model"])
    assert same(second["teacher"]["model_ema"], second["teacher"]["model"])
    assert same(part(second["model_ema"], "generator."), part(second["model"], "generator."))
    assert not same(part(second["model_ema"], "encoder.feature_mlp."),
                    part(second["model"], "encoder.feature_mlp."))
    cut = tiny_kdsr_trainer(make_args(data_root, "cut", *ema), tmp_path / "cut")
    with pytest.raises(utility.Preempted):
        cut.fit(SignalAfter(cut, 2, 1))
    tiny_kdsr_trainer(make_args(data_root, "cut", "--resume", *ema), tmp_path / "cut").fit()
    a, b = (read_checkpoint(tmp_path / f"{run}/checkpoint/last.pt") for run in ("full", "cut"))
    assert same(a["model_ema"], b["model_ema"])
    assert same(a["teacher"]["model_ema"], b["teacher"]["model_ema"])
    last = tmp_path / "full/checkpoint/last.pt"
    assert same(load_model(last).state_dict(), a["model_ema"])
    assert same(load_model(last, ema=False).state_dict(), a["model"])
    assert same(load_model(last, model_name="kdsr-t-m").state_dict(), a["teacher"]["model_ema"])


def test_non_finite_steps_are_skipped_and_stop_the_run(data_root, tmp_path):
    trainer = tiny_kdsr_trainer(make_args(data_root, "nan", "--max_bad_steps", "2"), tmp_path)
    criterion = trainer.criterion

    def nan_in_distillation(outputs, hr):
        losses = criterion(outputs, hr)
        if "kd" in losses:
            losses["total"] = losses["total"] * float("nan")
        return losses

    trainer.criterion = nan_in_distillation
    with pytest.raises(FloatingPointError, match="2 steps in a row"):
        trainer.fit()
    assert [r["applied"] for r in losses_csv(tmp_path)] == ["1", "1", "0", "0"]
    assert read_checkpoint(tmp_path / "checkpoint/last.pt")["epoch"] == 1


def test_kd_weight_0_is_the_ablation_without_distillation(data_root, tmp_path):
    args = make_args(data_root, "nokd", "--kd_weight", "0", "--epochs_encoder", "0", "--epochs_sr", "2")
    trainer = tiny_kdsr_trainer(args, tmp_path)
    trainer.fit()
    rows = [r for r in losses_csv(tmp_path) if r["phase"] == DISTILL]
    assert len(rows) == 4 and all(float(r["kd"]) == 0 and float(r["total"]) == float(r["L1"]) for r in rows)


def test_the_distillation_loss_balances_l1_on_unit_range_images():
    pair = tiny_pair()
    args = tiny_run_args("/nowhere", "x", *TINY_KDSR_RUN, "--temperature", "0.3", "--kd_weight", "2")
    criterion = make_loss(args, pair)
    assert (criterion.names, criterion.kd_weight, criterion.temperature, criterion.pixel_scale) == (
        ["L1", "kd"], 2.0, 0.3, 1 / 255)
    sr, hr = images(2, 3, 8, 8, seed=1), images(2, 3, 8, 8, seed=2)
    assert torch.allclose(criterion({"sr": sr}, hr)["L1"], (sr - hr).abs().mean() / 255)
    assert make_loss(args, tiny("kdsr-t-m")).names == ["L1"]                   # a teacher's run
    assert build_loss("1*L1", 1.0).pixel_scale == 1                          # CDSR, DASR: 0..255


def test_data_parallel_splits_a_kdsr_step_like_one_device():
    """No state outside the parameters: a DataParallel step (the batch in two halves) gives the
    one-device step's losses and update."""
    phase = Phase(DISTILL, 1, 1, 1e-3, 1, 1.0, 0)
    lr, hr = images(4, 2, 3, 8, 8, seed=1), images(4, 3, 16, 16, seed=2)
    results = []
    for wrap in (lambda net: net, HalvesParallel):
        pair = tiny_pair()
        set_trainable(pair, phase)
        step = training_step(wrap(pair), lr, hr, phase, build_loss("1*L1", 1.0, rgb_range=1, kd_weight=1.0),
                             make_optimizer(pair, 1e-3))
        results.append((step.reported, pair.student.state_dict()))
    (one, state_one), (two, state_two) = results
    assert one.keys() == two.keys() == {"L1", "kd", "total"}
    assert all(abs(one[k] - two[k]) <= 1e-6 * abs(one[k]) for k in one)
    assert all(torch.allclose(state_one[k], state_two[k], atol=1e-6) for k in state_one)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_distillation_steps_are_finite(precision):
    from model.precision import Precision
    phase = Phase(DISTILL, 1, 1, 1e-4, 1, 1.0, 0)
    pair = tiny_pair()
    set_trainable(pair, phase)
    step = training_step(pair, images(2, 2, 3, 8, 8), images(2, 3, 16, 16, seed=1), phase,
                         build_loss("1*L1", 1.0, rgb_range=1, kd_weight=1.0), make_optimizer(pair, 1e-4),
                         precision=Precision(precision, torch.device("cpu")))
    assert step.finite and all(torch.isfinite(torch.tensor(v)) for v in step.reported.values())
    assert all(p.dtype == torch.float32 for p in pair.parameters())


def test_start_weights_of_the_authors_flags(tmp_path):
    teacher = tiny("kdsr-t-m", seed=5)
    save_checkpoint(tmp_path / "teacher.pt", model_name=teacher.name, scale=2,
                    model_kwargs=teacher.hparams, model=teacher.state_dict())
    pair = tiny_pair()
    encoder = {k: v.clone() for k, v in pair.student.encoder.state_dict().items()}
    assert "KDSR-T-M: ours weights" in load_start_weights(pair, "--pre_train_TA", tmp_path / "teacher.pt")
    assert same(pair.teacher.state_dict(), teacher.state_dict())
    said = load_start_weights(pair, "--pre_train_ST", tmp_path / "teacher.pt")
    assert "the generator of the teacher" in said                     # their strict=False load
    assert same(pair.student.generator.state_dict(), teacher.generator.state_dict())
    assert same(pair.student.encoder.state_dict(), encoder)
    student = tiny("kdsr-s-m", seed=7)
    save_checkpoint(tmp_path / "student.pt", model_name=student.name, scale=2,
                    model_kwargs=student.hparams, model=student.state_dict())
    load_start_weights(pair, "--pre_train_ST", tmp_path / "student.pt")
    assert same(pair.student.state_dict(), student.state_dict())
    with pytest.raises(CheckpointError, match="holds one network, not the teacher and student"):
        load_start_weights(pair, "--pre_train", tmp_path / "student.pt")
    large = tiny("kdsr-t-l")
    save_checkpoint(tmp_path / "large.pt", model_name=large.name, scale=2,
                    model_kwargs=large.hparams, model=large.state_dict())
    with pytest.raises(CheckpointError, match="starts from the generator of KDSR-T-M x2"):
        load_start_weights(pair, "--pre_train_ST", tmp_path / "large.pt")


def test_st_save_epoch_keeps_the_epochs_the_authors_trainers_keep(tmp_path):
    teacher = Phase(TEACHER, 1, 500, 1e-4, 125, 0.5, 0)
    student = Phase(DISTILL, 501, 1100, 1e-4, 150, 0.5, 500, 500)
    keeper = RunCheckpoints(tmp_path, {}, keep_epochs=False, is_main=True, keep_after=495)
    assert [e for e in range(1, 501) if keeper.keeps(teacher, e)] == [*range(20, 481, 20), *range(496, 501)]
    assert [e - 500 for e in range(501, 1101) if keeper.keeps(student, e)][:3] == [30, 60, 90]
    everything = RunCheckpoints(tmp_path, {}, keep_epochs=False, is_main=True, keep_after=0)
    assert all(everything.keeps(student, e) for e in range(501, 1101))      # their iso stage 4
    assert not RunCheckpoints(tmp_path, {}, keep_epochs=False, is_main=True).keeps(teacher, 20)


def test_a_teacher_alone_trains_and_scores_with_its_hr(data_root, tmp_path):
    args = tiny_run_args(data_root, "ta", *TINY_KDSR_RUN, "--model", "KDSR-T-M", "--epochs_teacher", "2")
    trainer = tiny_kdsr_trainer(args, tmp_path, pair=tiny("kdsr-t-m"))
    metrics = trainer.fit()
    last = read_checkpoint(tmp_path / "checkpoint/last.pt")
    assert (last["model_name"], last["phase"], last["epoch"]) == ("kdsr-t-m", TEACHER, 2)
    assert last.get("teacher") is None
    assert read_checkpoint(tmp_path / "checkpoint/best.pt")["model_name"] == "kdsr-t-m"
    assert metrics["Set5"]["psnr"] > 0                              # scored, fed the HR


def test_the_decoded_store_and_auto_resume_serve_a_kdsr_run_as_any_other(data_root, tmp_path):
    plain = tiny_kdsr_trainer(make_args(data_root, "plain", "--epochs_sr", "0"), tmp_path / "plain")
    plain.fit()
    cached_args = make_args(data_root, "cached", "--epochs_sr", "0", "--data_cache", str(tmp_path / "store"))
    tiny_kdsr_trainer(cached_args, tmp_path / "cached").fit()
    assert (tmp_path / "store").is_dir()
    assert (tmp_path / "cached/losses.csv").read_text() == (tmp_path / "plain/losses.csv").read_text()
    again = tiny_kdsr_trainer(make_args(data_root, "plain", "--auto_resume"), tmp_path / "plain")
    again.auto_resume()
    assert again.start_epoch == 1                       # other options (--epochs_sr): afresh
    same_options = tiny_kdsr_trainer(make_args(data_root, "plain", "--epochs_sr", "0", "--auto_resume"),
                                     tmp_path / "plain")
    same_options.auto_resume()
    assert same_options.start_epoch == 3 and same_options.fit()["Set5"]["psnr"] > 0
