"""The rules of the training-step golden check: our arrays against the authors' recorded ones.

Each array of a ``train/`` file (``*_train_init.npz`` or one iteration's file) is matched to our
value (an output, a loss, or a parameter, gradient or buffer found through the authors' key) and
compared under ``train/README.md``'s tolerance for its kind and stage (``TOLERANCES``). Running
the steps is ``scripts/golden/train.py``'s job.

Units: ``rel to max|ref|``; ``abs``; ``lr`` = |d| beyond 1e-6|ref|, in units of the phase's
learning rate; ``x (a + r|ref|)`` = the worst element's |d| over its allowance.
"""
import math

import numpy as np
import torch
from torch import nn

from model.checkpoint import authors_constants, map_authors_key

from .common import GoldenResult, as_array, compare_abs, compare_rel_max, failure, shape_mismatch

# train/README.md's tolerance table, per stage ("it1": iteration 1 and pretrain; "it2": later).
TOLERANCES = {
    "it1": {"loss_sr": 1e-5, "loss_c": 1e-4, "loss_total": (1e-4, 1e-5), "logits": 5e-5, "sr": 5e-5,
            "vector": 1e-4, "grad": 5e-2, "param": {"bulk": 0.05, "all": 2.0, "outlier_fraction": 0.005},
            "key_param": 5e-7, "bn": (1e-6, 1e-5), "queue": 2e-5},
    "it2": {"loss_sr": 3e-4, "loss_c": 2e-3, "loss_total": (2e-3, 3e-4), "logits": 2e-3, "sr": 5e-3,
            "vector": 5e-3, "grad": 0.25, "param": {"bulk": 0.1, "all": 2.0, "outlier_fraction": 0.005},
            "key_param": 5e-7, "bn": (1e-4, 1e-4), "queue": 1e-4},
}
PARAM_REL_SLACK = 1e-6   # post-step parameters: |d| <= t * lr + 1e-6 |ref|
KEY_PARAM_ATOL = 1e-9    # key-encoder parameters: |d| <= t |ref| + 1e-9
EXACT = ("labels", "num_batches_tracked", "queue_ptr", "rows__feature_bank")
PREFIXES = ("post_step__", "grad__", "init__")
OUTPUTS = {"logits": "logits", "labels": "labels", "sr": "sr", "embedding_q": "embedding",
           "proj_q": "proj_q", "proj_k": "proj_k"}
LOSSES = {"loss_sr": "L1", "loss_c": "contrastive", "loss_total": "total"}
INIT_QUEUE_ATOL = 1e-7   # *_train_init.npz: the queue (every other initial array is exact)


def stage_of(iteration: int) -> str:
    """The ``TOLERANCES`` stage of an iteration: 'it1' for the first, 'it2' after."""
    return "it1" if iteration == 1 else "it2"


# ------------------------------------------------------------------------------------ our values

def _meanshift(net: nn.Module, key: str) -> torch.Tensor:
    """Our value of one of the authors' DASR MeanShift keys (a fixed buffer here)."""
    mean = dict(net.named_buffers())["generator.rgb_mean"].flatten()
    if key.endswith("weight"):
        return torch.eye(3, dtype=mean.dtype).view(3, 3, 1, 1)
    return -mean if "sub_mean" in key else mean


def our_tensor(net: nn.Module, name: str, authors_key: str, *, grad: bool = False) -> torch.Tensor:
    """Our value (or gradient; zeros when there is none) of the authors' ``authors_key``."""
    if authors_key in authors_constants(name):
        value = _meanshift(net, authors_key)
        return torch.zeros_like(value) if grad else value
    key = map_authors_key(authors_key, name)
    if grad:
        parameter = dict(net.named_parameters())[key]
        return parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
    return net.state_dict(keep_vars=True)[key]


def _select(ours: torch.Tensor, ref: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """The part of ``ours`` a golden array holds: listed codebook rows, or leading slices."""
    ours = as_array(ours)
    if rows is not None:
        return ours[rows]
    if ours.shape == ref.shape or ours.ndim != ref.ndim:
        return ours
    return ours[tuple(slice(0, n) for n in ref.shape)]


# ------------------------------------------------------------------------------------ rules

def _allowance_ratio(name: str, ours: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> GoldenResult:
    """max_i |d_i| / (atol + rtol |ref_i|) <= 1."""
    unit = f"x ({atol:g} + {rtol:g}|ref|)"
    if ours.shape != ref.shape:
        return shape_mismatch(name, ours, ref, 1.0, unit)
    ref64 = ref.astype(np.float64)
    ratio = np.abs(ours.astype(np.float64) - ref64) / (atol + rtol * np.abs(ref64))
    error = float(ratio.max(initial=0.0))
    return GoldenResult(name, error, 1.0, bool(error <= 1.0), unit)


def parameter_moves(name: str, ours: np.ndarray, ref: np.ndarray, lr: float, rule) -> list[GoldenResult]:
    """Post-step G / encoder_q parameters: |d| beyond 1e-6|ref|, in units of lr."""
    unit = "lr"
    if ours.shape != ref.shape:
        return [shape_mismatch(name, ours, ref, 0.0, unit)]
    ref64 = ref.astype(np.float64)
    moves = np.maximum(np.abs(ours.astype(np.float64) - ref64) - PARAM_REL_SLACK * np.abs(ref64), 0.0) / lr
    moves = np.sort(moves.ravel())[::-1]
    outliers = math.floor(rule["outlier_fraction"] * moves.size)
    bulk = float(moves[outliers]) if moves.size > outliers else 0.0
    worst = float(moves[0]) if moves.size else 0.0
    return [GoldenResult(f"{name} (all but {outliers})", bulk, rule["bulk"], bulk <= rule["bulk"], unit),
            GoldenResult(f"{name} (max)", worst, rule["all"], worst <= rule["all"], unit)]


def compare_array(array: str, ours, ref: np.ndarray, stage: str, lr: float, label: str) -> list[GoldenResult]:
    """One recorded array under the README's rule for it. ``array`` is the golden array name
    (prefix + authors' key, or an output/loss name); ``label`` names the result."""
    tol = TOLERANCES[stage]
    ours = as_array(ours)
    key = next((array[len(p):] for p in PREFIXES if array.startswith(p)), array)
    if key.endswith(EXACT) or array in EXACT:
        return [compare_abs(label, ours, ref, 0.0)]
    if array == "loss_sr":
        return [compare_rel_max(label, ours, ref, tol["loss_sr"])]
    if array == "loss_c":
        return [compare_abs(label, ours, ref, tol["loss_c"])]
    if array == "loss_total":
        atol, rtol = tol["loss_total"]
        return [compare_abs(label, ours, ref, atol + rtol * abs(float(ref)))]
    if array in ("logits", "sr"):
        return [compare_rel_max(label, ours, ref, tol[array])]
    if array in OUTPUTS:
        return [compare_rel_max(label, ours, ref, tol["vector"])]
    if array.startswith("grad__"):
        return [compare_rel_max(label, ours, ref, tol["grad"])]
    if key == "E.queue":
        return [compare_abs(label, ours, ref, tol["queue"])]
    if key.endswith(("running_mean", "running_var")):
        return [_allowance_ratio(label, ours, ref, *tol["bn"])]
    if key.startswith("E.encoder_k."):
        return [_allowance_ratio(label, ours, ref, KEY_PARAM_ATOL, tol["key_param"])]
    return parameter_moves(label, ours, ref, lr, tol["param"])


def compare_iteration(net: nn.Module, name: str, outputs: dict, losses: dict, ref, stage: str,
                      lr: float, case: str) -> list[GoldenResult]:
    """Every array of one iteration file (``ref``, an npz) against our state after the step."""
    rows = ref["rows__feature_bank"] if "rows__feature_bank" in ref.files else None
    results = []
    for array in ref.files:
        label = f"{case}/{array}"
        try:
            if array in LOSSES:
                ours = losses[LOSSES[array]]
            elif array in OUTPUTS:
                ours = outputs[OUTPUTS[array]]
            elif array == "rows__feature_bank":
                continue      # which rows the arrays hold; compared with the index by the caller
            else:
                prefix = next(p for p in PREFIXES if array.startswith(p))
                key = array[len(prefix):]
                ours = our_tensor(net, name, key, grad=prefix == "grad__")
                ours = _select(ours, ref[array], rows if key.endswith("feature_bank.weight") else None)
        except (KeyError, StopIteration) as error:
            results.append(failure(label, f"nothing of ours matches: {error}"))
            continue
        results += compare_array(array, ours, ref[array], stage, lr, label)
    return results


def check_initial_state(net: nn.Module, name: str, ref, case: str) -> list[GoldenResult]:
    """``*_train_init.npz``: exact, except the queue (within 1e-7 of the float32 and of the
    float64-normalised reference)."""
    rows = ref["rows__feature_bank"] if "rows__feature_bank" in ref.files else None
    queue = net.encoder.queue
    results = []
    for array in ref.files:
        label = f"{case}/{array}"
        if array == "rows__feature_bank":
            continue
        if array == "init__E.queue_float64_normalized":
            results.append(compare_abs(label, _select(queue, ref[array], None), ref[array], INIT_QUEUE_ATOL))
            continue
        key = array[len("init__"):]
        try:
            ours = _select(our_tensor(net, name, key), ref[array],
                           rows if key.endswith("feature_bank.weight") else None)
        except KeyError as error:
            results.append(failure(label, f"nothing of ours matches: {error}"))
            continue
        results.append(compare_abs(label, ours, ref[array], INIT_QUEUE_ATOL if key == "E.queue" else 0.0))
    return results
