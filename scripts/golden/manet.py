"""The CDSR/MANet Table-2 test images (golden ``manet_protocol/<Set>/x<s>/``) against ours.

``check_manet_protocol(manet_dir, hr_root)``: for every ``<Set>/x<s>/`` folder present,
``write_testset('cdsr', find_hr_dir(hr_root, Set, s), ...)`` must write the same file names and
pixels (off by at most 1 grey level, at no more than ``MANET_ROUNDING_FRACTION`` of the values).
"""
import re
import tempfile
from pathlib import Path

import numpy as np

from data.images import list_images, read_image
from data.testsets import find_hr_dir, write_testset

from .common import GoldenResult, failure
from .degradations import rounded_results

MANET_ROUNDING_FRACTION = 1e-5  # of the values of one set and scale (about 10-40 for Set5)


def manet_folders(manet_dir: Path) -> list[Path]:
    """The ``<Set>/x<s>`` folders under ``manet_dir``, sorted."""
    return sorted(p for p in Path(manet_dir).glob("*/x*") if p.is_dir() and re.fullmatch(r"x\d+", p.name))


def check_manet_protocol(manet_dir: Path, hr_root: Path) -> list[GoldenResult]:
    """Compare ``write_testset('cdsr', ..., noise=0)`` with every ``manet_dir/<Set>/x<s>/``."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in manet_folders(manet_dir):
            dataset, scale = folder.parent.name, int(folder.name[1:])
            name = f"manet_protocol/{dataset}/x{scale}"
            try:
                hr_dir = find_hr_dir(hr_root, dataset, scale)
            except FileNotFoundError as error:
                results.append(failure(name, str(error)))
                continue
            set_dir = write_testset("cdsr", hr_dir, dataset, scale, Path(tmp), noise=0, sv_modes=())
            ours_dir = set_dir / "LR_mode0_noise0"
            golden = {p.name: p for p in list_images(folder)}
            mine = {p.name: p for p in list_images(ours_dir)}
            if set(golden) != set(mine):
                missing, extra = sorted(set(golden) - set(mine)), sorted(set(mine) - set(golden))
                results.append(GoldenResult(f"{name}/file_names (missing {missing[:3]}, extra {extra[:3]})",
                                            float(len(missing) + len(extra)), 0.0, False, "files"))
                continue
            ours = np.concatenate([read_image(mine[n]).ravel() for n in sorted(golden)])
            ref = np.concatenate([read_image(golden[n]).ravel() for n in sorted(golden)])
            results += rounded_results(name, ours, ref, int(MANET_ROUNDING_FRACTION * ref.size))
    return results
