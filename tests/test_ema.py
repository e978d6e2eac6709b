"""--ema_decay (the moving average of the weights) and a run seen while it trains, end to end on
a tiny CDSR: TensorBoard, losses.png, codebook health in log.txt, the average in checkpoints,
scored by test.py (and exported) by default."""
import json
import math

import pytest
import torch

import option
import utility
from tensorboard.backend.event_processing import event_accumulator
from data import build_test_sets, build_train_set
from helpers import collapsed_codebook, load_test_py, read_events, tiny, tiny_run_args
from loss import build_loss
from model.authors_format import ours_to_authors
from model.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from model.ema import WeightEMA, averaging_note
from scripts import convert_checkpoint
from trainer import Trainer


def test_the_average_follows_the_weights_and_copies_the_buffers():
    model = tiny("dasr")
    ema = WeightEMA(model, 0.75)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.encoder.queue.mul_(-1)
    ema.update(model)
    state, now = ema.state_dict(), model.state_dict()
    for name, p in model.named_parameters():
        torch.testing.assert_close(state[name], 0.75 * start[name] + 0.25 * now[name])
    assert torch.equal(state["encoder.queue"], now["encoder.queue"])        # buffers: copied
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    ema.reset(model)
    assert all(torch.equal(ema.state_dict()[k], now[k]) for k in now)


def test_a_run_too_short_for_the_decay_is_told_so_and_bad_decays_are_refused(capsys):
    assert "0.96 or less" in averaging_note(0.999, 250)
    assert averaging_note(0.99, 2500) is None
    for bad in ("1", "-0.1", "1.5"):
        with pytest.raises(SystemExit):
            option.parse_args(["--ema_decay", bad])
        assert "--ema_decay must be in [0, 1)" in capsys.readouterr().err


def collapse(codebook) -> None:
    """Give ``codebook`` the weights of ``collapsed_codebook`` (its attention on row 3)."""
    rows, dim = codebook.entries.shape
    codebook.load_state_dict(collapsed_codebook(rows, dim).state_dict())


@pytest.fixture(scope="module")
def cdsr_run(data_root, tmp_path_factory):
    """A tiny CDSR run (encoder, joint, freeze: 3 epochs of 4 iterations) with --ema_decay 0.5
    and crops every 2 epochs, its query codebook collapsed by hand before training; its
    run folder."""
    root = tmp_path_factory.mktemp("cdsr_ema")
    run_dir = root / "experiment" / "ema"
    args = tiny_run_args(data_root, "ema", "--model", "CDSR", "--patch_size", "12",
                         "--ema_decay", "0.5", "--tb_image_every", "2")
    model = tiny("cdsr", 2)
    collapse(model.encoder.query_encoder.codebook)
    trainer = Trainer(args, model, build_loss(args.loss, args.c_weight), build_train_set(args),
                      build_test_sets(args), torch.device("cpu"), run_dir=run_dir)
    utility.setup_logging(run_dir / "log.txt")
    trainer.fit()
    return run_dir


def test_tensorboard_holds_every_curve_of_the_run(cdsr_run):
    curves = read_events(cdsr_run / "tensorboard")
    steps = list(range(1, 13))                          # 3 epochs of 4 iterations
    for tag in ("loss/total", "train/lr"):
        assert [s for s, _ in curves[tag]] == steps, tag
    assert [s for s, _ in curves["loss/contrastive"]] == steps[:8]  # no contrastive loss when frozen
    assert [s for s, _ in curves["loss/L1"]] == steps[4:]
    assert [s for s, _ in curves["train/contrastive_accuracy"]] == steps[:8]
    assert all(0 <= v <= 1 for _, v in curves["train/contrastive_accuracy"])
    for tag in ("time/step_seconds", "time/loader_wait_share", "codebook/perplexity",
                "codebook/rows_for_90pct", "val/Set5/psnr", "val/Set5/ssim",
                "val/Set5/bicubic_psnr", "val/Set5/bicubic_ssim"):
        assert [s for s, _ in curves[tag]] == [4, 8, 12], tag
    assert [v for _, v in curves["codebook/rows_for_90pct"]] == [1, 1, 1]
    assert (curves["train/lr"][0][1], curves["train/lr"][-1][1]) == pytest.approx((1e-3, 1e-4))
    psnr = [float(line.split(",")[3]) for line in (cdsr_run / "psnr.csv").read_text().splitlines()[1:]]
    assert [v for _, v in curves["val/Set5/psnr"]] == pytest.approx(psnr, abs=1e-4)
    events = event_accumulator.EventAccumulator(str(cdsr_run / "tensorboard"),
                                                size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["crops/Set5/img_000", "crops/Set5/img_001"]
    crops = events.Images("crops/Set5/img_000")
    assert [c.step for c in crops] == [8, 12]           # epoch 2, and the last epoch
    assert crops[0].height == 2 * 16 and crops[0].width == 3 * 2 * 16 + 8   # 16x16 LR: the whole image


def test_log_txt_has_the_codebook_usage_of_every_epoch_and_one_collapse_warning(cdsr_run):
    log = (cdsr_run / "log.txt").read_text()
    for epoch in (1, 2, 3):
        assert f"epoch {epoch}: CSC codebook: 90% of the attention on 1 of 8 rows, perplexity 1.0" in log
    assert log.count("the CSC codebook has collapsed to 1 row") == 1
    assert (cdsr_run / "losses.png").is_file() and (cdsr_run / "psnr.png").is_file()
    header = (cdsr_run / "losses.csv").read_text().splitlines()[0]
    assert "contrastive_accuracy" in header.split(",")


def test_checkpoints_hold_the_average_and_test_py_scores_it_by_default(cdsr_run, data_root, monkeypatch):
    last = read_checkpoint(cdsr_run / "checkpoint/last.pt")
    raw, average = last["model"], last["model_ema"]
    assert raw.keys() == average.keys()
    assert not torch.equal(raw["generator.first_conv.weight"], average["generator.first_conv.weight"])
    assert torch.equal(raw["encoder.queue"], average["encoder.queue"])
    best = read_checkpoint(cdsr_run / "checkpoint/best.pt")
    assert best["model_ema"] is not None
    average_only = cdsr_run.parent / "average_only.pt"      # the average as a file's weights
    save_checkpoint(average_only, model_name="cdsr", scale=2, model=average,
                    model_kwargs=last["model_kwargs"])
    entry = load_test_py()
    scores = {}
    monkeypatch.chdir(cdsr_run.parent.parent)
    for name, checkpoint, extra in (("default", "checkpoint/last.pt", []),
                                    ("raw", "checkpoint/last.pt", ["--no_ema"]),
                                    ("average", "../average_only.pt", [])):
        entry.main(["--pre_train", str(cdsr_run / checkpoint), "--test_path",
                    str(data_root / "benchmark"), "--data_test", "Set5", "--save", f"score_{name}",
                    "--cpu", *extra])
        results = json.loads((cdsr_run.parent / f"score_{name}" / "results.json").read_text())["results"]
        scores[name] = next(iter(results.values()))["Set5"]["psnr"]
    assert scores["default"] == scores["average"]
    assert not math.isclose(scores["raw"], scores["default"], abs_tol=1e-3)


def test_either_set_of_weights_exports_in_the_authors_format(cdsr_run, tmp_path):
    last = read_checkpoint(cdsr_run / "checkpoint/last.pt")
    for flag, field in ((None, "model_ema"), ("ema", "model_ema"), ("raw", "model")):
        out = tmp_path / f"{flag}.pt"
        convert_checkpoint.main([str(cdsr_run / "checkpoint/last.pt"), str(out), "--to", "authors",
                                 *(["--weights", flag] if flag else [])])
        exported, expected = torch.load(out), ours_to_authors(last[field], "cdsr")
        assert exported.keys() == expected.keys()
        assert all(torch.equal(exported[k], expected[k]) for k in expected), flag
    plain = tmp_path / "plain.pt"
    save_checkpoint(plain, model_name="cdsr", scale=2, model=last["model"],
                    model_kwargs=last["model_kwargs"])
    with pytest.raises(CheckpointError, match="--weights ema: .* holds no moving average"):
        convert_checkpoint.main([str(plain), str(tmp_path / "x.pt"), "--to", "authors", "--weights", "ema"])
    weights = load_model(plain).state_dict()        # a file without an average: its weights
    assert torch.equal(weights["generator.first_conv.weight"], last["model"]["generator.first_conv.weight"])
