"""Nothing lost: preemption mid-epoch, divergence, locked run folders, checks before side effects,
restarts that resume by themselves, a disk that fills up."""
import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import trainer as trainer_module
import utility
from helpers import (TINY_RUN_MODEL as TINY_DASR, images, read_events, small_filesystem, tiny,
                     tiny_run_args, tiny_trainer)
from loss import build_loss
from model.checkpoint import read_checkpoint
from model.parallel import restarted_by_torchrun
from model.training import ENCODER, Phase, make_optimizer, set_trainable, training_step

ROOT = Path(__file__).resolve().parents[1]
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1"}
make_args = tiny_run_args


def trainer_for(args, run_dir):
    return tiny_trainer(args, run_dir, **TINY_DASR)


class SignalAfter:
    """Stands in for ``utility.StopSignals``: the signal arrives during iteration ``iteration``
    of epoch ``epoch``."""

    def __init__(self, trainer, epoch, iteration):
        self.requested = 0
        record = trainer.record_step

        def record_then_signal(e, it, lr, step):
            record(e, it, lr, step)
            if (e, it) == (epoch, iteration):
                self.requested = signal.SIGUSR1

        trainer.record_step = record_then_signal


@pytest.mark.parametrize("epoch, iteration", [(2, 2), (1, 4)])
def test_a_signal_mid_epoch_checkpoints_and_the_resumed_run_is_exact(data_root, tmp_path, epoch, iteration):
    full = trainer_for(make_args(data_root, "full"), tmp_path / "full")
    full.fit()
    stopped = trainer_for(make_args(data_root, "cut"), tmp_path / "cut")
    with pytest.raises(utility.Preempted, match="stopped by SIGUSR1") as stop:
        stopped.fit(SignalAfter(stopped, epoch, iteration))
    assert stop.value.signal_number == signal.SIGUSR1
    state = read_checkpoint(tmp_path / "cut/checkpoint/last.pt")
    if iteration < 4:                                   # mid-epoch: the position is saved
        assert (state["epoch"], state["progress"]["iteration"]) == (epoch - 1, iteration)
    else:                                               # the epoch had ended: its own checkpoint
        assert state["epoch"] == epoch and "iteration" not in state["progress"]
    resumed = trainer_for(make_args(data_root, "cut", "--resume"), tmp_path / "cut")
    resumed.fit()
    assert (tmp_path / "cut/losses.csv").read_text() == (tmp_path / "full/losses.csv").read_text()
    assert (tmp_path / "cut/psnr.csv").read_text() == (tmp_path / "full/psnr.csv").read_text()
    a = read_checkpoint(tmp_path / "full/checkpoint/last.pt")["model"]
    b = read_checkpoint(tmp_path / "cut/checkpoint/last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_moving_average_and_the_curves_resume_exactly_after_a_mid_epoch_stop(data_root, tmp_path):
    full = trainer_for(make_args(data_root, "full", "--ema_decay", "0.8"), tmp_path / "full")
    full.fit()
    stopped = trainer_for(make_args(data_root, "cut", "--ema_decay", "0.8"), tmp_path / "cut")
    with pytest.raises(utility.Preempted):
        stopped.fit(SignalAfter(stopped, 2, 3))
    assert read_checkpoint(tmp_path / "cut/checkpoint/last.pt")["model_ema"] is not None
    # The killed run's last steps reach the event file after the checkpoint: the resumed run redoes them.
    stopped.board.training_step(8, {"total": 99.0}, 1e-3, None)
    stopped.board.validation(8, {"Set5": {"psnr": 99.0}})
    stopped.board.close()
    resumed = trainer_for(make_args(data_root, "cut", "--ema_decay", "0.8", "--resume"), tmp_path / "cut")
    resumed.fit()
    a = read_checkpoint(tmp_path / "full/checkpoint/last.pt")["model_ema"]
    b = read_checkpoint(tmp_path / "cut/checkpoint/last.pt")["model_ema"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    whole, cut = read_events(tmp_path / "full/tensorboard"), read_events(tmp_path / "cut/tensorboard")
    assert whole.keys() == cut.keys()
    for tag in whole:                   # each step once; the same values but for the timings
        assert [s for s, _ in cut[tag]] == [s for s, _ in whole[tag]], tag
        if not tag.startswith("time/"):
            assert [v for _, v in cut[tag]] == [v for _, v in whole[tag]], tag


def test_non_finite_steps_are_skipped_then_stop_the_run(data_root, tmp_path, monkeypatch):
    trainer = trainer_for(make_args(data_root, "nan", "--max_bad_steps", "2"), tmp_path)
    trainer.fit()                                       # a good run: last.pt after epoch 3
    good = read_checkpoint(tmp_path / "checkpoint/last.pt")
    args = make_args(data_root, "nan", "--max_bad_steps", "2", "--resume", "--epochs_sr", "3")
    trainer = trainer_for(args, tmp_path)
    criterion = trainer.criterion
    calls = []

    def sometimes_nan(outputs, hr):
        losses = criterion(outputs, hr)
        calls.append(1)
        if len(calls) in (1, 3, 4):                    # one bad step, a good one, then two
            losses["total"] = losses["total"] * float("nan")
        return losses

    trainer.criterion = sometimes_nan
    with pytest.raises(FloatingPointError, match="2 steps in a row.*last checkpoint"):
        trainer.fit()
    rows = (tmp_path / "losses.csv").read_text().splitlines()[-4:]
    assert [row.split(",")[4] for row in rows] == ["0", "1", "0", "0"]    # 'applied'
    after = read_checkpoint(tmp_path / "checkpoint/last.pt")
    assert after["epoch"] == good["epoch"] == 3
    assert all(torch.equal(after["model"][k], good["model"][k]) for k in good["model"])


def scaler_state(scale: float) -> dict:
    """A GradScaler's state dict at ``scale``."""
    return {"scale": scale, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
            "_growth_tracker": 7}


@pytest.fixture
def run_log():
    """The messages the run's logger ('cdsr') logs during the test."""
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = utility.get_logger()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_every_last_pt_holds_the_gradient_scaler_and_bad_steps(data_root, tmp_path):
    args = make_args(data_root, "fp16", "--precision", "fp16", "--save_models")
    trainer = trainer_for(args, tmp_path)
    trainer.enter_phase(trainer.phases[0])
    trainer.precision.load_state_dict(scaler_state(512.0))
    trainer.bad_steps = 3
    trainer.save(1)                                     # at an epoch's end (a Ctrl-C's restart point)
    progress = read_checkpoint(tmp_path / "checkpoint/last.pt")["progress"]
    assert progress == {"scaler": scaler_state(512.0), "bad_steps": 3}
    for which in ("--resume", "--resume=1"):            # last.pt and epoch_1.pt
        resumed = trainer_for(make_args(data_root, "fp16", "--precision", "fp16", which), tmp_path)
        assert resumed.precision.state_dict() == scaler_state(512.0) and resumed.bad_steps == 3
        assert (resumed.start_epoch, resumed.start_iteration) == (2, 0)


def test_a_skipped_step_leaves_the_batchnorm_statistics_as_they_were():
    net = tiny("dasr", 2, **TINY_DASR)
    phase = Phase(ENCODER, 1, 1, 1e-3, 10, 0.5, 0)
    set_trainable(net, phase)
    optimizer, criterion = make_optimizer(net, 1e-3), build_loss("1*L1", 1.0)

    def statistics():
        return {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}

    before = statistics()
    assert len(before) == 3 * sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) > 0
    lr = images(2, 2, 3, 8, 8).round()
    lr[1, 0, 0, 0, 0] = float("nan")                    # one bad pixel: NaN batch statistics
    step = training_step(net, lr, images(2, 3, 16, 16), phase, criterion, optimizer)
    assert not step.applied and not step.finite
    after = statistics()
    assert all(torch.equal(after[k], before[k]) for k in before), [k for k in before
                                                                  if not torch.equal(after[k], before[k])]
    lr[1, 0, 0, 0, 0] = 0                               # a good step does change them
    assert training_step(net, lr, images(2, 3, 16, 16), phase, criterion, optimizer).applied
    assert not all(torch.equal(v, before[k]) for k, v in statistics().items())


def test_fp16_gradients_that_never_become_finite_stop_the_run(data_root, tmp_path):
    args = make_args(data_root, "fp16nan", "--precision", "fp16", "--max_bad_steps", "2")
    trainer = trainer_for(args, tmp_path)
    for parameter in trainer.model.encoder.query_encoder.parameters():   # finite loss, NaN gradients
        parameter.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    # From scale 4 (instead of 2^16, to be quick): the scaler halves it at each skip; the skips
    # at 4 and 2 are its normal search, those at 1 and 0.5 overflow without any scaling.
    trainer.precision.load_state_dict(scaler_state(4.0))
    with pytest.raises(FloatingPointError, match="2 steps in a row"):
        trainer.fit()
    with open(tmp_path / "losses.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["applied"] for row in rows] == ["0"] * 4
    assert all(abs(float(row["total"])) < float("inf") for row in rows)    # the losses were finite


def test_best_pt_follows_the_epochs_kept_after_a_resume(data_root, tmp_path):
    trainer_for(make_args(data_root, "best", "--save_models"), tmp_path).fit()     # 3 epochs
    table = tmp_path / "psnr.csv"
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:                # epoch 1 scored low, the later epochs (to be redone) high
        row["psnr"] = "-50.0" if row["epoch"] == "1" else "99.0"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "checkpoint/best.pt").unlink()
    resumed = trainer_for(make_args(data_root, "best", "--save_models", "--resume=1"), tmp_path)
    resumed.fit()                   # epochs 2 and 3 again: the forgotten 99 dB must not count
    assert read_checkpoint(tmp_path / "checkpoint/best.pt")["epoch"] in (2, 3)


def test_every_process_waits_for_the_mid_epoch_checkpoint_before_exiting(data_root, tmp_path, monkeypatch):
    seen = []

    def barrier():                  # what last.pt holds when the processes meet
        path = tmp_path / "checkpoint/last.pt"
        seen.append((read_checkpoint(path)["progress"] or {}).get("iteration") if path.exists() else None)

    monkeypatch.setattr(trainer_module, "barrier", barrier)
    stopped = trainer_for(make_args(data_root, "wait"), tmp_path)
    with pytest.raises(utility.Preempted, match="SIGUSR1 in epoch 2 after iteration 2"):
        stopped.fit(SignalAfter(stopped, 2, 2))
    assert seen[-1] == 2


def test_auto_resume_continues_only_a_run_of_the_same_options(data_root, tmp_path, run_log):
    def auto(*extra):
        trainer = trainer_for(make_args(data_root, "auto", "--auto_resume", "--epochs_sr", "0",
                                        *extra), tmp_path)
        trainer.auto_resume()
        return trainer

    first = auto()
    assert not first.resumed and run_log[-1] == (f"--auto_resume: starting afresh, there is no "
                                                 f"{tmp_path}/checkpoint/last.pt")
    first.fit()
    again = auto("--n_threads", "0", "--print_every", "3")      # how, not what: still the same run
    assert again.resumed and (again.start_epoch, again.start_iteration) == (2, 0)
    other = auto("--lr_encoder", "0.002")
    assert not other.resumed and run_log[-1] == (
        f"--auto_resume: starting afresh, {tmp_path}/checkpoint/last.pt was written with other "
        "options (--lr_encoder 0.001 there, 0.002 here)")


@pytest.mark.parametrize("count, restarted", [(None, False), ("0", False), ("2", True)])
def test_a_torchrun_restart_resumes_by_itself(count, restarted, monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    if count is not None:
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", count)
    assert restarted_by_torchrun() == restarted


def test_a_requeued_job_takes_over_the_lock_of_its_earlier_incarnation(tmp_path, monkeypatch):
    run_dir = tmp_path / "experiment/run"
    lock = tmp_path / "experiment/run.lock"
    lock.parent.mkdir()
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    for job, taken in ((["SLURM_JOB_ID=42", 0], True), (["SLURM_JOB_ID=41", 0], False),
                       (["SLURM_JOB_ID=42", 1], False), (None, False)):
        lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then", "job": job}))
        if taken:
            utility.RunLock(run_dir).acquire()
            assert json.loads(lock.read_text())["job"] == ["SLURM_JOB_ID=42", 1]
        else:                       # another job, or this one now: it may be alive over there
            with pytest.raises(ValueError, match="in use by pid 1 on elsewhere"):
                utility.RunLock(run_dir).acquire()


def test_diverged_weights_are_never_saved(data_root, tmp_path):
    trainer = trainer_for(make_args(data_root, "div", "--epochs_sr", "0"), tmp_path)
    trainer.fit()
    before = (tmp_path / "checkpoint/last.pt").read_bytes()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="no longer finite.*nothing saved"):
        trainer.save(1)
    with pytest.raises(FloatingPointError, match="non-finite PSNR.*nothing of this epoch"):
        trainer.validate(1)
    assert (tmp_path / "checkpoint/last.pt").read_bytes() == before
    assert "nan" not in (tmp_path / "psnr.csv").read_text()


# ----------------------------------------------------------------------------- main.py
def main_py(*argv, cwd, wait=True):
    command = [sys.executable, str(ROOT / "main.py"), *argv]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def small_run(data_root, save, *extra):
    return ["--model", "DASR", "--dir_data", str(data_root), "--scale", "2", "--patch_size", "12",
            "--batch_size", "2", "--queue_size", "8", "--epochs_encoder", "1", "--epochs_sr", "1",
            "--freeze_epoch", "9", "--test_every", "2", "--n_threads", "0", "--data_test", "Set5",
            "--save", save, "--cpu", *extra]


def test_sigterm_mid_epoch_then_resume(data_root, tmp_path):
    run = main_py(*small_run(data_root, "pre", "--test_every", "400", "--print_every", "1"),
                  cwd=tmp_path, wait=False)
    losses = tmp_path / "experiment/pre/losses.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not losses.exists() or len(losses.read_text().splitlines()) < 3):
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM in epoch 1 after iteration" in stderr and "--resume" in stderr
    state = read_checkpoint(tmp_path / "experiment/pre/checkpoint/last.pt")
    done = state["progress"]["iteration"]
    assert state["epoch"] == 0 and done >= 2
    assert len(losses.read_text().splitlines()) == 1 + done
    assert not (tmp_path / "experiment/pre.lock").exists()
    resumed = main_py(*small_run(data_root, "pre", "--test_every", "400", "--resume",
                                 "--epochs_encoder", "1", "--epochs_sr", "0"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert len(losses.read_text().splitlines()) == 1 + 400
    assert f"resumed experiment/pre/checkpoint/last.pt after iteration {done} of epoch 1" in resumed.stderr


def test_a_live_run_folder_is_refused_and_a_dead_ones_lock_taken_over(data_root, tmp_path):
    first = main_py(*small_run(data_root, "busy"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    lock = tmp_path / "experiment/busy.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "started": "now"}))
    before = sorted(p.name for p in (tmp_path / "experiment").iterdir())
    second = main_py(*small_run(data_root, "busy"), cwd=tmp_path)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1].startswith("error: run folder experiment/busy is in use by pid")
    assert sorted(p.name for p in (tmp_path / "experiment").iterdir()) == before   # nothing moved
    gone = subprocess.Popen(["true"])                   # a process that has ended
    gone.wait()
    lock.write_text(json.dumps({"pid": gone.pid, "host": os.uname().nodename, "started": "then"}))
    third = main_py(*small_run(data_root, "busy", "--resume", "--epochs_sr", "2"), cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert "taking over the lock of a dead run" in third.stderr and not lock.exists()


def test_resume_keeps_config_and_records_each_resume(data_root, tmp_path):
    assert main_py(*small_run(data_root, "rec"), cwd=tmp_path).returncode == 0
    config = (tmp_path / "experiment/rec/config.json").read_text()
    stale = tmp_path / "experiment/rec/checkpoint/.last.pt.abc.tmp"
    stale.write_bytes(b"half a checkpoint")
    failing = main_py(*small_run(data_root, "rec", "--resume", "--epochs_encoder", "3"), cwd=tmp_path)
    assert failing.returncode == 2 and "phase" in failing.stderr
    assert stale.exists() and not (tmp_path / "experiment/rec/resumes.jsonl").exists()
    again = main_py(*small_run(data_root, "rec", "--resume", "--epochs_sr", "2"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "experiment/rec/config.json").read_text() == config
    records = [json.loads(line) for line in (tmp_path / "experiment/rec/resumes.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["options"]["epochs_sr"] == 2
    assert records[0]["from"] == {"epoch": 2, "iteration": 0} and "--resume" in records[0]["command"]
    assert not stale.exists()


def test_a_bad_schedule_leaves_an_existing_run_untouched(data_root, tmp_path):
    assert main_py(*small_run(data_root, "keep"), cwd=tmp_path).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "experiment").rglob("*")}
    bad = main_py(*small_run(data_root, "keep", "--freeze_epoch", "1"), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --freeze_epoch 1")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "experiment").rglob("*")} == before


def test_kill_9_then_the_same_command_with_auto_resume_goes_on_exactly(data_root, tmp_path):
    def command(save):              # 2 epochs of 8 iterations
        return small_run(data_root, save, "--auto_resume", "--test_every", "8")

    whole = main_py(*command("whole"), cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    assert "--auto_resume: starting afresh, there is no experiment/whole/checkpoint/last.pt" in whole.stderr
    killed = main_py(*command("cut"), cwd=tmp_path, wait=False)
    losses = tmp_path / "experiment/cut/losses.csv"
    deadline = time.time() + 240
    while time.time() < deadline and (not losses.exists() or not any(
            line.startswith("2,") for line in losses.read_text().splitlines())):
        time.sleep(0.05)
    killed.kill()                                       # SIGKILL in epoch 2: nothing is saved
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    state = read_checkpoint(tmp_path / "experiment/cut/checkpoint/last.pt")
    assert state["epoch"] == 1 and "iteration" not in state["progress"]
    assert any(line.startswith("2,") for line in losses.read_text().splitlines())   # to be redone
    again = main_py(*command("cut"), cwd=tmp_path)      # the same command, as a requeue runs it
    assert again.returncode == 0, again.stderr
    assert "resumed experiment/cut/checkpoint/last.pt after epoch 1" in again.stderr
    assert "taking over the lock of a dead run" in again.stderr
    assert losses.read_text() == (tmp_path / "experiment/whole/losses.csv").read_text()
    whole = read_events(tmp_path / "experiment/whole/tensorboard")
    cut = read_events(tmp_path / "experiment/cut/tensorboard")   # the same curves, each step once
    assert whole.keys() == cut.keys() and [s for s, _ in cut["loss/total"]] == list(range(1, 17))
    for tag in whole:
        assert [s for s, _ in cut[tag]] == [s for s, _ in whole[tag]], tag
        if not tag.startswith("time/"):
            assert [v for _, v in cut[tag]] == [v for _, v in whole[tag]], tag


def test_a_disk_that_fills_at_the_first_checkpoint_ends_with_one_error_line(data_root, tmp_path):
    with small_filesystem(tmp_path / "experiment", "4m"):       # a checkpoint of DASR: 28 MB
        full = main_py(*small_run(data_root, "full"), cwd=tmp_path)
        left = sorted(p.name for p in (tmp_path / "experiment").rglob("*"))
    assert full.returncode == 2, full.stderr
    assert full.stderr.strip().splitlines()[-1] == (
        "error: cannot write checkpoint experiment/full/checkpoint/best.pt (No space left on "
        "device); the previous file there, if any, is intact: free some space or fix the "
        "permissions, then --resume")
    assert "Traceback" not in full.stderr
    assert "full.lock" not in left and not any(name.endswith(".tmp") for name in left), left
