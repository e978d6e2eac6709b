"""The training loop: phases, frozen encoder, checkpoints and resume, on tiny models and data."""
import numpy as np
import pytest
import torch

from model.checkpoint import read_checkpoint
from helpers import TINY_RUN_MODEL as TINY_DASR, tiny, tiny_run_args, tiny_trainer
from model.training import build_phases
from trainer import loss_text


def make_args(data_root, save, *extra):
    """The tiny run with 3 SR epochs of 2 iterations: phases encoder 1, joint 2-3, freeze 4."""
    return tiny_run_args(data_root, save, "--test_every", "2", "--epochs_sr", "3", "--freeze_epoch",
                         "4", *extra)


def run(args, run_dir):
    trainer = tiny_trainer(args, run_dir, **TINY_DASR)
    return trainer, trainer.fit()


def encoder_state(state):
    return {k: v for k, v in state.items() if k.startswith("encoder.")}


def test_all_three_phases_run_and_leave_checkpoints(data_root, tmp_path):
    args = make_args(data_root, "a", "--save_models")
    trainer, metrics = run(args, tmp_path)
    assert [p.name for p in trainer.phases] == ["encoder", "joint", "freeze"]
    assert set(metrics) == {"Set5"} and np.isfinite(metrics["Set5"]["psnr"])
    last = read_checkpoint(tmp_path / "checkpoint" / "last.pt")
    assert (last["epoch"], last["phase"], last["model_name"]) == (4, "freeze", "dasr")
    assert {k: last["model_kwargs"][k] for k in TINY_DASR} == TINY_DASR  # test.py rebuilds from these
    assert set(last) >= {"model", "optimizer", "scheduler", "config"}
    assert (tmp_path / "checkpoint" / "best.pt").is_file() and (tmp_path / "psnr.png").is_file()
    assert len((tmp_path / "psnr.csv").read_text().splitlines()) == 1 + 4
    # The generator did not move while only the encoder was pre-trained ...
    epoch1 = read_checkpoint(tmp_path / "checkpoint" / "epoch_1.pt")["model"]
    initial = tiny("dasr", 2, **TINY_DASR).state_dict()
    assert all(torch.equal(epoch1[k], initial[k]) for k in initial if k.startswith("generator."))
    assert not torch.equal(epoch1["encoder.query_encoder.layers.0.conv.weight"],
                           initial["encoder.query_encoder.layers.0.conv.weight"])
    # ... and the frozen encoder (weights, BN statistics, key encoder, queue) stayed bit-identical.
    joint_end = encoder_state(read_checkpoint(tmp_path / "checkpoint" / "epoch_3.pt")["model"])
    frozen_end = encoder_state(last["model"])
    assert joint_end.keys() == frozen_end.keys()
    assert all(torch.equal(joint_end[k], frozen_end[k]) for k in joint_end)
    assert not torch.equal(last["model"]["generator.tail_conv.weight"],
                           read_checkpoint(tmp_path / "checkpoint" / "epoch_3.pt")["model"]["generator.tail_conv.weight"])


def test_optimizer_holds_exactly_the_phase_parameters(data_root, tmp_path):
    trainer, _ = run(make_args(data_root, "b", "--epochs_sr", "0"), tmp_path)
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in trainer.model.encoder.query_encoder.parameters()}
    trainer.enter_phase(build_phases(make_args(data_root, "b"))[2])
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in trainer.model.generator.parameters()}


def test_a_killed_run_resumes_to_the_same_weights(data_root, tmp_path):
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    _, _ = run(make_args(data_root, "full", "--save_models"), full_dir)
    # Pretend the run died in epoch 3 after validating it: the checkpoint of epoch 2 (mid joint
    # phase) is the last one, but psnr.csv already has a row for epoch 3.
    (resumed_dir / "checkpoint").mkdir(parents=True)
    (full_dir / "checkpoint" / "epoch_2.pt").replace(resumed_dir / "checkpoint" / "last.pt")
    records = (full_dir / "psnr.csv").read_text().splitlines()
    (resumed_dir / "psnr.csv").write_text("\n".join(records[:4]) + "\n")  # header, epochs 1-3
    trainer, _ = run(make_args(data_root, "resumed", "--resume"), resumed_dir)
    assert trainer.start_epoch == 3
    assert (resumed_dir / "psnr.csv").read_text().splitlines() == records  # each epoch once
    full = read_checkpoint(full_dir / "checkpoint" / "last.pt")["model"]
    resumed = read_checkpoint(resumed_dir / "checkpoint" / "last.pt")["model"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_resume_needs_a_checkpoint_and_the_same_schedule(data_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        run(make_args(data_root, "c", "--resume"), tmp_path)
    run(make_args(data_root, "c", "--epochs_sr", "1"), tmp_path)
    with pytest.raises(ValueError, match="phase 'joint'.*'encoder'"):
        run(make_args(data_root, "c", "--resume", "--epochs_encoder", "3"), tmp_path)


def test_n_gpus_is_checked_against_the_visible_devices(data_root, tmp_path, monkeypatch):
    trainer, _ = run(make_args(data_root, "d", "--epochs_sr", "0", "--n_GPUs", "2"), tmp_path)
    assert trainer.net is trainer.model  # nothing to parallelise on the CPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="--n_GPUs 2 but only 1 CUDA device"):
        trainer.parallel_devices(2, torch.device("cuda"))


def test_small_losses_keep_their_digits_in_the_log():
    """KDSR's distillation term falls to ~1e-5: the log must not print it as 0.0000."""
    assert [loss_text(v) for v in (60.29501, 0.0917, 1.58e-05, 0.0)] == ["60.2950", "0.0917",
                                                                         "1.58e-05", "0.0000"]
