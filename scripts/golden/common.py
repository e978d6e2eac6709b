"""Pieces every golden check shares: the result record, array comparisons and the golden
folder's own ``fill.py`` (imported by path, so each folder brings its weights with it)."""
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import numpy as np
import torch

from model.checkpoint import load_weights

ABS = "abs"                  # |ours - ref|
REL_MAX = "rel to max|ref|"  # max|ours - ref| / max|ref| (|d| / |ref| for scalars)


class GoldenResult(NamedTuple):
    """One checked quantity: ``max_error`` in ``unit`` against ``tolerance`` (same unit)."""
    name: str
    max_error: float
    tolerance: float
    passed: bool
    unit: str = ABS

    @property
    def ratio(self) -> float:
        """max_error / tolerance (inf for NaN, and for a non-zero error against a zero tolerance)."""
        if self.max_error != self.max_error:
            return float("inf")
        if self.tolerance > 0:
            return self.max_error / self.tolerance
        return 0.0 if self.max_error == 0 else float("inf")


def as_array(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def shape_mismatch(name: str, ours: np.ndarray, ref: np.ndarray, tolerance: float,
                   unit: str = ABS) -> GoldenResult:
    return GoldenResult(f"{name} (shape {ours.shape} != {ref.shape})", float("inf"), tolerance,
                        False, unit)


def compare_abs(name: str, ours, ref, tolerance: float) -> GoldenResult:
    """max|ours - ref| <= tolerance (float64 arithmetic)."""
    ours, ref = as_array(ours), as_array(ref)
    if ours.shape != ref.shape:
        return shape_mismatch(name, ours, ref, tolerance)
    error = float(np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max(initial=0.0))
    return GoldenResult(name, error, tolerance, bool(error <= tolerance))


def compare_rel_max(name: str, ours, ref, tolerance: float) -> GoldenResult:
    """max|ours - ref| <= tolerance * max|ref|, reported as the ratio max|d| / max|ref|."""
    ours, ref = as_array(ours), as_array(ref)
    if ours.shape != ref.shape:
        return shape_mismatch(name, ours, ref, tolerance, REL_MAX)
    ref64 = ref.astype(np.float64)
    diff = float(np.abs(ours.astype(np.float64) - ref64).max(initial=0.0))
    scale = float(np.abs(ref64).max(initial=0.0))
    error = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    return GoldenResult(name, error, tolerance, bool(np.isfinite(error) and error <= tolerance),
                        REL_MAX)


def failure(name: str, why: str) -> GoldenResult:
    """A case that could not be checked at all."""
    return GoldenResult(f"{name} ({why})", float("inf"), 0.0, False)


@lru_cache(maxsize=None)
def fill_module(golden_dir: Path) -> ModuleType:
    """``golden_dir/fill.py`` as a module (the deterministic weights of that folder)."""
    path = Path(golden_dir) / "fill.py"
    spec = importlib.util.spec_from_file_location(f"golden_fill_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_keys(golden_dir: Path, name: str, scale: int) -> list[dict]:
    """The authors' saved keys, ``[{'key', 'shape', 'dtype'}, ...]`` of ``{name}_keys_x{scale}.json``."""
    return json.loads((Path(golden_dir) / f"{name}_keys_x{scale}.json").read_text())["keys"]


@lru_cache(maxsize=None)
def authors_state(golden_dir: Path, name: str, scale: int) -> dict:
    """The authors' saved keys for (name, scale), filled as the golden data was (DASR with
    ``DASR_SCALE_OVERRIDES``). Shared: do not modify the tensors."""
    fill = fill_module(Path(golden_dir))
    shapes = {k["key"]: tuple(k["shape"]) for k in read_keys(golden_dir, name, scale)}
    overrides = fill.DASR_SCALE_OVERRIDES if name == "dasr" else None
    return fill.fill_state_dict(shapes, overrides)


def load_golden_weights(net: torch.nn.Module, golden_dir: Path, name: str, scale: int) -> None:
    """Load the filled authors' state into ``net`` through ``load_weights`` (authors' path)."""
    detected = load_weights(net, authors_state(Path(golden_dir), name, scale))
    if detected != "authors":
        raise ValueError(f"the golden state was read as format {detected!r}, not 'authors'")
