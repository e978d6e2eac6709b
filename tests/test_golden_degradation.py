"""Our degradations against the authors' code (../shared/golden, see its README)."""
import json
import shutil

import numpy as np

from scripts.golden.degradations import check_degradation_goldens
from scripts.golden.manet import check_manet_protocol


def _report(results) -> str:
    return "\n".join(f"{r.name}: {r.max_error:g} > {r.tolerance:g}" for r in results if not r.passed)


def test_every_indexed_degradation_matches_the_authors_code(golden_dir):
    index = json.loads((golden_dir / "degradation_index.json").read_text())
    cases = {name for name, entry in index.items() if isinstance(entry, dict) and "params" in entry}
    results = check_degradation_goldens(golden_dir)
    assert {r.name.split("/")[0] for r in results} == cases
    assert {r.name.split("/")[1] for r in results} >= {"kernel", "blur", "lr_float", "lr", "lr_off_by_one", "bicubic"}
    assert all(r.passed for r in results), _report(results)


def test_checker_reports_a_wrong_pixel(golden_dir, tmp_path):
    index = json.loads((golden_dir / "degradation_index.json").read_text())
    case = next(n for n, e in index.items() if isinstance(e, dict) and e.get("params", {}).get("convention") == "manet")
    for name in (index["hr"]["file"], index[case]["kernel"]):
        shutil.copy(golden_dir / name, tmp_path / name)
    lr = np.load(golden_dir / index[case]["lr"])
    lr.flat[7] += 3
    np.save(tmp_path / index[case]["lr"], lr)
    (tmp_path / "degradation_index.json").write_text(json.dumps({"hr": index["hr"], case: index[case]}))
    failed = [r for r in check_degradation_goldens(tmp_path) if not r.passed]
    assert [r.name for r in failed] == [f"{case}/lr"] and failed[0].max_error == 3


def test_cdsr_protocol_reproduces_manet_test_images(golden_dir, benchmark_dir):
    results = check_manet_protocol(golden_dir / "manet_protocol", benchmark_dir)
    assert len(results) >= 2
    assert all(r.passed for r in results), _report(results)
