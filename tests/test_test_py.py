"""test.py end to end on tiny checkpoints and tiny images: protocol tables, pre-made test sets,
the authors' checkpoint format, own images (grayscale, RGBA, 16-bit) and one-line errors."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import utility
from helpers import TINY, load_test_py, tiny
from data.protocols import protocol_settings
from data.testsets import write_testset
from model import build_model
from model.checkpoint import ours_to_authors, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


entry = load_test_py()


def run_test_py(argv, cwd):
    return subprocess.run([sys.executable, str(ROOT / "test.py"), *argv], cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=120)


def make_checkpoint(path: Path, name: str, scale: int = 4) -> Path:
    save_checkpoint(path, model_name=name, scale=scale, model=tiny(name, scale).state_dict(),
                    model_kwargs=TINY[name])
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Two 48x48 HR images in bench/Toy/HR and tiny DASR/CDSR x4 checkpoints."""
    root = tmp_path_factory.mktemp("test_py")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48]
    for i, name in enumerate(("a", "b")):
        waves = 127 + 100 * np.sin(xx / (3 + i) + yy / 5)[..., None] * np.array([1.0, 0.6, -0.4])
        image = np.clip(waves + rng.normal(0, 8, (48, 48, 3)), 0, 255).astype(np.uint8)
        (root / "bench" / "Toy" / "HR").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "bench" / "Toy" / "HR" / f"{name}.png"), image)
    return {"root": root, "bench": root / "bench",
            "dasr": make_checkpoint(root / "dasr.pt", "dasr"),
            "cdsr": make_checkpoint(root / "cdsr.pt", "cdsr")}


def protocol_run(workspace, monkeypatch, protocol, save, *extra, checkpoint="dasr"):
    monkeypatch.chdir(workspace["root"])
    entry.main(["--pre_train", str(workspace[checkpoint]), "--protocol", protocol, "--test_path",
                str(workspace["bench"]), "--data_test", "Toy", "--save", save, "--cpu", *extra])
    return workspace["root"] / "experiment" / save


@pytest.mark.parametrize("protocol, checkpoint", [("cdsr", "cdsr"), ("dasr-iso", "dasr"),
                                                  ("dasr-aniso", "dasr"), ("gaussian8", "dasr")])
def test_every_protocol_scores_into_a_table(workspace, monkeypatch, protocol, checkpoint):
    run_dir = protocol_run(workspace, monkeypatch, protocol, f"t_{protocol}", checkpoint=checkpoint)
    labels = [s.label for s in protocol_settings(protocol, 4)]
    with open(run_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["setting"] for r in rows] == labels
    assert all(r["dataset"] == "Toy" and r["images"] == "2" for r in rows)
    assert all(np.isfinite(float(r["psnr"])) and 0 < float(r["ssim"]) <= 1 for r in rows)
    results = json.loads((run_dir / "results.json").read_text())
    assert [s["label"] for s in results["settings"]] == labels and results["model"] == checkpoint
    assert sorted(results["results"]) == sorted(labels)
    table = (run_dir / "results.md").read_text()
    assert "| setting | Toy |" in table and all(f"| {label} |" in table for label in labels)


@pytest.mark.parametrize("scale, paper", [(2, 33.66), (3, 30.39), (4, 28.42)])
def test_bicubic_column_is_the_papers_bicubic_row(benchmark_dir, tmp_path, monkeypatch, scale, paper):
    """EDSR / RCAN / DASR Table 2 (sigma 0) print MATLAB bicubic upscaling of MATLAB-made LR on
    Set5 (Y, border = scale); the protocol's LR differs from MATLAB's only at the border rows."""
    checkpoint = make_checkpoint(tmp_path / "dasr.pt", "dasr", scale)
    monkeypatch.chdir(tmp_path)
    entry.main(["--pre_train", str(checkpoint), "--protocol", "dasr-iso", "--test_path",
                str(benchmark_dir), "--data_test", "Set5", "--save", "bicubic", "--cpu"])
    results = json.loads((tmp_path / "experiment/bicubic/results.json").read_text())["results"]
    assert abs(results["sig0.0"]["Set5"]["bicubic_psnr"] - paper) <= 0.03
    assert "Bicubic (MATLAB)" in (tmp_path / "experiment/bicubic/results.md").read_text()


def test_noisy_settings_read_from_testsets_equal_the_on_the_fly_ones(workspace, monkeypatch):
    write_testset("cdsr", workspace["bench"] / "Toy" / "HR", "Toy", 4, workspace["root"] / "sets")
    fly = protocol_run(workspace, monkeypatch, "cdsr", "fly", "--protocol_noise", "15")
    read = protocol_run(workspace, monkeypatch, "cdsr", "read", "--protocol_noise", "15",
                        "--testsets", str(workspace["root"] / "sets"))
    fly_results = json.loads((fly / "results.json").read_text())["results"]
    assert all(label.endswith("_n15") for label in fly_results)
    assert fly_results == json.loads((read / "results.json").read_text())["results"]


def test_the_fixed_degradation_does_not_depend_on_how_the_sets_are_found(workspace, monkeypatch, tmp_path):
    shutil.copytree(workspace["bench"], tmp_path / "data" / "benchmark")
    monkeypatch.chdir(tmp_path)
    common = ["--pre_train", str(workspace["dasr"]), "--data_test", "Toy", "--cpu"]
    entry.main(common + ["--test_path", str(workspace["bench"]), "--save", "by_path"])
    entry.main(common + ["--dir_data", str(tmp_path / "data"), "--save", "by_root"])
    by_path, by_root = (json.loads((tmp_path / "experiment" / save / "results.json").read_text())
                        for save in ("by_path", "by_root"))
    assert by_path["results"] == by_root["results"]
    assert [s["label"] for s in by_root["settings"]] == ["dasr iso std 1.2"]


def test_sv_mode_scores_one_spatially_variant_set_of_the_cdsr_protocol(workspace, monkeypatch):
    run_dir = protocol_run(workspace, monkeypatch, "cdsr", "sv3", "--sv_mode", "3", checkpoint="cdsr")
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results["results"]) == ["sv3"] and results["settings"][0]["params"]["sv_mode"] == 3
    spatially_invariant = protocol_run(workspace, monkeypatch, "cdsr", "sv0", "--sv_mode", "0",
                                       checkpoint="cdsr")
    assert len(json.loads((spatially_invariant / "results.json").read_text())["results"]) == len(protocol_settings("cdsr", 4))


def test_resume_scores_an_epoch_of_our_run_without_touching_it(workspace, monkeypatch, tmp_path, capsys):
    run = tmp_path / "experiment" / "mine" / "checkpoint"
    make_checkpoint(run / "epoch_3.pt", "dasr")
    make_checkpoint(run / "last.pt", "dasr")
    monkeypatch.chdir(tmp_path)
    common = ["--test_path", str(workspace["bench"]), "--data_test", "Toy", "--cpu", "--save", "mine"]
    entry.main(common + ["--resume", "3"])
    entry.main(common + ["--resume", "-1", "--n_GPUs", "2"])
    log = capsys.readouterr().err
    assert "--resume 3: scoring experiment/mine/checkpoint/epoch_3.pt" in log
    assert "--resume -1: scoring experiment/mine/checkpoint/last.pt" in log
    assert "--n_GPUs 2: no CUDA device in use; scoring on the cpu" in log
    names = sorted(p.name for p in (tmp_path / "experiment" / "mine").iterdir())
    assert names[:2] == ["checkpoint", "test"] and [n[:5] for n in names[2:]] == ["test."]  # earlier test/ aside
    assert (run / "epoch_3.pt").is_file() and (tmp_path / "experiment/mine/test/results.md").is_file()


def test_save_results_writes_images_and_figures(workspace, monkeypatch):
    run_dir = protocol_run(workspace, monkeypatch, "dasr-iso", "figs", "--save_results",
                           "--figure_images", "b", "--self_ensemble")
    assert "x8 self-ensemble" in (run_dir / "results.md").read_text()
    assert sorted(p.name for p in (run_dir / "results" / "Toy" / "sig1.2").iterdir()) == ["a.png", "b.png"]
    for figure in ("psnr_vs_kernel.png", "compare_Toy_b.png"):
        image = cv2.imread(str(run_dir / "figures" / figure))
        assert image is not None and image.shape[0] > 100
    off = protocol_run(workspace, monkeypatch, "dasr-iso", "no_figs", "--save_results", "False")
    assert sorted(p.name for p in off.iterdir()) == ["results.csv", "results.json", "results.md"]


def test_authors_checkpoint_scores_through_the_same_path(workspace, monkeypatch, tmp_path):
    torch.manual_seed(0)
    model = build_model("dasr", scale=4)                   # paper size, as the authors' files
    path = tmp_path / "authors_dasr_x4.pt"
    torch.save(ours_to_authors(model.state_dict(), "dasr"), path)
    run_dir = protocol_run({**workspace, "authors": path}, monkeypatch, "dasr-iso", "authors",
                           checkpoint="authors")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["model"] == "dasr" and results["scale"] == 4 and len(results["results"]) == 4


def test_cli_prints_the_table(workspace):
    out = run_test_py(["--pre_train", str(workspace["dasr"]), "--protocol", "dasr-iso", "--test_path",
                       str(workspace["bench"]), "--data_test", "Toy", "--save", "cli", "--cpu",
                       "--chop", "--tile", "8"], workspace["root"])
    assert out.returncode == 0, out.stderr
    assert "| sig3.6 |" in out.stdout and "tiles of 8 LR px" in out.stdout


def write_own_images(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(1)
    cv2.imwrite(str(folder / "gray.png"), rng.integers(0, 256, (14, 17), dtype=np.uint8))
    rgba = rng.integers(0, 256, (15, 13, 4), dtype=np.uint8)
    rgba[..., 3] = 200
    cv2.imwrite(str(folder / "rgba.png"), rgba)
    cv2.imwrite(str(folder / "deep.png"), rng.integers(0, 65536, (13, 16, 3), dtype=np.uint16))


def test_own_images_gray_rgba_and_16_bit(workspace, tmp_path):
    write_own_images(tmp_path / "in")
    out = run_test_py(["--pre_train", str(workspace["cdsr"]), "--input", str(tmp_path / "in"),
                       "--output", str(tmp_path / "out"), "--cpu"], tmp_path)
    assert out.returncode == 0, out.stderr
    gray = cv2.imread(str(tmp_path / "out" / "gray.png"), cv2.IMREAD_UNCHANGED)
    rgba = cv2.imread(str(tmp_path / "out" / "rgba.png"), cv2.IMREAD_UNCHANGED)
    deep = cv2.imread(str(tmp_path / "out" / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert gray.shape == (56, 68) and gray.dtype == np.uint8
    assert rgba.shape == (60, 52, 4) and (rgba[..., 3] == 200).all()
    assert deep.shape == (52, 64, 3) and deep.dtype == np.uint8
    assert out.stdout.count(" -> ") == 3


def test_own_image_tiled_equals_untiled_for_dasr(workspace, tmp_path, monkeypatch):
    image = np.random.default_rng(2).integers(0, 256, (30, 26, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "photo.png"), image)
    common = ["--pre_train", str(workspace["dasr"]), "--input", str(tmp_path / "photo.png"), "--cpu"]
    entry.main(common + ["--output", str(tmp_path / "whole")])
    entry.main(common + ["--output", str(tmp_path / "tiled"), "--chop", "--tile", "8",
                         "--tile_overlap", "9"])
    whole = cv2.imread(str(tmp_path / "whole" / "photo.png")).astype(int)
    tiled = cv2.imread(str(tmp_path / "tiled" / "photo.png")).astype(int)
    assert np.abs(whole - tiled).max() <= 1           # equal floats may round apart at .5


@pytest.mark.parametrize("argv, message", [
    (["--protocol", "dasr-aniso", "--test_path", "BENCH", "--data_test", "Toy"], "defined for scale 4"),
    (["--protocol", "cdsr", "--testsets", "ROOT/none", "--data_test", "Toy"], "no cdsr test set of Toy x2"),
    (["--input", "ROOT/missing.png", "--output", "ROOT/out"], "does not exist"),
    (["--protocol", "cdsr", "--noise", "5", "--test_path", "BENCH"], "use --protocol_noise"),
    (["--protocol_noise", "5", "--test_path", "BENCH"], "needs --protocol"),
    (["--bf16", "--test_path", "BENCH"], "--bf16 is for --input only"),
    (["--input", "ROOT/in", "--output", "ROOT/in"], "would overwrite the input"),
    (["--input", "ROOT/in", "--output", "ROOT/in/x.png"], "cannot create the output folder"),
    (["--input", "ROOT/in", "--output", "ROOT/out", "--chop", "--tile", "0"], "--tile must be >= 1"),
    (["--input", "ROOT/in", "--output", "ROOT/out", "--model", "cdsr"], "holds DASR x2, not CDSR x2"),
    (["--input", "ROOT/in", "--output", "ROOT/out", "--lr_sr", "1e-4"], "unrecognized arguments: --lr_sr"),
    (["--resume", "5", "--test_path", "BENCH"], "--pre_train and --resume both name a checkpoint"),
    (["--sv_mode", "2", "--test_path", "BENCH"], "--sv_mode 2 scores MANet's spatially variant sets: it needs --protocol cdsr"),
    (["--sv_mode", "7", "--test_path", "BENCH"], "argument --sv_mode: invalid choice: 7"),
    (["--save_results", "maybe", "--test_path", "BENCH"], "expected true or false, got 'maybe'"),
    (["--n_GPUs", "0", "--test_path", "BENCH"], "--n_GPUs must be positive"),
])
def test_errors_are_one_line_with_exit_code_2(workspace, tmp_path, monkeypatch, capsys, argv, message):
    x2 = make_checkpoint(tmp_path / "dasr_x2.pt", "dasr", scale=2)
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "x.png"), np.full((16, 16, 3), 90, np.uint8))
    argv = [a.replace("BENCH", str(workspace["bench"])).replace("ROOT", str(tmp_path)) for a in argv]
    monkeypatch.chdir(tmp_path)
    code = utility.run_cli(lambda: entry.main(["--pre_train", str(x2), "--cpu", *argv]))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_missing_checkpoint_from_the_command_line(tmp_path):
    out = run_test_py(["--pre_train", str(tmp_path / "none.pt"), "--cpu"], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: checkpoint not found: {tmp_path / 'none.pt'}"]
    out = run_test_py(["--cpu"], tmp_path)
    assert out.returncode == 2 and "say which checkpoint to score: --pre_train CKPT, or --resume N" in out.stderr
    out = run_test_py(["--resume", "600", "--scale", "2", "--cpu"], tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert ("error: --resume 600: no checkpoint at experiment/blindsr/checkpoint/epoch_600.pt, "
            "experiment/blindsr_x2_bicubic_iso/model/model_600.pt; name the training run") in out.stderr


@pytest.mark.parametrize("script", ["cdsr_aniso.sh 4 15", "cdsr_aniso.sh 2", "dasr_iso.sh 3",
                                    "dasr_aniso.sh"])
def test_recipe_scripts_run_commands_our_parsers_accept(script):
    import option
    env = {"PATH": "/usr/bin:/bin", "PYTHON": "echo", "DIR_DATA": "/data"}
    name, *params = script.split()
    out = subprocess.run(["bash", str(ROOT / "scripts" / name), *params], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    train, test = [line.split() for line in out.stdout.strip().splitlines()]
    assert train[0] == "main.py" and test[0] == "test.py"
    args = option.parse_args(train[1:])
    assert args.dir_data.startswith("/data") and args.test_path == "/data/benchmark"
    checkpoint = f"experiment/{args.save}/checkpoint/last.pt"
    test_args = option.parse_args(test[1:], test=True)
    assert test_args.pre_train == checkpoint and test_args.protocol
