"""CDSR's ablations: each variant removes what it says, is reached by --model or --ablation alike,
rebuilds from its checkpoint, and trains and scores like CDSR (tiny models, CPU).

The generic contract (forward shapes, every trainable parameter gets a gradient, the training
forward's dict, checkpoint round trip) runs for every variant in test_models.py and
test_checkpoint.py, through ``TINY``."""
import argparse
import csv
import json
import subprocess
from pathlib import Path

import pytest
import torch

import model
import option
import utility
from data import build_test_sets, build_train_set
from helpers import TINY, images, load_test_py, tiny
from loss import build_loss
from model.dqa import CrossModalAttention, DAFusion
from model.checkpoint import CheckpointError, load_model, load_weights, read_checkpoint, save_checkpoint
from model.dasr import DASREncoder
from model.inference import predict
from model.lpe import LPEEncoder
from model.variants import ABLATIONS, PAPER_SWITCHES, variant_names
from model.evaluation import evaluate
from trainer import Trainer

VARIANTS = variant_names()
ROOT = Path(__file__).resolve().parents[1]


def test_every_ablation_is_registered_under_its_name():
    assert VARIANTS == sorted(f"cdsr-{a}" for a in ABLATIONS)
    assert set(VARIANTS) < set(model.model_names())
    for name in VARIANTS:
        net = model.build_model(name.upper(), **TINY[name])
        assert isinstance(net, model.CDSR) and net.name == name
        assert net.hparams["pixel_branch"] in (True, False)  # the switches are recorded


def keys(net: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def without(state: dict, *parts: str) -> dict:
    return {k: s for k, s in state.items() if not any(p in k for p in parts)}


def test_each_variant_removes_exactly_its_part():
    paper = keys(tiny("cdsr"))
    encoder = ".query_encoder.", ".key_encoder."
    # LPE branches: the branch's keys go, the fusion MLP reads D instead of 2D features.
    for name, gone, kept in (("cdsr-no-patch", "patch_branch", "pixel_branch"),
                             ("cdsr-no-pixel", "pixel_branch", "patch_branch")):
        net = tiny(name)
        lpe = net.encoder.query_encoder
        assert getattr(lpe, gone) is None and getattr(lpe, kept) is not None
        got = keys(net)
        assert without(got, "fusion.fc1.weight") == without(paper, gone, "fusion.fc1.weight")
        assert got["encoder.query_encoder.fusion.fc1.weight"] == (16, 16)
        assert paper["encoder.query_encoder.fusion.fc1.weight"] == (16, 32)
    # CSC: the codebook's keys go and the embedding is the fused feature.
    net = tiny("cdsr-no-csc").eval()
    assert keys(net) == without(paper, "codebook.")
    lr = images(2, 3, 24, 24)
    with torch.no_grad():
        fused = net.encoder.query_encoder.fused_features(lr / 255)
        assert torch.equal(net.embed(lr), fused)
    # DQA: only the attention goes; the same dynamic conv and channel gate remain.
    net = tiny("cdsr-no-dqa")
    assert keys(net) == without(paper, ".attention.")
    assert not any(isinstance(m, CrossModalAttention) for m in net.modules())
    assert sum(isinstance(m, DAFusion) for m in net.generator.modules()) == 2 * TINY["cdsr"]["n_blocks"]
    # DASR's encoder: the whole LPE (and CSC) is replaced; the generator is CDSR's.
    net = tiny("cdsr-dasr-encoder")
    assert isinstance(net.encoder.query_encoder, DASREncoder)
    assert without(keys(net), *encoder) == without(paper, *encoder)
    assert isinstance(tiny("cdsr").encoder.query_encoder, LPEEncoder)


def test_the_paper_cdsr_is_unchanged_by_the_switch_defaults():
    torch.manual_seed(3)
    explicit = model.build_model("cdsr", scale=2, **TINY["cdsr"], **PAPER_SWITCHES).eval()
    plain = tiny("cdsr", seed=3).eval()
    assert keys(explicit) == keys(plain) and explicit.name == "cdsr"
    lr = images(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(explicit(lr), plain(lr))


def test_switches_that_contradict_the_name_or_no_variant_are_refused():
    with pytest.raises(ValueError, match="build 'cdsr', not 'cdsr-no-patch'"):
        model.build_model("cdsr-no-patch", patch_branch=True, **TINY["cdsr"])
    with pytest.raises(ValueError, match="not a registered variant.*model/variants.py"):
        model.CDSR(**TINY["cdsr"], patch_branch=False, codebook=False)
    with pytest.raises(ValueError, match="no LPE branches and no CSC codebook"):
        model.CDSR(**TINY["cdsr"], encoder="dasr")
    with pytest.raises(ValueError, match="needs its pixel-wise or its patch-wise branch"):
        LPEEncoder(16, 8, pixel_branch=False, patch_branch=False)
    with pytest.raises(ValueError, match="unknown fusion 'sft'; choose one of: da, dqa"):
        model.CDSR(**TINY["cdsr"], fusion="sft")
    with pytest.raises(ValueError, match="unknown encoder 'vit'; choose one of: dasr, lpe"):
        model.CDSR(**TINY["cdsr"], encoder="vit")


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_ablation_flag_and_model_name_build_the_same_network(ablation, monkeypatch):
    built = []
    monkeypatch.setattr(model, "build_model", lambda name, **kwargs: built.append(
        (name.lower(), kwargs)))
    for argv in (["--ablation", ablation], ["--model", f"cdsr-{ablation}"]):
        model.make_model(option.parse_args(argv + ["--queue_size", "16"]))
    assert built[0] == built[1] == (f"cdsr-{ablation}", dict(scale=2, queue_size=16))


def test_ablation_options_are_checked(capsys):
    with pytest.raises(SystemExit):
        option.parse_args(["--model", "DASR", "--ablation", "no-csc"])
    assert "--ablation no-csc removes a part of CDSR; it needs --model CDSR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        option.parse_args(["--ablation", "no-patch", "--pre_train", "x.pt"], test=True)
    assert "unrecognized arguments: --ablation" in capsys.readouterr().err  # the file says which
    with pytest.raises(SystemExit):
        option.parse_args(["--ablation", "no-codebook"])
    # A variant trains with CDSR's recipe when --dir_data picks the preset from --model.
    args = option.parse_args(["--dir_data", "/d", "--model", "cdsr-no-dqa"])
    assert args.preset == "cdsr" and args.degradation == "manet"


@pytest.mark.parametrize("name", VARIANTS)
def test_checkpoint_rebuilds_the_exact_variant(tmp_path, name):
    source = tiny(name, seed=4).eval()
    path = tmp_path / "last.pt"
    save_checkpoint(path, model_name=source.name, scale=2, model=source.state_dict(),
                    model_kwargs=source.hparams)
    stored = read_checkpoint(path)
    assert stored["model_name"] == name
    rebuilt = model.build_model(stored["model_name"], scale=stored["scale"],
                                **stored["model_kwargs"]).eval()
    assert load_weights(rebuilt, stored) == "ours"
    lr = images(1, 3, 24, 24, seed=2)
    with torch.no_grad():
        assert torch.equal(rebuilt(lr), source(lr))
    with pytest.raises(CheckpointError, match=f"checkpoint is for {name.upper()} x2 but the model "
                                              "is CDSR x2"):
        load_weights(tiny("cdsr"), stored)


def test_authors_format_is_refused_for_a_variant(tmp_path, capsys):
    from model.checkpoint import ours_to_authors
    from scripts import convert_checkpoint
    with pytest.raises(ValueError, match="the authors published no 'cdsr-no-csc' checkpoints; their format exists for: cdsr, dasr"):
        ours_to_authors(tiny("cdsr-no-csc").state_dict(), "cdsr-no-csc")
    net = tiny("cdsr-no-csc")
    save_checkpoint(tmp_path / "ours.pt", model_name=net.name, scale=2, model=net.state_dict(),
                    model_kwargs=net.hparams)
    status = utility.run_cli(lambda: convert_checkpoint.main([str(tmp_path / "ours.pt"),
                                                              str(tmp_path / "theirs.pt"), "--to", "authors"]))
    assert status == 2 and not (tmp_path / "theirs.pt").exists()
    assert "CDSR-NO-CSC x2 has no authors' format" in capsys.readouterr().err


@torch.no_grad()
def test_without_the_patch_branch_small_inputs_are_read():
    for name in ("cdsr-no-patch", "cdsr-dasr-encoder"):
        assert tiny(name).eval()(images(1, 3, 5, 7)).shape == (1, 3, 10, 14)
    with pytest.raises(ValueError, match="needs H and W >= 12"):
        tiny("cdsr-no-pixel").eval()(images(1, 3, 5, 7))


@torch.no_grad()
@pytest.mark.parametrize("name", VARIANTS)
def test_whole_image_tiling_is_exact_for_every_variant(name):
    net = tiny(name, scale=2).eval()
    for module in net.modules():       # DQA's attention on, so its means matter
        if hasattr(module, "gamma"):
            module.gamma.data.fill_(0.5)
    x = images(1, 3, 25, 18, seed=5)
    tiled = predict(net, x, tile=8, overlap=0, global_stats=True)
    assert (tiled - net(x)).abs().max() <= 1e-3


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_each_variant_trains_an_epoch_and_scores_through_test_py(data_root, tmp_path, ablation,
                                                                 monkeypatch):
    """One joint epoch from --ablation, then test.py's loader rebuilds the variant from the
    checkpoint alone and scores it with the evaluation loop."""
    argv = (f"--dir_data {data_root} --ablation {ablation} --scale 2 --patch_size 12 --batch_size 2 --queue_size 16 "
            "--test_every 2 --n_threads 0 --epochs_encoder 0 --epochs_sr 1 --save v --cpu").split()
    args = option.parse_args(argv)
    torch.manual_seed(0)
    name = f"cdsr-{ablation}"
    net = model.build_model(name, scale=2, **TINY[name])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trainer = Trainer(args, net, build_loss(args.loss, args.c_weight), build_train_set(args),
                      build_test_sets(args), torch.device("cpu"), run_dir=tmp_path)
    trainer.fit()
    last = read_checkpoint(tmp_path / "checkpoint" / "last.pt")
    assert (last["model_name"], last["phase"]) == (name, "joint")
    moved = [k for k, v in last["model"].items() if not torch.equal(v, before[k])]
    assert any(k.startswith("generator.") for k in moved)
    assert any(k.startswith("encoder.query_encoder.") for k in moved)

    monkeypatch.chdir(tmp_path)
    test_argv = ["--pre_train", str(tmp_path / "checkpoint" / "last.pt"), "--model", name.upper(),
                 "--dir_data", str(data_root), "--save", "score", "--cpu"]
    load_test_py().main(test_argv)
    table = json.loads((tmp_path / "experiment" / "score" / "results.json").read_text())
    assert table["model"] == name and table["options"]["model"] == name.upper()
    scored = next(iter(table["results"].values()))["Set5"]["psnr"]
    loaded = load_model(tmp_path / "checkpoint" / "last.pt")
    assert loaded.name == name and loaded.hparams == net.hparams
    test_sets = build_test_sets(option.parse_args(test_argv, test=True), loaded.scale)
    assert scored == evaluate(loaded, test_sets, torch.device("cpu"))["Set5"]["psnr"]


def test_make_model_reads_the_ablation():
    args = argparse.Namespace(model="CDSR", ablation="no-pixel", scale=2, queue_size=8)
    net = model.make_model(args)
    assert net.name == "cdsr-no-pixel" and net.encoder.queue.shape == (256, 8)


# ------------------------------------------------------------------ the ablation tooling
def test_ablation_script_trains_and_scores_every_model_on_one_recipe():
    env = {"PATH": "/usr/bin:/bin", "PYTHON": "echo", "MODELS": "cdsr cdsr-no-patch dasr",
           "TEST_PATH": "/b", "TEST_FLAGS": "--sig 1.8"}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "ablation.sh"), "--cpu"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.strip().splitlines()]
    assert [line[0] for line in lines] == ["main.py", "test.py", "test.py"] * 3 + [
        "scripts/ablation_table.py"]
    trained = [option.parse_args(line[1:]) for line in lines[0:9:3]]
    assert [a.model for a in trained] == ["cdsr", "cdsr-no-patch", "dasr"]
    assert {a.preset for a in trained} == {"demo"} and all(a.cpu for a in trained)
    assert len({(a.epochs_encoder, a.epochs_sr, a.lr_sr, a.batch_size) for a in trained}) == 1
    for i, args in enumerate(trained):
        photos, sets = (option.parse_args(line[1:], test=True) for line in lines[3 * i + 1:3 * i + 3])
        assert photos.pre_train == sets.pre_train == f"experiment/{args.save}/checkpoint/last.pt"
        assert photos.test_path is None and sets.test_path == "/b" and sets.data_test == "Set5+Set14"
        assert photos.sig == sets.sig == 1.8
    assert lines[-1][-2:] == ["--out", "experiment/ablation"] and len(lines[-1]) == 1 + 6 + 2


def test_ablation_table_gathers_test_py_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    entry = load_test_py()
    runs = []
    for name in ("cdsr-no-csc", "dasr"):
        net = tiny(name, seed=1)
        save_checkpoint(tmp_path / f"{name}.pt", model_name=name, scale=2,
                        model=net.state_dict(), model_kwargs=net.hparams)
        entry.main(["--pre_train", str(tmp_path / f"{name}.pt"), "--save", f"{name}_photos", "--cpu"])
        runs.append(f"experiment/{name}_photos")
    from scripts import ablation_table
    ablation_table.main([*runs, "--out", "experiment/table"])
    table = json.loads((tmp_path / "experiment/table/ablation.json").read_text())["results"]
    assert set(table) == {"cdsr-no-csc", "dasr", "Bicubic (MATLAB)"} and set(table["dasr"]) == {"photos"}
    single = json.loads((tmp_path / "experiment/dasr_photos/results.json").read_text())["results"]
    assert table["dasr"]["photos"]["psnr"] == next(iter(single.values()))["photos"]["psnr"]
    markdown = (tmp_path / "experiment/table/ablation.md").read_text().splitlines()
    assert markdown[2].startswith("| model | photos |") and markdown[-1].startswith("| Bicubic (MATLAB) |")
    with open(tmp_path / "experiment/table/ablation.csv") as f:
        assert len(list(csv.reader(f))) == 1 + 3


def test_complexity_counts_macs_and_inference_parameters():
    from scripts.model_complexity import count_macs, inference_parameters
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(lambda: conv(torch.zeros(1, 3, 10, 10))) == 8 * 3 * 9 * 100
    net = tiny("cdsr-no-pixel")
    counts = inference_parameters(net)
    query = sum(p.numel() for p in net.encoder.query_encoder.parameters())
    assert counts["encoder"] == query and counts["total"] == sum(
        p.numel() for p in net.parameters()) - query               # the key encoder is left out


def test_ablation_table_columns_follow_the_data_test_order():
    from scripts.ablation_table import _in_command_order
    assert _in_command_order({"Set14": 0, "Set5": 0, "B100": 0}, {"data_test": "Set5+Set14"}) == [
        "Set5", "Set14", "B100"]
    assert _in_command_order({"photos": 0}, {"data_test": "Set5"}) == ["photos"]
