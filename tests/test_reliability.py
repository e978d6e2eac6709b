"""Nothing lost: preemption mid-epoch, divergence, locked run folders, checks before side effects."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import option
import utility
from helpers import tiny_trainer, write_data_root
from model.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY_DASR = dict(n_feats=8, n_groups=1, n_blocks=1, embed_dim=16, queue_size=8)
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_data_root(tmp_path_factory.mktemp("data"), [(40, 44)] * 3, [(32, 36)] * 2)


def make_args(data_root, save, *extra):
    argv = (f"--dir_data {data_root} --model DASR --scale 2 --patch_size 8 --batch_size 2 "
            f"--queue_size 8 --test_every 4 --n_threads 0 --epochs_encoder 1 --epochs_sr 2 "
            f"--freeze_epoch 3 --data_test Set5 --save {save} --cpu")
    return option.parse_args(argv.split() + list(extra))


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
        assert state["epoch"] == epoch and state["progress"] is None
    resumed = trainer_for(make_args(data_root, "cut", "--resume"), tmp_path / "cut")
    resumed.fit()
    assert (tmp_path / "cut/losses.csv").read_text() == (tmp_path / "full/losses.csv").read_text()
    assert (tmp_path / "cut/psnr.csv").read_text() == (tmp_path / "full/psnr.csv").read_text()
    a = read_checkpoint(tmp_path / "full/checkpoint/last.pt")["model"]
    b = read_checkpoint(tmp_path / "cut/checkpoint/last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


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
