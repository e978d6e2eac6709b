"""Compare this project's degradations with the golden vectors of the authors' code.

Two checks, each discovering its cases from the golden folder (nothing here names a case):

* ``check_degradation_goldens(golden_dir)``: every entry of ``degradation_index.json`` that has
  ``params`` -- kernels (atol 1e-7), blurred HR, pre-round LR and bicubic-only outputs
  (atol 1e-3), and rounded LR (off by at most 1 grey level, at no more than
  ``ROUNDING_PIXELS`` values, reported as a separate ``.../lr_off_by_one`` count).
* ``check_manet_protocol(manet_dir, hr_root)``: for every ``<Set>/x<s>/`` under the golden
  ``manet_protocol`` folder, ``write_testset('cdsr', ...)`` on the HR of ``hr_root`` must write
  the same file names and pixels (same +-1 rule, with ``MANET_ROUNDING_FRACTION`` of the values).

Both return ``GoldenResult(name, max_error, tolerance, passed)`` tuples. Used by
``tests/test_golden_degradation.py`` and by the golden checker script.
"""
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data.images import list_images, read_image  # noqa: E402
from data.protocols import find_hr_dir, fixed_degradation, write_testset  # noqa: E402
from data.resize import bicubic_downsample  # noqa: E402

KERNEL_ATOL = 1e-7
FLOAT_ATOL = 1e-3
ROUNDING_PIXELS = 17            # README: each file has up to 17 pre-round values within 1e-3 of .5
MANET_ROUNDING_FRACTION = 1e-5  # of the values of one set and scale (about 10-40 for Set5)


class GoldenResult(NamedTuple):
    name: str
    max_error: float
    tolerance: float
    passed: bool


def _close(name: str, ours: np.ndarray, ref: np.ndarray, atol: float) -> GoldenResult:
    if ours.shape != ref.shape:
        return GoldenResult(f"{name} (shape {ours.shape} != {ref.shape})", float("inf"), atol, False)
    error = float(np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max())
    return GoldenResult(name, error, atol, error <= atol)


def _rounded(name: str, ours: np.ndarray, ref: np.ndarray, allowed: float) -> list[GoldenResult]:
    """Max |difference| (tolerance 1) and the number of differing values (tolerance ``allowed``)."""
    first = _close(name, ours, ref, 1.0)
    if not np.isfinite(first.max_error):
        return [first]
    count = int((ours.astype(np.int64) != ref.astype(np.int64)).sum())
    return [first, GoldenResult(f"{name}_off_by_one", float(count), float(allowed), count <= allowed)]


def _check_case(golden_dir: Path, case: str, entry: dict, hr: torch.Tensor) -> list[GoldenResult]:
    params = entry["params"]
    load = lambda key: np.load(golden_dir / entry[key])  # noqa: E731
    if params.get("operation") == "matlab_bicubic_downsample_only":
        ours = bicubic_downsample(hr[:, 0], int(params["scale"]), border="clamp")
        return [_close(f"{case}/bicubic", ours.numpy(), np.load(golden_dir / entry["file"]), FLOAT_ATOL)]
    degradation = fixed_degradation(params)
    results = []
    if "kernel" in entry:
        kernel = degradation.kernel()
        ours = kernel.float().numpy() if kernel is not None else np.zeros(0)
        results.append(_close(f"{case}/kernel", ours, load("kernel"), KERNEL_ATOL))
    if "blurred_hr_float" in entry:
        results.append(_close(f"{case}/blur", degradation.blurred(hr).numpy(), load("blurred_hr_float"), FLOAT_ATOL))
    lr_float = degradation.lr_float(hr)
    if "lr_float" in entry:
        results.append(_close(f"{case}/lr_float", lr_float.numpy(), load("lr_float"), FLOAT_ATOL))
    if "lr" in entry:
        lr = lr_float.round().clamp(0, 255)
        results += _rounded(f"{case}/lr", lr.numpy(), load("lr"), ROUNDING_PIXELS)
    return results


def check_degradation_goldens(golden_dir: Path) -> list[GoldenResult]:
    """Every case of ``golden_dir/degradation_index.json`` with ``params``, in index order."""
    golden_dir = Path(golden_dir)
    index = json.loads((golden_dir / "degradation_index.json").read_text())
    hr = torch.from_numpy(np.load(golden_dir / index["hr"]["file"]))      # (1, 1, 3, H, W)
    results = []
    for case, entry in index.items():
        if not isinstance(entry, dict) or "params" not in entry:
            continue
        try:
            results += _check_case(golden_dir, case, entry, hr)
        except (KeyError, ValueError) as error:  # a case this code cannot express is a failure
            results.append(GoldenResult(f"{case} (unsupported: {error})", float("inf"), 0.0, False))
    return results


def check_manet_protocol(manet_dir: Path, hr_root: Path) -> list[GoldenResult]:
    """Compare ``write_testset('cdsr', find_hr_dir(hr_root, Set, s), Set, s, tmp, noise=0)``
    with every ``manet_dir/<Set>/x<s>/`` folder present (file names and pixels)."""
    results = []
    folders = sorted(p for p in Path(manet_dir).glob("*/x*") if p.is_dir() and re.fullmatch(r"x\d+", p.name))
    with tempfile.TemporaryDirectory() as tmp:
        for folder in folders:
            dataset, scale = folder.parent.name, int(folder.name[1:])
            name = f"manet_protocol/{dataset}/x{scale}"
            set_dir = write_testset("cdsr", find_hr_dir(hr_root, dataset, scale), dataset, scale, Path(tmp),
                                    noise=0, sv_modes=())
            ours_dir = set_dir / "LR_mode0_noise0"
            golden = {p.name: p for p in list_images(folder)}
            mine = {p.name: p for p in list_images(ours_dir)}
            if set(golden) != set(mine):
                missing, extra = sorted(set(golden) - set(mine)), sorted(set(mine) - set(golden))
                results.append(GoldenResult(f"{name}/file_names (missing {missing[:3]}, extra {extra[:3]})",
                                            float(len(missing) + len(extra)), 0.0, False))
                continue
            ours = np.concatenate([read_image(mine[n]).ravel() for n in sorted(golden)])
            ref = np.concatenate([read_image(golden[n]).ravel() for n in sorted(golden)])
            results += _rounded(name, ours, ref, int(MANET_ROUNDING_FRACTION * ref.size))
    return results
