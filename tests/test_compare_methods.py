"""scripts/compare_methods.sh: CDSR, DASR and KDSR checkpoints on one protocol, one table."""
import json
import os
import subprocess
import sys
from pathlib import Path

import option
from helpers import tiny, tiny_pair, write_noise_images
from model.checkpoint import model_fields, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "compare_methods.sh"


def test_without_checkpoints_it_trains_every_method_on_one_recipe_then_scores_it():
    env = {"PATH": "/usr/bin:/bin", "PYTHON": "echo", "TEST_PATH": "/b", "TRAIN_FLAGS": "--cpu"}
    out = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.strip().splitlines()]
    assert [line[0] for line in lines] == [str(ROOT / "main.py")] * 3 + [str(ROOT / "test.py")] * 3 + [
        str(ROOT / "scripts/ablation_table.py")]
    trained = [option.parse_args(line[1:]) for line in lines[:3]]
    assert [a.model for a in trained] == ["CDSR", "DASR", "KDSR-S-M"]
    assert {(a.preset, a.seed, a.scale, a.batch_size, a.patch_size, a.test_every, a.cpu) for a in trained} == {
        ("demo", 1, 2, 8, 24, 50, True)}
    scored = [option.parse_args(line[1:], test=True) for line in lines[3:6]]
    assert [a.pre_train for a in scored] == [f"experiment/methods_{m}/checkpoint/last.pt"
                                              for m in ("CDSR", "DASR", "KDSR-S-M")]
    assert {(a.protocol, a.data_test, a.test_path) for a in scored} == {("gaussian8", "Set5+Set14", "/b")}
    assert lines[-1][1:] == ["CDSR=experiment/methods_scored_0", "DASR=experiment/methods_scored_1",
                             "KDSR-S-M=experiment/methods_scored_2", "--out", "experiment/methods",
                             "--name", "methods"]


def test_checkpoints_of_the_three_methods_make_one_table(tmp_path):
    write_noise_images(tmp_path / "benchmark" / "Set5", [(32, 32), (24, 28)], seed=2)
    checkpoints = []
    for name, net in (("cdsr", tiny("cdsr")), ("dasr", tiny("dasr")), ("kdsr", tiny_pair())):
        save_checkpoint(tmp_path / f"{name}.pt", **model_fields(net))
        checkpoints.append(str(tmp_path / f"{name}.pt"))
    checkpoints[2] = "KDSR-S-M (tiny)=" + checkpoints[2]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1", "TEST_PATH": str(tmp_path / "benchmark"), "DATA_TEST": "Set5",
           "TAG": "cmp", "TEST_FLAGS": "--cpu"}
    out = subprocess.run(["bash", str(SCRIPT), *checkpoints], env=env, capture_output=True,
                         text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    table = json.loads((tmp_path / "experiment/cmp/methods.json").read_text())
    assert set(table["results"]) == {"cdsr", "dasr", "KDSR-S-M (tiny)", "Bicubic (MATLAB)"}
    assert all(set(row) == {"Set5"} for row in table["results"].values())
    scored = json.loads((tmp_path / "experiment/cmp_scored_2/results.json").read_text())
    assert scored["model"] == "kdsr-s-m" and len(scored["results"]) == 8          # gaussian8's widths
    markdown = (tmp_path / "experiment/cmp/methods.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in markdown[4:]] == [
        "| cdsr", "| dasr", "| KDSR-S-M (tiny)", "| Bicubic (MATLAB)"]             # methods as rows
