"""Published test protocols: settings, test-set folders, reading them back, the CLI."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import utility
from data.eval_set import EvalSet
from data.images import read_image, write_png
from data.protocols import protocol_settings
from data.testsets import find_hr_dir, find_testset, read_protocol_sets, read_testset, write_testset
from scripts import make_testsets

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def hr_dir(tmp_path) -> Path:
    """Two small HR images whose sizes are not multiples of 3 or 4 (modcrop is exercised)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "hr"
    for name, shape in (("a", (50, 45, 3)), ("b", (41, 62, 3))):
        smooth = np.cumsum(rng.integers(-8, 9, size=shape), axis=1) + 128
        write_png(folder / f"{name}.png", np.clip(smooth, 0, 255).astype(np.uint8))
    return folder


# ----------------------------------------------------------------------------- settings
def test_cdsr_settings_are_manets_nine_kernels():
    settings = protocol_settings("cdsr", 2)
    assert [s.suffix for s in settings] == ["1.0_1.0_0.0", "3.0_1.0_0.0", "3.0_1.0_0.8", "3.0_3.0_0.0",
                                            "5.0_1.0_0.0", "5.0_1.0_0.8", "5.0_3.0_0.0", "5.0_3.0_0.8", "5.0_5.0_0.0"]
    assert settings[2].params["theta_rad"] == pytest.approx(math.pi / 4)
    x4 = protocol_settings("cdsr", 4)
    assert len(x4) == 18 and {s.noise for s in x4} == {0.0, 15.0} and len({s.label for s in x4}) == 18
    assert {s.folder for s in x4} == {"LR_mode0_noise0", "LR_mode0_noise15"}
    assert x4[-1].suffix == "9.0_9.0_0.0"
    assert [s.label for s in protocol_settings("cdsr", 3, noise=0, sv_modes=(1, 5))][-2:] == ["sv1", "sv5"]


def test_dasr_and_gaussian8_settings():
    assert [s.params["sigma_std"] for s in protocol_settings("dasr-iso", 3)] == [0.0, 0.8, 1.6, 2.4]
    aniso = protocol_settings("dasr-aniso", 4)
    assert len(aniso) == 27 and sorted({s.noise for s in aniso}) == [0.0, 5.0, 10.0]
    second = aniso[1].params
    assert (second["lambda_1_std"], second["lambda_2_std"], second["theta_deg"]) == (2.0, 1.0, 10.0)
    assert [s.params["sigma_std"] for s in protocol_settings("gaussian8", 4)] == pytest.approx(
        [1.8, 2.0, 2.2, 2.4, 2.6, 2.8, 3.0, 3.2])
    assert [s.label for s in protocol_settings("gaussian8", 3)][::7] == ["sig1.35", "sig2.40"]
    json.dumps([s.params for s in protocol_settings("gaussian8", 2)])


@pytest.mark.parametrize("args, match", [
    (("manet", 4), "unknown protocol"),
    (("dasr-aniso", 2), "scale"),
    (("cdsr", 5), "scale"),
    (("dasr-iso", 4, -1.0), "noise"),
    (("dasr-iso", 4, None, (1,)), "spatially variant"),
    (("cdsr", 4, None, (9,)), "spatially variant mode"),
])
def test_settings_arguments_are_validated(args, match):
    with pytest.raises(ValueError, match=match):
        protocol_settings(*args)


def test_setting_degrade_is_seeded_by_seed_image_and_setting():
    hr = read_image_like((48, 40))
    noisy = protocol_settings("dasr-aniso", 4, noise=10)[3]
    lr = noisy.degrade(hr, seed=1, image_name="x")
    assert lr.shape == (12, 10, 3) and lr.dtype == np.uint8
    assert np.array_equal(lr, noisy.degrade(hr, seed=1, image_name="x"))
    assert not np.array_equal(lr, noisy.degrade(hr, seed=2, image_name="x"))
    assert not np.array_equal(lr, noisy.degrade(hr, seed=1, image_name="y"))
    clean = protocol_settings("cdsr", 4, noise=0)[4]
    assert np.array_equal(clean.degrade(hr, seed=1, image_name="x"), clean.degrade(hr, seed=2, image_name="y"))


def read_image_like(shape) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- folders
@pytest.mark.parametrize("protocol, scale, n_settings", [
    ("cdsr", 4, 18), ("cdsr", 3, 9), ("dasr-iso", 2, 4), ("dasr-aniso", 4, 27), ("gaussian8", 3, 8)])
def test_write_and_read_back_every_protocol(hr_dir, tmp_path, protocol, scale, n_settings):
    set_dir = write_testset(protocol, hr_dir, "Tiny", scale, tmp_path / "out", seed=3)
    nested = "" if protocol == "cdsr" else protocol   # cdsr: MANet's flat SRTestset layout
    assert set_dir == tmp_path / "out" / nested / f"Tiny_x{scale}"
    manifest = json.loads((set_dir / "manifest.json").read_text())
    assert (manifest["protocol"], manifest["scale"], manifest["name"]) == (protocol, scale, "Tiny")
    assert [i["name"] for i in manifest["images"]] == ["a", "b"]
    assert manifest["images"][0]["source_size"] == [50, 45] and manifest["notes"]
    assert sum(len(f["settings"]) for f in manifest["lr_folders"].values()) == n_settings
    sets = read_testset(set_dir)
    assert len(sets) == n_settings and all(s.dataset == "Tiny" and len(s) == 2 for s in sets)
    generated = {s.label: s for s in protocol_settings(protocol, scale)}
    for s in sets[:: max(1, n_settings // 6)]:
        assert s.setting.degradation is None and s.setting.params == generated[s.setting.label].params
        for index in range(2):
            name, lr, hr = s.pair(index)
            assert hr.shape[0] % scale == 0 and hr.shape[1] % scale == 0
            assert lr.shape == (hr.shape[0] // scale, hr.shape[1] // scale, 3)
            assert np.array_equal(lr, generated[s.setting.label].degrade(hr, seed=3, image_name=name))


def test_written_files_are_the_generated_sets(hr_dir, tmp_path):
    set_dir = write_testset("dasr-aniso", hr_dir, "Tiny", 4, tmp_path, noise=5)
    settings = protocol_settings("dasr-aniso", 4, noise=5)
    images = [(p.stem, p) for p in sorted(hr_dir.iterdir())]
    read = read_protocol_sets(tmp_path, "dasr-aniso", "Tiny", settings)
    assert [s.setting.label for s in read] == [s.label for s in settings]
    for setting, from_disk in zip(settings, read):
        generated = EvalSet("Tiny", setting, images)       # what test.py makes on the fly
        for index in range(2):
            assert all(np.array_equal(a, b) for a, b in zip(generated.pair(index)[1:], from_disk.pair(index)[1:]))
    assert set_dir == find_testset(tmp_path, "dasr-aniso", "Tiny", 4)


def test_noise_does_not_depend_on_which_images_are_in_the_set(hr_dir, tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(hr_dir / "b.png", alone / "b.png")
    both = write_testset("cdsr", hr_dir, "S", 4, tmp_path / "o1", noise=15)
    one = write_testset("cdsr", alone, "S", 4, tmp_path / "o2", noise=15)
    name = "b_9.0_5.0_0.8.png"
    assert np.array_equal(read_image(both / "LR_mode0_noise15" / name), read_image(one / "LR_mode0_noise15" / name))


def test_cdsr_noise_levels_and_sv_modes_share_one_set_folder(hr_dir, tmp_path):
    first = write_testset("cdsr", hr_dir, "S", 2, tmp_path, noise=0)
    second = write_testset("cdsr", hr_dir, "S", 2, tmp_path, noise=5, sv_modes=(3, 5))
    assert first == second
    folders = json.loads((first / "manifest.json").read_text())["lr_folders"]
    assert sorted(folders) == ["LR_mode0_noise0", "LR_mode0_noise5", "LR_mode3_noise5", "LR_mode5_noise5"]
    assert read_image(first / "HR_sv" / "a.png").shape == (50, 44, 3)
    assert read_image(first / "LR_mode5_noise5" / "a.png").shape == (25, 22, 3)
    with pytest.raises(ValueError, match="made from"):
        write_testset("cdsr", first / "HR_si", "S", 2, tmp_path)


def test_reads_sets_made_by_manets_script(hr_dir, tmp_path):
    ours = write_testset("cdsr", hr_dir, "S", 2, tmp_path / "ours", noise=0)
    theirs = tmp_path / "SRTestset" / "S_x2"
    shutil.copytree(ours / "HR_si", theirs / "HR_si")
    shutil.copytree(ours / "LR_mode0_noise0", theirs / "LR_mode0_noise0")
    sets = read_testset(theirs)
    assert len(sets) == 9 and all(s.dataset == "S" and s.image_names() == ["a", "b"] for s in sets)
    by_label = {s.setting.label: s for s in sets}
    found = by_label["5.0_3.0_0.8"]
    assert found.setting.params["theta_rad"] == pytest.approx(math.pi / 4) and found.setting.scale == 2
    assert found.setting == protocol_settings("cdsr", 2)[7]
    name, lr, hr = found.pair(1)
    assert name == "b" and np.array_equal(lr, found.setting.degrade(hr, seed=0, image_name="b"))


def test_testsets_root_holds_either_layout(hr_dir, tmp_path):
    settings = protocol_settings("cdsr", 2, noise=0)
    flat = write_testset("cdsr", hr_dir, "S", 2, tmp_path / "root", noise=0)        # ROOT/S_x2
    assert find_testset(tmp_path / "root", "cdsr", "S", 2) == flat
    nested = tmp_path / "root2" / "cdsr" / "S_x2"                                      # ROOT/cdsr/S_x2
    shutil.copytree(flat, nested)
    assert find_testset(tmp_path / "root2", "cdsr", "S", 2) == nested
    assert len(read_protocol_sets(tmp_path / "root2", "cdsr", "S", settings)) == 9
    with pytest.raises(FileNotFoundError, match="no dasr-iso test set of S x2 .*tried .*dasr-iso/S_x2 and"):
        find_testset(tmp_path / "root", "dasr-iso", "S", 2)      # the flat folder is cdsr's
    with pytest.raises(FileNotFoundError, match="lacks the LR images of 1.0_1.0_0.0_n5"):
        read_protocol_sets(tmp_path / "root", "cdsr", "S", protocol_settings("cdsr", 2, noise=5))


def test_find_hr_dir(tmp_path):
    write_png(tmp_path / "D" / "img.png", np.zeros((8, 8, 3), np.uint8))
    assert find_hr_dir(tmp_path, "D", 4) == tmp_path / "D"
    write_png(tmp_path / "D" / "HR" / "img.png", np.zeros((8, 8, 3), np.uint8))
    assert find_hr_dir(tmp_path, "D", 4) == tmp_path / "D" / "HR"
    write_png(tmp_path / "D" / "x4" / "img.png", np.zeros((8, 8, 3), np.uint8))
    assert find_hr_dir(tmp_path, "D", 4) == tmp_path / "D" / "x4"
    with pytest.raises(FileNotFoundError, match=r"'E' at x2: tried .*E/x2, .*E/HR, .*E"):
        find_hr_dir(tmp_path, "E", 2)


# ----------------------------------------------------------------------------- command line
def test_make_testsets_command_line(hr_dir, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_testsets.py"), "--protocol", "gaussian8",
                          "--hr_dir", str(hr_dir), "--name", "Tiny", "--scale", "2", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == tmp_path / "gaussian8" / "Tiny_x2"
    assert len(list((tmp_path / "gaussian8" / "Tiny_x2" / "LR_mode0_noise0").iterdir())) == 16
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_testsets.py"), "--protocol", "cdsr",
                          "--hr_dir", str(tmp_path / "missing"), "--name", "X", "--scale", "4", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "missing" in bad.stderr


@pytest.mark.parametrize("extra, match", [
    (["--protocol", "nope"], "unknown protocol"),
    (["--scale", "3", "--protocol", "dasr-aniso"], "scale"),
    (["--sv_modes", "1,x"], "--sv_modes"),
    (["--hr_dir", "EMPTY"], "holds no images"),
    (["--hr_dir", "BROKEN"], "cannot decode"),
])
def test_make_testsets_errors_are_one_line_with_exit_code_2(tmp_path, hr_dir, capsys, extra, match):
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "BROKEN").mkdir()
    (tmp_path / "BROKEN" / "x.png").write_bytes(b"not a png")
    args = {"--protocol": "cdsr", "--hr_dir": str(hr_dir), "--name": "X", "--scale": "4", "--out": str(tmp_path)}
    for key, value in zip(extra[::2], extra[1::2]):
        args[key] = str(tmp_path / value) if value in ("EMPTY", "BROKEN") else value
    argv = [item for pair in args.items() for item in pair]
    code = utility.run_cli(lambda: make_testsets.main(argv))     # as the script runs it
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and match in err
