"""Our degradations against the golden vectors of the authors' degradation code.

``check_degradation_goldens(golden_dir)`` runs every entry of ``degradation_index.json`` that
has ``params`` (nothing here names a case): kernels (atol 1e-7), blurred HR, pre-round LR and
bicubic-only outputs (atol 1e-3, 0..255 units), and rounded LR (off by at most 1 grey level, at
no more than ``ROUNDING_PIXELS`` values, reported as a separate ``.../lr_off_by_one`` count).
"""
import json
from pathlib import Path

import numpy as np
import torch

from data.degradation import FixedDegradation, make_fixed_degradation
from data.resize import bicubic_downsample

from .common import GoldenResult, compare_abs, failure

KERNEL_ATOL = 1e-7
FLOAT_ATOL = 1e-3
ROUNDING_PIXELS = 17  # README: each file has up to 17 pre-round values within 1e-3 of .5


def rounded_results(name: str, ours: np.ndarray, ref: np.ndarray, allowed: float) -> list[GoldenResult]:
    """Max |difference| (tolerance 1 grey level) and the number of differing values (tolerance
    ``allowed``, unit 'values')."""
    first = compare_abs(name, ours, ref, 1.0)._replace(unit="grey levels")
    if not np.isfinite(first.max_error):
        return [first]
    count = int((ours.astype(np.int64) != ref.astype(np.int64)).sum())
    return [first, GoldenResult(f"{name}_off_by_one", float(count), float(allowed),
                                count <= allowed, "values")]


def index_degradation(params: dict) -> FixedDegradation:
    """Our degradation of an index entry's plain fields (convention dasr or manet; blur none,
    iso or aniso; sigma_std, lambda_*_std with theta_deg, or sig*_variance with theta_rad)."""
    convention, blur_type = params["convention"], params.get("blur", "none")
    sample_mode = "s-fold" if (convention == "dasr" and params.get("downsample") == "decimate") else "bicubic"
    common = dict(noise=float(params.get("noise", 0.0)), kernel_size=int(params.get("kernel_size", 21)),
                  sample_mode=sample_mode)
    if blur_type in ("none", "iso"):
        return make_fixed_degradation(convention, int(params["scale"]), "iso",
                                      sig=float(params.get("sigma_std", 0.0)), **common)
    if convention == "dasr":
        return make_fixed_degradation("dasr", int(params["scale"]), "aniso", lambda_1=params["lambda_1_std"],
                                      lambda_2=params["lambda_2_std"], theta=params["theta_deg"], **common)
    return make_fixed_degradation("manet", int(params["scale"]), "aniso", lambda_1=params["sig1_variance"],
                                  lambda_2=params["sig2_variance"], theta=params["theta_rad"], **common)


def _check_case(golden_dir: Path, case: str, entry: dict, hr: torch.Tensor) -> list[GoldenResult]:
    params = entry["params"]
    load = lambda key: np.load(golden_dir / entry[key])  # noqa: E731
    if params.get("operation") == "matlab_bicubic_downsample_only":
        ours = bicubic_downsample(hr[:, 0], int(params["scale"]), border="clamp")
        return [compare_abs(f"{case}/bicubic", ours, load("file"), FLOAT_ATOL)]
    degradation = index_degradation(params)
    results = []
    if "kernel" in entry:
        kernel = degradation.kernel()
        ours = kernel.float().numpy() if kernel is not None else np.zeros(0)
        results.append(compare_abs(f"{case}/kernel", ours, load("kernel"), KERNEL_ATOL))
    if "blurred_hr_float" in entry:
        results.append(compare_abs(f"{case}/blur", degradation.blurred(hr), load("blurred_hr_float"),
                                   FLOAT_ATOL))
    lr_float = degradation.lr_float(hr)
    if "lr_float" in entry:
        results.append(compare_abs(f"{case}/lr_float", lr_float, load("lr_float"), FLOAT_ATOL))
    if "lr" in entry:
        lr = lr_float.round().clamp(0, 255)
        results += rounded_results(f"{case}/lr", lr.numpy(), load("lr"), ROUNDING_PIXELS)
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
        except (KeyError, ValueError, OSError) as error:  # a case we cannot express or read fails
            results.append(failure(case, f"unsupported: {error}"))
    return results
