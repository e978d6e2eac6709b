"""What a run shows while it trains, on plain values: TensorBoard events (read back as
TensorBoard reads them, with a resumed run's purge), losses.png, the contrastive accuracy."""
import csv
import sys
import warnings

import numpy as np
import pytest
import torch

import option
from data.run_records import LOSS_FIELDS, RunRecords
from data.tensorboard_log import GAP, TensorBoardLog, side_by_side
from helpers import read_events, tiny_run_args, tiny_trainer
from model.training import contrastive_accuracy

def test_a_resumed_log_purges_what_the_killed_run_wrote_after_its_checkpoint(tmp_path):
    first = TensorBoardLog(tmp_path, enabled=True)
    for step in range(1, 11):
        first.training_step(step, {"total": float(step)}, lr=1e-3, accuracy=None)
    first.validation(5, {"Set5": {"psnr": 30.0}})
    first.validation(10, {"Set5": {"psnr": 31.0}})   # after the last checkpoint, at step 5
    first.close()
    again = TensorBoardLog(tmp_path, enabled=True, purge_step=6)
    for step in range(6, 13):
        again.training_step(step, {"total": 100.0 + step}, lr=1e-4, accuracy=0.5)
    again.validation(10, {"Set5": {"psnr": 32.0}})
    again.close()
    curves = read_events(tmp_path)
    assert [s for s, _ in curves["loss/total"]] == list(range(1, 13))  # each step once
    assert [v for _, v in curves["loss/total"]] == [1, 2, 3, 4, 5] + [100.0 + s for s in range(6, 13)]
    assert curves["val/Set5/psnr"] == [(5, 30.0), (10, 32.0)]
    assert curves["train/contrastive_accuracy"] == [(s, 0.5) for s in range(6, 13)]
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2


def test_a_disabled_log_writes_nothing_and_the_switch_parses(tmp_path):
    log = TensorBoardLog(tmp_path / "tb", enabled=False)
    log.training_step(1, {"total": 1.0}, 1e-3, None)
    log.crops(1, "Set5", [("a", *(np.zeros((4, 4, 3), np.uint8),) * 3)])
    log.flush()
    assert not log.enabled and not (tmp_path / "tb").exists()
    assert option.parse_args([]).use_tb_logger is True
    assert option.parse_args(["--use_tb_logger", "false"]).use_tb_logger is False
    assert option.parse_args(["--use_tb_logger", "False"]).use_tb_logger is False


def test_crops_are_lr_sr_hr_side_by_side():
    lr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    sr, hr = np.full((4, 6, 3), 7, np.uint8), np.full((4, 6, 3), 9, np.uint8)
    image = side_by_side(lr, sr, hr)
    assert image.shape == (4, 3 * 6 + 2 * GAP, 3) and image.dtype == np.uint8
    assert (image[:2, :2] == lr[0, 0]).all() and (image[2:, 4:6] == lr[1, 2]).all()
    assert (image[:, 6:6 + GAP] == 255).all() and (image[:, 6 + GAP:12 + GAP] == 7).all()
    assert (image[:, -6:] == 9).all()


def test_contrastive_accuracy_is_the_share_of_positives_scored_highest():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [2.0, 1.0, 0.0], [1.0, 1.5, 0.0]])
    labels = torch.zeros(4, dtype=torch.long)
    assert float(contrastive_accuracy({"logits": logits, "labels": labels})) == 0.5
    assert contrastive_accuracy({"sr": torch.zeros(1)}) is None


def write_losses(records, phases):
    iteration = 0
    for phase, count in phases:
        for _ in range(count):
            iteration += 1
            contrastive = None if phase == "freeze" else 5.0 / iteration
            losses = {"total": 10.0 / iteration + (contrastive or 0), "L1": 10.0 / iteration}
            if contrastive is not None:
                losses["contrastive"] = contrastive
            records.write_step(1, iteration, phase, 1e-3, True, losses,
                               None if contrastive is None else min(1.0, iteration / 20))


def test_losses_png_is_drawn_with_or_without_an_accuracy(tmp_path):
    records = RunRecords(tmp_path / "a", ("L1",))
    write_losses(records, [("encoder", 10), ("joint", 20), ("freeze", 10)])
    rows = list(csv.DictReader(open(tmp_path / "a/losses.csv")))
    assert [r["contrastive_accuracy"] for r in rows[28:32]] == ["1.0", "1.0", "", ""]
    records.plot_losses("CDSR x2")
    assert (tmp_path / "a/losses.png").stat().st_size > 10_000
    plain = RunRecords(tmp_path / "b", ("L1",))
    write_losses(plain, [("freeze", 30)])
    plain.plot_losses("KDSR")
    assert (tmp_path / "b/losses.png").is_file()
    one = RunRecords(tmp_path / "c", ("L1",))        # a run of one iteration: laid out, no warning
    write_losses(one, [("encoder", 1)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one.plot_losses("DASR x2")


def test_a_losses_csv_of_an_earlier_version_gets_the_new_column_when_resumed(tmp_path):
    old_fields = [f for f in LOSS_FIELDS if f != "contrastive_accuracy"] + ["L1"]
    with open(tmp_path / "losses.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old_fields)
        writer.writeheader()
        writer.writerow({"epoch": 1, "iteration": 1, "phase": "joint", "lr": 1e-3, "applied": 1,
                         "total": 3.0, "contrastive": 1.0, "L1": 2.0})
    RunRecords(tmp_path, ("L1",)).write_step(1, 2, "joint", 1e-3, True,
                                             {"total": 2.5, "contrastive": 1.0, "L1": 1.5}, 0.25)
    rows = list(csv.DictReader(open(tmp_path / "losses.csv")))
    assert [(r["iteration"], r["L1"], r["contrastive_accuracy"]) for r in rows] == [
        ("1", "2.0", ""), ("2", "1.5", "0.25")]


def test_without_the_tensorboard_package_the_run_says_what_to_do(data_root, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)     # import fails
    with pytest.raises(ValueError, match="pip install tensorboard, or pass --use_tb_logger false"):
        TensorBoardLog(tmp_path / "tb", enabled=True)
    with pytest.raises(ValueError, match="--use_tb_logger needs the tensorboard package"):
        tiny_trainer(tiny_run_args(data_root, "tb"), tmp_path / "run")   # before the run starts
    assert not (tmp_path / "tb").exists() and not (tmp_path / "run").exists()
    TensorBoardLog(tmp_path / "tb", enabled=False)                         # not needed when off
    tiny_trainer(tiny_run_args(data_root, "tb", "--use_tb_logger", "false"), tmp_path / "run")
