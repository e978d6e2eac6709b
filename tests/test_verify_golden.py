"""scripts/verify_golden.py: discovers the golden cases of a folder, reports each, fails loudly."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scripts.golden.metrics import REPRODUCED
from scripts.verify_golden import default_golden_dirs, main

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "verify_golden.py"


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _summary(stdout: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+) passed, (\d+) failed", stdout.strip().splitlines()[-1])
    assert match, stdout[-500:]
    return int(match[1]), int(match[2])


def _groups(stdout: str) -> set:
    return {m[1] for m in re.finditer(r"^(?:pass|FAIL)  (\w+)/", stdout, re.M)}


def test_everything_in_the_shared_golden_folder_passes(golden_dir, benchmark_dir):
    run = _run(golden_dir, "--hr_root", benchmark_dir)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    passed, failed = _summary(run.stdout)
    assert failed == 0 and passed > 500
    assert _groups(run.stdout) == {"models", "degradations", "metrics", "manet", "train"}
    for group in ("models", "degradations", "metrics", "manet", "train"):
        assert f"largest error in {group} (" in run.stdout


def test_a_subset_is_discovered_from_its_files(golden_dir, tmp_path):
    info = json.loads((golden_dir / "metrics.json").read_text())
    files = ["metrics.json", info["hr_file"], *(p["sr_file"] for p in info["pairs"].values())]
    files += ["fill.py", "dasr_keys_x2.json", "dasr_x2_in.npy", "dasr_x2_out.npy"]  # one model, output only
    for name in files:
        shutil.copy(golden_dir / name, tmp_path / name)
    run = _run(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert _groups(run.stdout) == {"metrics", "models"}
    model_lines = [line for line in run.stdout.splitlines() if line.startswith("pass  models/")]
    assert [line.split()[1] for line in model_lines] == ["models/dasr_x2/out"]
    n_metric_values = sum(key in REPRODUCED for p in info["pairs"].values()
                          for values in p["values"].values() for key in values)
    assert n_metric_values >= 12
    assert _summary(run.stdout) == (1 + n_metric_values, 0)


def test_a_corrupted_value_fails(golden_dir, tmp_path):
    index = json.loads((golden_dir / "degradation_index.json").read_text())
    case = next(n for n, e in index.items() if isinstance(e, dict) and "lr" in e and "kernel" in e)
    for key in ("kernel", "lr_float"):
        if key in index[case]:
            shutil.copy(golden_dir / index[case][key], tmp_path / index[case][key])
    shutil.copy(golden_dir / index["hr"]["file"], tmp_path / index["hr"]["file"])
    lr = np.load(golden_dir / index[case]["lr"])
    lr.flat[11] += 3
    np.save(tmp_path / index[case]["lr"], lr)
    (tmp_path / "degradation_index.json").write_text(json.dumps({"hr": index["hr"], case: index[case]}))
    run = _run(tmp_path)
    assert run.returncode == 1
    assert _summary(run.stdout)[1] == 1
    assert [line.split()[1] for line in run.stdout.splitlines() if line.startswith("FAIL")] == [
        f"degradations/{case}/lr"]


def test_a_missing_folder_is_one_error_line(tmp_path):
    run = _run(tmp_path / "nowhere")
    assert run.returncode == 2 and run.stdout == ""
    assert len(run.stderr.strip().splitlines()) == 1 and "nowhere" in run.stderr


def test_a_bad_flag_is_one_error_line_as_in_every_entry_point(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--threads", "two"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: argument --threads: invalid int value: 'two' (see --help)\n"


def test_an_empty_folder_is_not_a_pass(tmp_path):
    run = _run(tmp_path)
    assert run.returncode == 1 and _summary(run.stdout) == (0, 0)


def test_the_project_kdsr_goldens_pass_and_are_checked_by_default(golden_dir):
    """At 2 threads here; tests/test_golden_kdsr.py runs the same checks at 1 (conftest)."""
    threads = 2
    kdsr = ROOT / "tests" / "golden_kdsr"
    run = _run(kdsr, "--threads", str(threads))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert _groups(run.stdout) == {"kdsr", "kdsr_train"} and f"{threads} thread(s)" in run.stdout
    eval_cases = sum(line.startswith("pass  kdsr/") for line in run.stdout.splitlines())
    assert eval_cases == 19                    # 6 models x (out, embedding, kd_features) + loss
    steps = {line.split()[1].split("/")[1] for line in run.stdout.splitlines()
             if line.startswith("pass  kdsr_train/")}
    assert steps == {"step_stage3_iso", "step_stage4_iso", "step_stage4_anisonoise_encoder"}
    assert _summary(run.stdout)[1] == 0 and _summary(run.stdout)[0] > 150
    assert default_golden_dirs() == [kdsr, golden_dir]
