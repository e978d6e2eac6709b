"""KDSR teachers and students against the authors' eval forward (golden ``kdsr_index.json``,
made by ``scripts/golden/kdsr.py``; see tests/golden_kdsr/README.md).

For every case of the index's ``eval`` list the authors' saved keys (``kdsr_keys_*.json``) are
filled by the folder's ``fill.py`` with the index's ``scale_overrides`` and the MeanShift
constants, and loaded through ``load_weights`` (the authors'-format path, so the key map and
the model inference are covered too). Then, on the case's LR (and, for a teacher, HR):

* ``out``: float32 eval forward; ours (0..255 units) / 255 against theirs ([0,1] units),
  ``max|d| <= 2e-5 max|ref|``;
* ``embedding`` (what G reads) and ``kd_features`` (the pre-compress mlp output the
  distillation loss compares): ``max|d| <= 2e-5`` absolute.

And ``kd_loss``: ``loss.distillation.distillation_kl`` on the student and teacher features their
stage-4 step recorded, against the KL term that step computed, ``|d| <= 1e-6 |ref|``.
"""
import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

import model
from loss.distillation import distillation_kl
from model.authors_format import authors_constants
from model.checkpoint import load_weights

from .common import GoldenResult, compare_abs, compare_rel_max, failure, fill_module

INDEX = "kdsr_index.json"
F32_OUT_RTOL = 2e-5
F32_VECTOR_ATOL = 2e-5
KD_LOSS_RTOL = 1e-6
KD_STEP = "stage4_iso"       # the training-step golden whose features give the loss case
TEMPERATURE = 0.15           # their option.py default, used by that step


def read_index(golden_dir: Path) -> dict:
    return json.loads((Path(golden_dir) / INDEX).read_text())


def has_kdsr_goldens(golden_dir: Path) -> bool:
    return (Path(golden_dir) / INDEX).is_file()


@lru_cache(maxsize=None)
def authors_state(golden_dir: Path, name: str, scale: int) -> dict:
    """The authors' saved keys of (name, scale) as the goldens filled them. Shared: do not
    modify the tensors."""
    golden_dir = Path(golden_dir)
    role, size = name.split("-")[1:]
    listing = json.loads((golden_dir / f"kdsr_keys_{role}_{size}_x{scale}.json").read_text())
    shapes = {k["key"]: tuple(k["shape"]) for k in listing["keys"]}
    rules = read_index(golden_dir)["weights"]["scale_overrides"]
    overrides = {key: rule["factor"] for key in shapes for rule in rules
                 if re.fullmatch(rule["pattern"], key)}
    state = fill_module(golden_dir).fill_state_dict(shapes, overrides)
    state.update(authors_constants(name))
    return state


@lru_cache(maxsize=None)
def golden_model(golden_dir: Path, name: str, scale: int) -> torch.nn.Module:
    """Paper-size model with the golden weights, in eval mode; shared: copy before changing it."""
    net = model.build_model(name, scale=scale)
    if load_weights(net, authors_state(Path(golden_dir), name, scale)) != "authors":
        raise ValueError("the golden state was not read as an authors' checkpoint")
    return net.eval()


def golden_images(golden_dir: Path, case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR (B,3,h,w), HR (B,3,s*h,s*w)) float32 in 0..255 of an eval case."""
    load = lambda key: torch.from_numpy(np.load(Path(golden_dir) / case[key]).astype(np.float32))  # noqa: E731
    return load("lr_file"), load("hr_file")


def check_case(golden_dir: Path, case: dict) -> list[GoldenResult]:
    """``out``, ``embedding`` and ``kd_features`` of one eval case."""
    name, scale = case["model"], int(case["scale"])
    label = f"{name}_x{scale}"
    net = golden_model(Path(golden_dir), name, scale)
    lr, hr = golden_images(golden_dir, case)
    extra = (hr,) if net.needs_hr else ()
    with torch.no_grad():
        sr = net(lr, *extra)
        embedding, kd_features = net.encode(lr, *extra)
    ref = np.load(Path(golden_dir) / case["file"])
    return [compare_rel_max(f"{label}/out", sr.double() / 255, ref["out"], F32_OUT_RTOL),
            compare_abs(f"{label}/embedding", embedding, ref["embedding"], F32_VECTOR_ATOL),
            compare_abs(f"{label}/kd_features", kd_features, ref["kd_features"], F32_VECTOR_ATOL)]


def check_kd_loss(golden_dir: Path) -> GoldenResult:
    """Our distillation loss on the features their stage-4 step recorded."""
    step = read_index(golden_dir)["train"][KD_STEP]
    arrays = np.load(Path(golden_dir) / step["file"])
    ours = distillation_kl(torch.from_numpy(arrays["student_kd_features"]),
                           torch.from_numpy(arrays["teacher_kd_features"]), TEMPERATURE)
    return compare_rel_max(f"kd_loss/{KD_STEP}", ours, arrays["loss_kd"], KD_LOSS_RTOL)


def check_kdsr_goldens(golden_dir: Path) -> list[GoldenResult]:
    """Every eval case of the index, then the distillation loss."""
    results = []
    for case in read_index(golden_dir)["eval"]:
        try:
            results += check_case(golden_dir, case)
        except (KeyError, ValueError, RuntimeError, OSError) as error:
            results.append(failure(f"{case.get('model')}_x{case.get('scale')}",
                                   f"{type(error).__name__}: {error}"))
    try:
        results.append(check_kd_loss(golden_dir))
    except (KeyError, ValueError, OSError) as error:
        results.append(failure("kd_loss", f"{type(error).__name__}: {error}"))
    return results
